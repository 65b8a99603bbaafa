"""Local rounds under secure aggregation: the server gets the survivors' FedAvg from masked fixed-point updates."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord

from fedsynth.client.budget import load_replay
from fedsynth.common.config.run import RunConfig
from fedsynth.common.data.prepare import prepare
from fedsynth.common.errors import FedsynthError
from fedsynth.common.federated import wire
from fedsynth.common.models.bundle import ModelBundle
from fedsynth.common.privacy.ledger import RunIdentity, ledgers_in
from fedsynth.common.secagg.skellam import required_bits
from fedsynth.common.secagg.updates import UPDATE, UpdateQuantizer, apply_update, encode_update, flat, float_entries
from fedsynth.server.admission import RunFailed
from fedsynth.server.federation import train_round
from fedsynth.server.secure_round import update_setups
from tests.test_secure_release import ALLOWED_METRICS, InProcessGrid

SETTINGS: dict[str, Any] = {
    "gen-users": 300,
    "gen-items": 300,
    "vae-batch-size": 16,
    "gan-batch-size": 16,
    "vae-hidden": 16,
    "vae-latent": 8,
    "local-epochs": 1,
    "epsilon": 4.0,
    "num-server-rounds": 2,
    "secure-aggregation": True,
    "reply-timeout": 2.0,
}
IDENTITY = {wire.RUN_KEY: "r" * 32, wire.REQUESTER: "test"}
pytestmark = pytest.mark.usefixtures("flower_task_identity")


def _setup(tmp_path: Path, nodes: int = 3, **extra: Any) -> tuple[RunConfig, InProcessGrid, ArrayRecord]:
    settings = {**SETTINGS, **extra}
    config = RunConfig.from_run_config(settings)
    grid = InProcessGrid(settings, nodes, tmp_path)
    num_items = prepare(config.data()).interactions.num_items
    return config, grid, ArrayRecord(ModelBundle.create(num_items, config.local(), seed=0).state_dict())


def _trained(tmp_path: Path, k: int, server_round: int) -> dict[str, torch.Tensor]:
    """Node k's locally trained state for the round (its saved reply, never sent in the clear)."""
    (ledger,) = ledgers_in(tmp_path / f"node-{k}")
    replay = load_replay(ledger, RunIdentity(1, IDENTITY[wire.RUN_KEY], IDENTITY[wire.REQUESTER]), server_round)
    assert replay is not None
    return replay.arrays


def _fedavg(states: list[dict[str, torch.Tensor]], users: list[int]) -> np.ndarray:
    names = float_entries(states[0])
    return np.average(np.stack([flat(s, names) for s in states]), axis=0, weights=users)


def _users(config: RunConfig, nodes: int) -> list[int]:
    from fedsynth.client.data import node_data

    return [node_data({"partition-id": k, "num-partitions": nodes}, config).train.shape[0] for k in range(nodes)]


def test_the_server_gets_the_users_weighted_fedavg_of_the_masked_updates(tmp_path: Path) -> None:
    config, grid, arrays = _setup(tmp_path)
    outcome = train_round(grid, config, 1, grid.get_node_ids(), arrays, IDENTITY)
    assert outcome.arrays is not None and outcome.log.trained == [100, 101, 102]
    states = [_trained(tmp_path, k, 1) for k in range(3)]
    expected = _fedavg(states, _users(config, 3))
    got = flat(outcome.arrays.to_torch_state_dict(), float_entries(states[0]))
    assert np.max(np.abs(got - expected)) < 1e-6  # float32 storage; the fixed point itself is exact to 2^-25
    start = flat(arrays.to_torch_state_dict(), float_entries(states[0]))
    assert np.max(np.abs(got - start)) > 1e-4  # the round moved the model
    for k in range(3):
        (ledger,) = ledgers_in(tmp_path / f"node-{k}")
        entry = ledger.history[-1]
        assert entry["round"] == 1 and entry["secure_aggregation"] is True and entry["mode"] == "local"
        assert entry["epsilon_total"] == pytest.approx(entry["epsilon_total_own_noise"])  # own DP-SGD noise


def test_the_wire_carries_only_masked_residues_and_no_loss(tmp_path: Path) -> None:
    config, grid, arrays = _setup(tmp_path)
    train_round(grid, config, 1, grid.get_node_ids(), arrays, IDENTITY)
    masked_stage = [m for m in grid.sent if m.metadata.message_type == f"query.{UPDATE}"]
    assert len(masked_stage) == 3 and all(wire.ARRAYS in m.content.array_records for m in masked_stage)
    for reply in grid.replies:
        for record in reply.content.array_records.values():
            assert list(record) == [wire.MASKED] and record[wire.MASKED].numpy().dtype == np.uint64
        metrics = set(reply.content.metric_records.get(wire.METRICS, {}))
        assert metrics <= ALLOWED_METRICS and not metrics & set(wire.LOSS_KEYS)  # no update norm without norm-bound


def test_a_node_lost_after_masking_stays_in_the_average_and_one_lost_before_is_left_out(tmp_path: Path) -> None:
    config, grid, arrays = _setup(tmp_path / "after", nodes=4)
    grid.silent = {103: wire.SECAGG_UNMASK}
    outcome = train_round(grid, config, 1, grid.get_node_ids(), arrays, IDENTITY)
    states = [_trained(tmp_path / "after", k, 1) for k in range(4)]
    names = float_entries(states[0])
    assert outcome.arrays is not None and outcome.log.trained == [100, 101, 102, 103]
    got = flat(outcome.arrays.to_torch_state_dict(), names)
    assert np.max(np.abs(got - _fedavg(states, _users(config, 4)))) < 1e-6

    config, grid, arrays = _setup(tmp_path / "before", nodes=4)
    grid.silent = {101: UPDATE}
    outcome = train_round(grid, config, 1, grid.get_node_ids(), arrays, IDENTITY)
    assert outcome.arrays is not None and outcome.log.trained == [100, 102, 103]
    kept = [0, 2, 3]
    states = [_trained(tmp_path / "before", k, 1) for k in kept]
    users = [_users(config, 4)[k] for k in kept]
    got = flat(outcome.arrays.to_torch_state_dict(), names)
    assert np.max(np.abs(got - _fedavg(states, users))) < 1e-6


def test_too_few_survivors_fail_the_round_and_unmask_nothing(tmp_path: Path) -> None:
    config, grid, arrays = _setup(tmp_path, nodes=3, **{"min-clients": 1})
    grid.silent = {101: wire.SECAGG_UNMASK, 102: wire.SECAGG_UNMASK}
    with pytest.raises(RunFailed, match="answered the unmask stage, the threshold is 2"):
        train_round(grid, config, 1, grid.get_node_ids(), arrays, IDENTITY)


def test_a_resumed_round_sends_its_saved_update_again_masked_afresh_without_new_epsilon(tmp_path: Path) -> None:
    config, grid, arrays = _setup(tmp_path)
    first = train_round(grid, config, 1, grid.get_node_ids(), arrays, IDENTITY)
    spent = [ledgers_in(tmp_path / f"node-{k}")[0].spent()["total"] for k in range(3)]
    again = train_round(grid, config, 1, grid.get_node_ids(), arrays, IDENTITY)
    assert again.log.replayed == [100, 101, 102]
    assert [ledgers_in(tmp_path / f"node-{k}")[0].spent()["total"] for k in range(3)] == spent
    assert first.arrays is not None and again.arrays is not None
    for name, tensor in first.arrays.to_torch_state_dict().items():
        assert torch.equal(tensor, again.arrays.to_torch_state_dict()[name])


def test_fixed_point_updates_round_trip_and_the_bits_hold_the_sum() -> None:
    rng = np.random.default_rng(0)
    start = {"w": torch.from_numpy(rng.normal(size=(50, 4)).astype(np.float32))}
    trained = [{"w": start["w"] + torch.from_numpy(rng.normal(scale=0.01, size=(50, 4)).astype(np.float32))}
               for _ in range(5)]  # fmt: skip
    users = [7, 100, 3, 40, 1]
    quantizer = UpdateQuantizer.for_bundle(200)
    encoded = [encode_update(t, start, n, quantizer) for t, n in zip(trained, users, strict=True)]
    total = np.sum(encoded, axis=0)
    assert np.abs(total).max() < 2 ** (required_bits(sum(users) * quantizer.l2, 0.0, 200) - 1)
    got = apply_update(start, total / quantizer.scale, sum(users))["w"].double().numpy()
    expected = np.average(np.stack([t["w"].double().numpy() for t in trained]), axis=0, weights=users)
    assert np.max(np.abs(got - expected)) < 1e-6  # float32 of the result; the sum itself is off by ≤ 5/(2s·151)
    exact = np.sum([n * (t["w"].double().numpy() - start["w"].double().numpy()) for t, n in zip(trained, users,
                    strict=True)], axis=0).ravel()  # fmt: skip
    assert np.max(np.abs(total / quantizer.scale - exact)) <= 5 / (2 * quantizer.scale)


@pytest.mark.parametrize("moved", [float("nan"), 2.0**11])
def test_a_diverged_update_is_refused_before_anything_is_sent(moved: float) -> None:
    start = {"w": torch.zeros(4)}
    with pytest.raises(FedsynthError, match="the local model diverged"):
        encode_update({"w": torch.tensor([0.0, moved, 0.0, 0.0])}, start, 10, UpdateQuantizer.for_bundle(4))


def _count(grid: InProcessGrid, action: str) -> int:
    return sum(m.metadata.message_type == f"query.{action}" for m in grid.sent)


def test_one_keys_and_shares_exchange_sets_up_several_rounds_each_with_its_own_keys(tmp_path: Path) -> None:
    config, grid, arrays = _setup(tmp_path, **{"num-server-rounds": 3})
    setups = update_setups(grid, config, arrays, IDENTITY)
    results = []
    for server_round in (1, 2, 3):
        outcome = train_round(grid, config, server_round, grid.get_node_ids(), arrays, IDENTITY, setups)
        assert outcome.arrays is not None and outcome.log.trained == [100, 101, 102]
        states = [_trained(tmp_path, k, server_round) for k in range(3)]
        names = float_entries(states[0])
        got = flat(outcome.arrays.to_torch_state_dict(), names)
        assert np.max(np.abs(got - _fedavg(states, _users(config, 3)))) < 1e-6  # each round exact
        results.append(got)
        arrays = outcome.arrays
    assert (_count(grid, wire.SECAGG_KEYS), _count(grid, wire.SECAGG_SHARES)) == (3, 3)  # once, for all 3 rounds
    assert (_count(grid, UPDATE), _count(grid, wire.SECAGG_UNMASK)) == (9, 9)
    keyed = [r for r in grid.replies if wire.CHANNEL_KEY in r.content.config_records.get(wire.CONFIG, {})]
    for reply in keyed:  # three fresh key pairs per node, one per round
        record = reply.content.config_records[wire.CONFIG]
        assert len(set(record[wire.CHANNEL_KEY])) == len(set(record[wire.MASK_KEY])) == 3
    assert not any(name.startswith("secagg-state/") for c in grid.contexts.values() for name in c.state)  # erased


def test_after_a_failed_node_the_next_round_sets_up_anew_and_takes_it_back(tmp_path: Path) -> None:
    config, grid, arrays = _setup(tmp_path, nodes=4, **{"num-server-rounds": 3})
    setups = update_setups(grid, config, arrays, IDENTITY)
    grid.silent = {103: UPDATE}
    first = train_round(grid, config, 1, grid.get_node_ids(), arrays, IDENTITY, setups)
    assert first.log.trained == [100, 101, 102] and [p.node for p in first.log.failed] == [103]
    grid.silent = {}  # node 103 is back (with its state gone, as after a restart)
    grid.contexts[103].state = type(grid.contexts[103].state)()
    assert first.arrays is not None
    second = train_round(grid, config, 2, grid.get_node_ids(), first.arrays, IDENTITY, setups)
    assert second.log.trained == [100, 101, 102, 103]
    assert _count(grid, wire.SECAGG_KEYS) == 4 + 4  # set up again for round 2


def test_a_node_refuses_to_set_up_more_aggregations_than_it_holds(tmp_path: Path) -> None:
    from fedsynth.client.secure import MAX_BATCH
    from fedsynth.server.secure_release import secure_setup

    config, grid, arrays = _setup(tmp_path)
    quantizer = update_setups(grid, config, arrays, IDENTITY).quantizer
    with pytest.raises(RunFailed, match=f"1 to {MAX_BATCH}"):
        secure_setup(grid, grid.get_node_ids(), config, UPDATE, quantizer, IDENTITY, {},
                     list(range(1, MAX_BATCH + 2)))  # fmt: skip


@pytest.mark.slow
def test_a_flower_simulation_secure_aggregates_its_local_rounds(tmp_path: Path) -> None:
    import json

    from click.testing import CliRunner

    from fedsynth.simulations.cli import cli
    from tests.test_secure_release import tiny_toml

    out = tmp_path / "run"
    args = ["run", "--clients", "3", "--rounds", "2", "--epsilon", "4", "--gen-users", "360", "--gen-items", "300",
            "--vae-batch-size", "32", "--gan-batch-size", "32", "--recommenders", "popularity",
            "--secure-aggregation", "--out", str(out), "--config", str(tiny_toml(tmp_path))]  # fmt: skip
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    privacy = json.loads((out / "metrics.json").read_text())["privacy"]
    secure = privacy["secure_aggregation"]
    assert secure["round_mode"] == "local" and any("model update" in part for part in secure["applies_to"])
    train = json.loads((out / "train.json").read_text())
    assert [len(r["trained"]) for r in train["rounds"]] == [3, 3] and not any(r["failed"] for r in train["rounds"])
    from fedsynth.common.federated.wire import LOSS_KEYS

    assert not any(name in r for r in train["rounds"] for name in LOSS_KEYS)  # no loss leaves a silo
    assert "masked: the server sees only the sum" in (out / "report.md").read_text()


def test_secagg_plus_neighbours_give_the_same_fedavg_through_the_client_app(tmp_path: Path) -> None:
    config, grid, arrays = _setup(tmp_path, nodes=6, **{"secagg-neighbours": 2, "gen-users": 360})
    grid.silent = {104: wire.SECAGG_UNMASK}  # lost after masking: rebuilt from its two neighbours' shares
    outcome = train_round(grid, config, 1, grid.get_node_ids(), arrays, IDENTITY)
    assert outcome.arrays is not None and outcome.log.trained == [100, 101, 102, 103, 104, 105]
    states = [_trained(tmp_path, k, 1) for k in range(6)]
    got = flat(outcome.arrays.to_torch_state_dict(), float_entries(states[0]))
    assert np.max(np.abs(got - _fedavg(states, _users(config, 6)))) < 1e-6
    shares_replies = [r for r in grid.replies if wire.SHARES in r.content.config_records.get(wire.CONFIG, {})
                      and wire.CHANNEL_KEY not in r.content.config_records[wire.CONFIG]][:6]  # fmt: skip
    assert all(len(r.content.config_records[wire.CONFIG][wire.SHARES]) == 2 for r in shares_replies)  # neighbours
