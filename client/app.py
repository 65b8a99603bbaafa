"""fedsynth ClientApp: messages in, functions called, messages out."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from flwr.app import Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from client.data import client_training_rows
from client.round import default_ledger_dir, handle_train
from common import keys
from common.federation import RunConfig


def build_client_app(overrides: dict[str, Any] | None = None) -> ClientApp:
    """The ClientApp; ``overrides`` take the place of run-config keys (used by tests and wrappers)."""
    app = ClientApp()

    def settings(context: Context) -> RunConfig:
        return RunConfig.from_run_config({**dict(context.run_config), **(overrides or {})})

    @app.query()
    def query(msg: Message, context: Context) -> Message:
        rows = client_training_rows(dict(context.node_config), settings(context))
        metrics = MetricRecord({keys.NUM_ITEMS: rows.shape[1], keys.NUM_EXAMPLES: rows.shape[0]})
        return Message(RecordDict({keys.METRICS: metrics}), reply_to=msg)

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        config = settings(context)
        rows = client_training_rows(dict(context.node_config), config)
        ledger_dir = Path(config.ledger_dir) if config.ledger_dir else default_ledger_dir()
        return Message(handle_train(msg.content, rows, config, context.state, ledger_dir), reply_to=msg)

    return app


app = build_client_app()
