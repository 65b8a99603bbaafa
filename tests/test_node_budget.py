"""A silo owns its budget: the cap is fixed on the node's side, a server cannot raise it, refusals spend
nothing and change nothing, a resumed run's charged round is replayed at no cost, and a run that
cannot start, or trained too few, fails with the nodes named."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from flwr.app import ConfigRecord, MetricRecord, RecordDict

from fedsynth.client.budget import NodeBudget
from fedsynth.client.handlers import handle_query, handle_statistics, handle_train
from fedsynth.common.config.run import RunConfig
from fedsynth.common.errors import ConfigError, FedsynthError
from fedsynth.common.federated import wire
from fedsynth.common.federated.round_log import NodeProblem, RoundLog
from fedsynth.common.privacy.accounting import DPEvent
from fedsynth.common.privacy.ledger import PrivacyLedger, RunIdentity, fingerprint
from fedsynth.server.admission import RunFailed, decide_admission, require_quorum, require_training
from fedsynth.server.aggregation import ClientReply
from fedsynth.simulations.cli import cli
from fedsynth.simulations.runner import check_outcome, started_run_id
from tests.test_federation import SMALL, request, rows

RUN = RunIdentity(run_id=11, run_key="a" * 32, requester="server:/out")


def start_query(planned_rounds: int, first_round: int = 1, statistics: bool = True) -> RecordDict:
    fields = {
        wire.PLANNED_ROUNDS: planned_rounds,
        wire.FIRST_ROUND: first_round,
        wire.NEEDS_STATISTICS: int(statistics),
    }
    return RecordDict({wire.CONFIG: ConfigRecord(fields)})


def release(planned_rounds: int) -> RecordDict:
    return RecordDict({wire.CONFIG: ConfigRecord({wire.PLANNED_ROUNDS: planned_rounds})})


def spend_a_whole_run(config: RunConfig, budget: NodeBudget, run: RunIdentity = RUN) -> None:
    """The statistics release and every round of ``config``, as a node answers them."""
    data, state = rows(), RecordDict()
    assert (
        handle_statistics(release(config.num_server_rounds), data, config, state, budget, run)[wire.METRICS][
            wire.REFUSED
        ]
        == 0
    )  # type: ignore[index]
    for server_round in range(1, config.num_server_rounds + 1):
        reply = handle_train(request(config, 50, server_round), data, config, state, budget, run)
        assert reply[wire.METRICS][wire.REFUSED] == 0  # type: ignore[index]


def query(config: RunConfig, budget: NodeBudget, content: RecordDict, run: RunIdentity = RUN) -> RecordDict:
    return handle_query(content, rows(), [str(i) for i in range(50)], config, RecordDict(), budget, run)


def test_the_cap_is_fixed_when_the_ledger_is_created_and_a_run_cannot_raise_it(tmp_path: Path) -> None:
    """Simulation (no node cap): the first run's ε becomes the cap; later runs' ε does not change it."""
    first = RunConfig.from_run_config({**SMALL, "num-server-rounds": 1, "epsilon": 2.0})
    spend_a_whole_run(first, NodeBudget(tmp_path))
    path = next(tmp_path.glob("ledger-*.json"))
    before = path.read_bytes()

    greedy = RunConfig.from_run_config({**SMALL, "num-server-rounds": 1, "epsilon": 40.0})
    refused = query(greedy, NodeBudget(tmp_path), start_query(1), RunIdentity(12, "b" * 32))

    assert refused[wire.METRICS][wire.REFUSED] == 1  # type: ignore[index]
    reason = str(refused[wire.CONFIG][wire.REASON])  # type: ignore[index]
    assert "asks to spend epsilon 40" in reason and "above this silo's cap 2" in reason
    assert path.read_bytes() == before, "a refused request must not touch the ledger"
    assert json.loads(before)["max_epsilon"] == 2.0


def test_a_server_asking_more_than_the_node_cap_is_refused_and_the_ledger_unchanged(tmp_path: Path) -> None:
    """Deployment: the node's max-epsilon is the cap; the statistics release and a round are refused too."""
    budget = NodeBudget.from_node_config({"data-path": "x.csv", "max-epsilon": 3.0}, tmp_path)
    modest = RunConfig.from_run_config({**SMALL, "num-server-rounds": 1, "epsilon": 2.0})
    spend_a_whole_run(modest, budget)
    path = next(tmp_path.glob("ledger-*.json"))
    before = path.read_bytes()
    other = RunIdentity(12, "b" * 32)
    asking = RunConfig.from_run_config({**SMALL, "num-server-rounds": 1, "epsilon": 16.0})

    refusals = [
        query(asking, budget, start_query(1), other),
        handle_statistics(release(1), rows(), asking, RecordDict(), budget, other),
        handle_train(request(asking, 50, 1), rows(), asking, RecordDict(), budget, other),
    ]

    for reply in refusals:
        assert reply[wire.METRICS][wire.REFUSED] == 1  # type: ignore[index]
        assert "above this silo's cap 3" in str(reply[wire.CONFIG][wire.REASON])  # type: ignore[index]
        assert wire.ARRAYS not in reply
    assert path.read_bytes() == before
    assert json.loads(before)["max_epsilon"] == 3.0 and json.loads(before)["cap_source"] == "node config max-epsilon"


def test_a_deployed_node_without_its_own_cap_is_refused_at_the_start(tmp_path: Path) -> None:
    budget = NodeBudget.from_node_config({"data-path": "x.csv"}, tmp_path)
    config = RunConfig.from_run_config({**SMALL, "num-server-rounds": 1})

    reply = query(config, budget, start_query(1))

    assert reply[wire.METRICS][wire.REFUSED] == 1  # type: ignore[index]
    assert "no max-epsilon in its node config" in str(reply[wire.CONFIG][wire.REASON])  # type: ignore[index]
    assert not list(tmp_path.glob("ledger-*.json"))
    with pytest.raises(ConfigError, match="max-epsilon='lots'"):
        NodeBudget.from_node_config({"max-epsilon": "lots"}, tmp_path)


def test_a_lower_node_cap_tightens_and_only_set_cap_raises(tmp_path: Path) -> None:
    print_ = fingerprint(rows())
    ledger = PrivacyLedger.open(tmp_path, print_, 1e-3, 8.0, first_request=8.0)
    ledger.record([DPEvent("vae", 1.0, 0.1, 10)], "round", RUN, round=1)

    assert PrivacyLedger.open(tmp_path, print_, 1e-3, 20.0, 20.0).max_epsilon == 8.0  # a higher node cap: no
    assert PrivacyLedger.open(tmp_path, print_, 1e-3, 5.0, 20.0).max_epsilon == 5.0  # lower: tightened, saved
    assert PrivacyLedger.open(tmp_path, print_, 1e-3, None, 20.0).max_epsilon == 5.0

    result = CliRunner().invoke(cli, ["ledger", "set-cap", "--ledger-dir", str(tmp_path), "--max-epsilon", "12"])

    assert result.exit_code == 0, result.output
    reopened = PrivacyLedger.open(tmp_path, print_, 1e-3, None, 1.0)
    assert reopened.max_epsilon == 12.0
    assert [e.get("by", "") for e in reopened.history if "cap" in e] == [
        "node config max-epsilon (lowered)",
        "fedsynth ledger set-cap: operator",
    ]


def test_ledger_show_prints_cap_spend_remaining_and_who_asked(tmp_path: Path) -> None:
    spend_a_whole_run(
        RunConfig.from_run_config({**SMALL, "num-server-rounds": 2, "epsilon": 2.0}), NodeBudget(tmp_path)
    )

    result = CliRunner().invoke(cli, ["ledger", "show", "--ledger-dir", str(tmp_path)])

    assert result.exit_code == 0, result.output
    assert "cap ε 2" in result.output and "remaining" in result.output
    assert "statistics" in result.output and "round 2" in result.output and "server:/out" in result.output
    ledger = json.loads(next(tmp_path.glob("ledger-*.json")).read_text())
    assert [(e["release"], e["run_id"], e["run_key"]) for e in ledger["history"]] == [
        ("statistics", 11, RUN.run_key),
        ("round", 11, RUN.run_key),
        ("round", 11, RUN.run_key),
    ]
    empty = CliRunner().invoke(cli, ["ledger", "show", "--ledger-dir", str(tmp_path / "none")])
    assert empty.exit_code != 0 and "no ledger-*.json there" in str(empty.exception)


def test_a_resumed_run_gets_a_charged_round_again_at_no_cost(tmp_path: Path) -> None:
    """Same run key, same round: the saved reply, no new events; another run key pays (or is refused)."""
    config = RunConfig.from_run_config({**SMALL, "num-server-rounds": 2, "epsilon": 4.0})
    data, state, budget = rows(), RecordDict(), NodeBudget(tmp_path)
    handle_statistics(release(2), data, config, state, budget, RUN)
    first = handle_train(request(config, 50, 1), data, config, state, budget, RUN)
    events = json.loads(next(tmp_path.glob("ledger-*.json")).read_text())["events"]

    again = handle_train(request(config, 50, 1), data, config, RecordDict(), budget, RUN)
    resumed_start = query(config, budget, start_query(2, first_round=1, statistics=True))

    assert again[wire.METRICS][wire.REPLAYED] == 1  # type: ignore[index]
    first_arrays = first[wire.ARRAYS].to_torch_state_dict()  # type: ignore[union-attr]
    again_arrays = again[wire.ARRAYS].to_torch_state_dict()  # type: ignore[union-attr]
    assert all((first_arrays[k] == again_arrays[k]).all() for k in first_arrays)
    assert json.loads(next(tmp_path.glob("ledger-*.json")).read_text())["events"] == events
    assert resumed_start[wire.METRICS][wire.REFUSED] == 0  # type: ignore[index]  # only round 2 is left to pay
    twice = handle_statistics(release(2), data, config, RecordDict(), budget, RUN)
    assert "already released" in str(twice[wire.CONFIG][wire.REASON])  # type: ignore[index]


def answered(node: int, items: int = 3, refused: str = "") -> ClientReply:
    metrics = {wire.REFUSED: int(bool(refused)), wire.NUM_EXAMPLES: 10, wire.EPSILON: 1.0, wire.EPSILON_CAP: 8.0}
    config = {wire.REASON: refused} if refused else {wire.ITEM_IDS: [str(i) for i in range(items)]}
    return ClientReply(node, RecordDict({wire.METRICS: MetricRecord(metrics), wire.CONFIG: ConfigRecord(config)}))


def test_a_node_that_cannot_take_part_stops_the_run_at_the_start_with_its_name() -> None:
    config = RunConfig(min_clients=2)
    replies = [answered(1), answered(2), answered(3, items=4), answered(4, refused="data-path x: no such file")]
    replies.append(ClientReply(5, None, "node offline"))

    with pytest.raises(RunFailed) as error:
        decide_admission(replies, config)

    message = str(error.value)
    assert "before spending any budget" in message and "allow-degraded=true" in message
    assert "node 3 holds a catalogue of 4 items, not the 3-item catalogue" in message
    assert "node 4 refused: data-path x: no such file" in message and "node 5 failed (node offline)" in message
    assert "node 1" not in message and "node 2" not in message


def test_allow_degraded_leaves_bad_nodes_out_but_keeps_min_clients() -> None:
    replies = [answered(1), answered(2), answered(4, refused="budget")]

    admission = decide_admission(replies, RunConfig(min_clients=2, allow_degraded=True))

    assert admission.nodes == [1, 2] and list(admission.excluded) == [4] and admission.caps == {1: 8.0, 2: 8.0}
    with pytest.raises(RunFailed, match="only 2 node\\(s\\) can take part, min-clients is 3"):
        decide_admission(replies, RunConfig(min_clients=3, allow_degraded=True))


def test_a_stage_with_fewer_than_min_clients_fails_unless_degraded_rounds_are_allowed() -> None:
    log = RoundLog(2, trained=[1], refused=[NodeProblem(2, "budget spent", 8.0)])

    with pytest.raises(RunFailed, match="round 2: only 1 client\\(s\\) answered, min-clients is 2 \\(node 2 refused"):
        require_quorum("round 2", log, RunConfig(min_clients=2))
    require_quorum("round 2", log, RunConfig(min_clients=2, allow_degraded=True))
    require_quorum("round 2", log, RunConfig(min_clients=1))
    with pytest.raises(RunFailed, match="no client trained in any round"):
        require_training([RoundLog(1, refused=log.refused)])


def test_a_failed_run_is_an_error_whatever_flowers_exit_code(tmp_path: Path) -> None:
    (tmp_path / "failed.json").write_text(json.dumps({"reason": "round 1: only 0 client(s) answered"}))
    log = tmp_path / "run.log"

    with pytest.raises(FedsynthError, match="round 1: only 0 client"):
        check_outcome(tmp_path, 0, "finished:completed", log)
    (tmp_path / "failed.json").unlink()
    with pytest.raises(FedsynthError, match="ended as finished:failed"):
        check_outcome(tmp_path, 0, "finished:failed", log)
    with pytest.raises(FedsynthError, match="did not start"):
        check_outcome(tmp_path, 1, None, log)
    check_outcome(tmp_path, 0, "finished:completed", log)
    assert started_run_id("\x1b[92mSuccessfully started run 1234567\x1b[0m") == 1234567


def test_a_serverapp_killed_by_a_fatal_signal_leaves_its_stacks_and_the_cli_names_them(tmp_path: Path) -> None:
    import subprocess
    import sys

    from fedsynth.server.app import crash_path

    script = (
        "import ctypes, sys\n"
        "from pathlib import Path\n"
        "from fedsynth.server.app import fatal_signal_trace\n"
        "with fatal_signal_trace(Path(sys.argv[1])):\n"
        "    ctypes.string_at(0)\n"  # SIGSEGV in native code, as a BLAS crash would be
    )
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path)], cwd=Path(__file__).parents[1], timeout=120)
    assert done.returncode != 0
    assert "Fatal Python error: Segmentation fault" in crash_path(tmp_path).read_text()
    with pytest.raises(FedsynthError, match=r"the ServerApp crashed \(Fatal Python error: Segmentation fault\)"):
        check_outcome(tmp_path, 0, "finished:failed", tmp_path / "run.log")


def test_a_run_without_a_fatal_signal_leaves_no_crash_log(tmp_path: Path) -> None:
    from fedsynth.server.app import crash_path, fatal_signal_trace

    with fatal_signal_trace(tmp_path):
        pass
    with pytest.raises(ValueError), fatal_signal_trace(tmp_path):
        raise ValueError("a Python error is not a crash")
    assert not crash_path(tmp_path).exists()
