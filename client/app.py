"""fedsynth ClientApp: messages in, functions called, messages out."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from client.data import node_data
from client.evaluation import handle_evaluate
from client.round import default_ledger_dir, handle_statistics, handle_train
from common import keys
from common.federation import RunConfig


def build_client_app(overrides: dict[str, Any] | None = None) -> ClientApp:
    """The ClientApp; ``overrides`` take the place of run-config keys (used by tests and wrappers)."""
    app = ClientApp()

    def settings(context: Context) -> RunConfig:
        return RunConfig.from_run_config({**dict(context.run_config), **(overrides or {})})

    def ledger_dir(config: RunConfig, context: Context) -> Path:
        """The node's own ``ledger-dir`` (node config), else the run config's, else the default."""
        if "ledger-dir" in context.node_config:
            return Path(str(context.node_config["ledger-dir"]))
        return Path(config.ledger_dir) if config.ledger_dir else default_ledger_dir()

    @app.query()
    def query(msg: Message, context: Context) -> Message:
        """The shared catalogue (public) and this node's user count."""
        data = node_data(dict(context.node_config), settings(context))
        metrics = MetricRecord({keys.NUM_ITEMS: data.train.shape[1], keys.NUM_EXAMPLES: data.train.shape[0]})
        catalogue = ConfigRecord({keys.ITEM_IDS: [str(i) for i in data.item_ids]})
        return Message(RecordDict({keys.METRICS: metrics, keys.CONFIG: catalogue}), reply_to=msg)

    @app.query(keys.STATISTICS)
    def statistics(msg: Message, context: Context) -> Message:
        config = settings(context)
        rows = node_data(dict(context.node_config), config).train
        return Message(
            handle_statistics(msg.content, rows, config, context.state, ledger_dir(config, context)), reply_to=msg
        )

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        config = settings(context)
        rows = node_data(dict(context.node_config), config).train
        return Message(
            handle_train(msg.content, rows, config, context.state, ledger_dir(config, context)), reply_to=msg
        )

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        held_out = node_data(dict(context.node_config), settings(context)).test
        return Message(handle_evaluate(msg.content, held_out), reply_to=msg)

    return app


app = build_client_app()
