"""The federation: a client's reply carries only weights and aggregate metrics; the ledger refuses
rounds past the budget and survives restarts; a 2-client simulation through Flower's engine."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from flwr.app import ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from fedsynth.client.budget import NodeBudget
from fedsynth.client.handlers import handle_statistics, handle_train
from fedsynth.common.config.run import RunConfig
from fedsynth.common.federated import wire
from fedsynth.common.federated.round_log import RoundLog
from fedsynth.common.models.bundle import ModelBundle
from fedsynth.common.privacy.ledger import RunIdentity
from fedsynth.server.aggregation import ClientReply
from fedsynth.server.round import aggregate_train

SMALL = {
    "gen-users": 300,
    "gen-items": 400,
    "vae-batch-size": 32,
    "gan-batch-size": 32,
    "discriminator-steps": 3,
    "vae-hidden": 32,
    "vae-latent": 8,
}
ALLOWED_METRICS = {
    wire.NUM_EXAMPLES,
    wire.REFUSED,
    wire.EPSILON,
    wire.EPSILON_VAE,
    wire.EPSILON_GAN,
    wire.EPSILON_STATISTICS,
    wire.EPSILON_COOCCURRENCE,
    wire.EPSILON_OWN_NOISE,
    wire.DELTA,
}


def request(config: RunConfig, num_items: int, server_round: int) -> RecordDict:
    bundle = ModelBundle.create(num_items, config.local(), seed=0)
    return RecordDict(
        {
            wire.ARRAYS: ArrayRecord(bundle.state_dict()),
            wire.CONFIG: ConfigRecord({wire.SERVER_ROUND: server_round, wire.PLANNED_ROUNDS: config.num_server_rounds}),
        }
    )


def rows(n_users: int = 64, n_items: int = 50) -> sp.csr_matrix:
    dense = (np.random.default_rng(0).random((n_users, n_items)) < 0.2).astype(np.float32)
    dense[:, 0] = 1
    return sp.csr_matrix(dense)


def test_reply_holds_only_weights_and_aggregate_metrics(tmp_path: Path) -> None:
    config = RunConfig.from_run_config({**SMALL, "num-server-rounds": 2, "epsilon": 4.0})
    data = rows()

    reply = handle_train(request(config, 50, 1), data, config, RecordDict(), NodeBudget(tmp_path), RunIdentity())

    assert set(reply.keys()) == {wire.ARRAYS, wire.METRICS}
    assert isinstance(reply[wire.ARRAYS], ArrayRecord)
    arrays = reply[wire.ARRAYS].to_torch_state_dict()  # type: ignore[union-attr]
    assert set(arrays) == set(ModelBundle.create(50, config.local(), 0).state_dict())
    assert all(name.startswith(wire.MODEL_PREFIXES) for name in arrays)
    metrics = dict(reply[wire.METRICS])  # type: ignore[arg-type]
    assert set(metrics) <= ALLOWED_METRICS
    assert all(isinstance(v, (int, float)) for v in metrics.values())  # numbers only, no per-user data
    assert metrics[wire.NUM_EXAMPLES] == 64
    assert 0 < metrics[wire.EPSILON] <= 4.0


def test_rounds_past_the_budget_are_refused_even_after_a_restart(tmp_path: Path) -> None:
    # no co-occurrence and no evaluation planned: the statistics and the two rounds then spend the whole cap
    settings = {**SMALL, "num-server-rounds": 2, "epsilon": 2.0, "marginal-items": 0, "evaluation-share": 0.0}
    config = RunConfig.from_run_config(settings)
    data = rows()
    state = RecordDict()
    release = RecordDict({wire.CONFIG: ConfigRecord({wire.PLANNED_ROUNDS: 2})})
    assert (
        handle_statistics(release, data, config, state, NodeBudget(tmp_path), RunIdentity())[wire.METRICS][wire.REFUSED]
        == 0
    )  # type: ignore[index]
    for server_round in (1, 2):
        reply = handle_train(
            request(config, 50, server_round), data, config, state, NodeBudget(tmp_path), RunIdentity()
        )
        assert reply[wire.METRICS][wire.REFUSED] == 0  # type: ignore[index]
    spent = reply[wire.METRICS][wire.EPSILON]  # type: ignore[index]

    # A restarted client: a fresh state, the same data, the same ledger directory.
    refused = handle_train(request(config, 50, 1), data, config, RecordDict(), NodeBudget(tmp_path), RunIdentity())

    assert refused[wire.METRICS][wire.REFUSED] == 1  # type: ignore[index]
    assert refused[wire.METRICS][wire.EPSILON] == pytest.approx(spent)  # type: ignore[index]
    assert "above this silo's cap 2" in str(refused[wire.CONFIG][wire.REASON])  # type: ignore[index]
    assert wire.ARRAYS not in refused
    ledger = json.loads(next(tmp_path.glob("ledger-*.json")).read_text())
    assert [r["round"] for r in ledger["history"]] == [0, 1, 2]


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["fedavg", "fedprox", "fedadam"])
def test_two_clients_one_round_through_flower_simulation(tmp_path: Path, strategy: str) -> None:
    from flwr.simulation import run_simulation

    from fedsynth.client.app import build_client_app
    from fedsynth.server.app import build_server_app

    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    overrides = {
        **SMALL,
        "num-server-rounds": 1,
        "epsilon": 4.0,
        "strategy": strategy,
        "pipeline": "train",  # the rounds (what is checked here); the whole pipeline: tests/test_run.py
        "marginal-fit-steps": 20,  # the fit runs; what it achieves is tested in test_marginals.py
        "out-dir": str(tmp_path),
        "ledger-dir": str(tmp_path / "ledgers"),
    }

    run_simulation(
        build_server_app(overrides),
        build_client_app(overrides),
        num_supernodes=2,
        backend_config={"client_resources": {"num_cpus": 1}},
    )

    train = json.loads((tmp_path / "train.json").read_text())
    (round_one,) = train["rounds"]
    assert len(round_one["trained"]) == 2 and not round_one["refused"] and not round_one["failed"]
    assert 0 < round_one["epsilon_max"] <= 4.0 + 1e-6
    checkpoint = torch.load(tmp_path / "checkpoints" / "round-1.pt", weights_only=False)
    assert ("server_optimizer" in checkpoint) == (strategy == "fedadam")  # FedAdam's moments are checkpointed
    assert train["config"]["strategy"] == strategy
    assert len(list((tmp_path / "ledgers").glob("ledger-*.json"))) == 2


def trained_reply(users: int, epsilon: float, value: float) -> RecordDict:
    metrics = {
        wire.NUM_EXAMPLES: users,
        wire.REFUSED: 0,
        wire.EPSILON: epsilon,
        wire.DELTA: 1e-3,
    }
    return RecordDict(
        {wire.ARRAYS: ArrayRecord({"vae.w": torch.full((2,), value)}), wire.METRICS: MetricRecord(metrics)}
    )


def test_server_reports_max_epsilon_and_fedavg_by_users() -> None:
    refusal = RecordDict(
        {
            wire.METRICS: MetricRecord({wire.REFUSED: 1, wire.NUM_EXAMPLES: 0, wire.EPSILON: 7.5}),
            wire.CONFIG: ConfigRecord({wire.REASON: "budget"}),
        }
    )
    replies = [
        ClientReply(1, trained_reply(300, 2.0, 1.0)),
        ClientReply(2, trained_reply(100, 6.0, 5.0)),
        ClientReply(3, refusal),
        ClientReply(4, None, "node lost"),
    ]

    outcome = aggregate_train(1, replies)

    assert outcome.log.epsilon_max == 7.5  # the refusing client's spend counts; no averaging
    assert outcome.log.epsilon_min == 2.0
    assert outcome.log.trained == [1, 2]
    assert outcome.log.refused[0].node == 3 and outcome.log.failed[0].node == 4
    assert outcome.arrays is not None
    torch.testing.assert_close(
        outcome.arrays.to_torch_state_dict()["vae.w"], torch.full((2,), 2.0)
    )  # (300·1+100·5)/400
    assert outcome.log.losses == {}  # no loss leaves a node (not DP)
    assert RoundLog.from_plain(outcome.log.to_plain()) == outcome.log  # what train.json and checkpoints hold
    assert outcome.log.to_plain()["epsilon_max"] == 7.5
