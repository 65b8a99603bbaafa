"""Robust aggregation against malicious silos (``robust-aggregation``), for model updates and DP releases.

Model updates (each silo's trained bundle ``w_k``, global ``w_g``, ``n_k`` users, ``K`` replies,
``f = robust-malicious`` silos assumed to cheat):

* ``none``: FedAvg, Σ n_k w_k / Σ n_k;
* ``norm-bound``: each update Δ_k = w_k − w_g is scaled to norm at most the median of the K
  update norms, then FedAvg: one silo can move the model no more than a typical one;
* ``median`` / ``trimmed-mean``: coordinate-wise median / mean after cutting the f largest and f
  smallest values (Yin et al. 2018), unweighted: Flower's FedMedian and FedTrimmedAvg rules;
* ``krum`` / ``multikrum``: the reply (the K − f replies) with the smallest sum of squared
  distances to its K − f − 2 nearest others, FedAvg-ed (Blanchard et al. 2017); Flower's
  ``select_multikrum``;
* ``bulyan`` (El Mhamdi et al. 2018): Multi-Krum picks θ = K − 2f, then each coordinate is the
  mean of the β = θ − 2f values closest to the coordinate-wise median; Flower's selection and
  ``aggregate_n_closest_weights``. Needs K ≥ 4f + 3.

DP releases (item counts and length histogram, co-occurrence): each silo's noisy vector v_k is
made a per-user rate r_k = v_k / n_k; ``norm-bound`` caps each coordinate of v_k at n_k (no user
adds more than 1 to a count: see :mod:`fedsynth.common.privacy.releases.statistics`). The other rules
bound what a silo *claims* beyond its own noise rather than replacing the sum: a centre m (the
trimmed mean of the rates for ``trimmed-mean``, their median for the others), and each silo's rate
clipped to m ± τ_k (:func:`claim_bound`: a few of the silo's own standard deviations, DP noise and
sampling, widened where the silos differ more than that), then summed: Σ_k n_k (m + clip(r_k − m)).
An honest silo is almost never clipped, so the total keeps the sum's noise (√Σσ_k², not the √(π/2)
larger noise of N · median, which cost the fit its co-occurrence signal); a lying or poisoned silo moves
a coordinate by at most n_k τ_k, about z of its noise std.

Privacy: every silo's vector is already DP on its own (local noise), so any function of the
vectors is post-processing and ε is unchanged. But each rule reads single silos' vectors, which
secure aggregation exists to hide: under secure aggregation only ``norm-bound`` of the model
updates is possible (:class:`fedsynth.server.secure_round.SecureNormBound`); the releases are summed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from flwr.app import Array, ArrayRecord, RecordDict
from flwr.serverapp.strategy.bulyan import aggregate_n_closest_weights
from flwr.serverapp.strategy.fedtrimmedavg import trim_mean
from flwr.serverapp.strategy.multikrum import select_multikrum
from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords

from fedsynth.common.errors import ConfigError
from fedsynth.common.federated import wire
from fedsynth.common.privacy.releases.statistics import NoisyStatistics

ROBUST_AGGREGATIONS = ("none", "norm-bound", "median", "trimmed-mean", "krum", "multikrum", "bulyan")


@dataclass(frozen=True)
class RobustConfig:
    """The rule, and f: how many silos it must withstand."""

    kind: str = "none"
    malicious: int = 1

    def __post_init__(self) -> None:
        if self.kind not in ROBUST_AGGREGATIONS:
            raise ConfigError(f"robust-aggregation {self.kind!r}: choose one of {', '.join(ROBUST_AGGREGATIONS)}.")
        if self.malicious < 0:
            raise ConfigError(f"robust-malicious must be 0 or more, got {self.malicious}.")

    @property
    def active(self) -> bool:
        return self.kind != "none"

    def minimum_silos(self) -> int:
        """The fewest replies the rule is defined for with f malicious silos."""
        f = self.malicious
        fewest = {"bulyan": 4 * f + 3, "krum": 2 * f + 3, "multikrum": 2 * f + 3}
        return fewest.get(self.kind, 2 * f + 1 if self.active else 1)

    def check_silos(self, silos: int, where: str) -> None:
        """Refuse ``silos`` replies (or clients) too few for the rule, naming what to change."""
        if silos < self.minimum_silos():
            raise ConfigError(
                f"robust-aggregation {self.kind} with robust-malicious {self.malicious} needs at least "
                f"{self.minimum_silos()} silos; {where} has {silos}: add clients or lower robust-malicious."
            )


def _flat(record: ArrayRecord) -> list[np.ndarray]:
    return [np.asarray(a, dtype=np.float64) for a in record.to_numpy_ndarrays()]


def _record(like: ArrayRecord, arrays: list[np.ndarray]) -> ArrayRecord:
    """An ArrayRecord with ``like``'s keys and dtypes holding ``arrays``."""
    originals = like.to_numpy_ndarrays()
    return ArrayRecord(
        {
            key: Array(np.asarray(value).astype(original.dtype))
            for key, value, original in zip(like.keys(), arrays, originals, strict=True)
        }
    )


def norm_bounded(contents: list[RecordDict], current: ArrayRecord) -> list[RecordDict]:
    """Each reply with its update w_k − w_g scaled to norm ≤ the median update norm (float arrays only)."""
    base = _flat(current)
    updates = [[w - g for w, g in zip(_flat(c.array_records[wire.ARRAYS]), base, strict=True)] for c in contents]
    norms = np.array([math.sqrt(sum(float(np.sum(d**2)) for d in update)) for update in updates])
    bound = float(np.median(norms))
    bounded = []
    for content, update, norm in zip(contents, updates, norms, strict=True):
        factor = min(1.0, bound / norm) if norm > 0 else 1.0
        arrays = _record(current, [g + factor * d for g, d in zip(base, update, strict=True)])
        bounded.append(RecordDict({wire.ARRAYS: arrays, wire.METRICS: content[wire.METRICS]}))
    return bounded


def trim_fraction(malicious: int, silos: int) -> float:
    """The cut fraction that makes Flower's ``trim_mean`` drop exactly f values at each end (int(cut · K) = f)."""
    return malicious / silos + 1e-9


def coordinate_wise(contents: list[RecordDict], rule: str, malicious: int) -> ArrayRecord:
    """Coordinate-wise ``median`` or ``trimmed-mean`` (cut f/K from each end) of the replies' arrays."""
    layers = zip(*(_flat(c.array_records[wire.ARRAYS]) for c in contents), strict=True)
    cut = trim_fraction(malicious, len(contents))
    merged = [np.median(np.stack(v), axis=0) if rule == "median" else trim_mean(np.stack(v), cut) for v in layers]
    return _record(contents[0].array_records[wire.ARRAYS], merged)


def bulyan(contents: list[RecordDict], malicious: int) -> ArrayRecord:
    """Bulyan: Multi-Krum selects θ = K − 2f, then per coordinate the mean of the θ − 2f closest to the median."""
    theta = len(contents) - 2 * malicious
    selected = [_flat(c.array_records[wire.ARRAYS]) for c in select_multikrum(contents, malicious, theta)]
    medians = [np.median(np.stack(layer), axis=0) for layer in zip(*selected, strict=True)]
    return _record(
        contents[0].array_records[wire.ARRAYS], aggregate_n_closest_weights(medians, selected, theta - 2 * malicious)
    )


def robust_arrays(contents: list[RecordDict], current: ArrayRecord, config: RobustConfig) -> ArrayRecord:
    """The new global arrays from the trained replies (``arrays`` and ``metrics`` with ``num-examples``)."""
    if config.active:
        config.check_silos(len(contents), "this round's replies")
    f, kind = config.malicious, config.kind
    if kind in ("median", "trimmed-mean"):
        return coordinate_wise(contents, kind, f)
    if kind == "bulyan":
        return bulyan(contents, f)
    if kind == "norm-bound":
        contents = norm_bounded(contents, current)
    elif kind in ("krum", "multikrum"):
        contents = select_multikrum(contents, f, 1 if kind == "krum" else len(contents) - f)
    return aggregate_arrayrecords(contents, wire.NUM_EXAMPLES)


def robust_total(
    vectors: list[np.ndarray], users: list[int], noise_stds: list[float], config: RobustConfig
) -> tuple[np.ndarray, float]:
    """The federation's total of silos' DP vectors, robustly if asked; and (approximately) its noise std."""
    stacked = np.stack([np.asarray(v, dtype=np.float64) for v in vectors])
    n = np.asarray(users, dtype=np.float64).reshape((-1,) + (1,) * (stacked.ndim - 1))
    if config.kind == "none":
        return stacked.sum(axis=0), float(np.sqrt(np.sum(np.square(noise_stds))))
    if config.kind == "norm-bound":
        return np.minimum(stacked, n).sum(axis=0), float(np.sqrt(np.sum(np.square(noise_stds))))
    config.check_silos(len(vectors), "this release")
    rates = stacked / n
    center = (
        trim_mean(rates, trim_fraction(config.malicious, len(vectors)))
        if config.kind == "trimmed-mean"
        else np.median(rates, axis=0)
    )
    kept = center + np.clip(rates - center, -(bound := claim_bound(rates, center, n, noise_stds)), bound)
    return (n * kept).sum(axis=0), float(np.sqrt(np.sum(np.square(noise_stds))))


CLAIM_Z = 4.0  # how many of its own standard deviations a silo's rate may stray from the centre


def claim_bound(rates: np.ndarray, center: np.ndarray, n: np.ndarray, noise_stds: list[float]) -> np.ndarray:
    """τ_kj: how far silo k's rate may stray from the centre at coordinate j before it is clipped.

    An honest silo's rate r_kj = c_kj / n_k differs from the federation's by its DP noise (σ_k / n_k) and by
    sampling (each user adds a value in [0, 1] to a coordinate, so a mean over n_k users has variance at most
    m(1 − m) / n_k, m the centre clipped to [0, 1]): its own standard deviation s_kj = √(σ_k²/n_k² + m(1 − m)/n_k
    + 1/n_k²), the last term one user's worth, so that s > 0 without noise (ε = ∞) and at m ∈ {0, 1}.
    Non-IID silos stray more, which the robust spread of the standardised deviations measures:
    h_j = 1.4826 · MAD_k((r_kj − m_j) / s_kj), about 1 when every silo is as noisy as its own s says.
    τ_kj = z · s_kj · max(1, h_j), z = CLAIM_Z: a silo with many users (small s) is held to its own scale."""
    m = np.clip(center, 0.0, 1.0)
    sigma = np.asarray(noise_stds, dtype=np.float64).reshape(n.shape) / n
    own = np.sqrt(np.square(sigma) + m * (1.0 - m) / n + 1.0 / np.square(n))  # + one user's worth: never 0
    standardised = (rates - center) / own
    spread = 1.4826 * np.median(np.abs(standardised - np.median(standardised, axis=0)), axis=0)
    return CLAIM_Z * own * np.maximum(1.0, spread)


def robust_statistics(parts: list[NoisyStatistics], users: list[int], config: RobustConfig) -> NoisyStatistics:
    """The federation's DP statistics from each silo's release (counts and length histogram by :func:`robust_total`)."""
    noise = [p.noise_std for p in parts]
    counts, noise_std = robust_total([p.item_counts for p in parts], users, noise, config)
    lengths, _ = robust_total([p.length_histogram for p in parts], users, noise, config)
    return NoisyStatistics(counts, lengths, noise_std)
