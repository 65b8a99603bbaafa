"""The rounds: query clients, broadcast the bundle, aggregate, log ε, checkpoint."""

from __future__ import annotations

import logging
import random
import time
from pathlib import Path
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid

from common import keys
from common.bundle import ModelBundle
from common.errors import FedsynthError
from common.federation import RunConfig
from common.io import to_plain, write_json_atomic
from server.strategy import aggregate_round

log = logging.getLogger("flwr")  # Flower streams its own logger to `flwr run --stream`


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


def query_num_items(grid: Grid, nodes: list[int]) -> int:
    """Ask every client for its item-space size; all must agree."""
    messages = [Message(RecordDict(), dst_node_id=n, message_type=MessageType.QUERY) for n in nodes]
    replies = [r for r in grid.send_and_receive(messages) if not r.has_error()]
    sizes = {int(keys.number(r.content[keys.METRICS], keys.NUM_ITEMS)) for r in replies}
    if len(sizes) != 1:
        raise FedsynthError(
            f"clients disagree on the item space (sizes {sorted(sizes)}); they must share one catalogue."
        )
    return sizes.pop()


def run_federation(grid: Grid, config: RunConfig) -> dict[str, Any]:
    """Run ``config.num_server_rounds`` rounds; writes OUT/checkpoints/round-N.pt and OUT/train.json."""
    out_dir = Path(config.out_dir or "runs/federation")
    sampler = random.Random(config.seed)  # node ids are 64-bit unsigned: keep them Python ints
    nodes = wait_for_nodes(grid, config.min_clients)
    num_items = query_num_items(grid, nodes)
    bundle = ModelBundle.create(num_items, config.local(), seed=config.seed)
    arrays = ArrayRecord(bundle.state_dict())
    rounds: list[dict[str, Any]] = []
    for server_round in range(1, config.num_server_rounds + 1):
        nodes = list(grid.get_node_ids())
        count = max(config.min_clients, round(config.fraction_train * len(nodes)))
        sampled = sorted(sampler.sample(nodes, min(count, len(nodes))))
        request = ConfigRecord({keys.SERVER_ROUND: server_round, keys.PLANNED_ROUNDS: config.num_server_rounds})
        messages = [
            Message(
                RecordDict({keys.ARRAYS: arrays, keys.CONFIG: request}), dst_node_id=n, message_type=MessageType.TRAIN
            )
            for n in sampled
        ]
        outcome = aggregate_round(server_round, list(grid.send_and_receive(messages)))
        outcome.log["sampled"] = sampled
        if outcome.arrays is not None:
            arrays = outcome.arrays
        rounds.append(outcome.log)
        log.info(
            "fedsynth round %d/%d: trained %d, refused %d, failed %d, epsilon max %s",
            server_round,
            config.num_server_rounds,
            len(outcome.log["trained"]),
            len(outcome.log["refused"]),
            len(outcome.log["failed"]),
            outcome.log["epsilon_max"],
        )
        save_checkpoint(out_dir / "checkpoints" / f"round-{server_round}.pt", arrays, config, outcome.log)
    summary = {
        "config": to_plain(config.__dict__),
        "num_items": num_items,
        "rounds": rounds,
        "epsilon_max": max((r["epsilon_max"] for r in rounds if r["epsilon_max"] is not None), default=None),
    }
    write_json_atomic(out_dir / "train.json", summary)
    return summary


def save_checkpoint(path: Path, arrays: ArrayRecord, config: RunConfig, round_log: dict[str, Any]) -> None:
    """The global bundle after a round, with the config and the round's privacy numbers (atomic)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(
        {"state": arrays.to_torch_state_dict(), "config": to_plain(config.__dict__), "round": to_plain(round_log)}, tmp
    )
    tmp.replace(path)
