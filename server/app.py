"""fedsynth ServerApp: reads the run config once, runs the federation, then (pipeline = full) the rest.

A run that fails for a reason a user can fix (too few clients could take part, bad settings)
writes ``OUT/failed.json`` with that one-line reason, logs it and re-raises, so that Flower marks
the run ``finished:failed``; wrappers read the file to say why (see :mod:`fedsynth.simulations.runner`).
"""

from __future__ import annotations

import contextlib
import faulthandler
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedsynth.common.config.run import RunConfig
from fedsynth.common.errors import FedsynthError
from fedsynth.common.runtime.files import write_json_atomic
from fedsynth.common.runtime.object_pulls import shorten_object_pull_backoff
from fedsynth.server.federation import log, out_directory, run_federation
from fedsynth.server.pipeline import run_pipeline

FAILED = "failed.json"
CRASH = "logs/serverapp-crash.log"


def failure_path(out_dir: Path) -> Path:
    """Where a failed run's reason is written (absent after a run that succeeded)."""
    return out_dir / FAILED


def crash_path(out_dir: Path) -> Path:
    """Where the Python stacks of a ServerApp killed by a fatal signal (SIGSEGV, SIGABRT …) are written.

    Flower starts the simulation process with its output discarded, so without this file a
    crash in native code (BLAS, torch) ends the run as ``finished:failed`` with no trace at all.
    """
    return out_dir / CRASH


@contextlib.contextmanager
def fatal_signal_trace(out_dir: Path) -> Iterator[None]:
    """Inside, :mod:`faulthandler` writes every thread's stack to :func:`crash_path` on a fatal signal.

    On leaving, the handler is switched off and the file removed if nothing was written (a run
    that ends normally, or by a Python exception, leaves no crash log).
    """
    path = crash_path(out_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with path.open("w", encoding="utf-8") as handle:
            faulthandler.enable(file=handle, all_threads=True)
            try:
                yield
            finally:
                faulthandler.disable()
    finally:
        if path.stat().st_size == 0:
            path.unlink()


def build_server_app(overrides: dict[str, Any] | None = None) -> ServerApp:
    """The ServerApp; ``overrides`` take the place of run-config keys (used by tests and wrappers)."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        shorten_object_pull_backoff()  # replies' weights are pulled while the nodes still push them
        config = RunConfig.from_run_config({**dict(context.run_config), **(overrides or {})})
        out = out_directory(config)
        failed = failure_path(out)
        failed.unlink(missing_ok=True)
        with fatal_signal_trace(out):
            try:
                training = run_federation(grid, config)
                if config.pipeline == "full":
                    run_pipeline(grid, config, training)
            except FedsynthError as exc:
                write_json_atomic(failed, {"reason": str(exc), "run_id": context.run_id})
                log.error("fedsynth FAILED: %s", exc)
                raise

    return app


app = build_server_app()
