"""RDP of a Poisson-subsampled mechanism from its RDP at integer orders (Zhu & Wang, ICML 2019).

A mechanism M with RDP ε(l) at every integer order l ≥ 2 (add/remove adjacency), run on a
subset that holds each record independently with probability q, satisfies at integer α ≥ 2
(Theorem 6 of "Poisson Subsampled Rényi Differential Privacy", the general upper bound, valid
for *any* M):

    ε_q(α) ≤ 1/(α−1) · log( (1−q)^(α−1) (αq − q + 1)
                           + C(α,2) q² (1−q)^(α−2) e^{ε(2)}
                           + 3 Σ_{l=3..α} C(α,l) q^l (1−q)^(α−l) e^{(l−1) ε(l)} ).

Ported from google-research/federated ``distributed_dp/accounting_utils._compute_rdp_subsampled``
(``upper_bound=True``), evaluated with log-sum-exp. fedsynth uses it for FedSGD steps under
secure aggregation (:class:`fedsynth.common.secagg.skellam.SkellamEvent` with ``sample_rate < 1``), where
the Skellam mechanism has no tight subsampled analysis like the Gaussian's. For the Gaussian the
bound is looser than Opacus' exact one; tests compare both and check the Skellam bound against the
exact Rényi divergence of the subsampled Skellam mixture.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
from scipy import special


def poisson_subsampled_rdp(order: int, rate: float, rdp_at: Callable[[int], float]) -> float:
    """ε_q(order) from ``rdp_at(l)``, the mechanism's RDP at integer orders l (see the module docstring)."""
    if order != int(order) or order < 2:
        raise ValueError(f"the subsampling bound is for integer orders >= 2, got {order}")
    if not 0 < rate <= 1:
        raise ValueError(f"the sampling rate must be in (0, 1], got {rate}")
    alpha = int(order)
    if rate == 1:
        return rdp_at(alpha)
    log_q, log_1q = math.log(rate), math.log1p(-rate)
    terms = [(alpha - 1) * log_1q + math.log(alpha * rate - rate + 1)]
    terms.append(math.log(special.comb(alpha, 2)) + 2 * log_q + (alpha - 2) * log_1q + rdp_at(2))
    for j in range(3, alpha + 1):  # the paper's l
        log_comb = special.gammaln(alpha + 1) - special.gammaln(j + 1) - special.gammaln(alpha - j + 1)
        terms.append(math.log(3) + (j - 1) * rdp_at(j) + log_comb + (alpha - j) * log_1q + j * log_q)
    return float(special.logsumexp(np.array(terms))) / (alpha - 1)
