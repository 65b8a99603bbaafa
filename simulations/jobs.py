"""``fedsynth run`` / ``fedsynth train``: one local Flower simulation of the whole pipeline (or its rounds).

Settings come, in increasing priority, from their declared defaults (common/config/settings.py,
docs/settings.md), a TOML file (``--config``: run-config keys at top level or under
``[tool.flwr.app.config]``) and the options given on the command line (simulations/options.py);
the result is validated once, before anything runs.

The run directory is the unit of resumption: a run interrupted (Ctrl-C, crash) is resumed by
running the same command again (checkpoints and the DP statistics are reused; simulated
clients' ledgers live in ``OUT/ledgers`` by default, so their spent ε carries over). A
directory whose ``metrics.json`` exists holds a complete run and is never overwritten.
"""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console

from fedsynth.common.config.run import RunConfig, epsilon_setting
from fedsynth.common.config.settings import RunSettings, check_values
from fedsynth.common.errors import ConfigError, FedsynthError
from fedsynth.common.runtime.device import check_device_available
from fedsynth.common.runtime.files import write_json_atomic
from fedsynth.simulations.options import check_options, given_settings
from fedsynth.simulations.runner import run_simulation


def read_config_file(path: Path) -> dict[str, Any]:
    """Run-config keys from a TOML file (top level, or ``[tool.flwr.app.config]`` of a pyproject.toml).

    Unknown keys, wrong types and values that fail their setting's check are errors naming the file;
    checks between settings wait for the whole run config (:func:`resolve_run_config`).
    """
    try:
        data = tomllib.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"--config {path}: cannot read it ({exc.strerror}).") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"--config {path}: not valid TOML ({exc}).") from exc
    table = dict(data.get("tool", {}).get("flwr", {}).get("app", {}).get("config", data))
    check_values(table, f"--config {path}")
    return table


def resolve_run_config(config_file: Path | None, given: dict[str, Any], out: Path) -> dict[str, Any]:
    """Defaults ← TOML ← options given (None: not given); validated once. Returns the flat run config
    (kebab-case keys: those of the file and the options, and ``ledger-dir``)."""
    settings: dict[str, Any] = {}
    if config_file is not None:
        settings.update(read_config_file(config_file))
    check_options(given)
    settings.update(given_settings(given))
    if "epsilon" in settings:
        settings["epsilon"] = epsilon_setting(float(settings["epsilon"]))
    settings.setdefault("ledger-dir", str((out / "ledgers").resolve()))
    RunConfig.from_run_config(settings)
    check_device_available(str(settings.get("device", "cpu")))  # every process of a local run trains here
    if settings.get("data-path") and not Path(settings["data-path"]).exists():
        raise ConfigError(f"--data-path {settings['data-path']}: no such file or directory.")
    return settings


_LOG_LINE = re.compile(r"^(INFO|WARNING|ERROR)\s*:\s*(.*)$")
_ROUND = re.compile(r"^round (\d+)/(\d+):")
# Flower's own lines after a ServerApp exception; fedsynth's reason is printed once, by the command.
_FLOWER_FAILURE_LINES = ("Simulation raised", "Exit Code", "fedsynth FAILED")


def console_message(line: str) -> str | None:
    """What of a Flower log line a person should see: fedsynth's own lines and Flower's errors, else None."""
    match = _LOG_LINE.match(re.sub(r"\x1b\[[0-9;]*m", "", line).strip())
    if match is None:
        return None
    level, message = match.groups()
    if any(message.startswith(text) for text in _FLOWER_FAILURE_LINES):
        return None
    if message.startswith("fedsynth "):
        return ("warning: " if level == "WARNING" else "") + message.removeprefix("fedsynth ")
    return message if level == "ERROR" else None


class RunProgress:
    """A rich progress display of a run (rounds done, the current stage) with fedsynth's lines above it."""

    def __init__(self, console: Console, rounds: int, title: str) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        self.progress = Progress(
            SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            console=console, transient=True,
        )  # fmt: skip
        self.task = self.progress.add_task(title, total=rounds)

    def __enter__(self) -> RunProgress:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def __call__(self, line: str) -> None:
        message = console_message(line)
        if message is None:
            return
        self.progress.console.print("  " + message, markup=False, highlight=False)
        if (match := _ROUND.match(message)) is not None:
            self.progress.update(self.task, completed=int(match.group(1)), description="federated rounds")
        elif message.startswith("stage: "):
            self.progress.update(self.task, description=message.removeprefix("stage: ").split(" (")[0])


def progress_printer(console: Console) -> Callable[[str], None]:
    """fedsynth's own log lines, printed once each (no progress bar: for callers with their own display)."""

    def show(line: str) -> None:
        message = console_message(line)
        if message is not None:
            console.print("  " + message, markup=False, highlight=False)

    return show


def check_new_run(out: Path, clients: int) -> None:
    """Refuse a client count below 1 and an output directory that holds a complete run."""
    if clients < 1:
        raise ConfigError(f"--clients must be at least 1, got {clients}.")
    if (out / "metrics.json").is_file():
        raise FedsynthError(f"{out} already holds a complete run (metrics.json); choose a new --out directory.")


def preflight(run_config: dict[str, Any], clients: int) -> list[str]:
    """Prepare and partition the data in this process, before Flower starts, as every simulated client will.

    Refuses at once what would otherwise fail inside the clients: unreadable data, a client with too
    few users for the batch size, a configured δ not below 1/n for the smallest client, a
    secure-aggregation threshold above the number of clients, EASE that does not fit in memory.
    Returns warnings to print (recommenders too large to evaluate, :func:`evaluation_size_warnings`).
    """
    from fedsynth.common.data.partition import partition_users
    from fedsynth.common.data.prepare import prepare

    config = RunConfig.from_run_config(run_config)
    prepared = prepare(config.data())
    partitions = partition_users(prepared.interactions, prepared.split, config.partitioning(clients))
    smallest = min(len(p.train_users) for p in partitions)
    config.privacy().delta_for(smallest)
    if config.secure_aggregation:
        config.threshold_for(clients)  # secagg-threshold above the number of clients: refused now
    check_attack_setup(config, prepared.interactions.matrix, clients)
    if run_config.get("pipeline", "full") == "full":
        return evaluation_size_warnings(config, prepared.interactions.matrix.shape[1])
    return []


def evaluation_size_warnings(config: RunConfig, num_items: int) -> list[str]:
    """What of ``--recommenders`` cannot be evaluated at this catalogue size (said before the run starts).

    EASE over M items sends M² values for federated evaluation; above ``eval-max-values`` the
    server skips it without fitting it (a warning now, the reason in the report). EASE that will
    be fitted needs a dense M × M matrix on the server: refused now where memory is short
    (:func:`fedsynth.common.recommenders.ease.check_dense_fits`), not after the rounds.
    """
    from fedsynth.common.recommenders.ease import check_dense_fits
    from fedsynth.common.recommenders.transfer import known_size

    warnings = []
    for name in config.recommender_names():
        size = known_size(name, num_items)
        if size is not None and size > config.eval_max_values:
            warnings.append(
                f"--recommenders {name}: at {num_items:,} items its evaluation request would carry {size:,} "
                f"values, above eval-max-values {config.eval_max_values:,}: its rows are skipped (not fitted, "
                f"not evaluated). To evaluate it, set eval-max-values = {size} in a --config file (each copy in "
                f"flight takes {float32_size(size)}) or filter rare items (--min-item-interactions)."
            )
        elif name == "ease":
            check_dense_fits(num_items, "EASE")
    return warnings


def float32_size(values: int) -> str:
    """Memory of ``values`` float32 numbers, in MiB or GiB."""
    size = 4 * values
    return f"{size / 2**30:.1f} GiB" if size >= 2**30 else f"{size / 2**20:.0f} MiB"


def check_attack_setup(config: RunConfig, matrix: Any, clients: int) -> None:
    """Refuse now an attack or defence the simulated federation cannot hold (too few silos, too few targets)."""
    from fedsynth.common.robustness.attacks import target_items

    attack = config.attacks()
    if attack.active and attack.clients >= clients:
        raise ConfigError(
            f"--attack-clients {attack.clients}: at least one of the {clients} silos must be honest; "
            "lower --attack-clients or add --clients."
        )
    config.robust().check_silos(clients, "--clients")
    if attack.targets:
        target_items(matrix, attack.targets, config.seed)


def run_job(console: Console, out: Path, clients: int, run_config: dict[str, Any]) -> dict[str, Any]:
    """Run (or resume) the job in ``out``; returns metrics.json (full pipeline) or train.json."""
    check_new_run(out, clients)
    for warning in preflight(run_config, clients):
        console.print(f"[yellow]warning:[/yellow] {warning}")
    saved = out / "run_config.json"
    run_config = {**run_config, "min-clients": min(run_config.get("min-clients", 2), clients)}
    wanted = {"clients": clients, **run_config}
    if saved.is_file():
        previous = json.loads(saved.read_text())
        if previous != wanted:
            changed = sorted(k for k in set(previous) | set(wanted) if previous.get(k) != wanted.get(k))
            raise ConfigError(
                f"{out} holds an interrupted run with other settings ({', '.join(changed)}); "
                "rerun with the same settings to resume it, or choose a new --out directory."
            )
        console.print(f"resuming the interrupted run in {out}")
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(saved, wanted)
    rounds = int(run_config.get("num-server-rounds", RunSettings().num_server_rounds))
    with RunProgress(console, rounds, f"federated run: {clients} clients, {rounds} rounds") as progress:
        run_simulation(out, clients, run_config, on_line=progress)
    result = out / ("metrics.json" if run_config.get("pipeline", "full") == "full" else "train.json")
    if not result.is_file():
        raise FedsynthError(f"the run ended without writing {result}; see {out / 'logs' / 'flwr-run.log'}.")
    return dict(json.loads(result.read_text()))
