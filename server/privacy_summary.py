"""The privacy part of metrics.json: ε and δ per client, the threat models, the training stage, evaluations.

Pure functions of the run config and what the nodes reported (:class:`~fedsynth.server.federation.TrainingResult`,
the round logs, the evaluation's per-row summaries); the pipeline (:mod:`fedsynth.server.pipeline`) calls them.
"""

from __future__ import annotations

from typing import Any

from fedsynth.common.config.run import RunConfig
from fedsynth.common.federated.round_log import RoundLog
from fedsynth.common.secagg.signing import max_colluding
from fedsynth.server.federation import TrainingResult


def secure_aggregation_summary(config: RunConfig, logs: list[RoundLog] | None = None) -> dict[str, Any]:
    """Which vectors went through secure aggregation, and the threat model ``epsilon_max`` assumes: against
    an active server when every secure sum of the run (``logs``) ran in signed mode, with the most colluding
    nodes the thresholds tolerate (:func:`fedsynth.common.secagg.signing.max_colluding`)."""
    if not config.secure_aggregation:
        return {
            "enabled": False,
            "round_mode": config.round_mode,
            "threat_model": "the server sees each node's noisy release (local noise only)",
        }
    fedsgd = config.round_mode == "fedsgd"
    return {
        "enabled": True,
        "round_mode": config.round_mode,
        "protocol": (
            f"SecAgg+ ({config.secagg_neighbours} neighbours per node on a random ring)"
            if config.secagg_neighbours
            else "SecAgg (every node a neighbour of every other)"
        )
        + " with X25519 keys, ChaCha20 masks, Shamir dropout recovery; distributed Skellam noise",
        "applies_to": ["dp statistics release"]
        + (["dp co-occurrence release"] if config.marginal_items else [])
        + [
            "every training round (fedsgd: one Mult-VAE DP-SGD step of all silos' users)"
            if fedsgd
            else "every training round's model update (local: the server sees only the sum of the silos' "
            "updates, each carrying its silo's full DP-SGD noise, so the rounds' epsilon is the same both ways)"
        ][: 1 if config.num_server_rounds else 0]
        + ["dp baselines dp-popularity and dp-ease (simulated; dp-als adds each silo's whole noise instead)"],
        "not_applied_to": "federated evaluation (metric sums only)",
        "threshold": config.secagg_threshold or "majority of the admitted nodes",
        **active_server_summary(config, logs or []),
    }


def active_server_summary(config: RunConfig, logs: list[RoundLog]) -> dict[str, Any]:
    """The threat model of the run's secure sums: signed (every one) or honest-but-curious."""
    sums = [entry for entry in logs if entry.secagg_signed is not None]
    own = "; epsilon_max_own_noise: each secure sum protected by the node's own noise share alone"
    if not sums or not all(entry.secagg_signed for entry in sums):
        unsigned = "honest-but-curious server, fewer than threshold colluding nodes" + (
            " and fewer than a majority of any node's neighbourhood" if config.secagg_neighbours else ""
        )
        return {"signed": False, "threat_model": f"epsilon_max: {unsigned}" + own}
    colluding = min(max_colluding(e.secagg_threshold or 0, e.secagg_nodes or 0) for e in sums)
    return {
        "signed": True,
        "max_colluding_nodes": colluding,
        "threat_model": "epsilon_max: malicious (active) server colluding with at most "
        f"{colluding} node(s) (2t - n - 1 over the run's secure sums): SecAgg keys signed with the nodes' "
        "registered keys and a consistency round over the survivors; key substitution, replay and split "
        "views abort with nothing unmasked" + own,
    }


def privacy_summary(training: TrainingResult, config: RunConfig) -> dict[str, Any]:
    """ε and δ per client as the nodes reported them: every node that spent ε in this run is listed.

    ``epsilon`` is the node's cumulative spend on its data (its ledger: earlier runs included),
    ``epsilon_before_run`` what it had spent before this run, ``cap`` the lifetime cap the node
    set itself; ``missing_at_end`` marks nodes that spent ε but were not connected at the end.
    """
    summary, logs = training.summary, training.logs
    deltas: dict[str, float] = {}
    for entry in logs:
        deltas.update(entry.delta_by_node)
    per_client = summary["epsilon_by_client"]
    missing = {str(n) for n in summary.get("missing_at_end", [])}
    caps, before = summary.get("epsilon_cap_by_client", {}), summary.get("epsilon_before_run_by_client", {})
    reported = [*per_client.values(), *(entry.epsilon_max for entry in logs)]
    own_noise: dict[str, float] = {}
    for entry in logs:
        own_noise.update(entry.epsilon_own_noise_by_node)
    epsilon_max = max((e for e in reported if e is not None), default=None)
    return {
        "secure_aggregation": secure_aggregation_summary(config, logs),
        "noise_source": "derived from the run seed (reproducible-noise): DP does NOT hold against anyone who "
        "knows the run config, the server included"
        if config.reproducible_noise
        else "fresh OS entropy on each node, per release",
        "epsilon_max": epsilon_max,
        "epsilon_max_own_noise": max(
            [*own_noise.values(), *([epsilon_max] if epsilon_max is not None else [])], default=None
        ),
        "epsilon_per_client": [
            {
                "client": node,
                "epsilon": value,
                "epsilon_before_run": before.get(node, 0.0),
                "cap": caps.get(node),
                "missing_at_end": node in missing,
            }
            for node, value in per_client.items()
        ],
        "delta": max(deltas.values(), default=None),
        "delta_per_client": [{"client": node, "delta": value} for node, value in deltas.items()],
        "accountant": ACCOUNTANT_NOTE,
        "assumptions": PRIVACY_ASSUMPTIONS,
        "training_stage": training_stage(config),
    }


def training_stage(config: RunConfig) -> dict[str, Any]:
    """Whether the DP-SGD rounds ran and spent ε, and where their share went when they did not."""
    if config.num_server_rounds == 0:
        return {
            "rounds": 0,
            "statistics_share": 1.0,
            "note": "num-server-rounds 0: no DP-SGD rounds; the "
            "statistics releases got the models' share (the synthetic rows are the fitted generators)",
        }
    share = config.statistics_share
    return {
        "rounds": config.num_server_rounds,
        "statistics_share": share,
        "note": f"DP-SGD rounds planned with "
        f"{1 - share:.0%} of the budget left after evaluation (num-server-rounds 0 gives it to the releases)",
    }


ACCOUNTANT_NOTE = (
    "every release, both models of every round and every DP evaluation composed per client from its ledger's "
    "events: dp-accounting PLD for Gaussian histories, RDP where Skellam (secure aggregation) events are present"
)


PRIVACY_ASSUMPTIONS = {
    "unit": "one user of one silo with their whole history; (epsilon, delta)-DP per silo, add/remove adjacency",
    "public": "silo sizes n (num-examples, FedAvg weights, delta = 0.1/n), the item catalogue, the length-histogram "
    "bins, every run setting, each release's noise scale",
    "threat_model": "honest-but-curious server (epsilon_max); under secure aggregation fewer than secagg-threshold "
    "colluding nodes, else epsilon_max_own_noise; a server cannot reset, raise or weaken a deployed node's budget",
    "not_released": "training losses; exact evaluation sums and recommended items (deployed nodes)",
    "limits": "floating-point Gaussian sampling; silo sizes not protected; see docs/privacy.md",
}


def with_evaluation(privacy: dict[str, Any], evaluation: dict[str, Any], config: RunConfig) -> dict[str, Any]:
    """The privacy summary after federated evaluation: DP evaluations are charged, so each node's ε is its
    largest reported after them; ``evaluation`` says what the evaluation was and what it cost."""
    rows = [who for who in evaluation.values() if isinstance(who, dict) and "dp" in who]
    after: dict[str, float] = {}
    cost: dict[str, float] = {}  # ε of all this node's DP evaluations alone (its ledger's "evaluation" events)
    own = max((v for who in rows for v in who.get("epsilon_own_noise_by_client", {}).values()), default=0.0)
    for who in rows:
        for node, value in who.get("epsilon_by_client", {}).items():
            after[node] = max(after.get(node, 0.0), value)
        for node, value in who.get("epsilon_of_evaluations_by_client", {}).items():
            cost[node] = max(cost.get(node, 0.0), value)
    dp = any(who["dp"] for who in rows)
    evaluation["mode"] = (
        "dp: noisy sums charged to each node's ledger (evaluation-share of epsilon)"
        if dp
        else "exact: simulation measurement over the held-out users, NOT private (a deployed node refuses it)"
    )
    for entry in privacy["epsilon_per_client"]:
        entry["epsilon"] = max(entry["epsilon"], after.get(entry["client"], 0.0))
    totals = [e["epsilon"] for e in privacy["epsilon_per_client"] if e["epsilon"] is not None]
    if totals:
        privacy["epsilon_max"] = max([*totals, *([privacy["epsilon_max"]] if privacy["epsilon_max"] else [])])
        before = privacy.get("epsilon_max_own_noise") or 0.0
        privacy["epsilon_max_own_noise"] = max(before, own, privacy["epsilon_max"])  # evaluations: not secure-summed
    privacy["evaluation"] = {
        "dp": dp,
        "share": config.evaluation_share,
        "releases": config.evaluation_releases,
        "epsilon_of_evaluations_max": max(cost.values(), default=0.0),
    }
    return privacy
