"""The log of one release (the DP statistics, round 0) or one training round, as one typed record.

Written by :mod:`fedsynth.server.aggregation` (who answered, ε, losses) and :mod:`fedsynth.server.federation`
(sampling, timing), read by the admission checks, the privacy summary, the participation table
and the report's plots. On disk (``train.json``, each ``checkpoints/round-N.pt``) it is the flat
JSON object of :meth:`RoundLog.to_plain`, which :meth:`RoundLog.from_plain` reads back.

ε values are a node's **cumulative** spend (its ledger, earlier runs included) after the release,
never a per-round increment; ``epsilon_max`` over the nodes that reported one (answered or
refused), since a federation is only as private as its weakest node.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from fedsynth.common.federated.wire import LOSS_KEYS  # users-weighted mean losses; absent when the model did not train


@dataclass(frozen=True)
class NodeProblem:
    """A node that refused (with its reported cumulative ε) or failed (``epsilon`` None) in a release."""

    node: int
    reason: str
    epsilon: float | None = None

    def to_plain(self) -> dict[str, Any]:
        plain: dict[str, Any] = {"node": self.node, "reason": self.reason}
        return plain if self.epsilon is None else {**plain, "epsilon": self.epsilon}


@dataclass
class RoundLog:
    """One release's outcome. ``round`` is 0 for the DP statistics release, N for training round N.

    ``trained``: the nodes that answered (trained, or released their statistics); ``replayed``: those
    among them that resent a saved reply of an already-charged round (a resumed run: no new ε);
    ``resumed``: a statistics release loaded from ``statistics.npz`` instead of queried (no ε logged).
    """

    round: int
    trained: list[int] = field(default_factory=list)
    refused: list[NodeProblem] = field(default_factory=list)
    failed: list[NodeProblem] = field(default_factory=list)
    epsilon_by_node: dict[str, float] = field(default_factory=dict)
    # ε per node counting only each node's own noise in secure sums (= epsilon_by_node without SecAgg)
    epsilon_own_noise_by_node: dict[str, float] = field(default_factory=dict)
    delta_by_node: dict[str, float] = field(default_factory=dict)
    replayed: list[int] = field(default_factory=list)
    losses: dict[str, float] = field(default_factory=dict)
    users: int | None = None
    sampled: list[int] | None = None
    missing_from_sample: list[int] | None = None
    seconds: float | None = None
    resumed: bool = False
    # a secure sum: whether it ran in signed mode (against an active server), its threshold t and key list size n
    secagg_signed: bool | None = None
    secagg_threshold: int | None = None
    secagg_nodes: int | None = None
    # a secure round: each node's reported ‖w_k − w_g‖ (before any bound); why the server discarded the round
    update_norm_by_node: dict[str, float] = field(default_factory=dict)
    rejected: str | None = None

    @property
    def reported_epsilons(self) -> list[float]:
        """Every cumulative ε a node reported in this release (answered, then refused)."""
        return [*self.epsilon_by_node.values(), *(p.epsilon for p in self.refused if p.epsilon is not None)]

    @property
    def epsilon_max(self) -> float | None:
        return max(self.reported_epsilons, default=None)

    @property
    def epsilon_min(self) -> float | None:
        return min(self.reported_epsilons, default=None)

    def latest_epsilon_by_node(self) -> dict[str, float]:
        """Cumulative ε per node id (str) as reported here, answered or refused."""
        refused = {str(p.node): p.epsilon for p in self.refused if p.epsilon is not None}
        return {**self.epsilon_by_node, **refused}

    def to_plain(self) -> dict[str, Any]:
        """The flat JSON object of train.json (losses as top-level keys, ε max/min included)."""
        plain: dict[str, Any] = {
            "round": self.round,
            "trained": list(self.trained),
            "refused": [p.to_plain() for p in self.refused],
            "failed": [p.to_plain() for p in self.failed],
            "epsilon_max": self.epsilon_max,
            "epsilon_min": self.epsilon_min,
            "epsilon_by_node": dict(self.epsilon_by_node),
            "epsilon_own_noise_by_node": dict(self.epsilon_own_noise_by_node),
            "replayed": list(self.replayed),
            "delta_by_node": dict(self.delta_by_node),
            **self.losses,
        }
        optional: dict[str, Any] = {"users": self.users, "sampled": self.sampled, "seconds": self.seconds}
        optional["missing_from_sample"] = self.missing_from_sample
        optional.update(secagg_signed=self.secagg_signed, secagg_threshold=self.secagg_threshold)
        optional.update(secagg_nodes=self.secagg_nodes, rejected=self.rejected)
        if self.update_norm_by_node:
            plain["update_norm_by_node"] = dict(self.update_norm_by_node)
        plain.update({k: v for k, v in optional.items() if v is not None})
        return {**plain, "resumed": True} if self.resumed else plain

    @classmethod
    def from_plain(cls, plain: dict[str, Any]) -> RoundLog:
        """Read :meth:`to_plain`'s object back (ε max/min are recomputed from the per-node values)."""
        known = {f.name for f in fields(cls)} - {"refused", "failed", "losses"}
        values = {k: v for k, v in plain.items() if k in known}
        losses = {name: float(plain[name]) for name in LOSS_KEYS if name in plain}
        return cls(**values, refused=_problems(plain, "refused"), failed=_problems(plain, "failed"), losses=losses)


def _problems(plain: dict[str, Any], name: str) -> list[NodeProblem]:
    return [NodeProblem(int(p["node"]), str(p["reason"]), p.get("epsilon")) for p in plain.get(name, [])]
