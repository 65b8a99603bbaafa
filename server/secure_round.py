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

from flwr.app import ArrayRecord
from flwr.serverapp import Grid

from fedsynth.common.config.run import RunConfig
from fedsynth.common.secagg.updates import UPDATE, UpdateQuantizer, apply_update, update_size
from fedsynth.server.aggregation import RoundOutcome
from fedsynth.server.round import RoundPlan
from fedsynth.server.secure_release import RoundSetups


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
    the server unmasks only the total and applies the survivors' FedAvg."""

    def __init__(self, grid: Grid, setups: RoundSetups) -> None:
        self.grid, self.setups = grid, setups

    def connected(self) -> set[int]:
        return set(self.grid.get_node_ids())

    def train(self, plan: RoundPlan) -> RoundOutcome:
        arrays, server_round = plan.request.arrays, plan.request.server_round
        total, _, round_log = self.setups.secure_sum(server_round, plan.sampled, arrays)
        updated = apply_update(arrays.to_torch_state_dict(), total, round_log.users) if round_log.users else None
        return RoundOutcome(ArrayRecord(updated) if updated is not None else None, round_log)
