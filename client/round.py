"""One train request handled end to end on a client: budget check, DP training, ledger, reply.

Only weights and aggregate metrics leave: the reply holds the model bundle (ArrayRecord)
and a MetricRecord of counts, losses and ε; a refusal holds a MetricRecord and the reason.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import scipy.sparse as sp
import torch
from flwr.app import ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from client.training import PrivacyPlan, plan_privacy, train_local_round
from common import keys
from common.bundle import ModelBundle
from common.federation import RunConfig
from common.privacy.ledger import PrivacyBudgetExceeded, PrivacyLedger, fingerprint
from common.privacy.statistics import STATISTICS, noisy_statistics
from common.seeding import rng_for

_PLAN = "privacy-plan"


def default_ledger_dir() -> Path:
    """``$FEDSYNTH_LEDGER_DIR`` or ``$XDG_STATE_HOME/fedsynth/ledgers``: never inside a run directory."""
    if os.environ.get("FEDSYNTH_LEDGER_DIR"):
        return Path(os.environ["FEDSYNTH_LEDGER_DIR"])
    return Path(os.environ.get("XDG_STATE_HOME", Path.home() / ".local" / "state")) / "fedsynth" / "ledgers"


def privacy_plan(state: RecordDict, config: RunConfig, num_users: int, planned_rounds: int) -> PrivacyPlan:
    """The plan calibrated before round 1, kept in the node's ``context.state`` for later rounds."""
    if _PLAN in state:
        stored: Any = dict(state[_PLAN])
        stored["private"] = bool(stored["private"])
        return PrivacyPlan(**stored)
    plan = plan_privacy(config.privacy(), num_users, config.local(), planned_rounds)
    state[_PLAN] = ConfigRecord(dict(plan.__dict__))
    return plan


def refusal(reason: str, spent: dict[str, float], delta: float) -> RecordDict:
    metrics = MetricRecord(
        {keys.REFUSED: 1, keys.NUM_EXAMPLES: 0, keys.EPSILON: spent.get("total", 0.0), keys.DELTA: delta}
    )
    return RecordDict({keys.METRICS: metrics, keys.CONFIG: ConfigRecord({keys.REASON: reason})})


def handle_statistics(
    content: RecordDict, rows: sp.csr_matrix, config: RunConfig, state: RecordDict, ledger_dir: Path
) -> RecordDict:
    """Release this client's DP item counts and length histogram once, before round 1.

    The release is planned in the same calibration as the rounds (``statistics-share`` of ε),
    checked against the ledger and recorded in it, like a round.
    """
    planned_rounds = int(content[keys.CONFIG][keys.PLANNED_ROUNDS])  # type: ignore[arg-type]
    privacy = config.privacy()
    plan = privacy_plan(state, config, rows.shape[0], planned_rounds)
    ledger = PrivacyLedger.open(ledger_dir, fingerprint(rows), plan.delta, privacy.target_epsilon)
    try:
        ledger.check(plan.statistics_events())
    except PrivacyBudgetExceeded as exc:
        return refusal(str(exc), ledger.spent(), plan.delta)
    released = noisy_statistics(
        rows, privacy.statistics_clip, plan.statistics_noise, rng_for(config.seed, f"statistics-{ledger.fingerprint}")
    )
    ledger.record(plan.statistics_events(), {"round": 0, "release": "statistics"})
    arrays = ArrayRecord(
        {
            keys.ITEM_COUNTS: torch.from_numpy(released.item_counts),
            keys.LENGTH_HISTOGRAM: torch.from_numpy(released.length_histogram),
        }
    )
    metrics = {**spent_metrics(ledger, rows.shape[0], plan), keys.NOISE_STD: released.noise_std}
    return RecordDict({keys.ARRAYS: arrays, keys.METRICS: MetricRecord(metrics)})


def spent_metrics(
    ledger: PrivacyLedger, num_users: int, plan: PrivacyPlan
) -> dict[str, int | float | list[int] | list[float]]:
    """Users, cumulative ε per release/model and in total, and δ: what a reply says about privacy."""
    spent = ledger.spent()
    return {
        keys.NUM_EXAMPLES: num_users,
        keys.REFUSED: 0,
        keys.EPSILON: spent["total"],
        keys.EPSILON_VAE: spent.get("vae", 0.0),
        keys.EPSILON_GAN: spent.get("gan", 0.0),
        keys.EPSILON_STATISTICS: spent.get(STATISTICS, 0.0),
        keys.DELTA: plan.delta,
    }


def handle_train(
    content: RecordDict, rows: sp.csr_matrix, config: RunConfig, state: RecordDict, ledger_dir: Path
) -> RecordDict:
    """Train one round on ``rows`` (this client's users) from the global bundle in ``content``."""
    request = content[keys.CONFIG]
    server_round = int(request[keys.SERVER_ROUND])  # type: ignore[arg-type]
    planned_rounds = int(request[keys.PLANNED_ROUNDS])  # type: ignore[arg-type]
    num_users = rows.shape[0]
    privacy = config.privacy()
    plan = privacy_plan(state, config, num_users, planned_rounds)
    ledger = PrivacyLedger.open(ledger_dir, fingerprint(rows), plan.delta, privacy.target_epsilon)
    try:
        ledger.check(plan.round_events())
    except PrivacyBudgetExceeded as exc:
        return refusal(str(exc), ledger.spent(), plan.delta)

    local = config.local()
    bundle = ModelBundle.create(rows.shape[1], local, seed=config.seed)
    bundle.load_state_dict(content[keys.ARRAYS].to_torch_state_dict())  # type: ignore[union-attr]
    seed = config.seed * 100_003 + server_round
    vae, gan = train_local_round(bundle, rows, plan, privacy, local, server_round, seed)
    # Opacus counts the private steps it ran; without DP the plan's noise-free events (ε = ∞) are recorded.
    ledger.record(vae.events + gan.events if plan.private else plan.round_events(), {"round": server_round})

    metrics = {**spent_metrics(ledger, num_users, plan), **vae.losses, **gan.losses}
    return RecordDict({keys.ARRAYS: ArrayRecord(bundle.state_dict()), keys.METRICS: MetricRecord(metrics)})
