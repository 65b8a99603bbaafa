"""A server that sends requests out of order or under the wrong name gets refusals, never an extra release.

Each test plays a malicious server against real ClientApps in this process (the in-process grid of
tests/test_secure_release.py) and checks what the nodes' ledgers hold afterwards.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import scipy.sparse as sp
from flwr.app import RecordDict

from fedsynth.client.budget import NodeBudget
from fedsynth.client.evaluation import handle_dp_evaluate
from fedsynth.common.config.run import RunConfig
from fedsynth.common.config.sections import EvalConfig
from fedsynth.common.data.prepare import prepare
from fedsynth.common.data.split import HeldOutUsers
from fedsynth.common.federated import wire
from fedsynth.common.federated.protocol import NoisySums
from fedsynth.common.privacy.ledger import RunIdentity
from fedsynth.common.privacy.releases.cooccurrence import COOCCURRENCE, cooccurrence_quantizer
from fedsynth.common.privacy.releases.statistics import STATISTICS, statistics_quantizer
from fedsynth.common.recommenders import MostPopular
from fedsynth.server import secure_release
from fedsynth.server.admission import RunFailed
from fedsynth.server.evaluation import evaluation_request
from fedsynth.server.federation import query_statistics
from fedsynth.server.secure_release import masked_stage, secure_setup
from tests.test_secure_release import SETTINGS, InProcessGrid, nothing_spent

pytestmark = pytest.mark.usefixtures("flower_task_identity")

IDENTITY = {wire.RUN_KEY: "k" * 32, wire.REQUESTER: "test"}


def ledger_models(tmp_path: Path, nodes: int) -> list[list[str]]:
    """Each node's ledger events' models, in order."""
    models = []
    for k in range(nodes):
        files = list((tmp_path / f"node-{k}").glob("ledger-*.json"))
        models.append([e["model"] for f in files for e in json.loads(f.read_text())["events"]])
    return models


def setup(tmp_path: Path, nodes: int = 3) -> tuple[RunConfig, InProcessGrid, int]:
    config = RunConfig.from_run_config(SETTINGS)
    return config, InProcessGrid(SETTINGS, nodes, tmp_path), prepare(config.data()).interactions.num_items


def test_a_secure_release_set_up_as_statistics_cannot_be_sent_as_a_cooccurrence(tmp_path: Path) -> None:
    """The keys stage checked and calibrated a statistics release; its masked stage sent as a co-occurrence
    (another check, another noise) is refused by every node, and nothing is spent."""
    config, grid, num_items = setup(tmp_path)
    quantizer = statistics_quantizer(config.privacy().statistics_clip, num_items)
    nodes = grid.get_node_ids()
    ready = secure_setup(grid, nodes, config, STATISTICS, quantizer, IDENTITY, {}, [0])[0]

    items = {wire.MARGINAL_ITEMS: list(range(20))}
    masked, log = masked_stage(grid, ready.shared, {**ready.base, **items}, config, COOCCURRENCE)

    assert masked == {} and sorted(p.node for p in log.refused) == nodes
    assert all("set up for a statistics release, asked for a cooccurrence" in p.reason for p in log.refused)
    assert nothing_spent(tmp_path / "node-0")


def test_a_second_cooccurrence_sent_as_a_statistics_query_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two co-occurrence aggregations set up before either is charged; the first released as planned, the
    second sent to the statistics handler (whose own check, the statistics, still passes): refused, because
    the release it names, the co-occurrence, was already made once. Each ledger holds one co-occurrence."""
    config, grid, _ = setup(tmp_path)
    labels = iter(["k/cooccurrence/a", "k/cooccurrence/b"])
    monkeypatch.setattr(secure_release, "label_for", lambda *_: next(labels))
    items = {wire.MARGINAL_ITEMS: list(range(20))}
    quantizer, nodes = cooccurrence_quantizer(20), grid.get_node_ids()
    first, second = (secure_setup(grid, nodes, config, COOCCURRENCE, quantizer, IDENTITY, items, [0])[0]
                     for _ in range(2))  # fmt: skip

    released, _ = masked_stage(grid, first.shared, first.base, config, COOCCURRENCE)
    again, log = masked_stage(grid, second.shared, second.base, config, STATISTICS)

    assert sorted(released) == nodes and again == {}
    assert all("cooccurrence were already released (and charged) once" in p.reason for p in log.refused)
    assert ledger_models(tmp_path, 3) == [[COOCCURRENCE]] * 3


def test_one_aggregation_is_set_up_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Asking a node for keys again under a label it already holds (a second key pair the server could show
    to some of the others) is refused."""
    config, grid, num_items = setup(tmp_path)
    monkeypatch.setattr(secure_release, "label_for", lambda *_: "k/statistics")
    quantizer, nodes = statistics_quantizer(config.privacy().statistics_clip, num_items), grid.get_node_ids()
    secure_setup(grid, nodes, config, STATISTICS, quantizer, IDENTITY, {}, [0])

    with pytest.raises(RunFailed, match="already set up on this node"):
        secure_setup(grid, nodes, config, STATISTICS, quantizer, IDENTITY, {}, [0])
    assert nothing_spent(tmp_path / "node-0")


def test_a_secure_run_releases_nothing_in_the_clear(tmp_path: Path) -> None:
    """A server that leaves out the secure-aggregation label in a secure run gets refusals, not the plain
    (unmasked) release."""
    config, grid, num_items = setup(tmp_path)

    with pytest.raises(RunFailed, match="without a secure-aggregation label is refused"):
        query_statistics(grid, grid.get_node_ids(), config, num_items, IDENTITY)
    assert all(nothing_spent(tmp_path / f"node-{k}") for k in range(3))


def test_two_dp_evaluations_under_one_label_draw_independent_noise(tmp_path: Path) -> None:
    """Under ``reproducible-noise`` the noise comes from the run's seed and the mechanism's purpose; a server
    that sends one evaluation label twice still gets two draws (the purpose counts the evaluations)."""
    config = RunConfig.from_run_config({"gen-users": 300, "gen-items": 400, "epsilon": 4.0,
                                        "reproducible-noise": True})  # fmt: skip
    train = sp.random(200, 40, density=0.1, format="csr", random_state=0, dtype=np.float32)
    train.data[:] = 1
    fold_in = sp.csr_matrix(np.eye(4, 40, dtype=np.float32))
    held_out = HeldOutUsers(np.arange(4), fold_in, sp.csr_matrix(np.eye(4, 40, k=1, dtype=np.float32)))
    run: dict[str, Any] = {**IDENTITY, wire.PLANNED_ROUNDS: 2, wire.EVALUATION_LABEL: "synthetic/ease"}
    request = evaluation_request(MostPopular.from_counts(np.arange(40.0)), EvalConfig(ks=(10,)), run)
    state, budget = RecordDict(), NodeBudget(tmp_path / "ledger")
    identity = RunIdentity(1, IDENTITY[wire.RUN_KEY], IDENTITY[wire.REQUESTER])

    replies = [handle_dp_evaluate(request, held_out, train, config, state, budget, identity) for _ in range(2)]

    sums = [NoisySums.from_metrics(r.metric_records[wire.METRICS]).sums for r in replies]
    assert sums[0].keys() == sums[1].keys() and all(sums[0][k] != sums[1][k] for k in sums[0])
