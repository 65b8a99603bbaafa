"""The client's request handlers end to end: start check, statistics release, train round.

Only DP releases and public numbers leave: a reply holds the model bundle or a noisy release
(ArrayRecord) and a MetricRecord of the silo's size, ε spent and the public noise scale; a refusal
holds a MetricRecord and the reason. Training losses (functions of the private data, not DP)
never leave the node.

Every budget decision is the node's: :class:`fedsynth.client.budget.NodeBudget` opens the ledger with
the node's own cap, and a request that does not fit is refused with the reason, spending nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any

import numpy as np
import scipy.sparse as sp
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from fedsynth.client.attack import MaliciousSilo, tampered_update
from fedsynth.client.budget import NodeBudget
from fedsynth.client.round import RoundAnswer, answer_round, reproducible_from, round_replay
from fedsynth.client.secure import (
    first_order_instead,
    masked_release,
    masked_vector,
    secure_release_of,
    start_secure_release,
    update_quantizer,
)
from fedsynth.common.config.run import RunConfig
from fedsynth.common.errors import ConfigError, FedsynthError
from fedsynth.common.federated import wire
from fedsynth.common.federated.protocol import (
    AdmissionQuery,
    AdmissionReply,
    CooccurrenceReply,
    MaskedReply,
    ProtocolError,
    Refusal,
    Spent,
    StatisticsReply,
    TrainReply,
    TrainRequest,
    planned_rounds,
)
from fedsynth.common.privacy.ledger import PrivacyBudgetExceeded, PrivacyLedger, RunIdentity
from fedsynth.common.privacy.plan import EVALUATION, PrivacyPlan, plan_privacy
from fedsynth.common.privacy.releases.cooccurrence import COOCCURRENCE, check_items, noisy_cooccurrence, upper
from fedsynth.common.privacy.releases.statistics import STATISTICS, NoisyStatistics, noisy_statistics
from fedsynth.common.runtime.seeding import mechanism_seed
from fedsynth.common.secagg.signing import Signing
from fedsynth.common.secagg.updates import UPDATE, bounded_update, encode_update, update_norm

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
    return Refusal(reason, spent, own, delta).to_record()


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
    reply = AdmissionReply(item_ids, num_items=rows.shape[1], num_examples=rows.shape[0])
    ledger: PrivacyLedger | None = None
    try:
        query = AdmissionQuery.from_record(content)
        if query.planned_rounds is None:
            return reply.to_record()
        planned = query.planned_rounds
        plan = privacy_plan(state, config, rows.shape[0], planned, budget)
        ledger = open_ledger(budget, rows, plan, config)
        statistics = query.needs_statistics and not ledger.release_charged(run.run_key)
        second = query.needs_cooccurrence and not ledger.release_charged(run.run_key, COOCCURRENCE)
        rounds_left = set(range(query.first_round, planned + 1)) - ledger.charged_rounds(run.run_key)
        evaluated = ledger.times_charged(run.run_key, EVALUATION)
        to_spend = plan.run_events(statistics, len(rounds_left), second, max(0, plan.evaluation_releases - evaluated))
        ledger.check(to_spend, what=f"this run (it asks to spend epsilon {config.privacy().target_epsilon:g})")
    except FedsynthError as exc:
        return refusal(str(exc), ledger)
    return replace(reply, epsilon=ledger.spent()["total"], epsilon_cap=ledger.max_epsilon).to_record()


Release = Callable[
    [RecordDict, sp.csr_matrix, RunConfig, RecordDict, PrivacyLedger, PrivacyPlan, RunIdentity], RecordDict
]
"""What leaves the node for a checked one-off release: (content, rows, config, state, ledger, plan, run) →
reply, the event recorded in ``ledger``. The plain releases below, or :func:`secure_release_reply`, which
the ClientApp wraps around a request that names a secure aggregation (client/app.py), as it wraps
:func:`handle_train` with ``masked_update``: the handlers never look."""


def handle_statistics(
    content: RecordDict, rows: sp.csr_matrix, config: RunConfig, state: RecordDict, budget: NodeBudget,
    run: RunIdentity, release: Release | None = None,
) -> RecordDict:  # fmt: skip
    """Release this client's DP item counts and length histogram once, before round 1.

    The release is planned in the same calibration as the rounds (``statistics-share`` of ε),
    checked against the ledger and recorded in it, like a round. ``release``: what leaves the node
    once the request is checked (:data:`Release`; :func:`plain_statistics` by default).
    """
    plan = privacy_plan(state, config, rows.shape[0], planned_rounds(content, "statistics request"), budget)
    ledger: PrivacyLedger | None = None
    try:
        ledger = open_ledger(budget, rows, plan, config)
        check_release(ledger, plan, run, STATISTICS)
        return (release or plain_statistics)(content, rows, config, state, ledger, plan, run)
    except FedsynthError as exc:
        return refusal(str(exc), ledger, plan.delta)


def plain_statistics(
    content: RecordDict, rows: sp.csr_matrix, config: RunConfig, state: RecordDict, ledger: PrivacyLedger,
    plan: PrivacyPlan, run: RunIdentity,
) -> RecordDict:  # fmt: skip
    """This node's noisy counts and length histogram (σ of the plan), recorded, as the reply."""
    privacy = config.privacy()
    released = noisy_statistics(
        rows, privacy.statistics_clip, plan.statistics_noise, np.random.default_rng(release_seed(config, "statistics"))
    )
    ledger.record(plan.statistics_events(), STATISTICS, run, round=0, requested_epsilon=privacy.target_epsilon)
    return statistics_reply(released, ledger, rows.shape[0], plan)


def statistics_reply(released: NoisyStatistics, ledger: PrivacyLedger, users: int, plan: PrivacyPlan) -> RecordDict:
    """A plain first-order release's reply: the noisy counts and histogram, what was spent, the noise std."""
    spent = spent_of(ledger, users, plan)
    return StatisticsReply(released.item_counts, released.length_histogram, released.noise_std, spent).to_record()


def handle_cooccurrence(
    content: RecordDict, rows: sp.csr_matrix, config: RunConfig, state: RecordDict, budget: NodeBudget,
    run: RunIdentity, release: Release | None = None,
) -> RecordDict:  # fmt: skip
    """Release this client's co-occurrence over the items the server chose (from the released counts), once.

    Planned with the statistics (``cooccurrence-share`` of their share), checked against the
    ledger and recorded in it; refused when the run planned no such release or already made it.
    When the server asks for the first order instead (``first-order-instead``: it predicted the
    co-occurrence to be below its noise), the same budget releases the statistics again, at the
    co-occurrence's noise multiplier: the same ledger event, the same ε. ``release``: what leaves the
    node once the request is checked (:data:`Release`; :func:`plain_cooccurrence` by default).
    """
    plan = privacy_plan(state, config, rows.shape[0], planned_rounds(content, "co-occurrence request"), budget)
    ledger: PrivacyLedger | None = None
    try:
        ledger = open_ledger(budget, rows, plan, config)
        check_release(ledger, plan, run, COOCCURRENCE)  # each release checks the requested items before it draws
        return (release or plain_cooccurrence)(content, rows, config, state, ledger, plan, run)
    except (FedsynthError, TypeError) as exc:
        return refusal(str(exc), ledger, plan.delta)


def requested_items(content: RecordDict, num_items: int) -> np.ndarray | None:
    """The M items a co-occurrence request names, checked (None: the first order is asked for instead)."""
    request = content.config_records[wire.CONFIG]
    if first_order_instead(request):
        return None
    return check_items(np.asarray(wire.integers(request, wire.MARGINAL_ITEMS)), num_items)


def plain_cooccurrence(
    content: RecordDict, rows: sp.csr_matrix, config: RunConfig, state: RecordDict, ledger: PrivacyLedger,
    plan: PrivacyPlan, run: RunIdentity,
) -> RecordDict:  # fmt: skip
    """This node's noisy co-occurrence over the requested items (or its first order again), recorded, as
    the reply."""
    items = requested_items(content, rows.shape[1])
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
    spent = spent_of(ledger, rows.shape[0], plan)
    return CooccurrenceReply(upper(released.matrix), released.noise_std, spent).to_record()


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
        masked = masked_release(content, rows, release, state)
    except (FedsynthError, TypeError) as exc:
        return refusal(str(exc), ledger, plan.delta)
    return charged_masked_reply(masked, "round", ledger, plan, run, config, rows.shape[0], server_round, mode="fedsgd")


def secure_release_reply(
    content: RecordDict, rows: sp.csr_matrix, config: RunConfig, state: RecordDict, ledger: PrivacyLedger,
    plan: PrivacyPlan, run: RunIdentity,
) -> RecordDict:  # fmt: skip
    """A release under secure aggregation (:mod:`fedsynth.client.secure`): masked, charged both ways.

    The release is the one the request names (statistics or co-occurrence), whichever handler the server
    sent it to, so it is checked again here: once per run, and planned (a co-occurrence sent as a
    statistics query is refused once the co-occurrence is charged). The keys stage bound the release's
    kind into this node's SecAgg state; :func:`masked_release` refuses any other."""
    release = secure_release_of(content.config_records[wire.CONFIG], plan, config, rows.shape[1])
    if release.name not in (STATISTICS, COOCCURRENCE):
        raise ProtocolError(f"a one-off release request names a {release.name}; refused")
    check_release(ledger, plan, run, release.name)
    masked = masked_release(content, rows, release, state)
    return charged_masked_reply(masked, release.name, ledger, plan, run, config, rows.shape[0], server_round=0)


def charged_masked_reply(
    masked: tuple[np.ndarray, list[Any], list[Any], float], name: str, ledger: PrivacyLedger, plan: PrivacyPlan,
    run: RunIdentity, config: RunConfig, users: int, server_round: int, **tags: Any,
) -> RecordDict:  # fmt: skip
    """A masked release's reply, once its events are recorded: the central Skellam events (what the sum
    carries, the guarantee) with the node's own share kept beside them (``own_noise``)."""
    vector, central, own, variance = masked
    target = config.privacy().target_epsilon
    ledger.record(central, name, run, own_noise=own, round=server_round, requested_epsilon=target,
                  secure_aggregation=True, **tags)  # fmt: skip
    return MaskedReply(vector, spent_of(ledger, users, plan), variance).to_record()


def handle_secagg_keys(
    content: RecordDict, rows: sp.csr_matrix, config: RunConfig, state: RecordDict, budget: NodeBudget,
    run: RunIdentity, node: int, signing: Signing | None = None,
) -> RecordDict:  # fmt: skip
    """Stage 1 of a secure release: fresh keys and this node's noise share, if the release fits its budget
    (the keys signed when the node config gives a signing key: ``signing``)."""
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
        public_keys, variance = start_secure_release(request, node, ledger, release, plan, state, run, signing)
    except (FedsynthError, TypeError) as exc:
        return refusal(str(exc), ledger, plan.delta)
    metrics = {**spent_metrics(ledger, rows.shape[0], plan), wire.NOISE_VARIANCE: variance}
    return RecordDict({wire.METRICS: MetricRecord(metrics), wire.CONFIG: public_keys})


def spent_of(ledger: PrivacyLedger, num_users: int, plan: PrivacyPlan) -> Spent:
    """Users, cumulative ε per release/model and in total, and δ: what a reply says about privacy."""
    spent = ledger.spent()
    return Spent(
        num_examples=num_users,
        epsilon=spent["total"],
        delta=plan.delta,
        epsilon_own_noise=ledger.spent_own_noise(),
        epsilon_vae=spent.get("vae", 0.0),
        epsilon_gan=spent.get("gan", 0.0),
        epsilon_statistics=spent.get(STATISTICS, 0.0),
        epsilon_cooccurrence=spent.get(COOCCURRENCE, 0.0),
    )


def spent_metrics(
    ledger: PrivacyLedger, num_users: int, plan: PrivacyPlan
) -> dict[str, int | float | list[int] | list[float]]:
    """:func:`spent_of` as a reply's metrics."""
    return dict(spent_of(ledger, num_users, plan).to_metrics())


@dataclass(frozen=True)
class ReplyWrap:
    """What a train handler sends of the node's round result (:class:`fedsynth.client.round.RoundAnswer`):
    ``arrays`` builds the reply's arrays from it and the request; ``tags`` go into the ledger's record."""

    arrays: Callable[[RoundAnswer, TrainRequest], ArrayRecord]
    tags: dict[str, Any] = field(default_factory=dict)
    reported: dict[str, float] = field(default_factory=dict)  # filled by ``arrays``: public numbers for the reply


def plain_reply(content: RecordDict, rows: sp.csr_matrix, config: RunConfig, state: RecordDict) -> ReplyWrap:
    """A plain round: the trained bundle itself."""
    return ReplyWrap(lambda answer, request: ArrayRecord(answer.trained))


def masked_update(
    content: RecordDict, rows: sp.csr_matrix, config: RunConfig, state: RecordDict, silo: MaliciousSilo | None = None
) -> ReplyWrap:
    """Secure aggregation's wrapper (checked before anything is trained): only the users-weighted update
    n_k (w_k − w_g) leaves, in fixed point and masked (:mod:`fedsynth.common.secagg.updates`), bounded to the
    request's ``update-norm-bound`` if it has one (``robust-aggregation = norm-bound``, which also reports the
    update's norm before the bound: post-processing of the DP-SGD output). ``silo``: a simulated cheat's update
    attack, unbounded (:mod:`fedsynth.client.attack`)."""
    if config.round_mode != "local":
        raise ConfigError("this run is in round-mode fedsgd; a local round's update is not sent")
    quantizer = update_quantizer(config, rows.shape[1])
    reported: dict[str, float] = {}

    def arrays(answer: RoundAnswer, request: TrainRequest) -> ArrayRecord:
        start = request.arrays.to_torch_state_dict()
        norm = update_norm(answer.trained, start)
        trained = bounded_update(answer.trained, start, norm, request.update_norm_bound)
        trained = tampered_update(silo, start, answer.trained, request.server_round) if silo is not None else trained
        if config.robust().kind == "norm-bound":  # the server needs it for the next bound; else it stays here
            reported[wire.UPDATE_NORM] = norm
        update = encode_update(trained, start, rows.shape[0], quantizer)
        masked = masked_vector(content.config_records[wire.CONFIG], update, state, UPDATE)
        return ArrayRecord({wire.MASKED: Array(masked)})

    return ReplyWrap(arrays, {"secure_aggregation": True, "mode": "local"}, reported)


def handle_train(
    content: RecordDict, rows: sp.csr_matrix, config: RunConfig, state: RecordDict, budget: NodeBudget,
    run: RunIdentity, wrap: Callable[..., ReplyWrap] = plain_reply,
) -> RecordDict:  # fmt: skip
    """Round N (:mod:`fedsynth.client.round`): train on ``rows`` (this node's users) from the global bundle
    in the request and send the result as ``wrap`` says (the trained bundle; under secure aggregation
    :func:`masked_update`); a round already charged to this run sends its saved result again (masked
    afresh; no new ε) or is refused. The ε events are Opacus' own, the same under both threat models."""
    try:
        request = TrainRequest.from_record(content)
    except ProtocolError as exc:
        return refusal(str(exc))
    plan = privacy_plan(state, config, rows.shape[0], request.planned_rounds, budget)
    ledger: PrivacyLedger | None = None
    try:
        ledger = open_ledger(budget, rows, plan, config)
        reply = wrap(content, rows, config, state)
        answer = answer_round(request, rows, config, plan, ledger, run, **reply.tags)
        arrays = reply.arrays(answer, request)
    except (FedsynthError, TypeError, KeyError) as exc:
        return refusal(str(exc), ledger, plan.delta)
    norm = reply.reported.get(wire.UPDATE_NORM)
    return TrainReply(arrays, spent_of(ledger, rows.shape[0], plan), answer.replayed, norm).to_record()


def handle_secure_update(
    content: RecordDict, rows: sp.csr_matrix, config: RunConfig, state: RecordDict, budget: NodeBudget,
    run: RunIdentity, silo: MaliciousSilo | None = None,
) -> RecordDict:  # fmt: skip
    """Round N under secure aggregation (``query.update``): :func:`handle_train` wrapped by :func:`masked_update`
    (``silo``: a simulated cheat's update attack)."""
    return handle_train(content, rows, config, state, budget, run, wrap=partial(masked_update, silo=silo))
