"""The rounds: query clients, release DP statistics, broadcast the bundle, aggregate, log ε, checkpoint.

A run directory can be resumed: if ``OUT/checkpoints/round-N.pt`` exist for the same config,
training continues after the last one, with the DP statistics saved in ``OUT/statistics.npz``
(never released twice). Each client's ledger makes sure its spent ε is never reset.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid

from common import keys
from common.bundle import ModelBundle
from common.errors import ConfigError, FedsynthError
from common.federation import RunConfig
from common.io import to_plain, write_json_atomic
from common.privacy.statistics import NoisyStatistics, length_bin_edges
from server.strategy import aggregate_round, as_client_replies, client_outcomes

log = logging.getLogger("flwr")  # Flower streams its own logger to `flwr run --stream`


@dataclass
class TrainingResult:
    """What the rounds produced: the global bundle, the DP statistics and the catalogue."""

    bundle: ModelBundle
    statistics: NoisyStatistics
    item_ids: list[str]
    summary: dict[str, Any]


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


def query_catalogue(grid: Grid, nodes: list[int], timeout: float | None = None) -> list[str]:
    """The shared item catalogue (original item ids); every client must hold the same one."""
    messages = [Message(RecordDict(), dst_node_id=n, message_type=MessageType.QUERY) for n in nodes]
    replies = [r for r in grid.send_and_receive(messages, timeout=timeout) if not r.has_error()]
    catalogues = {tuple(str(i) for i in r.content[keys.CONFIG][keys.ITEM_IDS]) for r in replies}  # type: ignore[union-attr]
    if len(catalogues) != 1:
        sizes = sorted(len(c) for c in catalogues)
        raise FedsynthError(f"clients disagree on the item catalogue (sizes {sizes}); they must share one catalogue.")
    return list(catalogues.pop())


def query_statistics(
    grid: Grid, nodes: list[int], config: RunConfig, num_items: int
) -> tuple[NoisyStatistics, dict[str, Any]]:
    """Each client's DP item counts and length histogram, summed; and the release's log (ε per client)."""
    request = ConfigRecord({keys.PLANNED_ROUNDS: config.num_server_rounds})
    messages = [
        Message(
            RecordDict({keys.CONFIG: request}),
            dst_node_id=n,
            message_type=f"{MessageType.QUERY}.{keys.STATISTICS}",
        )
        for n in nodes
    ]
    replies = list(grid.send_and_receive(messages, timeout=config.reply_timeout))
    outcome = client_outcomes(as_client_replies(replies, messages, config.reply_timeout))
    released = [r for r in outcome.trained if r.content is not None]
    outcome.log["round"] = 0
    if not released:
        log.warning(
            "fedsynth statistics: no client released DP statistics (%s); no popularity prior, lengths 1-10",
            outcome.log["refused"] or outcome.log["failed"],
        )
        return NoisyStatistics(np.zeros(num_items), np.zeros(len(length_bin_edges(num_items)) - 1)), outcome.log
    total: NoisyStatistics | None = None
    for reply in released:
        arrays = reply.content[keys.ARRAYS].to_torch_state_dict()  # type: ignore[union-attr, index]
        noise_std = keys.number(reply.content[keys.METRICS], keys.NOISE_STD)  # type: ignore[index]
        part = NoisyStatistics(arrays[keys.ITEM_COUNTS].numpy(), arrays[keys.LENGTH_HISTOGRAM].numpy(), noise_std)
        total = part if total is None else total + part
    assert total is not None
    return total, outcome.log


def load_or_query_statistics(
    grid: Grid, nodes: list[int], config: RunConfig, num_items: int
) -> tuple[NoisyStatistics, dict[str, Any]]:
    """The saved release of a resumed run, or a fresh one (saved before any round uses it)."""
    path = out_directory(config) / "statistics.npz"
    if path.is_file():
        with np.load(path) as saved:
            statistics = NoisyStatistics(saved["item_counts"], saved["length_histogram"], float(saved["noise_std"]))
            return statistics, {"round": 0, "resumed": True}
    statistics, release_log = query_statistics(grid, nodes, config, num_items)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name("statistics.tmp.npz")
    np.savez(
        tmp,
        item_counts=statistics.item_counts,
        length_histogram=statistics.length_histogram,
        noise_std=statistics.noise_std,
    )
    tmp.replace(path)
    return statistics, release_log


@dataclass
class ResumePoint:
    """Where a run directory stands: the last global state, the round logs, the server optimizer's state."""

    state: dict[str, torch.Tensor] | None = None
    rounds: list[dict[str, Any]] = field(default_factory=list)
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
        point.rounds.append(saved["round"])
        point.state, point.server_optimizer = saved["state"], saved.get("server_optimizer")
    return point


def run_federation(grid: Grid, config: RunConfig) -> TrainingResult:
    """Run (or resume) ``config.num_server_rounds`` rounds; writes checkpoints and OUT/train.json."""
    out_dir = out_directory(config)
    nodes = wait_for_nodes(grid, config.min_clients)
    item_ids = query_catalogue(grid, nodes, config.reply_timeout)
    resumed = resume_point(out_dir, config)
    rounds = resumed.rounds
    statistics, release_log = load_or_query_statistics(grid, nodes, config, len(item_ids))
    bundle = ModelBundle.create(len(item_ids), config.local(), seed=config.seed)
    bundle.set_prior(torch.from_numpy(statistics.prior_logits()))
    server_optimizer = config.federated_strategy().server_optimizer()
    if resumed.state is not None:
        bundle.load_state_dict(resumed.state)
        if server_optimizer is not None and resumed.server_optimizer is not None:
            server_optimizer.load_state_dict(resumed.server_optimizer)
        log.info("fedsynth resuming after round %d from %s", len(rounds), out_dir / "checkpoints")
    arrays = ArrayRecord(bundle.state_dict())
    for server_round in range(len(rounds) + 1, config.num_server_rounds + 1):
        started = time.perf_counter()
        nodes = list(grid.get_node_ids())
        count = max(config.min_clients, round(config.fraction_train * len(nodes)))
        sampler = random.Random(config.seed * 100_003 + server_round)  # node ids are uint64: keep Python ints
        sampled = sorted(sampler.sample(sorted(nodes), min(count, len(nodes))))
        request = ConfigRecord({keys.SERVER_ROUND: server_round, keys.PLANNED_ROUNDS: config.num_server_rounds})
        messages = [
            Message(
                RecordDict({keys.ARRAYS: arrays, keys.CONFIG: request}), dst_node_id=n, message_type=MessageType.TRAIN
            )
            for n in sampled
        ]
        replies = list(grid.send_and_receive(messages, timeout=config.reply_timeout))
        outcome = aggregate_round(server_round, replies, messages, config.reply_timeout)
        outcome.log["sampled"] = sampled
        outcome.log["seconds"] = time.perf_counter() - started
        if outcome.arrays is not None and server_optimizer is not None:
            state = server_optimizer.step(
                server_round, arrays.to_torch_state_dict(), outcome.arrays.to_torch_state_dict()
            )
            arrays = ArrayRecord(state)
        elif outcome.arrays is not None:
            arrays = outcome.arrays
        rounds.append(outcome.log)
        log.info(
            "fedsynth round %d/%d: trained %d, refused %d, failed %d, epsilon max %s (%.1f s)",
            server_round,
            config.num_server_rounds,
            len(outcome.log["trained"]),
            len(outcome.log["refused"]),
            len(outcome.log["failed"]),
            outcome.log["epsilon_max"],
            outcome.log["seconds"],
        )
        save_checkpoint(
            out_dir / "checkpoints" / f"round-{server_round}.pt",
            arrays,
            config,
            outcome.log,
            server_optimizer.state_dict() if server_optimizer is not None else None,
        )
    bundle.load_state_dict(arrays.to_torch_state_dict())
    connected = set(grid.get_node_ids())
    summary = {
        "config": to_plain(config.__dict__),
        "num_items": len(item_ids),
        "statistics_release": release_log,
        "rounds": rounds,
        "epsilon_max": max((r["epsilon_max"] for r in rounds if r["epsilon_max"] is not None), default=None),
        # Node ids of a resumed simulation differ from the interrupted one's: list the nodes connected
        # now (their ledgers carry everything they spent); epsilon_max above covers every round.
        "epsilon_by_client": {
            node: value for node, value in latest_epsilon([release_log, *rounds]).items() if int(node) in connected
        },
    }
    write_json_atomic(out_dir / "train.json", summary)
    return TrainingResult(bundle, statistics, item_ids, summary)


def latest_epsilon(logs: list[dict[str, Any]]) -> dict[str, float]:
    """Each client's last reported cumulative ε (trained or refused), over the release and all rounds."""
    latest: dict[str, float] = {}
    for entry in logs:
        latest.update(entry.get("epsilon_by_node", {}))
        latest.update({str(r["node"]): r["epsilon"] for r in entry.get("refused", [])})
    return latest


def save_checkpoint(
    path: Path,
    arrays: ArrayRecord,
    config: RunConfig,
    round_log: dict[str, Any],
    server_optimizer: dict[str, Any] | None = None,
) -> None:
    """The global bundle after a round, with the config, the round's privacy numbers and FedAdam's moments (atomic)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    saved = {"state": arrays.to_torch_state_dict(), "config": to_plain(config.__dict__), "round": to_plain(round_log)}
    if server_optimizer is not None:
        saved["server_optimizer"] = server_optimizer
    torch.save(saved, tmp)
    tmp.replace(path)
