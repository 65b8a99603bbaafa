"""The fedsynth command: help everywhere, baseline and data jobs, clear errors with exit status 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from fedsynth.simulations.cli import cli, main
from tests.conftest import write

SMALL = ["--gen-users", "200", "--gen-items", "300", "--gen-mean-history", "30"]


@pytest.mark.parametrize(
    "command",
    [
        [], ["baseline"], ["data"], ["run"], ["train"], ["sweep"], ["deploy", "local"], ["deploy", "split-data"],
        ["download"], ["settings"], ["ledger", "show"], ["ledger", "set-cap"],
    ],
)  # fmt: skip
def test_help_on_every_command(command: list[str]) -> None:
    result = CliRunner().invoke(cli, [*command, "--help"])

    assert result.exit_code == 0
    assert "Usage:" in result.output


def test_baseline_writes_results_and_protocol(tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = CliRunner().invoke(
        cli,
        [
            "baseline",
            *SMALL,
            "--recommenders",
            "popularity,ease,multvae",
            "--vae-epochs",
            "3",
            "--vae-hidden",
            "32",
            "--vae-latent",
            "8",
            "--ks",
            "10,20",
            "--out",
            str(out),
        ],
    )

    assert result.exit_code == 0, result.output
    payload = json.loads((out / "baseline.json").read_text())
    assert set(payload["results"]) == {"popularity", "ease", "multvae"}
    assert set(payload["results"]["ease"]) >= {"ndcg@10", "recall@20", "hitrate@10", "coverage@20"}
    protocol = payload["protocol"]
    assert protocol["settings"]["data"]["dataset"] == "generated"
    assert protocol["settings"]["split"]["test_fraction"] == 0.1
    assert protocol["data"]["users"] == 200
    assert any(step["name"] == "implicit feedback" for step in protocol["cleaning"]["steps"])
    assert "implicit feedback" in result.output and "ndcg@10" in result.output


def test_data_command_prints_and_saves_partitions(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        cli, ["data", *SMALL, "--clients", "3", "--partition", "natural:region", "--out", str(tmp_path)]
    )

    assert result.exit_code == 0, result.output
    assert "one client per value" in result.output
    assert (tmp_path / "partitions.csv").is_file() and (tmp_path / "data_summary.json").is_file()


def test_bad_input_exits_2_with_file_and_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path / "e.csv", "u,i,r\n1,2,5\n1,3,five\n")

    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                "baseline",
                "--dataset",
                "csv",
                "--data-path",
                str(path),
                "--user-col",
                "u",
                "--item-col",
                "i",
                "--rating-col",
                "r",
                "--out",
                str(tmp_path / "out"),
            ]
        )

    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"error: {path}, line 3:" in err
    assert not (tmp_path / "out" / "baseline.json").exists()


def test_bad_option_values_are_named(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["baseline", *SMALL, "--recommenders", "svd"])
    assert exit_info.value.code == 2
    assert "--recommenders 'svd'" in capsys.readouterr().err

    with pytest.raises(SystemExit):
        main(["data", *SMALL, "--test-fraction", "1.5"])
    assert "--test-fraction must be in [0, 1)" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--epsilon", "-1"], "--epsilon must be positive"),
        (["--statistics-share", "1.5"], "--statistics-share must be in (0, 1)"),
        (["--dataset", "foo"], "--dataset must be one of"),
        (["--dataset", "movielens", "--data-path", "/nonexistent"], "--data-path /nonexistent: no such file"),
        (["--delta", "0.5"], "--delta 0.5 is not below 1/n"),
        (["--clients", "40"], "Use fewer clients (--clients)"),
        (["--secure-aggregation", "--secagg-threshold", "9"], "secagg-threshold 9 is more than the 5 node(s)"),
        (["--secagg-threshold", "1"], "secagg-threshold must be 0 (a majority) or at least 2"),
        (["--secagg-bits", "4"], "secagg-bits must be 0 (automatic) or in [8, 64]"),
        (["--secure-aggregation", "--epsilon", "inf"], "secure-aggregation adds Skellam DP noise"),
    ],
)
def test_bad_run_values_are_refused_before_flower_starts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], options: list[str], message: str
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["run", *options, "--out", str(tmp_path / "run")])

    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()  # nothing started, nothing written


def test_a_recommender_too_large_to_evaluate_is_named_before_the_run_starts() -> None:
    """The built-in catalogue's n² EASE values (n ≈ 1,675; the generated data's last digits follow the BLAS
    build) against a smaller eval-max-values: a warning that says what to set; the same with enough room
    says nothing; a train-only pipeline evaluates nothing."""
    from fedsynth.common.config.run import RunConfig
    from fedsynth.common.data.prepare import prepare
    from fedsynth.simulations.jobs import preflight

    items = prepare(RunConfig().data()).interactions.matrix.shape[1]
    small = {"eval-max-values": 2_000_000, "recommenders": "popularity,ease"}
    (warning,) = preflight(small, 5)
    assert f"--recommenders ease: at {items:,} items" in warning and f"{items * items:,} values" in warning
    assert f"eval-max-values = {items * items} in a --config file (each copy in flight takes 11 MiB)" in warning
    assert preflight({**small, "eval-max-values": items * items}, 5) == []
    assert preflight({**small, "pipeline": "train"}, 5) == []


def test_installed_console_script_runs() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "simulations", "--help"], capture_output=True, text=True, check=False
    )

    assert result.returncode == 0, result.stderr
    assert "baseline" in result.stdout


@pytest.mark.slow
def test_train_runs_flower_stops_its_superlink_and_the_ledger_refuses_a_second_run(tmp_path: Path) -> None:
    args = [
        "train",
        "--clients",
        "2",
        "--rounds",
        "1",
        "--epsilon",
        "3",
        "--gen-users",
        "300",
        "--gen-items",
        "400",
        "--vae-batch-size",
        "32",
        "--gan-batch-size",
        "32",
        "--discriminator-steps",
        "2",
        "--marginal-fit-steps",  # the fit runs; what it achieves is tested in test_marginals.py
        "20",
        "--ledger-dir",
        str(tmp_path / "ledgers"),
    ]

    first = CliRunner().invoke(cli, [*args, "--out", str(tmp_path / "a")])
    ledgers = {p: p.read_bytes() for p in (tmp_path / "ledgers").glob("ledger-*.json")}
    second = CliRunner().invoke(cli, [*args, "--out", str(tmp_path / "b")])
    greedy = CliRunner().invoke(cli, [*args, "--epsilon", "16", "--out", str(tmp_path / "c")])

    assert first.exit_code == 0, first.output
    (round_one,) = json.loads((tmp_path / "a" / "train.json").read_text())["rounds"]
    assert len(round_one["trained"]) == 2 and 2.5 < round_one["epsilon_max"] <= 3.0 + 1e-6
    assert (tmp_path / "a" / "checkpoints" / "round-1.pt").is_file()
    # The budget was spent by the first run: the second stops at the start, non-zero, with the nodes' reason.
    assert second.exit_code != 0
    assert "before spending any budget" in str(second.exception) and "above this silo's cap 3" in str(second.exception)
    assert not (tmp_path / "b" / "train.json").exists()
    # A run asking for more than the cap (set by the first run's ledgers) cannot raise it.
    assert greedy.exit_code != 0 and "asks to spend epsilon 16" in str(greedy.exception)
    assert {p: p.read_bytes() for p in (tmp_path / "ledgers").glob("ledger-*.json")} == ledgers
    assert len(ledgers) == 2 and all(json.loads(b)["max_epsilon"] == 3.0 for b in ledgers.values())
    from fedsynth.simulations.runner import stop_superlinks

    assert stop_superlinks(tmp_path / "a" / "flwr_home") == 0  # nothing was left running
