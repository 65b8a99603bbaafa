"""The distributed Skellam mechanism (Agarwal, Kairouz, Liu, NeurIPS 2021) for sums under secure aggregation.

Under secure aggregation the server sees only the sum over silos, so each silo adds only a
share of the noise. In integers (secure aggregation works mod 2^b) that share is Skellam noise:
Sk(V) = Poisson(V/2) − Poisson(V/2) per coordinate, variance V, and a sum of independent
Skellams is Skellam with the variances added. Each node adds Sk(V / t), t the secure-aggregation
threshold (the fewest nodes whose inputs can be unmasked), so any sum that is unmasked carries
at least Sk(V), the central variance the accounting assumes: the printed ε is never more
optimistic than what the protocol gave (with all K nodes in the sum the noise is K/t times V).

**Quantization.** A user's real contribution u (‖u‖₂ ≤ C) is scaled by s and rounded *per user*,
randomly: r = ⌊s·u⌋ + Bernoulli(frac(s·u)) coordinatewise, redrawn until ‖r‖₂ ≤ Δ₂ (at most
``ROUNDING_TRIES`` times, then ⌊s·u⌋, whose norm is ≤ s·C ≤ Δ₂ for non-negative u). So adding or
removing one user moves the integer sum by a vector of L2 norm ≤ Δ₂ *deterministically*, and of
L1 norm ≤ Δ₁ = Δ₂·min(√D, Δ₂) (integers: |r_k| ≤ r_k²). Δ₂ is the authors' bound
(``rounded_l2_norm_bound``, Theorem 1 of arXiv:2102.06387):
    Δ₂ = min( sC + √D,  √((sC)² + D/4 + √(2 ln(1/β))·(sC + √D/2)) ),
i.e. quantization increases the sensitivity by the factor Δ₂/(sC) (reported; ≈ 1.001 here).

**Accounting** (Agarwal et al., Theorem 3.5, as ported from google-research/federated
``distributed_dp/accounting_utils._skellam_rdp``, written in the integer domain): for integer
order α > 1,
    ε(α) ≤ α Δ₂² / (2V) + min( ((2α − 1) Δ₂² + 6 Δ₁) / (4 V²),  3 Δ₁ / (2V) ).
Fractional orders interpolate between integers (see :func:`skellam_rdp`). The tests check the bound
against the exact Rényi divergence of Skellam PMFs (``scipy.stats.skellam``).

**Calibration.** fedsynth plans every release as a Gaussian mechanism of noise multiplier σ.
:func:`calibrate_variance` picks the smallest V ≥ (σΔ₂)² for which the node's whole plan, with
the Skellam release in place of the Gaussian one, composes to no more ε than the plan, so
secure aggregation never raises ε above what the node admitted (V is 0.1–4% above (σΔ₂)²:
the bound's correction terms and its interpolation at fractional orders).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import scipy.sparse as sp

from fedsynth.common.errors import ConfigError
from fedsynth.common.privacy.subsampling import poisson_subsampled_rdp

ROUNDING_BETA = 1e-6  # the authors' β: the chance one user's rounding exceeds Δ₂ on a draw
ROUNDING_TRIES = 20
SCALED_CLIP = 4096.0  # s·C: the integer grid is this fine relative to a user's contribution
WRAP_PROBABILITY = 2.0**-40  # the chance the noisy sum leaves [−2^(b−1), 2^(b−1)) anywhere


def rounded_l2_bound(scaled_clip: float, dim: int, beta: float = ROUNDING_BETA) -> float:
    """Δ₂: the L2 norm bound after conditional randomized rounding of a vector of norm ≤ ``scaled_clip``."""
    first = scaled_clip + math.sqrt(dim)
    second = math.sqrt(
        scaled_clip**2 + dim / 4 + math.sqrt(2 * math.log(1 / beta)) * (scaled_clip + math.sqrt(dim) / 2)
    )
    return min(first, second)


def rounded_l1_bound(l2: float, dim: int) -> float:
    """Δ₁ for integer vectors of L2 norm ≤ ``l2`` in ``dim`` coordinates."""
    return l2 * min(math.sqrt(dim), l2)


def skellam_rdp(order: float, variance: float, l2: float, l1: float, sample_rate: float = 1.0) -> float:
    """The RDP bound of one Skellam release (see the module docstring); integer sensitivities and variance.

    ``sample_rate`` < 1: the release is of a Poisson sample of the records (a FedSGD step), bounded by
    :func:`fedsynth.common.privacy.subsampling.poisson_subsampled_rdp` at integer orders.

    The theorems are for integer orders. Between integers a < α < a + 1 the bound interpolates
    (α − 1)·ε(α) linearly, which is valid because (α − 1)·D_α = log E_Q[(P/Q)^α] is convex in α
    (a cumulant generating function) for any pair of distributions, subsampled or not; below 2 it
    is the bound at 2 (D_α is non-decreasing in α).
    """
    return _rdp_cached(float(order), float(variance), float(l2), float(l1), float(sample_rate))


@lru_cache(maxsize=65536)
def _rdp_cached(order: float, variance: float, l2: float, l1: float, sample_rate: float) -> float:
    if order <= 1:
        raise ValueError(f"RDP orders are > 1, got {order}")

    def at(alpha: int) -> float:
        if sample_rate >= 1:
            return _integer_order_rdp(alpha, variance, l2, l1)
        full = _integer_order_rdp(alpha, variance, l2, l1)  # subsampling never costs more than no subsampling
        return min(full, poisson_subsampled_rdp(alpha, sample_rate, lambda j: _integer_order_rdp(j, variance, l2, l1)))

    if order == int(order) or order < 2:
        return at(max(2, math.ceil(order)))
    low = math.floor(order)
    weight = order - low
    scaled = (1 - weight) * (low - 1) * at(low) + weight * low * at(low + 1)
    return scaled / (order - 1)


def _integer_order_rdp(alpha: int, variance: float, l2: float, l1: float) -> float:
    correction = min(((2 * alpha - 1) * l2**2 + 6 * l1) / (4 * variance**2), 3 * l1 / (2 * variance))
    return alpha * l2**2 / (2 * variance) + correction


@dataclass(frozen=True)
class SkellamEvent:
    """``steps`` releases of a sum carrying Skellam noise of variance ``variance`` (integer domain).

    A ledger event like :class:`~fedsynth.common.privacy.accounting.DPEvent`: ``model`` names the release.
    ``sample_rate`` < 1: each release sums a Poisson sample of the records at that rate (a FedSGD
    step of DP-SGD under secure aggregation); 1 for one-off releases of every record.
    """

    model: str
    variance: float
    l2_sensitivity: float
    l1_sensitivity: float
    steps: int = 1
    sample_rate: float = 1.0

    def rdp(self, orders: Sequence[float]) -> np.ndarray:
        if self.variance <= 0:
            return np.full(len(orders), math.inf)
        values = [
            skellam_rdp(a, self.variance, self.l2_sensitivity, self.l1_sensitivity, self.sample_rate) for a in orders
        ]
        return self.steps * np.array(values)


@dataclass(frozen=True)
class SkellamQuantizer:
    """How real per-user contributions of L2 norm ≤ ``clip`` in ``dim`` coordinates become integers."""

    clip: float
    dim: int
    scale: float

    @classmethod
    def for_clip(cls, clip: float, dim: int) -> SkellamQuantizer:
        return cls(clip, dim, SCALED_CLIP / clip)

    @property
    def l2(self) -> float:
        return rounded_l2_bound(self.scale * self.clip, self.dim)

    @property
    def l1(self) -> float:
        return rounded_l1_bound(self.l2, self.dim)

    @property
    def inflation(self) -> float:
        """Δ₂ / (s·C): how much rounding raises the sensitivity."""
        return self.l2 / (self.scale * self.clip)

    def user_sum(self, users: sp.csr_matrix, rng: np.random.Generator) -> np.ndarray:
        """Σ over rows of the conditionally rounded s·row (int64, (dim,)); rows: non-negative, ‖row‖₂ ≤ clip."""
        users = sp.csr_matrix(users, dtype=np.float64)
        if users.shape[1] != self.dim:
            raise ValueError(f"contributions have {users.shape[1]} coordinates, the quantizer {self.dim}")
        if users.nnz and users.data.min() < 0:
            raise ValueError("conditional rounding here assumes non-negative contributions")
        scaled = users.data * self.scale
        floor = np.floor(scaled)
        rounded = floor.copy()
        pending = np.arange(users.shape[0])
        row_of = np.repeat(np.arange(users.shape[0]), np.diff(users.indptr))
        for _ in range(ROUNDING_TRIES):
            entries = np.isin(row_of, pending)
            draw = floor[entries] + (rng.random(int(entries.sum())) < scaled[entries] - floor[entries])
            rounded[entries] = draw
            norms = np.bincount(row_of, weights=rounded**2, minlength=users.shape[0])
            pending = pending[norms[pending] > self.l2**2]
            if pending.size == 0:
                break
        rounded[np.isin(row_of, pending)] = floor[np.isin(row_of, pending)]  # ‖⌊s·u⌋‖ ≤ s·C ≤ Δ₂
        return np.bincount(users.indices, weights=rounded, minlength=self.dim).astype(np.int64)


@dataclass(frozen=True)
class SumRoundingQuantizer(SkellamQuantizer):
    """Deterministic rounding of a node's real *sum* (signed, e.g. a clipped gradient sum): r = round(s · Σ u_i).

    Adding or removing one user moves the real sum by a vector δ with ‖δ‖₂ ≤ C, and each rounded
    coordinate by at most |s·δ_k| + 1, so the integer sum's sensitivity is deterministically
    Δ₂ = s·C + √D (the first term of the authors' bound) and Δ₁ = Δ₂·min(√D, Δ₂). Per-user rounding is
    not needed (nor possible: DP-SGD's one-pass clipping forms the clipped sum, never each user's
    gradient). s is chosen so that √D ≤ 1% of s·C (:meth:`for_sum`): the rounding inflation is ≤ 1.01.
    """

    @classmethod
    def for_sum(cls, clip: float, dim: int) -> SumRoundingQuantizer:
        return cls(clip, dim, max(SCALED_CLIP, 100 * math.sqrt(dim)) / clip)

    @property
    def l2(self) -> float:
        return self.scale * self.clip + math.sqrt(self.dim)

    def round_sum(self, values: np.ndarray) -> np.ndarray:
        """round(s · values) as int64, (dim,)."""
        if values.shape != (self.dim,):
            raise ValueError(f"the sum has shape {values.shape}, the quantizer ({self.dim},)")
        return np.rint(np.asarray(values, dtype=np.float64) * self.scale).astype(np.int64)


def calibrate_variance(noise_multiplier: float, l2: float, fits: Callable[[float], bool]) -> float:
    """The smallest variance V (to 0.01%) with ``fits(V)``, searched upward from the Gaussian's (σΔ₂)².

    ``fits(V)``: whether the node's whole plan, with this Skellam release in place of the
    Gaussian one it replaces, composes to no more ε than the plan (see ``fedsynth.client.secure``).
    """
    if noise_multiplier <= 0:
        raise ConfigError("secure aggregation with Skellam noise needs DP (a positive noise multiplier).")
    low = (noise_multiplier * l2) ** 2
    if fits(low):
        return low
    high = low * 1.01
    while not fits(high):
        low, high = high, high * 1.5
        if high > 1e12 * (noise_multiplier * l2) ** 2:  # more noise no longer helps: the rest of the plan is over
            raise ConfigError(
                "secure aggregation: no Skellam variance fits this release into the plan's epsilon "
                "(what else the ledger composes already spends it)."
            )
    while high - low > 1e-4 * high:
        middle = (low + high) / 2
        low, high = (low, middle) if fits(middle) else (middle, high)
    return high


def skellam_noise(variance: float, size: int, rng: np.random.Generator) -> np.ndarray:
    """Sk(variance) = Poisson(variance/2) − Poisson(variance/2), int64 of length ``size``."""
    half = variance / 2
    return rng.poisson(half, size).astype(np.int64) - rng.poisson(half, size).astype(np.int64)


def noise_tail(variance: float, dim: int, probability: float = WRAP_PROBABILITY) -> float:
    """τ with P(max_k |Sk(variance)_k| ≥ τ) ≤ ``probability`` over ``dim`` coordinates.

    Sk(V) is sub-gamma (variance V, scale 1/3: a difference of Poissons), so Bernstein gives
    P(|Z| ≥ τ) ≤ 2 exp(−τ² / (2(V + τ/3))); a union bound over the coordinates.
    """
    log_term = math.log(2 * dim / probability)
    return log_term / 3 + math.sqrt(log_term**2 / 9 + 2 * variance * log_term)


def required_bits(max_data_sum: float, variance: float, dim: int) -> int:
    """The fewest bits b so that |data sum| ≤ ``max_data_sum`` plus the noise stays in [−2^(b−1), 2^(b−1))."""
    return math.ceil(math.log2(max_data_sum + noise_tail(variance, dim) + 1)) + 1
