"""``fedsynth sweep``: the pipeline over a grid of (ε, seed, other settings) cells, resumable.

Layout of ``DIR``::

    cells/<cell>/          one `fedsynth run` directory per cell (+ audit.json, accountant.json, cell.json)
    reference/<data>.json  real-data upper bounds, once per seed / data settings (non-private)
    results.csv/.parquet   one tidy row per (cell, row, metric)
    summary.csv            mean and 95% t-interval over seeds
    report.md / report.html

A cell is complete when ``cell.json`` says ``"status": "ok"``; re-running skips it. A cell
directory without a finished ``cell.json`` was interrupted: it is deleted and redone (its
outputs were never used). A cell that fails records its error in ``cell.json`` and the sweep
goes on; the next run retries it. Each cell has its own client ledgers (``cells/<cell>/ledgers``):
its ε is that of an independent experiment on the same public data.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import shutil
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from fedsynth.common.config.run import RunConfig, epsilon_setting
from fedsynth.common.errors import ConfigError
from fedsynth.common.evaluation.membership_audit import AuditConfig
from fedsynth.common.evaluation.scoring import evaluate
from fedsynth.common.privacy.crosscheck import crosscheck_ledgers
from fedsynth.common.runtime.files import to_plain, write_json_atomic

# Grid axes: `clients` (simulated SuperNodes) and these run-config keys.
GRID_KEYS = ("partition", "synthesizers", "local-epochs", "num-server-rounds", "statistics-share", "vae-share")


@dataclass(frozen=True)
class Cell:
    """One point of the sweep: a target ε (∞ = no DP), a seed and one value per grid axis."""

    epsilon: float
    seed: int
    settings: tuple[tuple[str, str], ...] = ()

    @property
    def name(self) -> str:
        parts = [f"eps-{'inf' if math.isinf(self.epsilon) else f'{self.epsilon:g}'}", f"seed-{self.seed}"]
        parts += [
            f"{key}-{value}".replace(":", "-").replace("/", "-").replace(",", "+") for key, value in self.settings
        ]
        return "_".join(parts)

    def clients(self, default: int) -> int:
        return int(dict(self.settings).get("clients", default))

    def overrides(self) -> dict[str, Any]:
        """Run-config keys this cell sets (grid values typed by :class:`RunConfig`)."""
        given: dict[str, Any] = {"epsilon": epsilon_setting(self.epsilon), "seed": self.seed}
        for key, value in self.settings:
            if key != "clients":
                kind = type(getattr(RunConfig(), key.replace("-", "_")))
                given[key] = kind(value)
        return given


def parse_epsilons(text: str) -> list[float]:
    """``0.5,1,2,inf`` → floats (``inf`` = no DP); each must be positive."""
    values = []
    for token in (t.strip() for t in text.split(",") if t.strip()):
        try:
            value = float(token)
        except ValueError as exc:
            raise ConfigError(f"--epsilons: {token!r} is not a number (use e.g. 0.5,1,2,4,8,inf).") from exc
        if not value > 0:
            raise ConfigError(f"--epsilons: {token} must be positive (inf = no DP).")
        values.append(value)
    if not values:
        raise ConfigError("--epsilons is empty; give e.g. 1,8,inf.")
    return values


def parse_seeds(text: str) -> list[int]:
    """``3`` → seeds 0, 1, 2; ``0,5,7`` → those seeds."""
    try:
        if "," not in text:
            count = int(text)
            if count < 1:
                raise ConfigError(f"--seeds {text}: give a count ≥ 1 or a comma-separated list.")
            return list(range(count))
        return [int(t) for t in text.split(",") if t.strip()]
    except ValueError as exc:
        raise ConfigError(f"--seeds {text!r}: give a count (3) or a comma-separated list of integers (0,1,2).") from exc


def parse_grid(items: tuple[str, ...] | list[str]) -> list[tuple[str, list[str]]]:
    """``["clients=5,20", "partition=iid,dirichlet:0.3"]`` → axes; keys must be known."""
    axes = []
    for item in items:
        key, sep, values = item.partition("=")
        key = key.strip()
        if not sep or not values.strip():
            raise ConfigError(f"--grid {item!r}: write KEY=V1,V2 (e.g. clients=5,20 partition=iid,dirichlet:0.3).")
        if key not in ("clients", *GRID_KEYS):
            raise ConfigError(
                f"--grid {item!r}: {key!r} is not a grid axis; choose from clients, {', '.join(GRID_KEYS)}."
            )
        axes.append((key, [v.strip() for v in values.split(",") if v.strip()]))
    return axes


def make_cells(epsilons: list[float], seeds: list[int], axes: list[tuple[str, list[str]]]) -> list[Cell]:
    """Every combination, grid settings outermost, then ε, then seed."""
    keys = [key for key, _ in axes]
    combos = list(itertools.product(*(values for _, values in axes))) or [()]
    return [
        Cell(eps, seed, tuple(zip(keys, combo, strict=True))) for combo in combos for eps in epsilons for seed in seeds
    ]


def reference_results(config: RunConfig) -> dict[str, dict[str, float]]:
    """Non-private upper bounds on the real training users: real/<rec> and popularity, scored on the test users.

    Fitted exactly as the pipeline's simulation-reference rows; central evaluation on the
    test users equals their federated evaluation (tested).
    """
    from fedsynth.common.data.prepare import prepare
    from fedsynth.server.pipeline import EVAL, build_recommender, real_label

    split = prepare(config.data()).split
    names = dict.fromkeys([*config.recommender_names(), "popularity"])
    return {
        real_label(name): evaluate(build_recommender(name, config, config.ease_l2).fit(split.train), split.test, EVAL)
        for name in names
    }


def baseline_results(config: RunConfig, clients: int) -> tuple[dict[str, dict[str, float]], dict[str, Any]]:
    """The simple DP baselines at the cell's ε, from the cell's client partitions, scored on the test users.

    The same rows as a ``fedsynth run`` with ``simulation-reference`` computes (sweep cells run
    without it, so the sweep adds them); central evaluation equals federated evaluation.
    """
    from fedsynth.common.data.prepare import prepare
    from fedsynth.server.pipeline import EVAL, simulated_baselines

    prepared = prepare(config.data())
    recommenders, summary = simulated_baselines(prepared, config, clients)
    return {label: evaluate(model, prepared.split.test, EVAL) for label, model in recommenders.items()}, summary


def add_baselines(plan: SweepPlan, cell: Cell, record: dict[str, Any]) -> bool:
    """Add the DP baseline rows to a complete cell's record (private cells with dp-baselines on); False if none."""
    config = RunConfig.from_run_config(plan.run_config(cell))
    if not (config.dp_baselines and config.privacy().private) or "dp-ease" in record["metrics"]["recommenders"]:
        return False
    results, summary = baseline_results(config, cell.clients(plan.clients))
    record["metrics"]["recommenders"].update(results)
    record["metrics"]["baselines"] = summary
    return True


@dataclass
class SweepPlan:
    """What a sweep runs: the cells, the base run config (without ε / seed / grid) and the clients."""

    out: Path
    cells: list[Cell]
    base: dict[str, Any]
    clients: int
    audit: bool = True
    audit_config: AuditConfig = field(default_factory=AuditConfig)

    def cell_dir(self, cell: Cell) -> Path:
        return self.out / "cells" / cell.name

    def run_config(self, cell: Cell) -> dict[str, Any]:
        out = self.cell_dir(cell)
        return {
            **self.base,
            **cell.overrides(),
            "pipeline": "full",
            "simulation-reference": False,  # upper bounds once per seed (reference/), fidelity by the audit step
            "out-dir": str(out.resolve()),
            "ledger-dir": str((out / "ledgers").resolve()),
        }


def cell_status(directory: Path) -> str:
    """``ok`` (complete), ``failed`` (recorded error), ``interrupted`` (partial) or ``new``."""
    record = directory / "cell.json"
    if record.is_file():
        return str(json.loads(record.read_text()).get("status", "interrupted"))
    return "interrupted" if directory.exists() else "new"


CellRunner = Callable[[Path, int, dict[str, Any]], dict[str, Any]]


def run_cell(plan: SweepPlan, cell: Cell, runner: CellRunner) -> dict[str, Any]:
    """Run one cell from scratch: the pipeline, then the audit and the accountant cross-check."""
    from fedsynth.simulations.experiments.audit import audit_run

    directory = plan.cell_dir(cell)
    if directory.exists():
        shutil.rmtree(directory)  # interrupted or failed before: nothing of it was published
    directory.mkdir(parents=True)
    started = time.perf_counter()
    record: dict[str, Any] = {
        "cell": cell.name,
        "epsilon": cell.epsilon,
        "seed": cell.seed,
        "settings": dict(cell.settings),
    }
    try:
        metrics = runner(directory, cell.clients(plan.clients), plan.run_config(cell))
        record["metrics"] = metrics
        add_baselines(plan, cell, record)
        record["accountant"] = crosscheck_ledgers(directory / "ledgers")
        if plan.audit:
            record["audit"] = audit_run(directory, AuditConfig(plan.audit_config.bootstrap, seed=cell.seed), True)
        record["status"] = "ok"
    except Exception as exc:  # a failed cell is recorded and the sweep goes on
        record["status"] = "failed"
        record["error"] = f"{type(exc).__name__}: {exc}"
        record["traceback"] = traceback.format_exc()
    record["seconds"] = time.perf_counter() - started
    write_json_atomic(directory / "cell.json", to_plain(record))
    return record


def reaudit_cell(plan: SweepPlan, cell: Cell) -> dict[str, Any]:
    """Redo a complete cell's audit (after the audit code changed) without retraining; rewrites cell.json."""
    from fedsynth.simulations.experiments.audit import audit_run

    path = plan.cell_dir(cell) / "cell.json"
    record = dict(json.loads(path.read_text()))
    started = time.perf_counter()
    record["audit"] = audit_run(plan.cell_dir(cell), AuditConfig(plan.audit_config.bootstrap, seed=cell.seed), True)
    record["audit_seconds"] = time.perf_counter() - started
    write_json_atomic(path, to_plain(record))
    return record


def data_key(config: RunConfig) -> str:
    """A name for the data settings (dataset, seed, split): cells sharing it share one upper bound."""
    settings = json.dumps(to_plain(config.data().to_dict()), sort_keys=True)
    return f"seed={config.seed}-{hashlib.sha256(settings.encode()).hexdigest()[:8]}"


def ensure_reference(plan: SweepPlan, cell: Cell) -> Path:
    """``reference/<data>.json`` for the cell's data settings, computed once."""
    config = RunConfig.from_run_config(plan.run_config(cell))
    path = plan.out / "reference" / f"{data_key(config)}.json"
    if not path.is_file():
        started = time.perf_counter()
        results = reference_results(config)
        write_json_atomic(
            path,
            {"seed": config.seed, "results": results, "seconds": time.perf_counter() - started, "private": False},
        )
    return path


def run_sweep(
    plan: SweepPlan, runner: CellRunner, console: Console, reference: bool = True, reaudit: bool = False
) -> list[dict[str, Any]]:
    """Run every cell not yet complete (and each seed's upper bounds); returns every cell's record."""
    statuses = {cell.name: cell_status(plan.cell_dir(cell)) for cell in plan.cells}
    if reaudit:
        for cell in (c for c in plan.cells if statuses[c.name] == "ok"):
            console.print(f"re-auditing {cell.name}")
            reaudit_cell(plan, cell)
    for cell in (c for c in plan.cells if statuses[c.name] == "ok"):  # cells completed before the baselines existed
        path = plan.cell_dir(cell) / "cell.json"
        record = dict(json.loads(path.read_text()))
        if add_baselines(plan, cell, record):
            console.print(f"added the DP baselines to {cell.name}")
            write_json_atomic(path, to_plain(record))
    todo = [cell for cell in plan.cells if statuses[cell.name] != "ok"]
    console.print(
        f"sweep: {len(plan.cells)} cells, {len(plan.cells) - len(todo)} already complete, {len(todo)} to run"
        + (f" ({sum(s == 'interrupted' for s in statuses.values())} interrupted, to redo)" if todo else "")
    )
    durations: list[float] = []
    for index, cell in enumerate(todo):
        left = len(todo) - index
        estimate = f", about {sum(durations) / len(durations) * left / 60:.0f} min left" if durations else ""
        console.print(
            f"[bold]cells: {len(plan.cells) - left} done, 1 running, {left - 1} left{estimate}[/bold] → {cell.name}"
        )
        if reference:
            ensure_reference(plan, cell)
        record = run_cell(plan, cell, runner)
        durations.append(record["seconds"])
        if record["status"] == "ok":
            console.print(f"  {cell.name}: done in {record['seconds'] / 60:.1f} min")
        else:
            console.print(f"  [red]{cell.name}: failed ({record['error']})[/red]; the sweep goes on", markup=True)
    return [json.loads((plan.cell_dir(c) / "cell.json").read_text()) for c in plan.cells]


def check_sweep_settings(out: Path, wanted: dict[str, Any]) -> None:
    """Refuse to mix settings in one sweep directory: cells of other base settings would be reused wrongly."""
    path = out / "sweep.json"
    if path.is_file():
        previous = json.loads(path.read_text())
        if previous.get("base") != wanted["base"] or previous.get("clients") != wanted["clients"]:
            keys = set(previous.get("base", {})) | set(wanted["base"])
            changed = sorted(k for k in keys if previous.get("base", {}).get(k) != wanted["base"].get(k))
            if previous.get("clients") != wanted["clients"]:
                changed.append("clients")
            raise ConfigError(
                f"{out} holds a sweep with other base settings ({', '.join(changed)}); rerun with the same "
                "settings to resume it (ε, seeds and grid may grow), or choose a new --out directory."
            )
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, wanted)


def finish_sweep(plan: SweepPlan, records: list[dict[str, Any]]) -> tuple[Any, Any]:
    """results.csv/.parquet, summary.csv, report.md and report.html from every cell's record."""
    from fedsynth.simulations.experiments.sweep_report import write_sweep_report
    from fedsynth.simulations.experiments.sweep_results import load_references, summarise, tidy_results, write_tables

    keys = [(cell.name, data_key(RunConfig.from_run_config(plan.run_config(cell)))) for cell in plan.cells]
    frame = tidy_results(records, load_references(plan.out, keys), plan.clients)
    summary = summarise(frame)
    write_tables(plan.out, frame, summary)
    write_sweep_report(plan.out, frame, summary, records)
    return frame, summary
