"""Federated evaluation on a client: score a recommender the server sent on this node's held-out users.

The request carries one packed recommender (:mod:`common.recommenders.transfer`) and the
cut-offs; the reply carries only metric sums and counts (and which items were recommended
at all, for catalogue coverage), never a user's interactions or rankings.
"""

from __future__ import annotations

from flwr.app import MetricRecord, RecordDict

from common import keys
from common.config import EvalConfig
from common.data.split import HeldOutUsers
from common.evaluation import accumulate
from common.recommenders.transfer import unpack


def handle_evaluate(content: RecordDict, held_out: HeldOutUsers) -> RecordDict:
    """Metric sums of the sent recommender over ``held_out`` (fold-in → target)."""
    request = content[keys.CONFIG]
    ks = tuple(int(k) for k in request["ks"])  # type: ignore[union-attr]
    settings = {k[len(keys.SETTING_PREFIX) :]: v for k, v in request.items() if k.startswith(keys.SETTING_PREFIX)}
    recommender = unpack(
        str(request["kind"]),
        content[keys.ARRAYS].to_torch_state_dict(),  # type: ignore[union-attr]
        settings,  # type: ignore[arg-type]
    )
    targets = tuple(int(i) for i in request.get(keys.TARGETS, []))  # type: ignore[union-attr]
    metrics = accumulate(recommender, held_out, EvalConfig(ks=ks, targets=targets))
    return RecordDict({keys.METRICS: MetricRecord(metrics.to_numbers())})  # type: ignore[arg-type]
