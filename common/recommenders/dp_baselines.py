"""The simple DP baselines fedsynth is compared with: DP popularity and DP-EASE, federated.

A practitioner without fedsynth would spend the whole (ε, δ) of each client on one of these
instead; so each is computed **at the run's full target ε on its own**, as an alternative,
not as a share of the synthetic pipeline's budget.

* **DP popularity**: each client sums its users' item vectors, each L2-clipped to ``clip``,
  and adds N(0, σ²·clip²) to every item; the server sums the clients' noisy counts.
  One Gaussian release per client (sensitivity ``clip``).
* **DP-EASE**: each client sums its users' item Gram matrices x xᵀ over the first
  ``max_items`` items of the ranking (see below), each user scaled by
  s = min(1, √clip / ‖x‖₂) so that ‖s²·x xᵀ‖_F = s²‖x‖² ≤ clip, and adds *symmetric*
  Gaussian noise (upper triangle with the diagonal drawn once, N(0, σ²·clip²), mirrored).
  The upper triangle of one user's contribution has L2 norm ≤ its Frobenius norm ≤ clip, so
  this is a Gaussian mechanism with sensitivity ``clip``. When the catalogue has more than
  ``max_items`` items, the items are first ranked by a DP popularity release of the same
  client at the same σ (a second Gaussian release: σ is calibrated for the two composed).
  The server sums the noisy Gram matrices and fits EASE with λ = ``l2`` + 2·(noise std of
  the sum)·√M, the spectral norm of an M × M symmetric Gaussian noise matrix (so the
  regularised matrix stays positive definite and the noise is shrunk, without any tuning on
  private data). Items outside the M are ranked after them by the DP counts.

Memory limit: the server holds a dense M × M float64 matrix (M = 4,000: 128 MB; 10,000:
800 MB) and each client sends M(M + 1)/2 numbers, so ``max_items`` is capped at 10,000.

The noise multiplier of each client is calibrated with the same accountant as the pipeline
(dp-accounting's PLD, :mod:`fedsynth.common.privacy.accounting`), for that client's own δ (< 1/n);
:class:`BaselineRelease` records it so the spend can be checked independently (``epsilon_per_client``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from fedsynth.common.errors import ConfigError
from fedsynth.common.privacy.accounting import DPEvent, Event, calibrate_noise, epsilon
from fedsynth.common.privacy.releases.clipped_sums import clipped_gram, noisy_clipped_counts, symmetric_noise
from fedsynth.common.runtime.seeding import rng_for

MAX_DP_EASE_ITEMS = 10_000


@dataclass(frozen=True)
class DPBaselineConfig:
    """Clipping bounds and DP-EASE's item limit and base regularisation."""

    popularity_clip: float = 4.0
    ease_clip: float = 1.0
    ease_items: int = 500
    ease_l2: float = 300.0

    def __post_init__(self) -> None:
        if self.popularity_clip <= 0 or self.ease_clip <= 0:
            raise ConfigError("the DP baselines' clipping bounds must be positive.")
        if not 2 <= self.ease_items <= MAX_DP_EASE_ITEMS:
            raise ConfigError(
                f"dp-ease-items must be in [2, {MAX_DP_EASE_ITEMS:,}] (a dense items × items matrix), "
                f"got {self.ease_items}."
            )
        if self.ease_l2 <= 0:
            raise ConfigError(f"dp-ease-l2 must be positive, got {self.ease_l2}.")


@dataclass(frozen=True)
class BaselineRelease:
    """A summed noisy release, the noise std of the sum, and each client's (σ, events, δ)."""

    value: np.ndarray
    noise_std: float
    events_per_client: tuple[tuple[Event, ...], ...]
    delta_per_client: tuple[float, ...]
    items: np.ndarray | None = None  # DP-EASE: the M item indices of the Gram matrix
    # secure aggregation: the same releases with only the client's own noise share (None: = events)
    own_noise_events_per_client: tuple[tuple[Event, ...], ...] | None = None

    def epsilon_per_client(self) -> list[float]:
        """Each client's ε for its δ, from its recorded events (PLD; RDP for the Skellam events under SecAgg)."""
        return [epsilon(list(e), d) for e, d in zip(self.events_per_client, self.delta_per_client, strict=True)]

    def epsilon_own_noise_per_client(self) -> list[float]:
        """Each client's ε if its secure sums were seen with only its own noise (= ε without SecAgg)."""
        events = self.own_noise_events_per_client or self.events_per_client
        return [epsilon(list(e), d) for e, d in zip(events, self.delta_per_client, strict=True)]


def dp_popularity(
    clients: Sequence[sp.csr_matrix], target_epsilon: float, deltas: Sequence[float], clip: float, seed: int
) -> BaselineRelease:
    """Summed noisy item counts of ``clients`` (binary CSRs of their training users), each at ``target_epsilon``."""
    sigmas = [calibrate_noise(target_epsilon, delta, 1.0, 1) for delta in deltas]
    total = noisy_clipped_counts(clients, sigmas, clip, seed, "dp-popularity")
    noise_std = float(np.sqrt(sum((sigma * clip) ** 2 for sigma in sigmas)))
    events = tuple((DPEvent("dp-popularity", sigma, 1.0, 1),) for sigma in sigmas)
    return BaselineRelease(total, noise_std, events, tuple(deltas))


def dp_gram(
    clients: Sequence[sp.csr_matrix],
    target_epsilon: float,
    deltas: Sequence[float],
    config: DPBaselineConfig,
    seed: int,
) -> tuple[BaselineRelease, np.ndarray | None]:
    """DP-EASE's releases: the summed noisy Gram matrix over the chosen items, and the DP counts that chose them.

    Returns (Gram release with ``items`` set, summed noisy counts or None when the catalogue
    has at most ``config.ease_items`` items and no selection was needed).
    """
    num_items = clients[0].shape[1]
    select = num_items > config.ease_items
    releases = 2 if select else 1
    sigmas = [calibrate_noise(target_epsilon, delta, 1.0, releases) for delta in deltas]
    counts = None
    if select:
        counts = noisy_clipped_counts(clients, sigmas, config.popularity_clip, seed, "dp-ease-counts")
        items = np.sort(np.argsort(-counts, kind="stable")[: config.ease_items])
    else:
        items = np.arange(num_items)
    gram = np.zeros((len(items), len(items)))
    variance = 0.0
    for index, (rows, sigma) in enumerate(zip(clients, sigmas, strict=True)):
        std = sigma * config.ease_clip
        noise = symmetric_noise(len(items), std, rng_for(seed, f"dp-ease-gram-{index}"))
        gram += clipped_gram(rows, items, config.ease_clip) + noise
        variance += std**2
    events = tuple(
        (DPEvent("dp-ease", sigma, 1.0, releases),) for sigma in sigmas
    )  # counts (if any) and Gram at the same σ
    return BaselineRelease(gram, float(np.sqrt(variance)), events, tuple(deltas), items), counts
