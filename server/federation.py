"""The rounds: query clients, release DP statistics, broadcast the bundle, aggregate, log ε, checkpoint.

A run directory can be resumed: if ``OUT/checkpoints/round-N.pt`` exist for the same config,
training continues after the last one, with the DP statistics saved in ``OUT/statistics.npz``
(never released twice). Each client's ledger makes sure its spent ε is never reset.
"""

from __future__ import annotations

import copy
import json
import logging
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid

from fedsynth.common.config.run import RunConfig
from fedsynth.common.errors import ConfigError, FedsynthError
from fedsynth.common.federated import wire
from fedsynth.common.federated.protocol import (
    AdmissionQuery,
    CooccurrenceReply,
    Identity,
    ProtocolError,
    StatisticsReply,
)
from fedsynth.common.federated.round_log import NodeProblem, RoundLog
from fedsynth.common.models.bundle import ModelBundle
from fedsynth.common.privacy.plan import plan_privacy
from fedsynth.common.privacy.releases.cooccurrence import (
    NoisyCooccurrence,
    from_upper,
    marginal_items,
    noise_edge,
    popularity_eigenvalue,
    second_order_pays,
    signal_ratio,
)
from fedsynth.common.privacy.releases.statistics import NoisyStatistics, length_bin_edges
from fedsynth.common.robustness.rules import robust_statistics, robust_total
from fedsynth.common.runtime.files import to_plain, write_atomic, write_json_atomic
from fedsynth.common.synthesis.marginal_fit import MarginalFitConfig, MarginalTargets, fit_bundle
from fedsynth.server.admission import Admission, admit, identity_fields, require_quorum, require_training
from fedsynth.server.aggregation import ClientReply, RoundOutcome, as_client_replies, client_outcomes
from fedsynth.server.exchange import send_and_receive
from fedsynth.server.fedsgd import Checkpoint, fedsgd_rounds
from fedsynth.server.round import RoundPlan, RoundTransport, aggregate_train, play_round, run_rounds
from fedsynth.server.secure_release import (
    RoundSetups,
    secure_cooccurrence,
    secure_first_order_instead,
    secure_statistics,
)
from fedsynth.server.secure_round import SecureRound, update_setups

log = logging.getLogger("flwr")  # Flower streams its own logger to `flwr run --stream`


@dataclass
class TrainingResult:
    """What the rounds produced: the global bundle, the DP statistics and the catalogue."""

    bundle: ModelBundle
    statistics: NoisyStatistics
    item_ids: list[str]
    release: RoundLog  # the DP statistics release (round 0)
    rounds: list[RoundLog]
    summary: dict[str, Any]  # train.json
    cooccurrence: NoisyCooccurrence | None = None
    cooccurrence_release: RoundLog | None = None
    fitted: ModelBundle | None = None  # the bundle fitted to the DP marginals, before any round refined it
    first_order_instead: bool = False  # the co-occurrence's budget released the statistics again (below its noise)

    @property
    def logs(self) -> list[RoundLog]:
        """The releases' logs, then each round's."""
        releases = [self.release] + ([self.cooccurrence_release] if self.cooccurrence_release else [])
        return [*releases, *self.rounds]


def out_directory(config: RunConfig) -> Path:
    return Path(config.out_dir or "runs/federation")


def wait_for_nodes(grid: Grid, minimum: int, timeout: float = 120.0) -> list[int]:
    """Node ids once at least ``minimum`` are connected (error after ``timeout`` seconds)."""
    start = time.time()
    while True:
        nodes = list(grid.get_node_ids())
        if len(nodes) >= minimum:
            return nodes
        if time.time() - start > timeout:
            raise FedsynthError(
                f"only {len(nodes)} client(s) connected after {timeout:.0f} s; min-clients is {minimum}."
            )
        time.sleep(1.0)


def query_release(
    grid: Grid, nodes: list[int], config: RunConfig, action: str, request: Mapping[str, wire.ConfigValue], what: str
) -> tuple[list[RecordDict], RoundLog]:
    """One plain (not secure) DP release ``query.<action>`` from every node: the released contents and the log."""
    record = ConfigRecord({wire.PLANNED_ROUNDS: config.num_server_rounds, **request})
    messages = [
        Message(RecordDict({wire.CONFIG: record}), dst_node_id=n, message_type=f"{MessageType.QUERY}.{action}")
        for n in nodes
    ]
    replies = send_and_receive(grid, messages, config.reply_timeout)
    outcome = client_outcomes(as_client_replies(replies, messages, config.reply_timeout), server_round=0)
    reply_type = CooccurrenceReply if action == wire.COOCCURRENCE and wire.FIRST_ORDER_INSTEAD not in request else (
        StatisticsReply)  # fmt: skip
    released = [r for r in outcome.trained if r.content is not None and well_formed(r, reply_type, outcome.log)]
    require_quorum(what, outcome.log, config)
    return [r.content for r in released if r.content is not None], outcome.log


def well_formed(reply: ClientReply, reply_type: type[StatisticsReply] | type[CooccurrenceReply], log: RoundLog) -> bool:
    """Whether ``reply`` reads as a ``reply_type`` release; if not, its node counts as failed (named, with the
    reason) and its vectors are left out, so one malformed node does not abort a release the others already
    paid for (their ledgers hold it: a second try would be refused). Its ε stays in the log: it spent it."""
    assert reply.content is not None
    try:
        reply_type.from_record(reply.content)
    except ProtocolError as exc:
        log.trained.remove(reply.node)
        log.failed.append(NodeProblem(reply.node, f"malformed reply: {exc}"))
        return False
    return True


def query_statistics(
    grid: Grid, nodes: list[int], config: RunConfig, num_items: int, identity: dict[str, str]
) -> tuple[NoisyStatistics, RoundLog]:
    """Each client's DP item counts and length histogram, summed; and the release's log (ε per client)."""
    released, release_log = query_release(grid, nodes, config, wire.STATISTICS, identity, "the DP statistics release")
    if not released:  # allow-degraded and nobody released: no prior, no lengths (said in the log)
        log.warning("fedsynth statistics: no client released DP statistics; no popularity prior, lengths 1-10")
        return NoisyStatistics(np.zeros(num_items), np.zeros(len(length_bin_edges(num_items)) - 1)), release_log
    return summed_statistics(released, config), release_log


def summed_statistics(released: list[RecordDict], config: RunConfig) -> NoisyStatistics:
    """The plain first-order replies summed (``robust-aggregation``), with the sum's noise std."""
    replies = [StatisticsReply.from_record(content) for content in released]
    parts = [NoisyStatistics(r.item_counts, r.length_histogram, r.noise_std) for r in replies]
    return robust_statistics(parts, [r.spent.num_examples for r in replies], config.robust())


def query_first_order_instead(
    grid: Grid, nodes: list[int], config: RunConfig, num_items: int, identity: dict[str, str]
) -> tuple[NoisyStatistics | None, RoundLog]:
    """The co-occurrence's budget spent on each client's statistics again, summed (None: nobody released)."""
    request: dict[str, wire.ConfigValue] = {wire.FIRST_ORDER_INSTEAD: 1, **identity}
    what = "the DP co-occurrence release (first order instead)"
    released, release_log = query_release(grid, nodes, config, wire.COOCCURRENCE, request, what)
    return (summed_statistics(released, config) if released else None), release_log


def query_cooccurrence(
    grid: Grid, nodes: list[int], config: RunConfig, items: np.ndarray, identity: dict[str, str]
) -> tuple[NoisyCooccurrence | None, RoundLog]:
    """Each client's DP co-occurrence over ``items``, summed (None if nobody released, allow-degraded)."""
    request: dict[str, wire.ConfigValue] = {wire.MARGINAL_ITEMS: [int(i) for i in items], **identity}
    released, release_log = query_release(
        grid, nodes, config, wire.COOCCURRENCE, request, "the DP co-occurrence release"
    )
    if not released:
        return None, release_log
    replies = [CooccurrenceReply.from_record(content) for content in released]
    users, noise = [r.spent.num_examples for r in replies], [r.noise_std for r in replies]
    total, noise_std = robust_total([r.upper for r in replies], users, noise, config.robust())
    return NoisyCooccurrence(items, from_upper(total, len(items)), noise_std), release_log


StatisticsRelease = Callable[[Grid, list[int], RunConfig, int, dict[str, str]], tuple[NoisyStatistics, RoundLog]]
AgainRelease = Callable[[Grid, list[int], RunConfig, int, dict[str, str]], tuple[NoisyStatistics | None, RoundLog]]
PairsRelease = Callable[
    [Grid, list[int], RunConfig, np.ndarray, dict[str, str]], tuple[NoisyCooccurrence | None, RoundLog]
]


@dataclass(frozen=True)
class Releases:
    """How the one-shot DP releases reach the server, chosen once per run: each node's release in the clear
    and summed here (plain), or the same releases wrapped in secure sums so that only the total is seen
    (``secure-aggregation``, :mod:`fedsynth.server.secure_release`)."""

    statistics: StatisticsRelease
    first_order_instead: AgainRelease
    cooccurrence: PairsRelease

    @classmethod
    def of(cls, config: RunConfig) -> Releases:
        if config.secure_aggregation:
            return cls(secure_statistics, secure_first_order_instead, secure_cooccurrence)
        return cls(query_statistics, query_first_order_instead, query_cooccurrence)


def load_or_query_cooccurrence(
    grid: Grid, nodes: list[int], config: RunConfig, statistics: NoisyStatistics, identity: dict[str, str]
) -> tuple[NoisyStatistics, NoisyCooccurrence | None, RoundLog | None]:
    """(the statistics, the co-occurrence, its release's log): the saved ones of a resumed run, or a fresh
    release over the top ``marginal-items`` by DP counts; or, when those counts predict the co-occurrence
    to be below its noise (:func:`second_order_pays`), its budget spent on the statistics again, combined
    with the first release by inverse variance (then no co-occurrence)."""
    if config.marginal_items == 0:
        return statistics, None, None
    path = out_directory(config) / "cooccurrence.npz"
    if path.is_file():
        with np.load(path) as saved:
            if "item_counts" in saved:  # the first order instead
                kept = NoisyStatistics(saved["item_counts"], saved["length_histogram"], float(saved["noise_std"]))
                return statistics.combined(kept), None, RoundLog(0, resumed=True)
            pairs = NoisyCooccurrence(saved["items"], saved["matrix"], float(saved["noise_std"]))
            return statistics, pairs, RoundLog(0, resumed=True)
    items = marginal_items(statistics.item_counts, config.marginal_items)
    started = time.perf_counter()
    if not cooccurrence_expected_to_pay(config, statistics, items, len(nodes)):
        again, release_log = Releases.of(config).first_order_instead(
            grid, nodes, config, len(statistics.item_counts), identity
        )
        release_log.seconds = time.perf_counter() - started
        if again is None:
            return statistics, None, release_log
        counts, histogram, std = again.item_counts, again.length_histogram, again.noise_std
        write_atomic(path, lambda tmp: np.savez(tmp, item_counts=counts, length_histogram=histogram, noise_std=std))
        return statistics.combined(again), None, release_log
    cooccurrence, release_log = Releases.of(config).cooccurrence(grid, nodes, config, items, identity)
    release_log.seconds = time.perf_counter() - started
    if cooccurrence is None:
        log.warning("fedsynth co-occurrence: no client released it; nothing is fitted beyond the popularity prior")
        return statistics, None, release_log
    saved = {"items": cooccurrence.items, "matrix": cooccurrence.matrix, "noise_std": cooccurrence.noise_std}
    write_atomic(path, lambda tmp: np.savez(tmp, **saved))
    return statistics, cooccurrence, release_log


def cooccurrence_expected_to_pay(
    config: RunConfig, statistics: NoisyStatistics, items: np.ndarray, num_nodes: int
) -> bool:
    """:func:`second_order_pays` with the noise std the sum would carry, predicted from the plan of a node of
    N̂ / K users (N̂: the DP histogram's total); logged either way. Post-processing: no ε."""
    std = predicted_cooccurrence_std(config, float(statistics.length_histogram.sum()), num_nodes)
    signal, edge = popularity_eigenvalue(statistics.item_counts, items), noise_edge(std, len(items))
    pays = second_order_pays(statistics.item_counts, items, std, config.cooccurrence_min_signal)
    log.info(
        "fedsynth co-occurrence: predicted signal %.3g vs noise edge %.3g (cooccurrence-min-signal %g): %s",
        signal, edge, config.cooccurrence_min_signal,
        "released" if pays else "below the noise, its budget buys a second first-order release instead",
    )  # fmt: skip
    return pays


def predicted_cooccurrence_std(config: RunConfig, users: float, num_nodes: int) -> float:
    """The noise std per entry of the summed co-occurrence, as planned by nodes of ``users`` / K users each:
    σ·√K with each node's own noise, σ with secure aggregation (noise once, on the sum); 0 without DP."""
    local = config.local()
    per_node = max(2, round(users / max(num_nodes, 1)), local.vae.batch_size, local.gan.batch_size)
    try:
        plan = plan_privacy(config.privacy(), per_node, local, config.num_server_rounds)
    except ConfigError:  # a configured δ that such a node would refuse: release as configured
        return 0.0
    if not plan.private:
        return 0.0
    return plan.cooccurrence_noise * (1.0 if config.secure_aggregation else float(np.sqrt(num_nodes)))


def load_or_query_statistics(
    grid: Grid, nodes: list[int], config: RunConfig, num_items: int, identity: dict[str, str]
) -> tuple[NoisyStatistics, RoundLog]:
    """The saved release of a resumed run, or a fresh one (saved before any round uses it)."""
    path = out_directory(config) / "statistics.npz"
    check_saved_releases(out_directory(config), config)
    if path.is_file():
        with np.load(path) as saved:
            statistics = NoisyStatistics(saved["item_counts"], saved["length_histogram"], float(saved["noise_std"]))
            return statistics, RoundLog(0, resumed=True)
    started = time.perf_counter()
    statistics, release_log = Releases.of(config).statistics(grid, nodes, config, num_items, identity)
    release_log.seconds = time.perf_counter() - started

    def save(tmp: Path) -> None:
        np.savez(
            tmp,
            item_counts=statistics.item_counts,
            length_histogram=statistics.length_histogram,
            noise_std=statistics.noise_std,
        )

    write_json_atomic(out_directory(config) / RELEASES_CONFIG, settings_of(config))
    write_atomic(path, save)
    return statistics, release_log


RELEASES_CONFIG = "releases-config.json"  # the settings of the run whose releases OUT holds


OPERATIONAL_SETTINGS = ("out_dir", "device", "reply_timeout", "min_clients")  # where and how, not what is released


def settings_of(config: RunConfig) -> Any:
    """The run's settings as JSON reads them back, without :data:`OPERATIONAL_SETTINGS` (a moved directory, another
    device or timeout does not change what the releases are): what a run directory's releases are compared by."""
    settings = {k: v for k, v in config.__dict__.items() if k not in OPERATIONAL_SETTINGS}
    return json.loads(json.dumps(to_plain(settings), default=str))


def check_saved_releases(out_dir: Path, config: RunConfig) -> None:
    """Releases saved in ``out_dir`` are reused only by a run of the same settings, as checkpoints are: with
    the rounds off (the default) a run directory holds no checkpoint, and its releases (made at another ε,
    M or clip) would otherwise be read as this run's. Directories from before this file keep being read."""
    path = out_dir / RELEASES_CONFIG
    if path.is_file() and json.loads(path.read_text()) != settings_of(config):
        raise ConfigError(
            f"{out_dir}: its DP releases ({RELEASES_CONFIG}) were made by a run with other settings; resume with "
            "the same settings or use a new --out directory."
        )


@dataclass
class ResumePoint:
    """Where a run directory stands: the last global state, the round logs, the server optimizer's state."""

    state: dict[str, torch.Tensor] | None = None
    rounds: list[RoundLog] = field(default_factory=list)
    server_optimizer: dict[str, Any] | None = None


def resume_point(out_dir: Path, config: RunConfig) -> ResumePoint:
    """The last checkpoint's state and the round logs so far, for a run directory of the same config."""
    checkpoints = sorted((out_dir / "checkpoints").glob("round-*.pt"), key=lambda p: int(p.stem.split("-")[1]))
    point = ResumePoint()
    for number, path in enumerate(checkpoints, start=1):
        saved = torch.load(path, weights_only=False)
        if int(path.stem.split("-")[1]) != number:
            raise FedsynthError(f"{path}: checkpoints are not consecutive from round-1; use a new --out directory.")
        if saved["config"] != to_plain(config.__dict__):
            raise ConfigError(
                f"{path} was written by a run with another configuration; resume with the same settings "
                "or use a new --out directory."
            )
        point.rounds.append(RoundLog.from_plain(saved["round"]))
        point.state, point.server_optimizer = saved["state"], saved.get("server_optimizer")
    return point


def start(grid: Grid, config: RunConfig, resumed: ResumePoint, identity: dict[str, str]) -> Admission:
    """Wait for ``min-clients`` nodes, then admit those whose data, catalogue and budget fit the run."""
    nodes = wait_for_nodes(grid, config.min_clients)
    out_dir = out_directory(config)
    query = AdmissionQuery(
        planned_rounds=config.num_server_rounds,
        first_round=len(resumed.rounds) + 1,
        needs_statistics=not (out_dir / "statistics.npz").is_file(),
        needs_cooccurrence=config.marginal_items > 0 and not (out_dir / "cooccurrence.npz").is_file(),
        identity=Identity.from_fields(identity),
    )
    admission = admit(grid, nodes, config, query)
    for node, why in sorted(admission.excluded.items()):
        log.warning("fedsynth start: node %d left out (allow-degraded): %s", node, why)
    caps = Counter(f"{c:g}" for c in admission.caps.values())
    log.info(
        "fedsynth start: %d node(s) admitted, catalogue of %d items; their caps (epsilon, set on the nodes): %s",
        len(admission.nodes),
        len(admission.item_ids),
        ", ".join(f"{cap} ({count} node{'s' * (count > 1)})" for cap, count in sorted(caps.items())) or "none",
    )
    return admission


def fitted_bundle(
    config: RunConfig, num_items: int, statistics: NoisyStatistics, cooccurrence: NoisyCooccurrence | None
) -> ModelBundle:
    """A fresh bundle with the DP popularity prior, its generator and VAE decoder fitted to the DP marginals.

    Post-processing of the releases (no ε); deterministic for a seed, so a resumed run fits the same
    bundle again. Without a co-occurrence (``marginal-items = 0``, or its budget spent on the first order
    instead) the bundle is returned unfitted: the prior already holds the first order.
    """
    bundle = ModelBundle.create(num_items, config.local(), seed=config.seed)
    bundle.set_prior(torch.from_numpy(statistics.prior_logits()))
    if config.marginal_items == 0 or cooccurrence is None:  # nothing beyond the prior's first order to fit
        return bundle
    started = time.perf_counter()
    fit = fit_settings(config, statistics, cooccurrence)
    targets = MarginalTargets.from_releases(statistics, cooccurrence, config.statistics_clip, fit.directions)
    losses = fit_bundle(bundle, targets, statistics.length_sampler(num_items), fit, config.seed)
    log.info(
        "fedsynth marginal fit: generator and VAE decoder fitted to the DP marginals in %d steps%s (%s; %.1f s)",
        fit.steps,
        "" if config.marginal_fit_steps else " (automatic, from the release's signal ratio)",
        ", ".join(f"{name} loss {first:.4g} -> {last:.4g}" for name, (first, last) in losses.items()),
        time.perf_counter() - started,
    )
    return bundle


def fit_settings(config: RunConfig, statistics: NoisyStatistics, cooccurrence: NoisyCooccurrence) -> MarginalFitConfig:
    """The fit's settings for this release: ``marginal-fit-steps`` 0 takes the steps from the release's signal
    ratio (the DP counts' popularity eigenvalue over the released noise's edge: post-processing, no ε)."""
    return config.marginal_fit(signal_ratio(statistics.item_counts, cooccurrence.items, cooccurrence.noise_std))


def initial_bundle(fitted: ModelBundle, resumed: ResumePoint) -> ModelBundle:
    """The global bundle before the next round: the fitted start, or the last checkpoint."""
    bundle = copy.deepcopy(fitted)
    if resumed.state is not None:
        bundle.load_state_dict(resumed.state)
        log.info("fedsynth resuming after round %d", len(resumed.rounds))
    return bundle


class FlowerRound:
    """A plain round through Flower's Grid: every sampled node gets the TrainRequest and sends its TrainReply;
    the server aggregates the replies (:func:`fedsynth.server.round.aggregate_train`)."""

    def __init__(self, grid: Grid, config: RunConfig) -> None:
        self.grid, self.config = grid, config

    def connected(self) -> set[int]:
        return set(self.grid.get_node_ids())

    def train(self, plan: RoundPlan) -> RoundOutcome:
        content = plan.request.to_record()
        messages = [Message(content, dst_node_id=n, message_type=MessageType.TRAIN) for n in plan.sampled]
        replies = send_and_receive(self.grid, messages, self.config.reply_timeout)
        received = as_client_replies(replies, messages, self.config.reply_timeout)
        return aggregate_train(plan.request.server_round, received, plan.request.arrays, self.config.robust())


def round_transport(
    grid: Grid, config: RunConfig, arrays: ArrayRecord, identity: dict[str, str], setups: RoundSetups | None = None
) -> RoundTransport:
    """How the rounds reach the nodes: plain messages, or wrapped in secure sums (``secure-aggregation``;
    keys from ``setups``, else set up for each round alone)."""
    if not config.secure_aggregation:
        return FlowerRound(grid, config)
    return SecureRound(grid, setups or update_setups(grid, config, arrays, identity, per_round=True))


def train_round(
    grid: Grid, config: RunConfig, server_round: int, participants: list[int], arrays: ArrayRecord,
    identity: dict[str, str], setups: RoundSetups | None = None,
) -> RoundOutcome:  # fmt: skip
    """One round through Flower (plain, or secure with ``secure-aggregation``): the new global arrays and its log."""
    transport = round_transport(grid, config, arrays, identity, setups)
    return play_round(transport, config, server_round, participants, arrays, Identity.from_fields(identity))


def run_federation(grid: Grid, config: RunConfig) -> TrainingResult:
    """Run (or resume) ``config.num_server_rounds`` rounds; writes checkpoints and OUT/train.json.

    Stages: admission (nothing spent) → DP statistics → DP co-occurrence → fit to the marginals
    (server, no ε) → rounds from the fitted start → summary. A stage in which fewer
    than ``min-clients`` answered raises :class:`RunFailed` (see :mod:`fedsynth.server.admission`).
    """
    out_dir = out_directory(config)
    resumed = resume_point(out_dir, config)
    identity = identity_fields(out_dir)  # the run key (read or made once) and the requester, sent with every request
    admission = start(grid, config, resumed, identity)
    num_items = len(admission.item_ids)
    statistics, release_log = load_or_query_statistics(grid, admission.nodes, config, num_items, identity)
    first_release = statistics
    statistics, cooccurrence, cooccurrence_log = load_or_query_cooccurrence(
        grid, admission.nodes, config, statistics, identity
    )
    fitted = fitted_bundle(config, num_items, statistics, cooccurrence)
    bundle = initial_bundle(fitted, resumed)

    def checkpoint(server_round: int, state: ArrayRecord, round_log: RoundLog, optimizer: Any) -> None:
        save_checkpoint(out_dir / "checkpoints" / f"round-{server_round}.pt", state, config, round_log, optimizer)

    if config.round_mode == "fedsgd":
        rounds = fedsgd_rounds(
            grid, config, admission.nodes, bundle, resumed.rounds, resumed.server_optimizer, identity, checkpoint
        )
        arrays = ArrayRecord(bundle.state_dict())
    else:
        arrays, rounds = local_rounds(grid, config, admission.nodes, bundle, resumed, identity, checkpoint)
    require_training(rounds)
    bundle.load_state_dict(arrays.to_torch_state_dict())
    releases = [release_log] + ([cooccurrence_log] if cooccurrence_log else [])
    summary = training_summary(config, admission, releases, rounds, set(grid.get_node_ids()))
    write_json_atomic(out_dir / "train.json", summary)
    fitted_start = fitted if cooccurrence is not None else None
    return TrainingResult(
        bundle,
        statistics,
        admission.item_ids,
        release_log,
        rounds,
        summary,
        cooccurrence,
        cooccurrence_log,
        fitted_start,
        first_order_instead=statistics is not first_release,
    )


def local_rounds(
    grid: Grid, config: RunConfig, participants: list[int], bundle: ModelBundle, resumed: ResumePoint,
    identity: dict[str, str], checkpoint: Checkpoint,
) -> tuple[ArrayRecord, list[RoundLog]]:  # fmt: skip
    """round-mode local through Flower: :func:`fedsynth.server.round.run_rounds` from the resumed point, over
    plain messages or secure sums (keys set up in batches of rounds)."""
    arrays = ArrayRecord(bundle.state_dict())
    setups = update_setups(grid, config, arrays, identity) if config.secure_aggregation else None
    transport = round_transport(grid, config, arrays, identity, setups)
    return run_rounds(
        transport, config, participants, arrays, Identity.from_fields(identity), resumed.rounds,
        resumed.server_optimizer, checkpoint, require_quorum,
    )  # fmt: skip


def training_summary(
    config: RunConfig,
    admission: Admission,
    releases: list[RoundLog],
    rounds: list[RoundLog],
    connected: set[int],
) -> dict[str, Any]:
    """train.json: the config, the admission, the release's and each round's log, ε per client.

    ``epsilon_by_client`` holds every node that reported a spend in this run, connected at the
    end or not (``missing_at_end`` lists the latter: their ledgers still hold what they spent).
    """
    by_client = latest_epsilon([*releases, *rounds])
    return {
        "config": to_plain(config.__dict__),
        "num_items": len(admission.item_ids),
        "admitted": admission.nodes,
        "excluded": {str(n): why for n, why in admission.excluded.items()},
        "epsilon_cap_by_client": {str(n): c for n, c in admission.caps.items()},
        "epsilon_before_run_by_client": {str(n): e for n, e in admission.spent_before.items()},
        "statistics_release": releases[0].to_plain(),
        **({"cooccurrence_release": releases[1].to_plain()} if len(releases) > 1 else {}),
        "rounds": [r.to_plain() for r in rounds],
        "epsilon_max": max((e for r in rounds if (e := r.epsilon_max) is not None), default=None),
        "epsilon_by_client": by_client,
        "missing_at_end": sorted(int(n) for n in by_client if int(n) not in connected),
    }


def latest_epsilon(logs: list[RoundLog]) -> dict[str, float]:
    """Each client's last reported cumulative ε (trained or refused), over the release and all rounds."""
    latest: dict[str, float] = {}
    for entry in logs:
        latest.update(entry.latest_epsilon_by_node())
    return latest


def save_checkpoint(
    path: Path,
    arrays: ArrayRecord,
    config: RunConfig,
    round_log: RoundLog,
    server_optimizer: dict[str, Any] | None = None,
) -> None:
    """The global bundle after a round, with the config, the round's privacy numbers and FedAdam's moments (atomic)."""
    saved = {"state": arrays.to_torch_state_dict(), "config": to_plain(config.__dict__), "round": round_log.to_plain()}
    if server_optimizer is not None:
        saved["server_optimizer"] = server_optimizer
    write_atomic(path, lambda tmp: torch.save(saved, tmp))
