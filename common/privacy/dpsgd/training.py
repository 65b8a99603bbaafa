"""DP-SGD with Opacus: private data loading over CSR rows, privacy settings, wrapping a model.

One record is one user's whole interaction vector (one CSR row), so every guarantee is
user-level. Sampling is Poisson (each user joins each step independently with rate q),
which is what the RDP accountant assumes; gradients are clipped per user in one backward
pass (:mod:`fedsynth.common.privacy.dpsgd.linear_clipping`, the book-keeping form of Opacus' ghost
clipping) and Opacus' optimizer adds Gaussian noise σ·C per step (drawn in parallel,
:mod:`fedsynth.common.privacy.dpsgd.noise`).
"""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
from torch.utils.data import DataLoader, Dataset

from fedsynth.common.errors import ConfigError
from fedsynth.common.federated.strategies import ProximalTerm
from fedsynth.common.privacy.accounting import DPEvent
from fedsynth.common.privacy.dpsgd.linear_clipping import LinearClipper
from fedsynth.common.runtime.seeding import seed_for


@dataclass(frozen=True)
class PrivacyConfig:
    """A client's privacy target and DP-SGD settings.

    ``delta=None`` uses 0.1 / n for a client with n users (always below 1/n). The budget is
    split explicitly: ``statistics_share`` of ε for the DP item counts and length histogram
    (:mod:`fedsynth.common.privacy.releases.statistics`, clipped per user to ``statistics_clip``), and of the
    rest, ``vae_share`` for the Mult-VAE and the remainder for the GAN's discriminator. Of the
    statistics' share, ``cooccurrence_share`` goes to the second-order release
    (:mod:`fedsynth.common.privacy.releases.cooccurrence`; 0: not released) and the rest to the first-order one.
    ``evaluation_share`` of ε is set aside first for up to ``evaluation_releases`` DP federated
    evaluations (one Gaussian release each); the shares above divide the rest.
    ``target_epsilon=inf`` turns DP off (no clipping, no noise) and is reported as non-private.
    """

    target_epsilon: float = 8.0
    delta: float | None = None
    max_grad_norm: float = 1.0
    vae_share: float = 0.5
    statistics_share: float = 0.8
    statistics_clip: float = 4.0
    cooccurrence_share: float = 0.0
    evaluation_share: float = 0.0  # of ε, for DP federated evaluation (:mod:`fedsynth.client.evaluation`)
    evaluation_releases: int = 0  # the evaluations (recommenders) that share it, at most, per run

    def __post_init__(self) -> None:
        if not self.target_epsilon > 0:
            raise ConfigError(f"--epsilon must be positive (or inf for no DP), got {self.target_epsilon}.")
        if self.delta is not None and not 0 < self.delta < 1:
            raise ConfigError(f"--delta must be in (0, 1), got {self.delta}.")
        if not self.max_grad_norm > 0:
            raise ConfigError(f"the clipping bound --max-grad-norm must be positive, got {self.max_grad_norm}.")
        if not 0 < self.vae_share < 1:
            raise ConfigError(f"--vae-share must be in (0, 1), got {self.vae_share}.")
        if not 0 < self.statistics_share < 1:
            raise ConfigError(f"--statistics-share must be in (0, 1), got {self.statistics_share}.")
        if not 0 <= self.cooccurrence_share < 1:
            raise ConfigError(f"--cooccurrence-share must be in [0, 1), got {self.cooccurrence_share}.")
        if not 0 <= self.evaluation_share < 1 or (self.evaluation_share > 0 and self.evaluation_releases < 1):
            raise ConfigError(
                f"--evaluation-share must be in [0, 1) and --evaluation-releases at least 1 when it is positive, got "
                f"{self.evaluation_share} and {self.evaluation_releases}."
            )
        if not self.statistics_clip > 0:
            raise ConfigError(f"--statistics-clip must be positive, got {self.statistics_clip}.")

    @property
    def private(self) -> bool:
        return bool(np.isfinite(self.target_epsilon))

    def delta_for(self, num_users: int) -> float:
        """δ for a client with ``num_users`` users; a configured δ ≥ 1/n is an error."""
        if self.delta is None:
            return 0.1 / num_users
        if self.delta >= 1.0 / num_users:
            raise ConfigError(
                f"--delta {self.delta:g} is not below 1/n = {1.0 / num_users:g} for a client with {num_users} users; "
                "a delta that large allows releasing a whole user's record. Use a smaller delta or omit it."
            )
        return self.delta


class CSRRows(Dataset[torch.Tensor]):
    """A CSR matrix as a torch Dataset of dense float32 rows (only a batch is densified at a time)."""

    def __init__(self, matrix: sp.csr_matrix):
        self.matrix = matrix.tocsr().astype(np.float32)

    def __len__(self) -> int:
        return int(self.matrix.shape[0])

    def __getitem__(self, index: int) -> torch.Tensor:
        return torch.from_numpy(self.matrix[index].toarray()[0])

    def __getitems__(self, indices: list[int]) -> list[torch.Tensor]:
        block = torch.from_numpy(self.matrix[indices].toarray())
        return list(block)


def steps_per_epoch(num_users: int, batch_size: int) -> int:
    """Opacus' Poisson loader runs ceil(n / B) steps per epoch at sample rate 1 / that."""
    return max(1, -(-num_users // batch_size))


def sample_rate(num_users: int, batch_size: int) -> float:
    return 1.0 / steps_per_epoch(num_users, batch_size)


def loader(rows: CSRRows, batch_size: int, seed: int) -> DataLoader[torch.Tensor]:
    """A plain shuffled loader; Opacus turns it into a Poisson-sampling loader at the same rate."""
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(rows, batch_size=batch_size, shuffle=True, generator=generator)


@dataclass
class LocalSGD:
    """A training loop's view of (DP-)SGD on one model.

    ``batches``: what to iterate (Poisson-sampled under DP); ``optimizer``: Opacus'
    noising optimizer under DP, the plain one otherwise. :meth:`backward` turns per-user
    losses (B,) into gradients: their mean's gradient without DP; under DP each user's
    gradient clipped to ``max_grad_norm`` and summed (:class:`LinearClipper`), to which the
    optimizer adds N(0, σ²C²) and divides by the expected batch size, as Opacus does.
    """

    batches: Iterable[torch.Tensor]
    optimizer: torch.optim.Optimizer
    clipper: LinearClipper | None = None
    accountant: Any = None  # Opacus' RDPAccountant; its history is what the ledger records
    proximal: ProximalTerm | None = None  # FedProx: its gradient is added after the DP noise (no data, no ε)

    def backward(self, per_user_losses: torch.Tensor) -> None:
        if self.clipper is None:
            per_user_losses.mean().backward()
        else:
            self.clipper.backward(per_user_losses)

    def step(self) -> None:
        if self.proximal is None:
            self.optimizer.step()
        elif self.clipper is None:
            self.proximal.add_gradient()
            self.optimizer.step()
        elif self.optimizer.pre_step():  # type: ignore[attr-defined]  # Opacus: noise, scale, count the step
            self.proximal.add_gradient()
            self.optimizer.original_optimizer.step()  # type: ignore[attr-defined]
        self.optimizer.zero_grad()

    def paused(self) -> AbstractContextManager[None]:
        """Forward passes inside are not recorded for clipping (a no-op without DP)."""
        return self.clipper.paused() if self.clipper is not None else nullcontext()

    def finish(self, model_name: str) -> list[DPEvent]:
        """Detach the clipping hooks and return the events Opacus' accountant counted (none without DP)."""
        if self.clipper is None:
            return []
        self.clipper.remove()
        close = getattr(self.optimizer, "close", None)
        if close is not None:
            close()
        return spent_events(self.accountant, model_name)


def make_private(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    data: DataLoader[torch.Tensor],
    noise_multiplier: float,
    max_grad_norm: float,
    seed: int,
    poisson_sampling: bool = True,
) -> LocalSGD:
    """DP-SGD from Opacus' parts: Poisson sampling, its noising optimizer and RDP accountant.

    Mirrors ``PrivacyEngine.make_private(grad_sample_mode="ghost")`` (same sample rate
    1 / len(data), expected batch size, noise std σ·C, accountant hook) with the per-user
    clipping done by :class:`LinearClipper` in one backward pass instead of ghost clipping's
    two, and the noise drawn in place on every core and summed inside the clipper's products
    (:mod:`fedsynth.common.privacy.dpsgd.noise`).
    ``poisson_sampling=False`` exists for tests only (fixed batches to compare with plain
    training); the accountant's guarantee assumes Poisson sampling. The model is validated
    by Opacus' ``ModuleValidator`` (no BatchNorm).
    """
    from opacus.accountants import RDPAccountant
    from opacus.data_loader import DPDataLoader
    from opacus.validators import ModuleValidator

    from fedsynth.common.privacy.dpsgd.noise import ParallelNoiseDPOptimizer

    ModuleValidator.validate(model, strict=True)
    sample_rate = 1 / len(data)
    expected_batch_size = int(len(data.dataset) * sample_rate)  # type: ignore[arg-type]
    if poisson_sampling:
        sampling = torch.Generator().manual_seed(seed_for(seed, "poisson-sampling"))
        data = DPDataLoader.from_data_loader(data, generator=sampling)
    noisy = ParallelNoiseDPOptimizer(
        optimizer,
        seed=seed_for(seed, "dp-noise"),
        noise_multiplier=noise_multiplier,
        max_grad_norm=max_grad_norm,
        expected_batch_size=expected_batch_size,
        loss_reduction="mean",
    )
    accountant = RDPAccountant()
    noisy.attach_step_hook(accountant.get_optimizer_hook_fn(sample_rate=sample_rate))
    return LocalSGD(data, noisy, LinearClipper(model, max_grad_norm, noisy.noise), accountant)


def local_sgd(
    private: bool,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    data: DataLoader[torch.Tensor],
    noise_multiplier: float,
    max_grad_norm: float,
    seed: int,
    proximal_mu: float = 0.0,
) -> LocalSGD:
    """:func:`make_private` when ``private``, otherwise plain SGD over ``data``; FedProx's term when μ > 0."""
    proximal = ProximalTerm.optional(model, proximal_mu)
    if not private:
        return LocalSGD(data, optimizer, proximal=proximal)
    sgd = make_private(model, optimizer, data, noise_multiplier, max_grad_norm, seed)
    sgd.proximal = proximal
    return sgd


def spent_events(accountant: Any, model_name: str) -> list[DPEvent]:
    """The steps Opacus' accountant counted, as ledger events for ``model_name``."""
    merged: dict[tuple[float, float], int] = {}
    for sigma, rate, steps in accountant.history:
        merged[(float(sigma), float(rate))] = merged.get((float(sigma), float(rate)), 0) + int(steps)
    return [DPEvent(model_name, sigma, rate, steps) for (sigma, rate), steps in merged.items()]
