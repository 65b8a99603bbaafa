"""Running the federation locally through Flower's own `flwr run`, for people who do not know Flower.

The runner uses a Flower home inside the run directory (never ``~/.flwr``), disables
Flower's run-time dependency installation (it would otherwise install a CUDA torch),
streams the run's log, and always stops the local SuperLink that ``flwr run`` starts in
the background, even when the run fails or is interrupted.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import server
from common.errors import FedsynthError


def project_root() -> Path:
    """The source checkout holding ``pyproject.toml`` with the Flower app (editable installs)."""
    root = Path(server.__file__).resolve().parents[1]
    if not (root / "pyproject.toml").is_file():
        raise FedsynthError(
            f"fedsynth train needs the source checkout (pyproject.toml with [tool.flwr.app]); none at {root}. "
            "Install with `pip install -e .` from the repository."
        )
    return root


def write_flower_home(flwr_home: Path, num_clients: int) -> None:
    flwr_home.mkdir(parents=True, exist_ok=True)
    (flwr_home / "config.toml").write_text(
        '[superlink]\ndefault = "local"\n\n[superlink.local]\naddress = ":local:"\n'
        f"options.num-supernodes = {num_clients}\noptions.backend.client-resources.num-cpus = 1\n"
    )


def _format(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()  # Flower's run-config syntax (TOML): true / false
    return f"'{value}'" if isinstance(value, (str, Path)) else str(value)


def flower_environment(flwr_home: Path) -> dict[str, str]:
    """This process's environment with a private ``FLWR_HOME`` and this venv's bin first on PATH.

    `flwr run` starts `flower-superlink` by name: this finds the environment's own even when it
    is not activated.
    """
    return {
        **os.environ,
        "FLWR_HOME": str(flwr_home),
        "PYTHONWARNINGS": "ignore",
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
    }


def format_run_config(settings: dict[str, Any]) -> str:
    """``key=value …`` as ``flwr run --run-config`` reads it (strings quoted, booleans lower-case)."""
    return " ".join(f"{k}={_format(v)}" for k, v in settings.items())


def _matching_pids(flwr_home: Path) -> list[int]:
    """Live processes of this run: the SuperLink (its command line names ``flwr_home``) and everything
    started under it (the simulation process, Ray's daemons and actors), whose environment holds
    ``FLWR_HOME=flwr_home``."""
    marker, environment_marker = str(flwr_home), f"FLWR_HOME={flwr_home}\0".encode()
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            command = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (proc / "stat").read_text().rsplit(")", 1)[-1].split()[0]
            environment = (proc / "environ").read_bytes() + b"\0"
        except (OSError, IndexError):
            continue
        if state == "Z":
            continue
        if (marker in command and "superlink" in command) or environment_marker in environment:
            pids.append(int(proc.name))
    return pids


def _with_descendants(pids: list[int]) -> list[int]:
    """``pids`` and every process below them (Ray's agents do not inherit the marked environment)."""
    children: dict[int, list[int]] = {}
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                parent = int((proc / "stat").read_text().rsplit(")", 1)[-1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(proc.name))
    found, stack = set(pids), list(pids)
    while stack:
        for child in children.get(stack.pop(), []):
            if child not in found and child != os.getpid():
                found.add(child)
                stack.append(child)
    return sorted(found)


def _alive(pid: int) -> bool:
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[-1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def stop_superlinks(flwr_home: Path, timeout: float = 15.0) -> int:
    """Stop the SuperLink `flwr run` left behind and, after an interruption, the simulation under it.

    SIGTERM, then wait up to ``timeout`` seconds for them to exit, then SIGKILL. Returns how many were found.
    """
    pids = _with_descendants(_matching_pids(flwr_home))
    found = len(pids)
    for pid in pids:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while pids and time.monotonic() < deadline:
        time.sleep(0.2)
        pids = [pid for pid in pids if _alive(pid)]
    for pid in pids:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    return found


def run_simulation(
    out_dir: Path, num_clients: int, run_config: dict[str, Any], on_line: Callable[[str], None] | None = None
) -> dict[str, Any]:
    """``flwr run`` the app with ``run_config`` on ``num_clients`` simulated clients; returns train.json."""
    out_dir = out_dir.resolve()
    flwr_home = out_dir / "flwr_home"
    write_flower_home(flwr_home, num_clients)
    settings = {**run_config, "out-dir": str(out_dir)}
    env = {
        **flower_environment(flwr_home),
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0",
    }
    flwr = Path(sys.executable).with_name("flwr")
    command = [
        str(flwr),
        "run",
        str(project_root()),
        "local",
        "--stream",
        "--run-config",
        format_run_config(settings),
    ]
    (out_dir / "logs").mkdir(parents=True, exist_ok=True)
    try:
        with (out_dir / "logs" / "flwr-run.log").open("w") as log_file:
            process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            assert process.stdout is not None
            for line in process.stdout:
                log_file.write(line)
                if on_line is not None:
                    on_line(line.rstrip("\n"))
            code = process.wait()
    finally:
        stop_superlinks(flwr_home)
    train_json = out_dir / "train.json"
    if code != 0 or not train_json.is_file():
        raise FedsynthError(f"the federated run failed (exit {code}); see {out_dir / 'logs' / 'flwr-run.log'}.")
    return dict(json.loads(train_json.read_text()))
