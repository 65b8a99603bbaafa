"""A SuperNode whose ClientApp processes start warm: forked from a process that imported torch once.

    fedsynth-node <flower-supernode arguments>      (python -m fedsynth.client.warm_node … is the same)

Flower 1.42 runs every message a SuperNode receives in a fresh ``flwr-clientapp`` process,
started by the node's SuperExec, which polls for tasks once a second. Each such process pays
Python's start-up and the imports of Flower, NumPy/SciPy/pandas, torch and Opacus before the
ClientApp sees its message: measured on 2 cores, 6–11 s per message with three nodes on one
machine, the largest part of the +18 s per round a loopback deployment cost over a simulation
(``python -m fedsynth.simulations.bench.deployment``; the data load is 0.05–0.1 s and was never the cost).

This launcher starts ``flower-supernode`` (with its idle polls shortened, :mod:`fedsynth.client.fast_supernode`)
with the arguments given plus ``--isolation process``
(so the SuperNode starts no SuperExec of its own), then becomes that node's SuperExec itself:
Flower's own ``run_superexec`` loop, polling every 0.1 s, with one change, the executor. The
:class:`ForkingExecutor` starts each ClientApp task as a ``fork()`` of this process, which has
already imported the heavy third-party modules (:data:`PRELOADED`), and runs Flower's
``flwr-clientapp`` entry point in the child with the task's token. Everything else is Flower's:
the child pulls its message, installs and loads the FAB, runs the ClientApp, pushes the reply
and exits; a task that fails fails as it would in a fresh process. fedsynth's own modules are
not preloaded, so the ClientApp code that runs is always the FAB's.

Fork safety: the parent imports modules but runs no torch operation and starts no thread pool
before forking (torch creates its intra-op threads on first use, in the child); the logging
module re-creates its locks in the child. The SuperNode and this process share one process
group, so stopping or killing the node stops both; when the SuperNode exits on its own (it
could not connect, its key was refused) this process exits with its status; exited task
children are reaped on every poll.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import threading
import traceback
from collections.abc import Sequence

from flwr.supercore.constant import TaskType
from flwr.supercore.superexec import run_superexec as superexec
from flwr.supercore.superexec.executor.subprocess_executor import SubprocessExecutor
from flwr.supercore.superexec.executor.types import ExecutionSpec, LaunchResult

from fedsynth.common.runtime.openmp import with_short_openmp_spin

PRELOADED = (
    "numpy",
    "scipy.sparse",
    "scipy.special",
    "pandas",
    "torch",
    "opacus",
    "cryptography.hazmat.primitives.ciphers",
    "flwr.app",
    "flwr.clientapp",
    "flwr.supernode.cli.flwr_clientapp",
)
POLL_ENV = "FLWR_SUPEREXEC_TASK_POLL_INTERVAL"
POLL_SECONDS = "0.1"
DEFAULT_RUNTIME_PORT = 9094  # flower-supernode's default --port


def clientapp_argv(spec: ExecutionSpec) -> list[str]:
    """The ``flwr-clientapp`` command line Flower's SubprocessExecutor would run for ``spec``."""
    argv = ["flwr-clientapp", "--runtime-api-address", spec.runtime_api_address, "--token", spec.token]
    if spec.insecure:
        argv.append("--insecure")
    elif spec.root_certificates_path is not None:
        argv += ["--root-certificates", spec.root_certificates_path]
    if spec.parent_pid is not None:
        argv += ["--parent-pid", str(spec.parent_pid)]
    if spec.runtime_dependency_install:
        argv.append("--allow-runtime-dependency-installation")
    return argv


def _run_forked_clientapp(spec: ExecutionSpec) -> None:
    """In the forked child: Flower's ``flwr-clientapp`` main for ``spec``; never returns."""
    code = 1
    try:
        if spec.suppress_output:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 1)
            os.dup2(devnull, 2)
        from flwr.supernode.cli.flwr_clientapp import flwr_clientapp

        from fedsynth.common.runtime.object_pulls import shorten_object_pull_backoff

        shorten_object_pull_backoff()  # the message pull starts before the SuperNode has it all
        sys.argv = clientapp_argv(spec)
        flwr_clientapp()
        code = 0
    except SystemExit as exc:  # flwr_exit ends the task with sys.exit(code)
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:  # the child must never return into the parent's loop
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


class ForkingExecutor(SubprocessExecutor):
    """Flower's subprocess executor, except that ClientApp tasks run in a fork of this (warm) process."""

    def __init__(self) -> None:
        self.children: set[int] = set()

    def launch(self, spec: ExecutionSpec) -> LaunchResult:
        self.reap()
        if spec.task_type != TaskType.CLIENT_APP:
            return super().launch(spec)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            _run_forked_clientapp(spec)
        self.children.add(pid)
        return LaunchResult.accepted()

    def reconcile(self) -> None:
        self.reap()

    def reap(self) -> None:
        """Collect the exit status of every child that has finished (no zombies)."""
        for pid in list(self.children):
            try:
                done, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                done = pid
            if done:
                self.children.discard(pid)


def preload(modules: Sequence[str] = PRELOADED) -> None:
    """Import ``modules`` once, here, so that every forked ClientApp finds them in ``sys.modules``."""
    for name in modules:
        importlib.import_module(name)


def option(arguments: Sequence[str], name: str) -> str | None:
    """The value of ``--name VALUE`` or ``--name=VALUE`` in ``arguments`` (the last one), else None."""
    value = None
    for index, argument in enumerate(arguments):
        if argument == name and index + 1 < len(arguments):
            value = arguments[index + 1]
        elif argument.startswith(name + "="):
            value = argument.partition("=")[2]
    return value


def runtime_address(arguments: Sequence[str]) -> str:
    """Where the SuperNode serves its Runtime API: ``--host`` (default 127.0.0.1) and ``--port`` (9094)."""
    host = option(arguments, "--host") or "127.0.0.1"
    return f"{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{option(arguments, '--port') or DEFAULT_RUNTIME_PORT}"


def exit_with(supernode: subprocess.Popen[bytes]) -> None:
    """Wait for the SuperNode and end this process with its exit status (a signal ``s`` as 128 + s).

    Flower's parent monitor cannot do this: the SuperNode is this process's child, and an
    exited child that has not been waited for still "exists" to it.
    """
    code = supernode.wait()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code if code >= 0 else 128 - code)


def main(argv: Sequence[str] | None = None) -> None:
    """Start ``flower-supernode`` (``--isolation process``) and serve its tasks from warm forks."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    for refused, why in (
        ("--isolation", "fedsynth-node sets it itself (process)"),
        ("--ssl-certfile", "the Runtime API stays on plain loopback HTTP, as Flower's own SuperExec uses it"),
    ):
        if option(arguments, refused) is not None or refused in arguments:
            sys.exit(f"error: fedsynth-node does not take {refused}: {why}; remove it from the arguments.")
    address = runtime_address(arguments)
    os.environ.update(with_short_openmp_spin(os.environ))  # before torch loads libgomp (common/runtime/openmp.py)
    supernode = subprocess.Popen(
        [sys.executable, "-m", "fedsynth.client.fast_supernode", *arguments, "--isolation", "process"]
    )
    threading.Thread(target=exit_with, args=(supernode,), name="supernode-exit", daemon=True).start()
    preload()
    os.environ.setdefault(POLL_ENV, POLL_SECONDS)
    superexec.get_executor = lambda *args, **kwargs: ForkingExecutor()  # the one change to Flower's loop
    try:
        superexec.run_superexec(runtime_api_address=address, insecure=True)
    finally:
        if supernode.poll() is None:
            supernode.terminate()


if __name__ == "__main__":
    main()
