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
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import fedsynth.server
from fedsynth.common.errors import FedsynthError
from fedsynth.common.runtime.openmp import with_short_openmp_spin


def project_root() -> Path:
    """The source checkout holding ``pyproject.toml`` with the Flower app (editable installs)."""
    root = Path(fedsynth.server.__file__).resolve().parents[1]
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


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (the OS's choice)."""
    return free_ports(1)[0]


def free_ports(count: int) -> list[int]:
    """``count`` distinct free TCP ports on 127.0.0.1 (all bound at once, so never the same one twice)."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in sockets]


def local_superlink_ports() -> dict[str, str]:
    """Fresh ports for the SuperLink `flwr run` starts for ``:local:``. Flower's defaults (39091, 39093)
    are one per machine, and `flwr run` hands a run to whatever SuperLink already answers there: another
    run's, or another project's. With its own ports each run has its own SuperLink."""
    http, control = free_ports(2)
    return {"FLWR_LOCAL_SUPERLINK_HTTP_API_PORT": str(http), "FLWR_LOCAL_CONTROL_API_PORT": str(control)}


def _format(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()  # Flower's run-config syntax (TOML): true / false
    return f"'{value}'" if isinstance(value, (str, Path)) else str(value)


def flower_environment(flwr_home: Path) -> dict[str, str]:
    """This process's environment with a private ``FLWR_HOME`` and this venv's bin first on PATH.

    `flwr run` starts `flower-superlink` by name: this finds the environment's own even when it
    is not activated. OpenMP's idle spin is shortened for DP-SGD's noise threads
    (:mod:`fedsynth.common.runtime.openmp`).
    """
    return {
        **with_short_openmp_spin(os.environ),
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


STARTED = re.compile(r"Successfully started run (\d+)")


def started_run_id(line: str) -> int | None:
    """The run id in `flwr run`'s "Successfully started run N" line, else None."""
    match = STARTED.search(line)
    return int(match.group(1)) if match else None


def run_status(connection: str, run_id: int, env: dict[str, str], cwd: Path | None = None) -> str:
    """The SuperLink's status of ``run_id`` (e.g. ``finished:completed``), asked with `flwr list`.

    `flwr run --stream` exits 0 even when the ServerApp failed, so its exit code is not trusted.
    """
    flwr = str(Path(sys.executable).with_name("flwr"))
    done = subprocess.run(
        [flwr, "list", connection, "--run-id", str(run_id), "--format", "json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
        check=False,
    )
    try:
        payload = json.loads(done.stdout[done.stdout.index("{") :])
        return str(payload["runs"][0]["status"])
    except (ValueError, KeyError, IndexError) as exc:
        raise FedsynthError(
            f"could not read run {run_id}'s status from the SuperLink: {done.stdout}{done.stderr}"
        ) from exc


def final_status(connection: str, run_id: int, env: dict[str, str], cwd: Path | None = None, wait: float = 20) -> str:
    """The run's status once the SuperLink says it finished (or whatever it says after ``wait`` seconds)."""
    deadline = time.monotonic() + wait
    status = run_status(connection, run_id, env, cwd)
    while not status.startswith("finished") and time.monotonic() < deadline:
        time.sleep(1.0)
        status = run_status(connection, run_id, env, cwd)
    return status


def check_outcome(out_dir: Path, code: int, status: str | None, log: Path) -> None:
    """Raise FedsynthError unless the run completed: the ServerApp's own reason first, then the SuperLink's.

    ``status``: the SuperLink's status of the run (None if the run never started).
    """
    from fedsynth.server.app import crash_path, failure_path

    failed, crashed = failure_path(out_dir), crash_path(out_dir)
    if failed.is_file():
        reason = json.loads(failed.read_text())["reason"]
        raise FedsynthError(f"the federated run failed: {reason} (log: {log})")
    if crashed.is_file() and crashed.stat().st_size:
        first = crashed.read_text(errors="replace").splitlines()[0]
        raise FedsynthError(f"the ServerApp crashed ({first.strip()}); its stacks are in {crashed}, the log in {log}.")
    if status is None:
        raise FedsynthError(f"the federated run did not start (exit {code}); see {log}.")
    if status != "finished:completed" or code != 0:
        raise FedsynthError(f"the federated run ended as {status} (exit {code}); see {log}.")


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
        **local_superlink_ports(),
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
    log_path = out_dir / "logs" / "flwr-run.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    run_id, status = None, None
    try:
        with log_path.open("w") as log_file:
            process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            assert process.stdout is not None
            for line in process.stdout:
                log_file.write(line)
                run_id = run_id or started_run_id(line)
                if on_line is not None:
                    on_line(line.rstrip("\n"))
            code = process.wait()
        if run_id is not None:
            status = final_status("local", run_id, env)
    finally:
        stop_superlinks(flwr_home)
    check_outcome(out_dir, code, status, log_path)
    train_json = out_dir / "train.json"
    if not train_json.is_file():
        raise FedsynthError(f"the federated run wrote no train.json; see {log_path}.")
    return dict(json.loads(train_json.read_text()))
