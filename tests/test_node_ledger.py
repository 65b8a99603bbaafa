"""A deployed node's ledger belongs to the node: nothing the server sends (its seed, reproducible-noise)
resets the budget or weakens the noise; edited data continues the ledger; a new ledger is an operator's act."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
from click.testing import CliRunner
from flwr.app import ConfigRecord, RecordDict

from fedsynth.client import data as client_data
from fedsynth.client.budget import NodeBudget
from fedsynth.client.data import check_node_settings, node_data
from fedsynth.client.handlers import handle_query, handle_statistics
from fedsynth.common.config.run import RunConfig
from fedsynth.common.config.sections import SplitConfig
from fedsynth.common.data.cleaning_report import CleaningReport
from fedsynth.common.data.interactions import Interactions
from fedsynth.common.data.split import split_users_by_id
from fedsynth.common.errors import ConfigError
from fedsynth.common.federated import wire
from fedsynth.common.privacy.accounting import DPEvent
from fedsynth.common.privacy.ledger import PrivacyLedger, RunIdentity
from fedsynth.simulations.cli import cli

SMALL = {"vae-batch-size": 32, "gan-batch-size": 32, "vae-hidden": 32, "vae-latent": 8, "num-server-rounds": 1}


def write_node_files(directory: Path, users: int = 120, items: int = 40, seed: int = 0) -> dict[str, str]:
    """A node's own CSV (user, item, rating) and the shared catalogue; returns its node config."""
    rng = np.random.default_rng(seed)
    lines = ["user,item,rating"]
    for user in range(users):
        for item in rng.choice(items, size=8, replace=False):
            lines.append(f"u{user},i{item},5")
    data, catalogue = directory / "silo.csv", directory / "catalogue.txt"
    data.write_text("\n".join(lines) + "\n")
    catalogue.write_text("\n".join(f"i{j}" for j in range(items)) + "\n")
    ledgers = directory / "ledgers"
    ledgers.mkdir(exist_ok=True)
    return {"data-path": str(data), "catalogue-path": str(catalogue), "ledger-dir": str(ledgers), "max-epsilon": "4"}


def planned(rounds: int = 1) -> RecordDict:
    return RecordDict({wire.CONFIG: ConfigRecord({wire.PLANNED_ROUNDS: rounds})})


def statistics_release(node_config: dict[str, str], run_config: dict[str, object], run_key: str) -> RecordDict:
    """What the node answers to a statistics request of a run with ``run_config``, as its ClientApp does."""
    config = RunConfig.from_run_config({**SMALL, **run_config})
    check_node_settings(node_config, config)
    rows = node_data(node_config, config).train
    budget = NodeBudget.from_node_config(node_config, Path("unused"))
    return handle_statistics(planned(), rows, config, RecordDict(), budget, RunIdentity(1, run_key))


def admission(node_config: dict[str, str], run_config: dict[str, object], run_key: str) -> RecordDict:
    config = RunConfig.from_run_config({**SMALL, **run_config})
    data = node_data(node_config, config)
    budget = NodeBudget.from_node_config(node_config, Path("unused"))
    request = RecordDict({wire.CONFIG: ConfigRecord({wire.PLANNED_ROUNDS: 1, wire.FIRST_ROUND: 1})})
    return handle_query(request, data.train, list(data.item_ids), config, RecordDict(), budget, RunIdentity(1, run_key))


def spent(node_config: dict[str, str]) -> list[float]:
    return [
        ledger.spent()["total"] for ledger in map(PrivacyLedger.load, Path(node_config["ledger-dir"]).glob("*.json"))
    ]


def test_a_new_run_seed_does_not_give_a_deployed_node_a_fresh_budget(tmp_path: Path) -> None:
    """Finding 2: node capped at 4, a run at 4 with seed 0 spends it; the same node with seed 1 is refused."""
    node = write_node_files(tmp_path)
    first = statistics_release(node, {"epsilon": 4.0, "statistics-share": 0.99, "seed": 0}, "a" * 32)
    assert first[wire.METRICS][wire.REFUSED] == 0  # type: ignore[index]
    before = spent(node)

    again = admission(node, {"epsilon": 4.0, "seed": 1}, "b" * 32)

    assert again[wire.METRICS][wire.REFUSED] == 1  # type: ignore[index]
    assert "above this silo's cap 4" in str(again[wire.CONFIG][wire.REASON])  # type: ignore[index]
    assert spent(node) == before and len(before) == 1  # one ledger, nothing more spent


def test_the_node_split_ignores_the_run_seed(tmp_path: Path) -> None:
    node = write_node_files(tmp_path)
    configs = [RunConfig.from_run_config({**SMALL, "seed": seed}) for seed in (0, 1)]

    splits = [node_data(node, config) for config in configs]

    assert same(splits[0].train, splits[1].train)
    other = node_data({**node, "split-seed": "7"}, configs[0])  # the node's own choice moves it
    assert not same(other.train, splits[0].train)


def test_an_edited_data_file_continues_the_same_ledger(tmp_path: Path) -> None:
    node = write_node_files(tmp_path, users=120)
    statistics_release(node, {"epsilon": 2.0, "seed": 0}, "a" * 32)
    spent_before = spent(node)[0]
    write_node_files(tmp_path, users=130, seed=1)  # the file grows and changes
    client_data._from_file.cache_clear()

    statistics_release(node, {"epsilon": 2.0, "seed": 0}, "b" * 32)

    (ledger,) = map(PrivacyLedger.load, Path(node["ledger-dir"]).glob("*.json"))
    assert ledger.spent()["total"] > spent_before  # composed with the first release, not a fresh ledger
    assert any("data_changed" in entry for entry in ledger.history)


def test_a_deployed_node_refuses_reproducible_noise_before_anything_is_spent(tmp_path: Path) -> None:
    """Finding 3: the server knows the seed, so noise derived from it could be subtracted."""
    node = write_node_files(tmp_path)
    config = RunConfig.from_run_config({**SMALL, "reproducible-noise": True})

    with pytest.raises(ConfigError, match="reproducible-noise"):
        check_node_settings(node, config)
    check_node_settings({"partition-id": 0, "num-partitions": 2}, config)  # simulation: allowed (a study tool)
    assert list(Path(node["ledger-dir"]).glob("*")) == []


@pytest.mark.usefixtures("flower_task_identity")
def test_the_client_app_refuses_reproducible_noise_in_its_reply(tmp_path: Path) -> None:
    from flwr.app import Context, Message

    from fedsynth.client.app import build_client_app

    node = write_node_files(tmp_path)
    app = build_client_app({**SMALL, "reproducible-noise": True})
    context = Context(run_id=1, node_id=1, node_config=node, state=RecordDict(), run_config={})  # type: ignore[arg-type]
    message = Message(planned(), dst_node_id=1, message_type=f"query.{wire.STATISTICS}")
    message.metadata.__dict__["_message_id"] = message.object_id

    reply = app(message, context)

    assert reply.content[wire.METRICS][wire.REFUSED] == 1  # type: ignore[index]
    assert "reproducible-noise" in str(reply.content[wire.CONFIG][wire.REASON])  # type: ignore[index]
    assert list(Path(node["ledger-dir"]).glob("*.json")) == []


def test_legacy_split_keyed_ledgers_are_adopted_by_the_new_node_ledger(tmp_path: Path) -> None:
    node = write_node_files(tmp_path)
    legacy = PrivacyLedger.open(Path(node["ledger-dir"]), "ab" * 32, 1e-3, 4.0, 4.0)
    legacy.record([DPEvent("statistics", 1.0, 1.0, 1)], "statistics", RunIdentity())

    statistics_release(node, {"epsilon": 1.0, "seed": 0}, "a" * 32)

    node_ledger = PrivacyLedger.load(next(Path(node["ledger-dir"]).glob("ledger-node-*.json")))
    assert DPEvent("statistics", 1.0, 1.0, 1) in node_ledger.events
    assert any(entry.get("adopted") == legacy.path.name for entry in node_ledger.history)


def test_starting_a_new_ledger_is_a_recorded_act_on_the_node(tmp_path: Path) -> None:
    node = write_node_files(tmp_path)
    statistics_release(node, {"epsilon": 2.0, "seed": 0}, "a" * 32)
    ledger_dir = Path(node["ledger-dir"])

    refused = CliRunner().invoke(cli, ["ledger", "new", "--ledger-dir", str(ledger_dir), "--reason", " "])
    done = CliRunner().invoke(cli, ["ledger", "new", "--ledger-dir", str(ledger_dir), "--reason", "data deleted"])
    statistics_release(node, {"epsilon": 2.0, "seed": 0}, "b" * 32)

    assert refused.exit_code != 0 and "--reason" in refused.output
    assert done.exit_code == 0, done.output
    (reason,) = ledger_dir.glob("archive/*/reason.json")
    assert json.loads(reason.read_text())["reason"] == "data deleted"
    (fresh,) = map(PrivacyLedger.load, ledger_dir.glob("ledger-*.json"))
    assert any("after_archive" in entry for entry in fresh.history)


@pytest.mark.usefixtures("flower_task_identity")
def test_a_deployed_node_ignores_the_run_configs_ledger_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The server sends the run config: a ledger-dir of its choosing would be a fresh, empty ledger."""
    from flwr.app import Context, Message

    from fedsynth.client.app import build_client_app

    node = write_node_files(tmp_path)
    del node["ledger-dir"]
    monkeypatch.setenv("FEDSYNTH_LEDGER_DIR", str(tmp_path / "node-default"))
    app = build_client_app({**SMALL, "ledger-dir": str(tmp_path / "server-chosen")})
    context = Context(run_id=1, node_id=1, node_config=node, state=RecordDict(), run_config={})  # type: ignore[arg-type]
    message = Message(planned(), dst_node_id=1, message_type=f"query.{wire.STATISTICS}")
    message.metadata.__dict__["_message_id"] = message.object_id

    app(message, context)

    assert not (tmp_path / "server-chosen").exists()
    assert len(list((tmp_path / "node-default").glob("ledger-node-*.json"))) == 1


def test_the_node_split_of_other_users_does_not_move_when_a_user_is_added() -> None:
    """Add/remove adjacency: one more user leaves every other user's side and fold-in / target cut unchanged
    (a seeded permutation of all users, the simulation's split, moves about a tenth of them)."""
    rng = np.random.default_rng(0)
    dense = (rng.random((400, 60)) < 0.15).astype(np.float32)
    dense[:, :3] = 1

    def split_of(rows: np.ndarray, ids: list[str]) -> dict[str, tuple[str, frozenset[str]]]:
        items = np.array([f"i{j}" for j in range(60)], dtype=object)
        interactions = Interactions(sp.csr_matrix(rows), np.asarray(ids, dtype=object), items, CleaningReport("t"))
        split = split_users_by_id(interactions, SplitConfig(seed=3))
        sides = {ids[u]: ("train", frozenset()) for u in split.train_users}
        for name, held in (("validation", split.validation), ("test", split.test)):
            for row, user in enumerate(held.users):
                sides[ids[user]] = (name, frozenset(items[held.target[row].indices]))
        return sides

    ids = [f"u{k}" for k in range(400)]
    before = split_of(dense[:399], ids[:399])
    after = split_of(dense, ids)

    assert {u: after[u] for u in before} == before
    assert len({side for side, _ in before.values()}) == 3  # every side is used


def test_a_moved_data_file_adopts_the_old_node_ledger(tmp_path: Path) -> None:
    node = write_node_files(tmp_path)
    statistics_release(node, {"epsilon": 2.0, "seed": 0}, "a" * 32)
    spent_before = spent(node)[0]
    moved = tmp_path / "moved.csv"
    Path(node["data-path"]).rename(moved)
    client_data._from_file.cache_clear()

    statistics_release({**node, "data-path": str(moved)}, {"epsilon": 2.0, "seed": 0}, "b" * 32)

    (ledger,) = map(PrivacyLedger.load, Path(node["ledger-dir"]).glob("ledger-*.json"))  # one live ledger
    assert ledger.spent()["total"] > spent_before
    assert any("adopted" in entry for entry in ledger.history)


def test_two_processes_recording_at_once_cannot_both_spend_the_last_budget(tmp_path: Path) -> None:
    """Each opened the ledger before the other recorded: the second record re-reads under the lock and refuses."""
    first = PrivacyLedger.open(tmp_path, "ab" * 32, 1e-3, 1.0, 1.0)
    second = PrivacyLedger.open(tmp_path, "ab" * 32, 1e-3, 1.0, 1.0)
    release = [DPEvent("statistics", 3.0, 1.0, 1)]  # ε 0.83 each, 1.26 both: the cap of 1 holds one
    first.check(release)
    second.check(release)

    first.record(release, "statistics", RunIdentity(1, "a" * 32))
    with pytest.raises(Exception, match="another run recorded on this node"):
        second.record(release, "statistics", RunIdentity(2, "b" * 32))

    assert len(PrivacyLedger.load(first.path).events) == 1


def test_the_node_sets_its_own_delta_not_the_server(tmp_path: Path) -> None:
    node = {**write_node_files(tmp_path), "delta": "0.0005"}

    reply = statistics_release(node, {"epsilon": 2.0, "delta": 0.008}, "a" * 32)

    assert reply[wire.METRICS][wire.DELTA] == pytest.approx(0.0005)  # type: ignore[index]
    (ledger,) = map(PrivacyLedger.load, Path(node["ledger-dir"]).glob("ledger-*.json"))
    assert ledger.delta == pytest.approx(0.0005)


def same(a: sp.csr_matrix, b: sp.csr_matrix) -> bool:
    return a.shape == b.shape and (a != b).nnz == 0


def test_a_cap_change_does_not_wipe_a_release_another_process_recorded(tmp_path: Path) -> None:
    stale = PrivacyLedger.open(tmp_path, "ab" * 32, 1e-3, 4.0, 4.0)
    other = PrivacyLedger.open(tmp_path, "ab" * 32, 1e-3, 4.0, 4.0)
    other.record([DPEvent("statistics", 3.0, 1.0, 1)], "statistics", RunIdentity(2, "b" * 32))

    stale.change_cap(2.0, "operator")

    on_disk = PrivacyLedger.load(stale.path)
    assert on_disk.events == [DPEvent("statistics", 3.0, 1.0, 1)] and on_disk.max_epsilon == 2.0
