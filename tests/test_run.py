"""``fedsynth run``: settings from TOML and options, the whole pipeline end to end, resumption."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from common.errors import ConfigError
from simulations.cli import cli, main
from simulations.jobs import resolve_run_config

TINY_TOML = """
central-vae-epochs = 2
vae-hidden = 32
vae-latent = 8
synthetic-users = 120
recommenders = "popularity,ease,multvae"
"""


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


@pytest.mark.slow
def test_run_end_to_end_then_resume_without_resetting_the_budget(tmp_path: Path) -> None:
    config_file = tmp_path / "tiny.toml"
    config_file.write_text(TINY_TOML)
    out = tmp_path / "run"
    args = [
        "run",
        "--config",
        str(config_file),
        "--clients",
        "2",
        "--rounds",
        "2",
        "--epsilon",
        "4",
        "--gen-users",
        "240",
        "--gen-items",
        "300",
        "--vae-batch-size",
        "32",
        "--gan-batch-size",
        "32",
        "--discriminator-steps",
        "2",
        "--out",
        str(out),
    ]

    first = CliRunner().invoke(cli, args)

    assert first.exit_code == 0, first.output
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
    ):
        assert (out / name).is_file(), name
    metrics = json.loads((out / "metrics.json").read_text())
    privacy = metrics["privacy"]
    assert 3.5 < privacy["epsilon_max"] <= 4.0 + 1e-3 and len(privacy["epsilon_per_client"]) == 2
    assert 0 < privacy["delta"] < 1 / 80
    for row in (
        "synthetic/ease",
        "synthetic/multvae",
        "synthetic-gan/ease",
        "fedvae",
        "popularity",
        "fedsynth-prior",
        "dp-popularity",
        "dp-ease",
        "real/ease",
        "real/multvae",
    ):
        assert 0 <= metrics["recommenders"][row]["ndcg@10"] <= 1, row
    assert set(metrics["utility_retention"]) == {"metric", "popularity", "ease", "multvae"}
    assert {"popularity_jsd", "dcr_median_synthetic", "identical_share"} <= set(metrics["fidelity"]["synthetic"])
    assert metrics["evaluation"]["real/ease"]["clients"] == 2
    synthetic = pd.read_parquet(out / "synthetic.parquet")
    assert synthetic["user"].nunique() == 120
    meta = json.loads((out / "synthetic_meta.json").read_text())
    assert meta["synthesizer"] == "vae" and meta["privacy"]["epsilon_max"] == privacy["epsilon_max"]
    assert "| real/ease |" in (out / "report.md").read_text()
    baselines = metrics["baselines"]
    for name in ("dp-popularity", "dp-ease"):  # each alone at the target epsilon, per client
        assert all(3.5 < e <= 4.0 + 1e-3 for e in baselines[name]["epsilon_per_client"]), name
    assert "## DP baselines" in (out / "report.md").read_text()

    again = CliRunner().invoke(cli, args)
    assert again.exit_code != 0 and "already holds a complete run" in str(again.exception)

    # Interrupt after round 1: the last checkpoint and every final output are gone, the ledgers stay.
    for name in ("metrics.json", "report.md", "synthetic.parquet", "checkpoints/round-2.pt"):
        (out / name).unlink()
    resumed = CliRunner().invoke(cli, args)

    assert resumed.exit_code == 0, resumed.output
    assert "resuming" in resumed.output
    train = json.loads((out / "train.json").read_text())
    assert len(train["rounds"]) == 2
    # round 2 was paid for: each node sends its saved reply again (same run key), spending nothing more
    assert len(train["rounds"][1]["trained"]) == 2 and sorted(train["rounds"][1]["replayed"]) == sorted(
        train["rounds"][1]["trained"]
    )
    assert json.loads((out / "metrics.json").read_text())["privacy"]["epsilon_max"] == pytest.approx(
        privacy["epsilon_max"]
    )


@pytest.mark.slow
def test_ctrl_c_leaves_a_consistent_directory_stops_every_process_and_resumes(tmp_path: Path) -> None:
    import os
    import signal
    import subprocess
    import sys
    import time

    from simulations.runner import _matching_pids

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
