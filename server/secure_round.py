"""A local round under secure aggregation: the server sees only the sum of the silos' model updates.

``round-mode = local`` with ``secure-aggregation = true``: the round is one secure sum
(:func:`fedsynth.server.secure_release.secure_sum`, action ``query.update``) whose masked stage carries the
global bundle; each sampled silo trains locally with DP-SGD, as in a plain round, and answers with
its users-weighted update in fixed point, masked. The server unmasks the sum and applies the
survivors' FedAvg (:mod:`fedsynth.common.secagg.updates` has the maths and the bit bound); a silo lost after
masking is unmasked from the others' shares and stays in the average, one lost before is left out.

What it does not change: each update carries the silo's own DP-SGD noise, so the rounds' ε is the
same under both threat models; and no loss leaves a silo, so the round log has none.
"""

from __future__ import annotations

import logging

import numpy as np
from flwr.app import ArrayRecord
from flwr.serverapp import Grid

from fedsynth.common.config.run import RunConfig
from fedsynth.common.federated import wire
from fedsynth.common.secagg.updates import UPDATE, UpdateQuantizer, apply_update, update_size
from fedsynth.server.aggregation import RoundOutcome
from fedsynth.server.round import RoundPlan
from fedsynth.server.secure_release import RoundSetups

log = logging.getLogger("flwr")


def update_setups(
    grid: Grid, config: RunConfig, arrays: ArrayRecord, identity: dict[str, str], per_round: bool = False
) -> RoundSetups:
    """The rounds' keys and shares, set up in batches (one round at a time when ``per_round`` or
    ``fraction-train`` < 1: each round then sums another sample of nodes)."""
    quantizer = UpdateQuantizer.for_bundle(update_size(arrays.to_torch_state_dict()))
    return RoundSetups(grid, config, UPDATE, quantizer, identity, per_round=per_round or config.fraction_train < 1)


class SecureRound:
    """A round wrapped in a secure sum: the same TrainRequest, carried by the sum's masked stage; each node
    answers with its users-weighted update, masked (:func:`fedsynth.client.handlers.handle_secure_update`), and
    the server unmasks only the total and applies the survivors' FedAvg; with ``robust-aggregation =
    norm-bound``, bounded as :class:`SecureNormBound` says."""

    def __init__(self, grid: Grid, setups: RoundSetups) -> None:
        self.grid, self.setups = grid, setups
        self.norm_bound = SecureNormBound() if setups.config.robust().kind == "norm-bound" else None

    def connected(self) -> set[int]:
        return set(self.grid.get_node_ids())

    def train(self, plan: RoundPlan) -> RoundOutcome:
        arrays, server_round = plan.request.arrays, plan.request.server_round
        bound = self.norm_bound.bound if self.norm_bound is not None else None
        extra: dict[str, wire.ConfigValue] = {wire.UPDATE_NORM_BOUND: bound} if bound is not None else {}
        total, _, round_log = self.setups.secure_sum(server_round, plan.sampled, arrays, extra)
        if not round_log.users:
            return RoundOutcome(None, round_log)
        if self.norm_bound is not None:
            round_log.rejected = self.norm_bound.check(total / round_log.users, round_log.update_norm_by_node)
            if round_log.rejected:
                log.warning("fedsynth round %d rejected: %s", server_round, round_log.rejected)
                return RoundOutcome(None, round_log)
        updated = apply_update(arrays.to_torch_state_dict(), total, round_log.users)
        return RoundOutcome(ArrayRecord(updated), round_log)


class SecureNormBound:
    """``norm-bound`` under secure aggregation, where the server never sees one silo's update.

    Round r's request carries a bound B_r; an honest node scales its update Δ_k = w_k − w_g to ‖Δ_k‖ ≤ B_r
    and reports ‖Δ_k‖ before the bound (public: post-processing of its DP-SGD output). The users-weighted
    mean of updates that each obey the bound obeys it too (‖Σ n_k Δ_k / N‖ ≤ max_k ‖Δ_k‖), so the server
    discards a round whose unmasked mean exceeds B_r: some silo sent more than the bound. B_{r+1} is the
    median of round r's reported norms (the plain rule's bound: a typical silo's update; a minority of
    silos cannot move a median far by lying). Round 1 has no bound yet: its mean is checked against the
    largest reported norm, capped at 3 medians.

    What it defends: an update attack can move the global model by at most about B (a typical honest
    update) in any direction, or have its round discarded. What it does not: a cheat within the bound
    (DP-SGD noise hides it), a cheat that lies about its norm within a minority, and the DP releases
    (summed as they are under secure aggregation: a cheat's counts are bounded by nothing but the noise).
    """

    TOLERANCE = 1e-6  # relative: the fixed-point rounding of the sum (≤ 2^-25 per entry)
    ROUND_ONE_CAP = 3.0  # round 1's limit: the largest reported norm, at most this many medians

    def __init__(self) -> None:
        self.bound: float | None = None

    def check(self, mean_update: np.ndarray, reported: dict[str, float]) -> str | None:
        """Why the round's mean update (D,) is discarded, or None; sets the next round's bound.

        Only finite, non-negative reports count. Round 1 (no bound sent yet): the honest users-weighted mean
        is at most the largest honest norm, so the limit is the largest report, capped at ROUND_ONE_CAP
        times their median (a liar's report cannot raise it further)."""
        norms = np.array([v for v in reported.values() if np.isfinite(v) and v >= 0], dtype=np.float64)
        if not norms.size:
            return "no silo reported a valid update norm; the round is discarded"
        median = float(np.median(norms))
        limit = self.bound if self.bound is not None else min(float(norms.max()), self.ROUND_ONE_CAP * median)
        self.bound = median
        norm = float(np.linalg.norm(mean_update))
        if norm > limit * (1 + self.TOLERANCE) + self.TOLERANCE:
            return (f"the secure sum's mean update has norm {norm:.4g}, above the bound {limit:.4g} that every "
                    "honest silo's update obeys: a silo sent more; the round is discarded")  # fmt: skip
        return None
