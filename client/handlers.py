"""The client's request handlers end to end: start check, statistics release, train round.

Only DP releases and public numbers leave: a reply holds the model bundle or a noisy release
(ArrayRecord) and a MetricRecord of the silo's size, ε spent and the public noise scale; a refusal
holds a MetricRecord and the reason. Training losses (functions of the private data, not DP)
never leave the node.

Every budget decision is the node's: :class:`fedsynth.client.budget.NodeBudget` opens the ledger with
the node's own cap, and a request that does not fit is refused with the reason, spending nothing.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
from flwr.app import ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from fedsynth.client.budget import NodeBudget, Replay, load_replay, save_replay
from fedsynth.client.secure import (
    first_order_instead,
    masked_release,
    masked_values,
    secure_release_of,
    start_secure_release,
    update_quantizer,
)
from fedsynth.client.training import RoundSeeds, train_local_round
from fedsynth.common.config.run import RunConfig
from fedsynth.common.errors import ConfigError, FedsynthError
from fedsynth.common.federated import wire
from fedsynth.common.models.bundle import ModelBundle
from fedsynth.common.privacy.ledger import PrivacyBudgetExceeded, PrivacyLedger, RunIdentity
from fedsynth.common.privacy.plan import EVALUATION, PrivacyPlan, plan_privacy
from fedsynth.common.privacy.releases.cooccurrence import COOCCURRENCE, check_items, noisy_cooccurrence, upper
from fedsynth.common.privacy.releases.statistics import STATISTICS, NoisyStatistics, noisy_statistics
from fedsynth.common.runtime.device import training_device
from fedsynth.common.runtime.seeding import mechanism_seed
from fedsynth.common.secagg.updates import UPDATE, encode_update

_PLAN = "privacy-plan"


def privacy_plan(
    state: RecordDict, config: RunConfig, num_users: int, planned_rounds: int, budget: NodeBudget | None = None
) -> PrivacyPlan:
    """The plan calibrated before round 1, kept in the node's ``context.state`` for later rounds.

    A deployed node's ``budget`` fixes δ to its ledger's (:meth:`NodeBudget.fixed_delta`).
    """
    if _PLAN in state:
        stored: Any = dict(state[_PLAN])
        stored["private"] = bool(stored["private"])
        stored["cooccurrence"] = bool(stored.get("cooccurrence", False))
        return PrivacyPlan(**stored)
    privacy, delta = config.privacy(), budget.fixed_delta(num_users) if budget is not None else None
    if delta is not None:
        privacy = replace(privacy, delta=delta)
    plan = plan_privacy(privacy, num_users, config.local(), planned_rounds)
    state[_PLAN] = ConfigRecord(dict(plan.__dict__))
    return plan


def run_identity(content: RecordDict, run_id: int) -> RunIdentity:
    """Who asks: Flower's run id (the node's own SuperLink says it) and what the server sent."""
    request = content[wire.CONFIG] if wire.CONFIG in content else ConfigRecord()
    return RunIdentity(run_id, str(request.get(wire.RUN_KEY, "")), str(request.get(wire.REQUESTER, "")))


def reproducible_from(config: RunConfig) -> int | None:
    """The run seed when the run asks for ``reproducible-noise`` (simulation only: a deployed node refuses
    it at admission, :func:`fedsynth.client.data.check_node_settings`), else None (fresh OS entropy)."""
    return config.seed if config.reproducible_noise else None


def release_seed(config: RunConfig, purpose: str) -> int:
    """The seed of a release's DP randomness (noise, Poisson sampling, rounding): fresh OS entropy.

    Anyone who knows the seed can regenerate the noise and subtract it, and the run config (which
    holds ``seed``) comes from the server; so the noise is never derived from it, unless the run
    asks for ``reproducible-noise`` (simulation studies only: DP then does not hold against whoever
    knows the run config, which metrics.json states). Each ``purpose`` is one mechanism.
    """
    return mechanism_seed(purpose, reproducible_from(config))


def refusal(reason: str, ledger: PrivacyLedger | None = None, delta: float = 0.0) -> RecordDict:
    """A refusal: the reason, and the ε already spent (0 when no ledger could be opened)."""
    spent = ledger.spent()["total"] if ledger is not None else 0.0
    own = ledger.spent_own_noise() if ledger is not None else 0.0
    metrics = MetricRecord(
        {wire.REFUSED: 1, wire.NUM_EXAMPLES: 0, wire.EPSILON: spent, wire.EPSILON_OWN_NOISE: own, wire.DELTA: delta}
    )
    return RecordDict({wire.METRICS: metrics, wire.CONFIG: ConfigRecord({wire.REASON: reason})})


def open_ledger(budget: NodeBudget, rows: sp.csr_matrix, plan: PrivacyPlan, config: RunConfig) -> PrivacyLedger:
    return budget.open(rows, plan.delta, config.privacy().target_epsilon)


def handle_query(
    content: RecordDict, rows: sp.csr_matrix, item_ids: list[str], config: RunConfig, state: RecordDict,
    budget: NodeBudget, run: RunIdentity,
) -> RecordDict:  # fmt: skip
    """The shared catalogue (public), this node's user count, and whether the run fits its budget.

    Nothing is spent here. The check composes the ledger's history with everything the run
    still plans (the statistics release unless already made, every round from the request's
    first round on, less those already charged to this run key, which would be replays, and the
    DP evaluations this run has not made yet).
    """
    request = content[wire.CONFIG] if wire.CONFIG in content else ConfigRecord()
    catalogue = ConfigRecord({wire.ITEM_IDS: item_ids})
    metrics: dict[str, int | float | list[int] | list[float]] = {
        wire.NUM_ITEMS: rows.shape[1],
        wire.NUM_EXAMPLES: rows.shape[0],
        wire.REFUSED: 0,
    }
    if wire.PLANNED_ROUNDS not in request:
        return RecordDict({wire.METRICS: MetricRecord(metrics), wire.CONFIG: catalogue})
    planned, first = int(request[wire.PLANNED_ROUNDS]), int(request.get(wire.FIRST_ROUND, 1))  # type: ignore[arg-type]
    ledger: PrivacyLedger | None = None
    try:
        plan = privacy_plan(state, config, rows.shape[0], planned, budget)
        ledger = open_ledger(budget, rows, plan, config)
        statistics = bool(request.get(wire.NEEDS_STATISTICS, 1)) and not ledger.release_charged(run.run_key)
        second = bool(request.get(wire.NEEDS_COOCCURRENCE, 1)) and not ledger.release_charged(run.run_key, COOCCURRENCE)
        rounds_left = set(range(first, planned + 1)) - ledger.charged_rounds(run.run_key)
        evaluated = ledger.times_charged(run.run_key, EVALUATION)
        to_spend = plan.run_events(statistics, len(rounds_left), second, max(0, plan.evaluation_releases - evaluated))
        ledger.check(to_spend, what=f"this run (it asks to spend epsilon {config.privacy().target_epsilon:g})")
    except FedsynthError as exc:
        return refusal(str(exc), ledger)
    metrics.update({wire.EPSILON: ledger.spent()["total"], wire.EPSILON_CAP: ledger.max_epsilon})
    return RecordDict({wire.METRICS: MetricRecord(metrics), wire.CONFIG: catalogue})


def handle_statistics(
    content: RecordDict, rows: sp.csr_matrix, config: RunConfig, state: RecordDict, budget: NodeBudget,
    run: RunIdentity,
) -> RecordDict:  # fmt: skip
    """Release this client's DP item counts and length histogram once, before round 1.

    The release is planned in the same calibration as the rounds (``statistics-share`` of ε),
    checked against the ledger and recorded in it, like a round.
    """
    planned_rounds = int(content[wire.CONFIG][wire.PLANNED_ROUNDS])  # type: ignore[arg-type]
    privacy = config.privacy()
    plan = privacy_plan(state, config, rows.shape[0], planned_rounds, budget)
    ledger: PrivacyLedger | None = None
    try:
        ledger = open_ledger(budget, rows, plan, config)
        check_release(ledger, plan, run, STATISTICS)
        if wire.SECAGG_LABEL in content[wire.CONFIG]:
            return secure_release_reply(content, rows, config, state, ledger, plan, run)
    except FedsynthError as exc:
        return refusal(str(exc), ledger, plan.delta)
    released = noisy_statistics(
        rows, privacy.statistics_clip, plan.statistics_noise, np.random.default_rng(release_seed(config, "statistics"))
    )
    ledger.record(plan.statistics_events(), STATISTICS, run, round=0, requested_epsilon=privacy.target_epsilon)
    return statistics_reply(released, ledger, rows.shape[0], plan)


def statistics_reply(released: NoisyStatistics, ledger: PrivacyLedger, users: int, plan: PrivacyPlan) -> RecordDict:
    """A plain first-order release's reply: the noisy counts and histogram, what was spent, the noise std."""
    arrays = ArrayRecord(
        {
            wire.ITEM_COUNTS: torch.from_numpy(released.item_counts),
            wire.LENGTH_HISTOGRAM: torch.from_numpy(released.length_histogram),
        }
    )
    metrics = {**spent_metrics(ledger, users, plan), wire.NOISE_STD: released.noise_std}
    return RecordDict({wire.ARRAYS: arrays, wire.METRICS: MetricRecord(metrics)})


def handle_cooccurrence(
    content: RecordDict, rows: sp.csr_matrix, config: RunConfig, state: RecordDict, budget: NodeBudget,
    run: RunIdentity,
) -> RecordDict:  # fmt: skip
    """Release this client's co-occurrence over the items the server chose (from the released counts), once.

    Planned with the statistics (``cooccurrence-share`` of their share), checked against the
    ledger and recorded in it; refused when the run planned no such release or already made it.
    When the server asks for the first order instead (``first-order-instead``: it predicted the
    co-occurrence to be below its noise), the same budget releases the statistics again, at the
    co-occurrence's noise multiplier: the same ledger event, the same ε.
    """
    request = content[wire.CONFIG]
    plan = privacy_plan(state, config, rows.shape[0], int(wire.number(request, wire.PLANNED_ROUNDS)), budget)
    ledger: PrivacyLedger | None = None
    try:
        ledger = open_ledger(budget, rows, plan, config)
        check_release(ledger, plan, run, COOCCURRENCE)
        items = (
            None
            if first_order_instead(request)
            else check_items(np.asarray(wire.integers(request, wire.MARGINAL_ITEMS)), rows.shape[1])
        )
        if wire.SECAGG_LABEL in request:
            return secure_release_reply(content, rows, config, state, ledger, plan, run)
    except (FedsynthError, TypeError) as exc:
        return refusal(str(exc), ledger, plan.delta)
    noise = plan.cooccurrence_noise if plan.private else 0.0
    rng = np.random.default_rng(release_seed(config, COOCCURRENCE))
    target = config.privacy().target_epsilon
    released = (
        noisy_statistics(rows, config.privacy().statistics_clip, noise, rng)
        if items is None
        else noisy_cooccurrence(rows, items, noise, rng)
    )
    ledger.record(plan.cooccurrence_events(), COOCCURRENCE, run, round=0, requested_epsilon=target)
    if isinstance(released, NoisyStatistics):
        return statistics_reply(released, ledger, rows.shape[0], plan)
    arrays = ArrayRecord({wire.COOCCURRENCE: torch.from_numpy(upper(released.matrix))})
    metrics = {**spent_metrics(ledger, rows.shape[0], plan), wire.NOISE_STD: released.noise_std}
    return RecordDict({wire.ARRAYS: arrays, wire.METRICS: MetricRecord(metrics)})


def check_release(ledger: PrivacyLedger, plan: PrivacyPlan, run: RunIdentity, release: str) -> None:
    """Refuse a one-off release (``statistics`` or ``cooccurrence``) the run did not plan, made twice for one
    run, or one that does not fit the node's cap."""
    if release == COOCCURRENCE and not plan.cooccurrence:
        raise ConfigError("this run planned no co-occurrence release (marginal-items = 0); nothing released")
    if ledger.release_charged(run.run_key, release):
        raise PrivacyBudgetExceeded(f"this run's DP {release} were already released (and charged) once")
    events = plan.statistics_events() if release == STATISTICS else plan.cooccurrence_events()
    ledger.check(events, what=f"the DP {release} release")


def check_step(
    ledger: PrivacyLedger, plan: PrivacyPlan, run: RunIdentity, server_round: int, config: RunConfig
) -> None:
    """Refuse a FedSGD step of a run not in that mode, one already charged (a masked step cannot be
    replayed: its keys are gone) or one that does not fit the node's cap."""
    if config.round_mode != "fedsgd":
        raise ConfigError("this run is not in round-mode fedsgd; no FedSGD step released")
    if server_round in ledger.charged_rounds(run.run_key):
        raise PrivacyBudgetExceeded(f"FedSGD step {server_round} of this run was already charged once")
    ledger.check(plan.round_events(), what=f"FedSGD step {server_round}")


def handle_fedsgd(
    content: RecordDict, rows: sp.csr_matrix, config: RunConfig, state: RecordDict, budget: NodeBudget,
    run: RunIdentity,
) -> RecordDict:  # fmt: skip
    """The masked stage of a FedSGD step (:mod:`fedsynth.common.privacy.dpsgd.fedsgd`).

    This node's Poisson sample's clipped gradient sum at the global weights, rounded, with its
    Skellam share, masked; charged as round N."""
    request = content.config_records[wire.CONFIG]
    plan = privacy_plan(state, config, rows.shape[0], int(wire.number(request, wire.PLANNED_ROUNDS)), budget)
    server_round = int(wire.number(request, wire.SERVER_ROUND))
    ledger: PrivacyLedger | None = None
    try:
        ledger = open_ledger(budget, rows, plan, config)
        check_step(ledger, plan, run, server_round, config)
        release = secure_release_of(request, plan, config, rows.shape[1], content)
        arrays, central, own, variance = masked_release(content, rows, release, state)
    except (FedsynthError, TypeError) as exc:
        return refusal(str(exc), ledger, plan.delta)
    target = config.privacy().target_epsilon
    ledger.record(central, "round", run, own_noise=own, round=server_round, requested_epsilon=target,
                  secure_aggregation=True, mode="fedsgd")  # fmt: skip
    metrics = {**spent_metrics(ledger, rows.shape[0], plan), wire.NOISE_VARIANCE: variance}
    return RecordDict({wire.ARRAYS: arrays, wire.METRICS: MetricRecord(metrics)})


def secure_release_reply(
    content: RecordDict, rows: sp.csr_matrix, config: RunConfig, state: RecordDict, ledger: PrivacyLedger,
    plan: PrivacyPlan, run: RunIdentity,
) -> RecordDict:  # fmt: skip
    """A release under secure aggregation (:mod:`fedsynth.client.secure`): masked, charged both ways."""
    release = secure_release_of(content.config_records[wire.CONFIG], plan, config, rows.shape[1])
    arrays, central, own, variance = masked_release(content, rows, release, state)
    target = config.privacy().target_epsilon
    ledger.record(central, release.name, run, own_noise=own, round=0, requested_epsilon=target, secure_aggregation=True)
    metrics = {**spent_metrics(ledger, rows.shape[0], plan), wire.NOISE_VARIANCE: variance}
    return RecordDict({wire.ARRAYS: arrays, wire.METRICS: MetricRecord(metrics)})


def handle_secagg_keys(
    content: RecordDict, rows: sp.csr_matrix, config: RunConfig, state: RecordDict, budget: NodeBudget,
    run: RunIdentity, node: int,
) -> RecordDict:  # fmt: skip
    """Stage 1 of a secure release: fresh keys and this node's noise share, if the release fits its budget."""
    request = content.config_records[wire.CONFIG]
    plan = privacy_plan(state, config, rows.shape[0], int(wire.number(request, wire.PLANNED_ROUNDS)), budget)
    ledger: PrivacyLedger | None = None
    try:
        ledger = open_ledger(budget, rows, plan, config)
        release = secure_release_of(request, plan, config, rows.shape[1])
        if release.name == UPDATE:
            round_replay(ledger, plan, run, int(wire.number(request, wire.SERVER_ROUND)))
        elif release.repeated:
            check_step(ledger, plan, run, int(wire.number(request, wire.SERVER_ROUND)), config)
        else:
            check_release(ledger, plan, run, release.name)
        public_keys, variance = start_secure_release(request, node, ledger, release, plan, state, run)
    except (FedsynthError, TypeError) as exc:
        return refusal(str(exc), ledger, plan.delta)
    metrics = {**spent_metrics(ledger, rows.shape[0], plan), wire.NOISE_VARIANCE: variance}
    return RecordDict({wire.METRICS: MetricRecord(metrics), wire.CONFIG: public_keys})


def spent_metrics(
    ledger: PrivacyLedger, num_users: int, plan: PrivacyPlan
) -> dict[str, int | float | list[int] | list[float]]:
    """Users, cumulative ε per release/model and in total, and δ: what a reply says about privacy."""
    spent = ledger.spent()
    return {
        wire.NUM_EXAMPLES: num_users,
        wire.REFUSED: 0,
        wire.EPSILON: spent["total"],
        wire.EPSILON_VAE: spent.get("vae", 0.0),
        wire.EPSILON_GAN: spent.get("gan", 0.0),
        wire.EPSILON_STATISTICS: spent.get(STATISTICS, 0.0),
        wire.EPSILON_COOCCURRENCE: spent.get(COOCCURRENCE, 0.0),
        wire.EPSILON_OWN_NOISE: ledger.spent_own_noise(),
        wire.DELTA: plan.delta,
    }


def handle_train(
    content: RecordDict, rows: sp.csr_matrix, config: RunConfig, state: RecordDict, budget: NodeBudget,
    run: RunIdentity,
) -> RecordDict:  # fmt: skip
    """Train one round on ``rows`` (this client's users) from the global bundle in ``content``.

    A round already charged to this run is answered with its saved reply (no new ε) or refused.
    """
    request = content[wire.CONFIG]
    server_round = int(request[wire.SERVER_ROUND])  # type: ignore[arg-type]
    plan = privacy_plan(state, config, rows.shape[0], int(request[wire.PLANNED_ROUNDS]), budget)  # type: ignore[arg-type]
    ledger: PrivacyLedger | None = None
    try:
        ledger = open_ledger(budget, rows, plan, config)
        replay = round_replay(ledger, plan, run, server_round)
    except FedsynthError as exc:
        return refusal(str(exc), ledger, plan.delta)
    if replay is not None:
        metrics = {**spent_metrics(ledger, rows.shape[0], plan), wire.REPLAYED: 1}
        return RecordDict({wire.ARRAYS: ArrayRecord(replay.arrays), wire.METRICS: MetricRecord(metrics)})
    trained, losses, spent = train_round(content, rows, config, plan, server_round)
    save_replay(ledger, run, Replay(server_round, trained, losses))  # first: a crash after it loses nothing
    ledger.record(spent, "round", run, round=server_round, requested_epsilon=config.privacy().target_epsilon)
    # the losses stay here: means of unclipped per-user losses, not DP (kept in the replay file on this node)
    metrics = spent_metrics(ledger, rows.shape[0], plan)
    return RecordDict({wire.ARRAYS: ArrayRecord(trained), wire.METRICS: MetricRecord(metrics)})


def round_replay(ledger: PrivacyLedger, plan: PrivacyPlan, run: RunIdentity, server_round: int) -> Replay | None:
    """A round already charged to this run: its saved reply (sent again, no new ε; refused if lost). A new
    round: None, once it is checked to fit the node's cap."""
    if server_round in ledger.charged_rounds(run.run_key):
        replay = load_replay(ledger, run, server_round)
        if replay is None:
            raise PrivacyBudgetExceeded(f"round {server_round} of this run was already charged; its reply is lost")
        return replay
    ledger.check(plan.round_events(), what=f"round {server_round}")
    return None


def train_round(
    content: RecordDict, rows: sp.csr_matrix, config: RunConfig, plan: PrivacyPlan, server_round: int
) -> tuple[dict[str, torch.Tensor], dict[str, float], list[Any]]:
    """Local DP-SGD epochs from the global bundle in ``content``: (the trained state, losses, ε events spent)."""
    local = config.local()
    bundle = ModelBundle.create(rows.shape[1], local, seed=config.seed)
    bundle.load_state_dict(content[wire.ARRAYS].to_torch_state_dict())  # type: ignore[union-attr]
    seeds = RoundSeeds.for_round(server_round, reproducible_from(config))  # one per mechanism
    device = training_device(config.device)
    vae, gan = train_local_round(bundle, rows, plan, config.privacy(), local, server_round, seeds, device)
    # Opacus counts the private steps it ran; without DP the plan's noise-free events (ε = ∞) are recorded.
    spent = vae.events + gan.events if plan.private else plan.round_events()
    return bundle.state_dict(), {**vae.losses, **gan.losses}, spent


def handle_secure_update(
    content: RecordDict, rows: sp.csr_matrix, config: RunConfig, state: RecordDict, budget: NodeBudget,
    run: RunIdentity,
) -> RecordDict:  # fmt: skip
    """The masked stage of a secure local round (:mod:`fedsynth.common.secagg.updates`): train as :func:`handle_train`
    does, then send only the users-weighted update, fixed-point and masked; charged as round N.

    No loss leaves (a function of the private data); the ε events are Opacus' own, the same under both
    threat models. A round already charged sends its saved result again, masked afresh (no new ε).
    """
    request = content.config_records[wire.CONFIG]
    server_round = int(wire.number(request, wire.SERVER_ROUND))
    plan = privacy_plan(state, config, rows.shape[0], int(wire.number(request, wire.PLANNED_ROUNDS)), budget)
    ledger: PrivacyLedger | None = None
    try:
        ledger = open_ledger(budget, rows, plan, config)
        if config.round_mode != "local":
            raise ConfigError("this run is in round-mode fedsgd; a local round's update is not sent")
        quantizer = update_quantizer(config, rows.shape[1])
        replay = round_replay(ledger, plan, run, server_round)
        start = content.array_records[wire.ARRAYS].to_torch_state_dict()
        trained, losses, spent = (replay.arrays, replay.losses, []) if replay else train_round(
            content, rows, config, plan, server_round
        )  # fmt: skip
        arrays = masked_values(request, encode_update(trained, start, rows.shape[0], quantizer), state)
    except (FedsynthError, TypeError, KeyError) as exc:
        return refusal(str(exc), ledger, plan.delta)
    if replay is None:
        save_replay(ledger, run, Replay(server_round, trained, losses))
        ledger.record(spent, "round", run, round=server_round, requested_epsilon=config.privacy().target_epsilon,
                      secure_aggregation=True, mode="local")  # fmt: skip
    metrics = {**spent_metrics(ledger, rows.shape[0], plan), **({wire.REPLAYED: 1} if replay else {})}
    return RecordDict({wire.ARRAYS: arrays, wire.METRICS: MetricRecord(metrics)})
