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

from common.bundle import ModelBundle
from common.errors import ConfigError
from common.models.gan import (
    Discriminator,
    GANConfig,
    Generator,
    as_distribution,
    discriminator_loss,
    generator_loss,
)
from common.models.optim import adam
from common.models.vae import MultVAE, MultVAEConfig, kl_beta, vae_loss
from common.privacy.accounting import FAST_ORDERS, DPEvent, calibrate_noise, epsilon
from common.privacy.cooccurrence import cooccurrence_event
from common.privacy.dp import CSRRows, PrivacyConfig, loader, local_sgd, sample_rate, steps_per_epoch
from common.privacy.statistics import statistics_event
from common.run_config import LocalTrainingConfig
from common.strategies import ProximalTerm


@dataclass(frozen=True)
class PrivacyPlan:
    """Noise and sampling for every round, calibrated once before round 1."""

    delta: float
    vae_noise: float
    vae_rate: float
    vae_steps: int  # per round
    gan_noise: float
    gan_rate: float
    gan_steps: int  # per round
    statistics_noise: float = 0.0  # the one release of DP statistics before round 1
    private: bool = True
    cooccurrence: bool = False  # whether the second-order release is planned (after the statistics)
    cooccurrence_noise: float = 0.0

    def statistics_events(self) -> list[DPEvent]:
        """The event the DP statistics release spends.

        Without DP the events carry noise 0, whose ε is ∞: data used without DP keeps no
        guarantee, and its ledger says so from then on.
        """
        return [statistics_event(self.statistics_noise if self.private else 0.0)]

    def cooccurrence_events(self) -> list[DPEvent]:
        """The event the second-order release spends (none when it is not planned; noise 0 without DP)."""
        if not self.cooccurrence:
            return []
        return [cooccurrence_event(self.cooccurrence_noise if self.private else 0.0)]

    def round_events(self) -> list[DPEvent]:
        """The events one round spends (noise 0, ε = ∞, when DP is off; no GAN event when the GAN is off)."""
        events = [DPEvent("vae", self.vae_noise, self.vae_rate, self.vae_steps)]
        if self.gan_steps > 0:
            events.append(DPEvent("gan", self.gan_noise, self.gan_rate, self.gan_steps))
        return events

    def run_events(self, statistics: bool, rounds: int, cooccurrence: bool | None = None) -> list[DPEvent]:
        """What a run still to do spends: the statistics release (if ``statistics``), the co-occurrence release
        (if ``cooccurrence``, by default with the statistics) and ``rounds`` rounds."""
        rounds_events = [
            DPEvent(e.model, e.noise_multiplier, e.sample_rate, e.steps * rounds) for e in self.round_events()
        ]
        second = self.cooccurrence_events() if (statistics if cooccurrence is None else cooccurrence) else []
        return (self.statistics_events() if statistics else []) + second + (rounds_events if rounds > 0 else [])


def plan_privacy(privacy: PrivacyConfig, num_users: int, local: LocalTrainingConfig, rounds: int) -> PrivacyPlan:
    """Calibrate σ for the statistics release and each model so that everything planned composes to ≤ the target.

    In round-mode fedsgd a round is one Mult-VAE step at ``local.fedsgd_rate`` (every silo's rate) and
    no GAN step; under secure aggregation each planned Gaussian event is then replaced, node by node,
    by a Skellam event of no more ε (:mod:`client.secure`).

    The statistics' σ is calibrated for ``statistics_share`` of a budget (less the co-occurrence
    release's ``cooccurrence_share`` of it, when that release is planned), the VAE's for
    ``vae_share`` of the rest and the GAN's for the remainder; that budget is then scaled
    (bisection) so that the RDP composition of the statistics release and every planned
    event of every round is as close to the target as possible without exceeding it.
    """
    batches = [("Mult-VAE", local.vae.batch_size)] + ([("GAN", local.gan.batch_size)] if local.train_gan else [])
    for name, batch in batches if local.fedsgd_rate == 0 else []:
        if batch > num_users:
            raise ConfigError(
                f"the {name} batch size {batch} is larger than this client's {num_users} users; "
                "lower the batch size or give the client more users."
            )
    delta = privacy.delta_for(num_users)
    vae_rate, gan_rate = sample_rate(num_users, local.vae.batch_size), sample_rate(num_users, local.gan.batch_size)
    vae_steps = local.local_epochs * steps_per_epoch(num_users, local.vae.batch_size)
    gan_steps = local.discriminator_steps if local.train_gan else 0
    if local.fedsgd_rate > 0:  # round-mode fedsgd: one step of the Mult-VAE per round, at the run's common rate
        vae_rate, vae_steps, gan_steps = local.fedsgd_rate, 1, 0
    second = privacy.cooccurrence_share > 0
    if not privacy.private:
        return PrivacyPlan(
            delta, 0.0, vae_rate, vae_steps, 0.0, gan_rate, gan_steps, private=False, cooccurrence=second
        )
    cooccurrence_share = privacy.statistics_share * privacy.cooccurrence_share
    statistics_share = privacy.statistics_share - cooccurrence_share
    vae_share = (1 - privacy.statistics_share) * (privacy.vae_share if gan_steps > 0 else 1.0)
    gan_share = 1 - privacy.statistics_share - vae_share

    def plan_at(scale: float) -> tuple[PrivacyPlan, float]:
        target = privacy.target_epsilon * scale
        plan = PrivacyPlan(
            delta,
            calibrate_noise(target * vae_share, delta, vae_rate, vae_steps * rounds),
            vae_rate,
            vae_steps,
            calibrate_noise(target * gan_share, delta, gan_rate, gan_steps * rounds) if gan_steps > 0 else 0.0,
            gan_rate,
            gan_steps,
            calibrate_noise(target * statistics_share, delta, 1.0, 1),
            cooccurrence=second,
            cooccurrence_noise=calibrate_noise(target * cooccurrence_share, delta, 1.0, 1) if second else 0.0,
        )
        return plan, epsilon(plan.run_events(True, rounds), delta, FAST_ORDERS)

    # Composition costs less than the sum of the parts: scale all shares up together until
    # the composed total meets the target (it can never exceed 1 / the largest share).
    low, high = 0.5, 1.0 / max(statistics_share, cooccurrence_share, vae_share, gan_share)
    best, total = plan_at(low)
    if total > privacy.target_epsilon:
        raise ConfigError(f"cannot calibrate noise for epsilon {privacy.target_epsilon:g}; check the settings.")
    for _ in range(8):
        middle = (low + high) / 2
        plan, total = plan_at(middle)
        if total <= privacy.target_epsilon:
            best, low = plan, middle
        else:
            high = middle
    return best


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
            if x.shape[0] == 0:  # an empty Poisson batch (probability (1-q)^n): nothing trained, nothing counted
                continue
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
    seed: int,
    device: torch.device | None = None,
) -> tuple[RoundResult, RoundResult]:
    """A client's round on ``bundle`` in place: the Mult-VAE, then the GAN (FedProx's term when ``local`` has μ > 0).

    ``device``: where to train (the bundle is moved there and back to the CPU afterwards); ``None``: where it is.
    """
    first_step, mu = (server_round - 1) * plan.vae_steps, local.proximal_mu
    home = next(bundle.vae.parameters()).device
    bundle.to(device or home)
    vae = train_vae_round(bundle.vae, data, plan, privacy, local.vae, first_step, seed, mu)
    gan = train_gan_round(bundle.generator, bundle.discriminator, data, plan, privacy, local.gan, seed, mu)
    bundle.to(home)
    return vae, gan
