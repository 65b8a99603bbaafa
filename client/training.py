"""One client's local round: DP-SGD on the Mult-VAE, then on the GAN's discriminator.

Everything here runs on the client's own users only. The privacy plan (noise multipliers
and sampling rates) is fixed before round 1 from the target (ε, δ), the number of users,
the batch sizes, the local steps and the planned rounds; each round then spends exactly
the planned events, as counted by Opacus' own accountant hook.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch

from fedsynth.common.config.run import LocalTrainingConfig
from fedsynth.common.federated.strategies import ProximalTerm
from fedsynth.common.models.bundle import ModelBundle
from fedsynth.common.models.gan import (
    Discriminator,
    GANConfig,
    Generator,
    as_distribution,
    discriminator_loss,
    generator_loss,
)
from fedsynth.common.models.optim import adam
from fedsynth.common.models.vae import MultVAE, MultVAEConfig, kl_beta, vae_loss
from fedsynth.common.privacy.accounting import DPEvent
from fedsynth.common.privacy.dpsgd.training import CSRRows, PrivacyConfig, loader, local_sgd, steps_per_epoch
from fedsynth.common.privacy.plan import PrivacyPlan
from fedsynth.common.runtime.seeding import mechanism_seed


@dataclass(frozen=True)
class RoundSeeds:
    """One round's two mechanisms' seeds (:func:`fedsynth.common.runtime.seeding.mechanism_seed`, one call each)."""

    vae: int
    gan: int

    def __post_init__(self) -> None:
        if self.vae == self.gan:
            raise ValueError(
                "the VAE's and the discriminator's DP-SGD must not share a seed (their noise would cancel)"
            )

    @classmethod
    def for_round(cls, server_round: int, reproducible_from: int | None = None) -> RoundSeeds:
        """Fresh seeds (``reproducible_from=None``), or derived per model and round (simulation studies)."""
        return cls(
            mechanism_seed(f"round-{server_round}/vae", reproducible_from),
            mechanism_seed(f"round-{server_round}/gan", reproducible_from),
        )


@dataclass(frozen=True)
class RoundResult:
    """What one model's local training produced: events spent and mean losses."""

    events: list[DPEvent]
    losses: dict[str, float]


def train_vae_round(
    model: MultVAE,
    data: sp.csr_matrix,
    plan: PrivacyPlan,
    privacy: PrivacyConfig,
    config: MultVAEConfig,
    first_step: int,
    seed: int,
    proximal_mu: float = 0.0,
) -> RoundResult:
    """One round of (DP-)SGD on ``model`` in place. KL β follows the global step ``first_step + i``.

    ``proximal_mu`` > 0: FedProx, the gradient of μ/2 ‖w − w_start‖² joins every step (after the noise).
    Runs on the model's device: each batch (B, n_items) is densified on the CPU and copied there.
    """
    device = next(model.parameters()).device
    torch.manual_seed(seed)
    sgd = local_sgd(
        plan.private,
        model,
        adam(model.parameters(), config.learning_rate, config.weight_decay),
        loader(CSRRows(data), config.batch_size, seed),
        plan.vae_noise,
        privacy.max_grad_norm,
        seed,
        proximal_mu,
    )
    model.train()
    total, count, step = 0.0, 0, first_step
    for _ in range(plan.vae_steps // max(1, steps_per_epoch(data.shape[0], config.batch_size))):
        for x in sgd.batches:
            # an empty Poisson batch (probability (1-q)^n) is a noise-only step, counted: skipping it would
            # release "no step" where a neighbour dataset gives a noisy one, which the accountant does not cover
            x = x.to(device, non_blocking=True)
            logits, mu, logvar = model(x)
            per_user = vae_loss(logits, x, mu, logvar, kl_beta(step, config.anneal_steps, config.beta_cap), "none")
            sgd.backward(per_user)
            sgd.step()
            total += float(per_user.detach().sum())
            count += x.shape[0]
            step += 1
    return RoundResult(sgd.finish("vae"), {"vae-loss": total / max(count, 1)})


def train_gan_round(
    generator: Generator,
    discriminator: Discriminator,
    data: sp.csr_matrix,
    plan: PrivacyPlan,
    privacy: PrivacyConfig,
    config: GANConfig,
    seed: int,
    proximal_mu: float = 0.0,
) -> RoundResult:
    """``plan.gan_steps`` private discriminator steps, each followed by ``config.generator_steps`` generator steps.

    ``proximal_mu`` > 0: FedProx's term on both the discriminator and the generator.

    With ``plan.gan_steps == 0`` (the GAN is not a synthesizer) nothing is trained and nothing spent.
    Runs on the discriminator's device (the generator must be on the same one).
    """
    if plan.gan_steps == 0:
        return RoundResult([], {})
    device = next(discriminator.parameters()).device
    torch.manual_seed(seed)
    g_optimizer = torch.optim.Adam(generator.parameters(), lr=config.learning_rate, betas=(0.5, 0.999))
    sgd = local_sgd(
        plan.private,
        discriminator,
        torch.optim.Adam(discriminator.parameters(), lr=config.learning_rate, betas=(0.5, 0.999)),
        loader(CSRRows(data), config.batch_size, seed),
        plan.gan_noise,
        privacy.max_grad_norm,
        seed,
        proximal_mu,
    )
    generator_proximal = ProximalTerm.optional(generator, proximal_mu)
    d_losses, g_losses, done = [], [], 0
    while done < plan.gan_steps:
        for x in sgd.batches:
            if done == plan.gan_steps:
                break
            x = x.to(device, non_blocking=True)
            fake = generator.sample(config.batch_size).detach()
            inputs = torch.cat([as_distribution(x), fake])
            labels = torch.cat([torch.ones(x.shape[0], device=device), torch.zeros(fake.shape[0], device=device)])
            per_row = discriminator_loss(discriminator(inputs), labels, reduction="none")
            sgd.backward(per_row)
            sgd.step()
            d_losses.append(float(per_row.detach().mean()))
            done += 1
            for _ in range(config.generator_steps):  # post-processing of the private discriminator
                with sgd.paused():
                    g_losses.append(
                        _generator_step(
                            generator, discriminator, g_optimizer, sgd.optimizer, config.batch_size, generator_proximal
                        )
                    )
    return RoundResult(
        sgd.finish("gan"), {"gan-d-loss": float(np.mean(d_losses)), "gan-g-loss": float(np.mean(g_losses))}
    )


def _generator_step(
    generator: Generator,
    critic: torch.nn.Module,
    g_optimizer: torch.optim.Optimizer,
    d_optimizer: torch.optim.Optimizer,
    batch_size: int,
    proximal: ProximalTerm | None = None,
) -> float:
    loss = generator_loss(critic(generator.sample(batch_size)))
    g_optimizer.zero_grad()
    loss.backward()
    if proximal is not None:
        proximal.add_gradient()
    g_optimizer.step()
    d_optimizer.zero_grad()  # the discriminator's gradients from this pass are discarded
    return float(loss.detach())


def train_local_round(
    bundle: ModelBundle,
    data: sp.csr_matrix,
    plan: PrivacyPlan,
    privacy: PrivacyConfig,
    local: LocalTrainingConfig,
    server_round: int,
    seeds: RoundSeeds,
    device: torch.device | None = None,
) -> tuple[RoundResult, RoundResult]:
    """A client's round on ``bundle`` in place: the Mult-VAE, then the GAN (FedProx's term when ``local`` has μ > 0).

    The two models' DP-SGD are two mechanisms composed in the ledger as independent, so each
    draws its Poisson batches and its noise from its own seed (``seeds.vae`` ≠ ``seeds.gan``).
    ``device``: where to train (the bundle is moved there and back to the CPU afterwards); ``None``: where it is.
    """
    first_step, mu = (server_round - 1) * plan.vae_steps, local.proximal_mu
    home = next(bundle.vae.parameters()).device
    bundle.to(device or home)
    vae = train_vae_round(bundle.vae, data, plan, privacy, local.vae, first_step, seeds.vae, mu)
    gan = train_gan_round(bundle.generator, bundle.discriminator, data, plan, privacy, local.gan, seeds.gan, mu)
    bundle.to(home)
    return vae, gan
