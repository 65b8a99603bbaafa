"""The simple DP baselines under secure aggregation: the same releases as
:mod:`fedsynth.common.recommenders.dp_baselines`, summed by SecAgg with distributed Skellam noise,
so they are compared under the run's own aggregation.

Per release: each client's per-user contributions (clipped counts, or the upper triangle of the
clipped Gram matrix) are rounded per user (:class:`~fedsynth.common.secagg.skellam.SkellamQuantizer`);
each client k calibrates the central variance V_k its own (ε, δ_k) needs (no more ε than the
Gaussian baseline at the same target, both composed by RDP: a history holding Skellam events is
composed by RDP, :mod:`fedsynth.common.privacy.accounting`, so the Gaussian reference is calibrated under RDP
too); every client adds Sk(V/t), V = max_k V_k; the SecAgg
protocol runs in this process (:func:`~fedsynth.common.secagg.protocol.aggregate_in_process`) and the server
divides the unmasked integer sum by the scale. Simulation only, like the Gaussian baselines.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Iterator, Sequence

import numpy as np
import scipy.sparse as sp

from fedsynth.common.privacy.accounting import DPEvent, Event, calibrate_noise, epsilon
from fedsynth.common.privacy.releases.cooccurrence import from_upper
from fedsynth.common.recommenders.dp_baselines import BaselineRelease, DPBaselineConfig
from fedsynth.common.secagg.protocol import SecAggParams, aggregate_in_process, decode, encode
from fedsynth.common.secagg.skellam import (
    SkellamEvent,
    SkellamQuantizer,
    calibrate_variance,
    required_bits,
    skellam_noise,
)

USERS_PER_CHUNK = 2000  # Gram contributions are built this many users at a time (memory)


def count_contributions(rows: sp.csr_matrix, clip: float) -> Iterator[sp.csr_matrix]:
    """Each user's x·min(1, clip/‖x‖₂) (one CSR block of all users)."""
    binary = (rows > 0).astype(np.float64).tocsr()
    lengths = np.diff(binary.indptr)
    yield sp.csr_matrix(sp.diags(np.minimum(1.0, clip / np.sqrt(np.maximum(lengths, 1)))) @ binary)


def gram_contributions(rows: sp.csr_matrix, items: np.ndarray, clip: float) -> Iterator[sp.csr_matrix]:
    """Each user's upper triangle (diagonal included) of s²·x xᵀ over ``items``, s² = min(1, clip/‖x‖²).

    Flattened row-major over (i ≤ j): position i·M − i(i − 1)/2 + (j − i). Its L2 norm is ≤ the
    Frobenius norm s²‖x‖² ≤ clip. Yields CSR blocks of ``USERS_PER_CHUNK`` users, (users, M(M+1)/2).
    """
    size = len(items)
    binary = (rows[:, items] > 0).astype(np.float64).tocsr()
    for start in range(0, binary.shape[0], USERS_PER_CHUNK):
        block = binary[start : start + USERS_PER_CHUNK]
        data, columns, pointers = [], [], [0]
        for user in range(block.shape[0]):
            present = block.indices[block.indptr[user] : block.indptr[user + 1]]
            i, j = np.triu_indices(len(present))
            a, b = present[i], present[j]
            columns.append(a * size - a * (a - 1) // 2 + (b - a))
            data.append(np.full(len(a), min(1.0, clip / max(len(present), 1))))
            pointers.append(pointers[-1] + len(a))
        yield sp.csr_matrix(
            (np.concatenate(data), np.concatenate(columns), np.asarray(pointers)),
            shape=(block.shape[0], size * (size + 1) // 2),
        )


def secure_release(
    blocks: Sequence[Iterator[sp.csr_matrix]],
    quantizer: SkellamQuantizer,
    variance: float,
    threshold: int,
    label: str,
) -> tuple[np.ndarray, float]:
    """Σ over clients of (rounded contributions + Sk(variance/t)), summed by SecAgg; (real sum, its noise std)."""
    rng = np.random.default_rng(secrets.randbits(128))
    users, sums = 0, []
    for client_blocks in blocks:
        total = np.zeros(quantizer.dim, dtype=np.int64)
        for block in client_blocks:
            total += quantizer.user_sum(block, rng)
            users += block.shape[0]
        sums.append(total + skellam_noise(variance / threshold, quantizer.dim, rng))
    share = len(sums) * variance / threshold
    bits = required_bits(users * quantizer.l2, share, quantizer.dim)
    params = SecAggParams(label, threshold, bits, quantizer.dim)
    summed, _ = aggregate_in_process(params, {k: encode(v, bits) for k, v in enumerate(sums)})
    return decode(summed, bits) / quantizer.scale, math.sqrt(share) / quantizer.scale


def client_variances(
    quantizer: SkellamQuantizer, sigmas: Sequence[float], deltas: Sequence[float], model: str, releases: int,
    before: Sequence[Event] = (),
) -> list[float]:  # fmt: skip
    """Each client's central variance for this release: composed with the Skellam releases ``before`` it
    and the Gaussian ones still to come, it spends no more than the ``releases`` Gaussian releases at σ_k."""
    variances = []
    for sigma, delta in zip(sigmas, deltas, strict=True):
        after = [DPEvent(model, sigma, 1.0, releases - len(before) - 1)]
        allowed = epsilon([DPEvent(model, sigma, 1.0, releases)], delta, accountant="rdp")

        def fits(variance: float, after: list[DPEvent] = after, allowed: float = allowed,
                 delta: float = delta) -> bool:  # fmt: skip
            release = SkellamEvent(model, variance, quantizer.l2, quantizer.l1)
            return epsilon([*before, release, *after], delta, accountant="rdp") <= allowed

        variances.append(calibrate_variance(sigma, quantizer.l2, fits))
    return variances


def _events(model: str, quantizers: Sequence[SkellamQuantizer], variances: Sequence[float], share: float
            ) -> tuple[Event, ...]:  # fmt: skip
    return tuple(SkellamEvent(model, v * share, q.l2, q.l1) for q, v in zip(quantizers, variances, strict=True))


def secure_dp_popularity(
    clients: Sequence[sp.csr_matrix], target_epsilon: float, deltas: Sequence[float], clip: float, threshold: int
) -> BaselineRelease:
    """DP popularity at ``target_epsilon`` per client, summed by secure aggregation."""
    quantizer = SkellamQuantizer.for_clip(clip, clients[0].shape[1])
    sigmas = [calibrate_noise(target_epsilon, delta, 1.0, 1, "rdp") for delta in deltas]
    variance = max(client_variances(quantizer, sigmas, deltas, "dp-popularity", releases=1))
    total, noise_std = secure_release(
        [count_contributions(rows, clip) for rows in clients], quantizer, variance, threshold, "dp-popularity"
    )
    central = tuple(_events("dp-popularity", [quantizer], [variance], 1.0) for _ in clients)
    own = tuple(_events("dp-popularity", [quantizer], [variance], 1 / threshold) for _ in clients)
    return BaselineRelease(total, noise_std, central, tuple(deltas), own_noise_events_per_client=own)


def secure_dp_gram(
    clients: Sequence[sp.csr_matrix], target_epsilon: float, deltas: Sequence[float], config: DPBaselineConfig,
    threshold: int,
) -> tuple[BaselineRelease, np.ndarray | None]:  # fmt: skip
    """DP-EASE's releases under secure aggregation (the DP counts that pick the items, then the Gram)."""
    num_items = clients[0].shape[1]
    select = num_items > config.ease_items
    sigmas = [calibrate_noise(target_epsilon, delta, 1.0, 2 if select else 1, "rdp") for delta in deltas]
    counts, quantizers, variances = None, [], []
    items = np.arange(num_items)
    if select:
        count_quantizer = SkellamQuantizer.for_clip(config.popularity_clip, num_items)
        variance = max(client_variances(count_quantizer, sigmas, deltas, "dp-ease", releases=2))
        counts, _ = secure_release([count_contributions(r, config.popularity_clip) for r in clients],
                                   count_quantizer, variance, threshold, "dp-ease-counts")  # fmt: skip
        items = np.sort(np.argsort(-counts, kind="stable")[: config.ease_items])
        quantizers.append(count_quantizer)
        variances.append(variance)
    gram_quantizer = SkellamQuantizer.for_clip(config.ease_clip, len(items) * (len(items) + 1) // 2)
    before = _events("dp-ease", quantizers, variances, 1.0)
    gram_variance = max(client_variances(gram_quantizer, sigmas, deltas, "dp-ease", len(before) + 1, before))
    upper, noise_std = secure_release(
        [gram_contributions(rows, items, config.ease_clip) for rows in clients],
        gram_quantizer, gram_variance, threshold, "dp-ease-gram",
    )  # fmt: skip
    quantizers.append(gram_quantizer)
    variances.append(gram_variance)
    central = tuple(_events("dp-ease", quantizers, variances, 1.0) for _ in clients)
    own = tuple(_events("dp-ease", quantizers, variances, 1 / threshold) for _ in clients)
    gram = from_upper(upper, len(items))
    release = BaselineRelease(gram, noise_std, central, tuple(deltas), items, own_noise_events_per_client=own)
    return release, counts
