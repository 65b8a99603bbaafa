"""`fedsynth sweep`: cells, resume (skip finished, redo interrupted, record failed), tables and report."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from rich.console import Console

from fedsynth.common.errors import ConfigError
from fedsynth.simulations.cli import main
from fedsynth.simulations.experiments import sweep

TINY = {
    "dataset": "generated",
    "gen-users": 150,
    "gen-items": 300,
    "recommenders": "popularity,ease",
    "dp-baselines": False,
}


def test_parsing_of_epsilons_seeds_and_grid() -> None:
    assert sweep.parse_epsilons("0.5, 1,inf") == [0.5, 1.0, math.inf]
    assert sweep.parse_seeds("3") == [0, 1, 2] and sweep.parse_seeds("4,7") == [4, 7]
    assert sweep.parse_grid(["clients=5,20", "partition=iid,dirichlet:0.3"]) == [
        ("clients", ["5", "20"]),
        ("partition", ["iid", "dirichlet:0.3"]),
    ]
    for bad in ("0,1", "x", ""):
        with pytest.raises(ConfigError, match="--epsilons"):
            sweep.parse_epsilons(bad)
    with pytest.raises(ConfigError, match="not a grid axis"):
        sweep.parse_grid(["learning-rate=1,2"])
    with pytest.raises(ConfigError, match="KEY=V1,V2"):
        sweep.parse_grid(["clients"])


def test_cells_cover_the_grid_and_set_the_run_config(tmp_path: Path) -> None:
    cells = sweep.make_cells([1.0, math.inf], [0, 1], sweep.parse_grid(["clients=2,3", "partition=iid,dirichlet:0.5"]))

    assert len(cells) == 2 * 2 * 2 * 2 and len({c.name for c in cells}) == 16
    cell = sweep.Cell(math.inf, 1, (("clients", "3"), ("partition", "dirichlet:0.5"), ("local-epochs", "2")))
    config = sweep.SweepPlan(tmp_path, [cell], dict(TINY), clients=5).run_config(cell)
    assert config["epsilon"] == 1e9 and config["seed"] == 1 and config["local-epochs"] == 2
    assert config["partition"] == "dirichlet:0.5" and "clients" not in config and cell.clients(5) == 3
    assert config["simulation-reference"] is False and config["ledger-dir"].endswith("ledgers")
    assert cell.name == "eps-inf_seed-1_clients-3_partition-dirichlet-0.5_local-epochs-2"


def fake_metrics(config: dict[str, Any]) -> dict[str, Any]:
    """A metrics.json-shaped result whose numbers depend on ε and seed (the runner is not under test here)."""
    eps = min(config["epsilon"], 20.0)
    value = 0.05 + 0.01 * eps + 0.001 * config["seed"]
    rows = {"synthetic/ease": {"ndcg@10": value, "recall@20": 2 * value}, "dp-popularity": {"ndcg@10": 0.1}}
    return {"privacy": {"epsilon_max": eps * 0.99, "delta": 1e-3}, "recommenders": rows}


class FakeRunner:
    def __init__(self, fail: set[str] | None = None) -> None:
        self.calls: list[str] = []
        self.fail = fail or set()

    def __call__(self, directory: Path, clients: int, config: dict[str, Any]) -> dict[str, Any]:
        self.calls.append(directory.name)
        (directory / "partial-output").write_text("x")
        if directory.name in self.fail:
            raise RuntimeError("simulated crash")
        return fake_metrics(config)


def test_resume_skips_finished_cells_redoes_interrupted_and_records_failed(tmp_path: Path) -> None:
    cells = sweep.make_cells([1.0, 8.0], [0, 1], [])
    plan = sweep.SweepPlan(tmp_path, cells, dict(TINY), clients=2, audit=False)
    console = Console(quiet=True)
    broken = cells[1].name

    first = FakeRunner(fail={broken})
    records = sweep.run_sweep(plan, first, console, reference=False)
    assert first.calls == [c.name for c in cells]
    assert [r["status"] for r in records] == ["ok", "failed", "ok", "ok"]
    assert "simulated crash" in records[1]["error"]
    sweep.finish_sweep(plan, records)  # tables and report also come out with a failed cell, which they name
    assert f"{broken}: RuntimeError: simulated crash" in (tmp_path / "report.md").read_text()

    # An interrupted cell: its directory exists but its record is gone (killed mid-run).
    interrupted = plan.cell_dir(cells[2])
    (interrupted / "cell.json").unlink()
    (interrupted / "stale-file").write_text("from the killed run")

    second = FakeRunner()
    records = sweep.run_sweep(plan, second, console, reference=False)
    assert second.calls == [broken, cells[2].name]  # finished cells skipped; failed retried; interrupted redone
    assert [r["status"] for r in records] == ["ok"] * 4
    assert not (interrupted / "stale-file").exists()

    third = FakeRunner()
    sweep.run_sweep(plan, third, console, reference=False)
    assert third.calls == []


def test_private_cells_get_the_dp_baselines_and_older_complete_cells_have_them_added(tmp_path: Path) -> None:
    cells = sweep.make_cells([2.0, math.inf], [0], [])
    base = {**TINY, "vae-batch-size": 16, "gan-batch-size": 16, "dp-ease-items": 100}
    old = sweep.SweepPlan(tmp_path, cells, base, clients=2, audit=False)
    sweep.run_sweep(old, FakeRunner(), Console(quiet=True), reference=False)  # as before the baselines existed
    on = sweep.SweepPlan(tmp_path, cells, {**base, "dp-baselines": True}, clients=2, audit=False)

    runner = FakeRunner()
    records = sweep.run_sweep(on, runner, Console(quiet=True), reference=False)

    assert runner.calls == []  # nothing retrained
    private, public = records
    assert {"dp-popularity", "dp-ease"} <= set(private["metrics"]["recommenders"])
    assert 0 <= private["metrics"]["recommenders"]["dp-ease"]["ndcg@10"] <= 1
    assert all(1.9 < e <= 2.0 + 1e-6 for e in private["metrics"]["baselines"]["dp-ease"]["epsilon_per_client"])
    assert "dp-ease" not in public["metrics"]["recommenders"]  # no DP, no DP baselines


def test_tables_and_report_have_every_file_and_column(tmp_path: Path) -> None:
    cells = sweep.make_cells([1.0, math.inf], [0, 1], sweep.parse_grid(["clients=2,3"]))
    plan = sweep.SweepPlan(tmp_path, cells, dict(TINY), clients=2, audit=False)
    records = sweep.run_sweep(plan, FakeRunner(), Console(quiet=True), reference=True)

    sweep.finish_sweep(plan, records)

    for name in ("results.csv", "results.parquet", "summary.csv", "report.md", "report.html"):
        assert (tmp_path / name).is_file(), name
    results = pd.read_csv(tmp_path / "results.csv")
    for column in (
        "cell",
        "epsilon_requested",
        "epsilon_spent",
        "delta",
        "seed",
        "private",
        "clients",
        "row",
        "metric",
        "value",
    ):
        assert column in results.columns, column
    assert set(results["row"]) >= {"synthetic/ease", "dp-popularity", "real/ease", "popularity"}
    assert (results[results["metric"] == "retention"]["row"] == "synthetic/ease").all()
    assert not results[results["epsilon_requested"] == math.inf]["private"].any()
    table = pd.read_csv(tmp_path / "summary.csv")
    headline = table[(table["row"] == "synthetic/ease") & (table["metric"] == "ndcg@10")]
    assert len(headline) == 2 * 2 and (headline["seeds"] == 2).all()
    one = headline[(headline["epsilon_requested"] == 1.0) & (headline["clients"] == 2)].iloc[0]
    assert one["mean"] == pytest.approx(0.0605) and one["ci95_low"] < one["mean"] < one["ci95_high"]
    assert len(list((tmp_path / "reference").glob("*.json"))) == 2  # once per seed, shared by the grid
    html = (tmp_path / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 4
    assert "Privacy-utility curve" in (tmp_path / "report.md").read_text()


def test_a_sweep_directory_refuses_other_base_settings(tmp_path: Path) -> None:
    sweep.check_sweep_settings(tmp_path, {"base": dict(TINY), "clients": 2})
    sweep.check_sweep_settings(tmp_path, {"base": dict(TINY), "clients": 2})  # same: resumes
    with pytest.raises(ConfigError, match="gen-users"):
        sweep.check_sweep_settings(tmp_path, {"base": {**TINY, "gen-users": 300}, "clients": 2})


@pytest.mark.slow
def test_fedsynth_sweep_end_to_end_with_audit(tmp_path: Path) -> None:
    """A real 2-cell sweep (ε = 2 and no DP) through Flower's simulation engine, with audits."""
    out = tmp_path / "sweep"
    args = ["sweep", "--epsilons", "2,inf", "--seeds", "1", "--clients", "2", "--rounds", "1", "--out", str(out)]
    args += ["--gen-users", "260", "--gen-items", "300", "--recommenders", "popularity,ease", "--bootstrap", "20"]
    args += [
        "--synthetic-users",
        "200",
        "--synthesizers",
        "vae,gan",
        "--vae-batch-size",
        "32",
        "--gan-batch-size",
        "32",
        "--marginal-fit-steps",  # the fit runs; what it achieves is tested in test_marginals.py
        "20",
    ]

    main(args)

    records = [json.loads((d / "cell.json").read_text()) for d in sorted((out / "cells").iterdir())]
    assert [r["status"] for r in records] == ["ok", "ok"], [r.get("error") for r in records]
    private, non_private = records
    assert private["metrics"]["privacy"]["epsilon_max"] <= 2.0 + 1e-3
    assert math.isinf(non_private["metrics"]["privacy"]["epsilon_max"])  # no DP is reported as ε = ∞
    for record in records:
        assert {"synthetic/dcr", "synthetic/density-ratio", "model/vae-elbo", "model/discriminator"} <= set(
            record["audit"]["attacks"]
        )
        assert record["audit"]["violations"] == []
        assert all(r["relative_difference"] < 0.02 for r in record["accountant"])
    results = pd.read_csv(out / "results.csv")
    assert {"audit/synthetic/dcr", "fidelity/synthetic", "accountant", "real/ease"} <= set(results["row"])
    assert (out / "report.html").is_file() and (out / "summary.csv").is_file()
