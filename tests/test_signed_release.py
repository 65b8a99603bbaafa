"""Signed secure aggregation over Flower messages: ClientApps whose node config names their registered key
and the operator's list (``secagg-signing-key``, ``secagg-trusted-keys``), against the real server steps,
honest and lying."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app import ConfigRecord, Context, Error, Message
from flwr.common.constant import ErrorCode

from fedsynth.common.config.run import RunConfig
from fedsynth.common.data.prepare import prepare
from fedsynth.common.federated import wire
from fedsynth.common.privacy.ledger import ledgers_in
from fedsynth.common.privacy.releases.statistics import statistics_contributions
from fedsynth.common.secagg.protocol import SecAggNode
from fedsynth.server import secure_release
from fedsynth.server.admission import RunFailed
from fedsynth.server.privacy_summary import secure_aggregation_summary
from fedsynth.server.secure_release import secure_statistics
from fedsynth.simulations.deployment.setup import make_node_keys
from tests.test_secure_release import SETTINGS, InProcessGrid, node_rows, nothing_spent

pytestmark = pytest.mark.usefixtures("flower_task_identity")
IDENTITY = {wire.RUN_KEY: "k" * 32, wire.REQUESTER: "test"}


class FlowerLikeGrid(InProcessGrid):
    """The in-process grid with Flower's runtime around each ClientApp call: an exception becomes an error
    reply (and the node's state is not kept), as in a SuperNode's ClientApp process."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        app = self.app

        def run(message: Message, context: Context) -> Message:
            saved = copy.deepcopy(context.state)
            try:
                return app(message, context)
            except Exception as exc:
                context.state = saved
                return Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=str(exc)), reply_to=message)

        self.app = run  # type: ignore[assignment]


def signed_grid(tmp_path: Path, nodes: int = 4, unsigned: tuple[int, ...] = ()) -> InProcessGrid:
    """Nodes 100.. with their own keys; every key on the operator's list; ``unsigned``: nodes given none."""
    keys = make_node_keys(tmp_path / "keys", [f"node-{k}" for k in range(nodes)])
    trusted = tmp_path / "keys" / "trusted.pub"
    trusted.write_bytes(b"".join(k.public.read_bytes() for k in keys))
    grid = FlowerLikeGrid(SETTINGS, nodes, tmp_path)
    for k, context in enumerate(grid.contexts.values()):
        if k not in unsigned:
            context.node_config.update(
                {"secagg-signing-key": str(keys[k].private), "secagg-trusted-keys": str(trusted)}
            )
    return grid


def release(grid: InProcessGrid) -> tuple[RunConfig, Any, Any]:
    config = RunConfig.from_run_config(SETTINGS)
    num_items = prepare(config.data()).interactions.num_items
    statistics, log = secure_statistics(grid, grid.get_node_ids(), config, num_items, IDENTITY)
    return config, statistics, log


def test_a_signed_release_sums_exactly_and_reports_the_active_server_threat_model(tmp_path: Path) -> None:
    grid = signed_grid(tmp_path)
    config, statistics, log = release(grid)

    actions = [m.metadata.message_type.partition(".")[2] for m in grid.sent]
    assert actions.count(wire.SECAGG_CONSISTENCY) == 4 and actions.index(wire.SECAGG_CONSISTENCY) < actions.index(
        wire.SECAGG_UNMASK
    )
    rows = node_rows(config, 4)
    exact = sum(np.asarray(statistics_contributions(r, config.statistics_clip).sum(axis=0)).ravel() for r in rows)
    error = np.concatenate([statistics.item_counts, statistics.length_histogram]) - exact
    assert abs(error.std() / statistics.noise_std - 1) < 0.25  # ~7 standard errors of a std over ~500 entries
    assert log.trained == [100, 101, 102, 103] and (log.secagg_signed, log.secagg_threshold) == (True, 3)
    summary = secure_aggregation_summary(config, [log])
    assert summary["signed"] is True and summary["max_colluding_nodes"] == 1
    assert "malicious (active) server colluding with at most 1 node(s)" in summary["threat_model"]
    assert all(ledgers_in(tmp_path / f"node-{k}")[0].history[-1]["secure_aggregation"] for k in range(4))


def test_a_substituted_key_stops_the_release_before_anything_is_shared_or_spent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server relays its own keys in node 101's place (keeping node 101's signature)."""
    grid = signed_grid(tmp_path)
    relay = secure_release.share_stage

    def substitute(grid_: Any, peers: list[dict[int, tuple[bytes, bytes]]], params: Any, *args: Any) -> Any:
        peers[0][101] = SecAggNode(101, params[0]).advertise()
        return relay(grid_, peers, params, *args)

    monkeypatch.setattr(secure_release, "share_stage", substitute)
    with pytest.raises(RunFailed, match=r"only 0 node.*Node 100: .*node 101's keys do not match their signature"):
        release(grid)
    refusals = sorted(m.error.reason for m in grid.replies if m.has_error())
    assert len(refusals) == 4 and sum("node 101's keys do not match their signature" in r for r in refusals) == 3
    assert any("the key list does not hold this node's keys" in r for r in refusals)  # node 101 itself
    assert all(nothing_spent(tmp_path / f"node-{k}") for k in range(4))


def test_a_node_without_a_signing_key_is_named_by_the_signed_ones(tmp_path: Path) -> None:
    grid = signed_grid(tmp_path, unsigned=(3,))
    with pytest.raises(RunFailed):
        release(grid)
    refusals = [m.error.reason for m in grid.replies if m.has_error()]
    assert len(refusals) == 3 and all("node 103's keys are not signed by a registered node key" in r for r in refusals)
    assert all(nothing_spent(tmp_path / f"node-{k}") for k in range(4))


def test_a_split_view_at_the_consistency_stage_unmasks_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The server tells nodes 100 and 101 that node 103 dropped and the others that it survived, at the
    consistency and the unmask stages: neither set gathers t = 3 signatures, so no node reveals any share.
    (The masked release itself was sent and paid for: the ledgers say so.)"""
    grid = signed_grid(tmp_path)
    relay = secure_release.exchange

    def lying(grid_: Any, action: str, requests: dict[int, ConfigRecord], *args: Any) -> Any:
        if action in (wire.SECAGG_CONSISTENCY, wire.SECAGG_UNMASK):
            told = {100: [100, 101, 102], 101: [100, 101, 102]}  # "node 103 dropped"
            requests = {n: ConfigRecord({**dict(r), **({wire.SECAGG_NODES: told[n]} if n in told else {})})
                        for n, r in requests.items()}  # fmt: skip
        return relay(grid_, action, requests, *args)

    monkeypatch.setattr(secure_release, "exchange", lying)
    with pytest.raises(RunFailed, match="only 0 node"):
        release(grid)
    refusals = [m.error.reason for m in grid.replies if m.has_error()]
    assert len(refusals) == 4 and all("2 node(s) confirmed the survivor set" in r for r in refusals)
    assert all(ledgers_in(tmp_path / f"node-{k}")[0].history[-1]["secure_aggregation"] for k in range(4))
