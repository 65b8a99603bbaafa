"""fedsynth ServerApp: reads the run config once, runs the federation, then (pipeline = full) the rest."""

from __future__ import annotations

from typing import Any

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from common.federation import RunConfig
from server.federation import run_federation
from server.pipeline import run_pipeline


def build_server_app(overrides: dict[str, Any] | None = None) -> ServerApp:
    """The ServerApp; ``overrides`` take the place of run-config keys (used by tests and wrappers)."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        config = RunConfig.from_run_config({**dict(context.run_config), **(overrides or {})})
        training = run_federation(grid, config)
        if config.pipeline == "full":
            run_pipeline(grid, config, training)

    return app


app = build_server_app()
