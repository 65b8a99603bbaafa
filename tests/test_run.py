"""``fedsynth run``: settings from TOML and options, the whole pipeline end to end, resumption."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from click.testing import CliRunner

from fedsynth.common.errors import ConfigError
from fedsynth.simulations.cli import cli, main
from fedsynth.simulations.jobs import resolve_run_config

TINY_TOML = """
central-vae-epochs = 2
vae-hidden = 32
vae-latent = 8
synthetic-users = 120
recommenders = "popularity,ease,multvae"
marginal-fit-steps = 20
"""  # marginal-fit-steps: the fit runs end to end; what it achieves is tested in test_marginals.py


def test_options_override_the_toml_file_which_overrides_defaults(tmp_path: Path) -> None:
    config_file = tmp_path / "run.toml"
    config_file.write_text("epsilon = 2.0\nsynthetic-users = 50\n[unused]\n")
    config_file.write_text("epsilon = 2.0\nsynthetic-users = 50\n")

    settings = resolve_run_config(config_file, {"epsilon": 4.0, "rounds": 5, "seed": None}, tmp_path / "out")

    assert settings["epsilon"] == 4.0 and settings["synthetic-users"] == 50 and settings["num-server-rounds"] == 5
    assert "seed" not in settings  # not given: the default stands
    assert settings["ledger-dir"] == str((tmp_path / "out" / "ledgers").resolve())


def test_bad_toml_keys_name_the_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config_file = tmp_path / "run.toml"
    config_file.write_text("epsilon = 2.0\nepsilonn = 3.0\n")

    with pytest.raises(ConfigError, match=r"--config .*run.toml: epsilonn|unknown key 'epsilonn' in --config"):
        resolve_run_config(config_file, {}, tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main(["run", "--config", str(config_file), "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    assert "epsilonn" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # nothing started


@dataclass(frozen=True)
class FinishedRun:
    """One tiny ``fedsynth run`` shared by the end-to-end tests below (they read it; the last one resumes it)."""

    args: list[str]
    out: Path
    output: str
    metrics: dict[str, Any]


@pytest.fixture(scope="session")  # session: once per xdist worker, whatever runs between its tests
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> FinishedRun:
    root = tmp_path_factory.mktemp("e2e")
    config_file = root / "tiny.toml"
    config_file.write_text(TINY_TOML)
    out = root / "run"
    args = ["run", "--config", str(config_file), "--clients", "2", "--rounds", "2", "--epsilon", "4",
            "--gen-users", "240", "--gen-items", "300", "--vae-batch-size", "32", "--gan-batch-size", "32",
            "--discriminator-steps", "2", "--marginal-items", "50", "--cooccurrence-min-signal", "0",
            "--out", str(out)]  # fmt: skip

    result = CliRunner().invoke(cli, args)

    assert result.exit_code == 0, result.output
    return FinishedRun(args, out, result.output, json.loads((out / "metrics.json").read_text()))


@pytest.mark.slow
def test_a_run_writes_every_output(finished_run: FinishedRun) -> None:
    for name in (
        "metrics.json",
        "report.md",
        "synthetic.parquet",
        "synthetic-gan.parquet",
        "synthetic_meta.json",
        "train.json",
        "rounds.png",
        "popularity.png",
        "recommenders.png",
        "statistics.npz",
        "cooccurrence.npz",
        "synthetic-fitted-vae.parquet",
        "synthetic-fitted-gan.parquet",
    ):
        assert (finished_run.out / name).is_file(), name
    assert pd.read_parquet(finished_run.out / "synthetic.parquet")["user"].nunique() == 120
    assert "| real/ease |" in (finished_run.out / "report.md").read_text()


@pytest.mark.slow
def test_a_run_reports_its_privacy_per_client(finished_run: FinishedRun) -> None:
    privacy = finished_run.metrics["privacy"]

    # the evaluation's share is set aside (and not spent: exact evaluation in simulation)
    assert 3.0 < privacy["epsilon_max"] < 4.0 and len(privacy["epsilon_per_client"]) == 2
    assert not privacy["evaluation"]["dp"] and privacy["evaluation"]["share"] == 0.1
    assert {"unit", "public", "threat_model", "not_released", "limits"} <= set(privacy["assumptions"])
    assert finished_run.metrics["evaluation"]["mode"].startswith("exact: simulation measurement")
    assert 0 < privacy["delta"] < 1 / 80
    assert all(c["cap"] == 4.0 and c["epsilon_before_run"] == 0.0 for c in privacy["epsilon_per_client"])
    meta = json.loads((finished_run.out / "synthetic_meta.json").read_text())
    assert meta["synthesizer"] == "vae" and meta["privacy"]["epsilon_max"] == privacy["epsilon_max"]


@pytest.mark.slow
def test_a_run_scores_every_row_on_real_held_out_users(finished_run: FinishedRun) -> None:
    metrics = finished_run.metrics
    for row in (
        "synthetic/ease",
        "synthetic/multvae",
        "synthetic-gan/ease",
        "synthetic-fitted-vae/ease",
        "synthetic-fitted-gan/ease",
        "fedvae",
        "popularity",
        "fedsynth-prior",
        "dp-popularity",
        "dp-ease",
        "dp-als",
        "real/ease",
        "real/multvae",
    ):
        assert 0 <= metrics["recommenders"][row]["ndcg@10"] <= 1, row
    retention = metrics["utility_retention"]
    assert set(retention) == {"metric", "popularity", "ease", "multvae", "by_row"}
    assert {"synthetic/multvae", "synthetic-gan/ease", "synthetic-fitted-vae/ease"} <= set(retention["by_row"])
    assert retention["by_row"]["synthetic/ease"] == retention["ease"]
    assert "Retention per downstream model" in (finished_run.out / "report.md").read_text()
    assert {"popularity_jsd", "dcr_median_synthetic", "identical_share"} <= set(metrics["fidelity"]["synthetic"])
    assert metrics["evaluation"]["real/ease"]["clients"] == 2
    assert metrics["marginals"]["released"] and metrics["marginals"]["fitted_row"] == "synthetic-fitted-vae"
    assert metrics["marginals"]["fitted_rows"] == ["synthetic-fitted-vae", "synthetic-fitted-gan"]  # rounds on
    rank = metrics["marginals"]["signal_rank"]  # automatic λ: 1000 with taste structure above the noise, else 3000
    assert metrics["marginals"]["synthetic_ease_l2"] == (1000.0 if rank >= 2 else 3000.0)
    assert metrics["marginals"]["fit_loss"] == "likelihood"  # the default
    assert metrics["marginals"]["fit_directions"] == "all"  # the default: every eigen-direction of the release
    assert -1 <= metrics["fidelity"]["synthetic-fitted-vae"]["cooccurrence_correlation"] <= 1


@pytest.mark.slow
def test_the_dp_baselines_each_spend_the_target_per_client(finished_run: FinishedRun) -> None:
    baselines = finished_run.metrics["baselines"]
    for name in ("dp-popularity", "dp-ease", "dp-als"):  # each alone at the target epsilon, per client
        assert all(3.5 < e <= 4.0 + 1e-3 for e in baselines[name]["epsilon_per_client"]), name
    assert "## DP baselines" in (finished_run.out / "report.md").read_text()


@pytest.mark.slow
def test_a_complete_run_directory_is_never_overwritten(finished_run: FinishedRun) -> None:
    again = CliRunner().invoke(cli, finished_run.args)

    assert again.exit_code != 0 and "already holds a complete run" in str(again.exception)


@pytest.mark.slow
def test_an_interrupted_run_resumes_without_resetting_the_budget(finished_run: FinishedRun) -> None:
    """Last in this file: it changes the shared run directory."""
    out = finished_run.out
    # Interrupt after round 1: the last checkpoint and every final output are gone, the ledgers stay.
    for name in ("metrics.json", "report.md", "synthetic.parquet", "checkpoints/round-2.pt"):
        (out / name).unlink()

    resumed = CliRunner().invoke(cli, finished_run.args)

    assert resumed.exit_code == 0, resumed.output
    assert "resuming" in resumed.output
    train = json.loads((out / "train.json").read_text())
    assert len(train["rounds"]) == 2
    # round 2 was paid for: each node sends its saved reply again (same run key), spending nothing more
    assert len(train["rounds"][1]["trained"]) == 2
    assert sorted(train["rounds"][1]["replayed"]) == sorted(train["rounds"][1]["trained"])
    assert json.loads((out / "metrics.json").read_text())["privacy"]["epsilon_max"] == pytest.approx(
        finished_run.metrics["privacy"]["epsilon_max"]
    )


@pytest.mark.slow
def test_ctrl_c_leaves_a_consistent_directory_stops_every_process_and_resumes(tmp_path: Path) -> None:
    import os
    import signal
    import subprocess
    import sys
    import time

    from fedsynth.simulations.runner import _matching_pids

    config_file = tmp_path / "tiny.toml"
    config_file.write_text(TINY_TOML + 'synthesizers = "vae"\n')
    out = tmp_path / "run"
    command = [sys.executable, "-m", "simulations", "run", "--config", str(config_file), "--clients", "2",
               "--rounds", "3", "--gen-users", "240", "--gen-items", "300", "--vae-batch-size", "32",
               "--gan-batch-size", "32", "--out", str(out)]  # fmt: skip
    log = tmp_path / "output.log"
    with log.open("w") as sink:
        process = subprocess.Popen(
            command,
            stdout=sink,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            start_new_session=True,  # its own process group, as a terminal's foreground job
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        deadline = time.monotonic() + 240
        while "round 1/3" not in log.read_text() and time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.2)
        os.killpg(process.pid, signal.SIGINT)  # what Ctrl-C sends to the foreground process group
        code = process.wait(timeout=120)

    assert code == 130, log.read_text()
    assert not (out / "metrics.json").exists()
    assert not list(out.rglob("*.tmp*"))
    assert _matching_pids(out.resolve() / "flwr_home") == []  # SuperLink, simulation and Ray all stopped

    resumed = subprocess.run(command, capture_output=True, text=True, check=False)

    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "resuming" in resumed.stdout
    assert (out / "metrics.json").is_file()


def test_each_run_asks_flower_for_its_own_local_superlink_ports() -> None:
    """`flwr run` hands a run to any SuperLink answering on its local port: each run names fresh ones."""
    from fedsynth.simulations.runner import local_superlink_ports

    first, second = local_superlink_ports(), local_superlink_ports()

    assert set(first) == {"FLWR_LOCAL_SUPERLINK_HTTP_API_PORT", "FLWR_LOCAL_CONTROL_API_PORT"}
    assert all(1024 <= int(port) <= 65535 for port in [*first.values(), *second.values()])
    assert len(set(first.values())) == 2
