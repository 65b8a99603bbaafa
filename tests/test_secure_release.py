"""The secure DP statistics release end to end: the real ClientApp on in-memory nodes, the server's stages.

The grid below delivers each message to the fedsynth ClientApp of an in-memory node (its own
Context, state and ledger directory): no Flower runtime, but every handler and the server's
stage logic are the real ones. A node can be made to go silent from a given stage on.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app import Context, Message, RecordDict

from fedsynth.client.app import build_client_app
from fedsynth.common.config.run import RunConfig
from fedsynth.common.data.prepare import prepare
from fedsynth.common.federated import wire
from fedsynth.common.privacy.accounting import epsilon
from fedsynth.common.privacy.ledger import ledgers_in
from fedsynth.common.privacy.releases.statistics import length_histogram, statistics_contributions
from fedsynth.server.admission import RunFailed
from fedsynth.server.secure_release import secure_statistics
from tests.test_federation import ALLOWED_METRICS as PLAIN_METRICS

SETTINGS: dict[str, Any] = {
    "gen-users": 500,
    "vae-batch-size": 16,
    "gan-batch-size": 16,
    "gen-items": 400,
    "epsilon": 2.0,
    "num-server-rounds": 2,
    "secure-aggregation": True,
    "reply-timeout": 2.0,  # in-process replies arrive at once; only a silent node waits this long
}


pytestmark = pytest.mark.usefixtures("flower_task_identity")


ALLOWED_METRICS = {*PLAIN_METRICS, wire.NOISE_VARIANCE}  # a secure release also says its noise variance


class InProcessGrid:
    """A Grid whose nodes are fedsynth ClientApps in this process; ``silent``: node → first silent action."""

    def __init__(self, run_config: dict[str, Any], nodes: int, tmp_path: Path) -> None:
        self.app = build_client_app()
        self.contexts = {
            100 + k: Context(
                run_id=1,
                node_id=100 + k,
                node_config={"partition-id": k, "num-partitions": nodes},
                state=RecordDict(),
                run_config={**run_config, "ledger-dir": str(tmp_path / f"node-{k}")},
            )
            for k in range(nodes)
        }
        self.silent: dict[int, str] = {}
        self.sent: list[Message] = []
        self.replies: list[Message] = []
        self.unpulled: list[Message] = []

    def get_node_ids(self) -> list[int]:
        return list(self.contexts)

    def push_messages(self, messages: Iterable[Message]) -> list[str]:
        """Deliver each message now (as Flower's grids do, give it its id first); keep the replies for the pull."""
        ids = []
        for message in messages:
            message.metadata.__dict__["_message_id"] = message.object_id
            ids.append(message.metadata.message_id)
            node = message.metadata.dst_node_id
            action = message.metadata.message_type.partition(".")[2] or message.metadata.message_type
            if self.silent.get(node) == action:
                self.silent[node] = "*"  # silent from now on
            if self.silent.get(node) == "*":
                continue
            self.sent.append(message)
            reply = self.app(message, self.contexts[node])
            self.replies.append(reply)
            self.unpulled.append(reply)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> list[Message]:
        wanted = set(message_ids)
        pulled = [r for r in self.unpulled if r.metadata.reply_to_message_id in wanted]
        self.unpulled = [r for r in self.unpulled if r not in pulled]
        return pulled


def run_release(tmp_path: Path, nodes: int = 4, silent: dict[int, str] | None = None, **extra: Any):
    config = RunConfig.from_run_config({**SETTINGS, **extra})
    grid = InProcessGrid({**SETTINGS, **extra}, nodes, tmp_path)
    grid.silent = dict(silent or {})
    identity = {wire.RUN_KEY: "k" * 32, wire.REQUESTER: "test"}
    num_items = prepare(config.data()).interactions.num_items
    statistics, log = secure_statistics(grid, grid.get_node_ids(), config, num_items, identity)
    return config, grid, statistics, log


def nothing_spent(ledger_dir: Path) -> bool:
    return all(not json.loads(p.read_text())["events"] for p in ledger_dir.glob("ledger-*.json"))


def node_rows(config: RunConfig, nodes: int) -> list[Any]:
    from fedsynth.client.data import node_data

    return [node_data({"partition-id": k, "num-partitions": nodes}, config).train for k in range(nodes)]


def test_the_server_gets_the_sum_with_the_central_noise_and_each_node_pays_both_ways(tmp_path: Path) -> None:
    config, _, statistics, log = run_release(tmp_path)
    rows = node_rows(config, 4)
    exact = sum(np.asarray(statistics_contributions(r, config.statistics_clip).sum(axis=0)).ravel() for r in rows)
    released = np.concatenate([statistics.item_counts, statistics.length_histogram])
    error = released - exact
    assert abs(error.std() / statistics.noise_std - 1) < 0.1  # the noise the accounting assumes, no more
    assert statistics.length_histogram.sum() == pytest.approx(
        sum(r.shape[0] for r in rows), abs=6 * statistics.noise_std * 5
    )
    assert log.trained == [100, 101, 102, 103] and log.round == 0
    for ledger_dir in (tmp_path / f"node-{k}" for k in range(4)):
        (ledger,) = ledgers_in(ledger_dir)
        entry = ledger.history[-1]
        assert entry["secure_aggregation"] is True
        assert entry["epsilon_total_own_noise"] > entry["epsilon_total"] > 0
        assert epsilon(ledger.events, ledger.delta) == pytest.approx(entry["epsilon_total"])
    assert log.epsilon_max is not None and log.epsilon_max < config.epsilon  # the statistics share of ε


def test_the_wire_carries_keys_encrypted_shares_and_masked_residues_only(tmp_path: Path) -> None:
    config, grid, _, _ = run_release(tmp_path, nodes=3)
    rows = node_rows(config, 3)
    for reply in grid.replies:
        assert set(reply.content.array_records) <= {wire.ARRAYS}
        for record in reply.content.array_records.values():
            assert list(record) == [wire.MASKED] and record[wire.MASKED].numpy().dtype == np.uint64
        metrics = set(reply.content.metric_records.get(wire.METRICS, {}))
        assert metrics <= ALLOWED_METRICS
    histograms = [length_histogram(r) for r in rows]
    masked = [
        r.content.array_records[wire.ARRAYS][wire.MASKED].numpy() for r in grid.replies if r.content.array_records
    ]
    assert len(masked) == 3
    for vector, histogram in zip(masked, histograms, strict=True):
        assert not np.isin(histogram[histogram > 3], vector).any()  # no raw count shows through


def test_a_node_lost_after_sending_its_vector_is_still_in_the_sum(tmp_path: Path) -> None:
    # ε = 200 keeps the noise on the histogram's total (26 bins) near 3 users, so one node's ~88 users show
    config, _, statistics, log = run_release(tmp_path, nodes=4, silent={103: wire.SECAGG_UNMASK}, epsilon=200.0)
    rows = node_rows(config, 4)
    assert log.trained == [100, 101, 102, 103]
    assert [(p.node, "is in the sum" in p.reason) for p in log.failed] == [(103, True)]
    tolerance = 5 * statistics.noise_std * np.sqrt(statistics.length_histogram.size)
    assert tolerance < rows[3].shape[0] / 2
    assert statistics.length_histogram.sum() == pytest.approx(sum(r.shape[0] for r in rows), abs=tolerance)


def test_a_node_lost_before_its_vector_is_left_out_with_its_noise(tmp_path: Path) -> None:
    config, _, statistics, log = run_release(tmp_path, nodes=4, silent={101: wire.STATISTICS}, epsilon=200.0)
    rows = node_rows(config, 4)
    assert log.trained == [100, 102, 103]
    kept = sum(rows[k].shape[0] for k in (0, 2, 3))
    tolerance = 5 * statistics.noise_std * np.sqrt(statistics.length_histogram.size)
    assert tolerance < rows[1].shape[0] / 2
    assert statistics.length_histogram.sum() == pytest.approx(kept, abs=tolerance)
    assert nothing_spent(tmp_path / "node-1")  # it never released, so it paid nothing


def test_too_few_survivors_fail_the_release_and_unmask_nothing(tmp_path: Path) -> None:
    silent = {101: wire.SECAGG_UNMASK, 102: wire.SECAGG_UNMASK, 103: wire.SECAGG_UNMASK}
    with pytest.raises(RunFailed, match="only 1 node\\(s\\) answered the unmask stage, the threshold is 3") as failed:
        run_release(tmp_path, nodes=4, silent=silent, **{"min-clients": 1})
    for node in (101, 102, 103):  # each missing answer named, with why
        assert f"Node {node}: " in str(failed.value)


def test_a_too_small_bit_width_is_refused_before_anything_is_spent(tmp_path: Path) -> None:
    from fedsynth.common.errors import ConfigError

    with pytest.raises(ConfigError, match=r"secagg-bits 12 cannot hold this secure sum: .* at least 2\d bits"):
        run_release(tmp_path, nodes=3, **{"secagg-bits": 12})
    assert all(nothing_spent(tmp_path / f"node-{k}") for k in range(3))


@pytest.mark.slow
def test_a_flower_simulation_with_secure_aggregation_reports_both_threat_models(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from fedsynth.simulations.cli import cli

    out = tmp_path / "run"
    args = ["run", "--clients", "3", "--rounds", "2", "--epsilon", "2", "--gen-users", "360", "--gen-items", "300",
            "--vae-batch-size", "32", "--gan-batch-size", "32", "--discriminator-steps", "2", "--synthesizers", "vae",
            "--recommenders", "popularity,ease", "--secure-aggregation", "--round-mode", "fedsgd",
            "--out", str(out)]  # fmt: skip
    result = CliRunner().invoke(cli, [*args, "--config", str(tiny_toml(tmp_path))])
    assert result.exit_code == 0, result.output
    privacy = json.loads((out / "metrics.json").read_text())["privacy"]
    assert privacy["secure_aggregation"]["enabled"] is True and privacy["secure_aggregation"]["round_mode"] == "fedsgd"
    assert any("every training round" in part for part in privacy["secure_aggregation"]["applies_to"])
    assert 1.5 < privacy["epsilon_max"] <= 2.0 + 1e-3 < privacy["epsilon_max_own_noise"]
    baselines = json.loads((out / "metrics.json").read_text())["baselines"]
    assert baselines["secure_aggregation"] is True
    for name in ("dp-popularity", "dp-ease"):
        assert all(1.9 < e <= 2.0 + 1e-6 for e in baselines[name]["epsilon_per_client"])
        assert all(e > 2.0 for e in baselines[name]["epsilon_own_noise_per_client"])
    train = json.loads((out / "train.json").read_text())
    assert train["statistics_release"]["trained"] and len(train["statistics_release"]["trained"]) == 3
    assert [len(r["trained"]) for r in train["rounds"]] == [3, 3]  # two FedSGD steps, every silo in each sum
    assert "FedSGD" in (out / "report.md").read_text()


def tiny_toml(root: Path) -> Path:
    path = root / "tiny.toml"
    path.write_text(
        "central-vae-epochs = 2\nvae-hidden = 32\nvae-latent = 8\nsynthetic-users = 120\nmarginal-fit-steps = 20\n"
    )
    return path


def test_the_ledger_keeps_both_threat_models_and_reads_older_files(tmp_path: Path) -> None:
    from fedsynth.common.privacy.ledger import PrivacyLedger
    from fedsynth.simulations.ledger_view import ledger_table

    run_release(tmp_path, nodes=3)
    (ledger,) = ledgers_in(tmp_path / "node-0")
    assert len(ledger.own_noise_events) == len(ledger.events) == 1
    assert ledger.spent_own_noise() > ledger.spent()["total"]
    from rich.console import Console

    console = Console(width=200, record=True)
    console.print(ledger_table(ledger))
    assert "counting only this node's own noise" in console.export_text()
    payload = json.loads(ledger.path.read_text())
    del payload["own_noise_events"]  # a ledger written before secure aggregation existed
    ledger.path.write_text(json.dumps(payload))
    older = PrivacyLedger.load(ledger.path)
    assert older.own_noise_events == older.events


def test_the_accountant_crosscheck_says_which_ledgers_hold_skellam_events(tmp_path: Path) -> None:
    import math

    from fedsynth.common.privacy.crosscheck import crosscheck_ledgers

    run_release(tmp_path, nodes=3)
    (row,) = crosscheck_ledgers(tmp_path / "node-0")
    assert row["skellam_events"] == 1 and math.isnan(row["epsilon_dp_accounting"]) and row["epsilon_opacus"] > 0
