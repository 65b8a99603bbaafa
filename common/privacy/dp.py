"""DP-SGD with Opacus: private data loading over CSR rows, privacy settings, wrapping a model.

One record is one user's whole interaction vector (one CSR row), so every guarantee is
user-level. Sampling is Poisson (each user joins each step independently with rate q),
which is what the RDP accountant assumes; gradients are clipped per user with ghost
clipping (``grad_sample_mode="ghost"``) and Gaussian noise σ·C is added per step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
from torch.utils.data import DataLoader, Dataset

from common.errors import ConfigError
from common.privacy.accounting import DPEvent


@dataclass(frozen=True)
class PrivacyConfig:
    """A client's privacy target and DP-SGD settings.

    ``delta=None`` uses 0.1 / n for a client with n users (always below 1/n). The budget is
    split explicitly: ``statistics_share`` of ε for the DP item counts and length histogram
    (:mod:`common.privacy.statistics`, clipped per user to ``statistics_clip``), and of the
    rest, ``vae_share`` for the Mult-VAE and the remainder for the GAN's discriminator.
    ``target_epsilon=inf`` turns DP off (no clipping, no noise) and is reported as non-private.
    """

    target_epsilon: float = 8.0
    delta: float | None = None
    max_grad_norm: float = 1.0
    vae_share: float = 0.5
    statistics_share: float = 0.5
    statistics_clip: float = 4.0

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


def make_private(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    criterion: Any,
    data: DataLoader[torch.Tensor],
    noise_multiplier: float,
    max_grad_norm: float,
    seed: int,
    poisson_sampling: bool = True,
) -> tuple[Any, Any, Any, Any, Any]:
    """Wrap for DP-SGD (ghost clipping, Poisson sampling, RDP accountant).

    ``poisson_sampling=False`` exists for tests only (fixed batches to compare with plain
    training); the accountant's guarantee assumes Poisson sampling.
    Returns ``(engine, model, optimizer, criterion, loader)``; ``engine.accountant.history``
    holds the (σ, q, steps) Opacus counted as the optimizer really stepped: the ledger
    records exactly that.
    """
    from opacus import PrivacyEngine

    engine = PrivacyEngine(accountant="rdp")
    noise_generator = torch.Generator().manual_seed(seed + 7919)
    model, optimizer, criterion, data = engine.make_private(
        module=model,
        optimizer=optimizer,
        criterion=criterion,
        data_loader=data,
        noise_multiplier=noise_multiplier,
        max_grad_norm=max_grad_norm,
        poisson_sampling=poisson_sampling,
        grad_sample_mode="ghost",
        noise_generator=noise_generator,
    )
    return engine, model, optimizer, criterion, data


def maybe_private(
    private: bool,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    criterion: Any,
    data: DataLoader[torch.Tensor],
    noise_multiplier: float,
    max_grad_norm: float,
    seed: int,
) -> tuple[Any, Any, Any, Any, Any]:
    """:func:`make_private` when ``private``; otherwise the inputs unchanged with no engine (``None``)."""
    if not private:
        return None, model, optimizer, criterion, data
    return make_private(model, optimizer, criterion, data, noise_multiplier, max_grad_norm, seed)


def finish(engine: Any, trained: Any, model_name: str) -> list[DPEvent]:
    """Detach Opacus' hooks from a wrapped model and return the events it counted (none without DP)."""
    if engine is None:
        return []
    trained.remove_hooks()
    return spent_events(engine, model_name)


def spent_events(engine: Any, model_name: str) -> list[DPEvent]:
    """The steps Opacus' accountant counted, as ledger events for ``model_name``."""
    merged: dict[tuple[float, float], int] = {}
    for sigma, rate, steps in engine.accountant.history:
        merged[(float(sigma), float(rate))] = merged.get((float(sigma), float(rate)), 0) + int(steps)
    return [DPEvent(model_name, sigma, rate, steps) for (sigma, rate), steps in merged.items()]
