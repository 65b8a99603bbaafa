"""fedsynth ClientApp: messages in, functions called, messages out."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from flwr.app import Context, Message, RecordDict
from flwr.clientapp import ClientApp

from fedsynth.client.attack import tampered_statistics_reply, tampered_train_reply
from fedsynth.client.budget import NodeBudget, default_ledger_dir
from fedsynth.client.data import NodeData, check_node_settings, dp_evaluation, node_data
from fedsynth.client.evaluation import handle_dp_evaluate, handle_evaluate
from fedsynth.client.handlers import (
    handle_cooccurrence,
    handle_fedsgd,
    handle_query,
    handle_secagg_keys,
    handle_secure_update,
    handle_statistics,
    handle_train,
    refusal,
    run_identity,
    secure_release_reply,
)
from fedsynth.client.secure import handle_consistency, handle_shares, handle_unmask
from fedsynth.common.config.run import RunConfig
from fedsynth.common.errors import FedsynthError
from fedsynth.common.federated import wire
from fedsynth.common.secagg.signing import Signing
from fedsynth.common.secagg.updates import UPDATE


def secure_when_asked(handler: Callable[..., RecordDict]) -> Callable[..., RecordDict]:
    """``handler`` (a one-off release) whose checked release is this node's share of a secure sum
    (:func:`secure_release_reply`) when the request names a secure aggregation (``secagg-label``), its plain
    release otherwise: secure aggregation wraps the release, as a Flower mod wraps a handler. A run under
    secure aggregation gets no plain release: a server that leaves out the label gets a refusal."""

    def release(content: RecordDict, rows: Any, config: RunConfig, *args: Any) -> RecordDict:
        request = content.config_records.get(wire.CONFIG)
        secure = request is not None and wire.SECAGG_LABEL in request
        if config.secure_aggregation and not secure:  # the plain release would leave unmasked
            return refusal("this run is under secure aggregation; a release without a secure-aggregation label "
                           "is refused (nothing released)")  # fmt: skip
        return handler(content, rows, config, *args, release=secure_release_reply if secure else None)

    return release


def build_client_app(overrides: dict[str, Any] | None = None) -> ClientApp:
    """The ClientApp; ``overrides`` take the place of run-config keys (used by tests and wrappers)."""
    app = ClientApp()

    def settings(context: Context) -> RunConfig:
        """The run config the server sent, once this node has checked it weakens none of its noise."""
        config = RunConfig.from_run_config({**dict(context.run_config), **(overrides or {})})
        check_node_settings(dict(context.node_config), config)
        return config

    def budget(config: RunConfig, context: Context) -> NodeBudget:
        """The node's own ``ledger-dir`` and ``max-epsilon`` (node config). A deployed node (``data-path``)
        falls back to the default ledger dir, never to the run config's (the server's: a new directory would
        be a fresh ledger); a simulated node to the run config's, then the default. The cap never comes from
        the run config."""
        deployed = "data-path" in context.node_config
        fallback = Path(config.ledger_dir) if config.ledger_dir and not deployed else default_ledger_dir()
        return NodeBudget.from_node_config(dict(context.node_config), fallback)

    def answering(
        body: Callable[[Message, Context, RunConfig, NodeData, NodeBudget], RecordDict],
    ) -> Callable[[Message, Context], Message]:
        """A handler replying with ``body``'s RecordDict, given this node's checked settings, data and budget;
        a node that cannot load its data, has no valid budget policy or refuses the settings says why."""

        def handle(msg: Message, context: Context) -> Message:
            try:
                config = settings(context)
                data = node_data(dict(context.node_config), config)
                node_budget = budget(config, context)
            except FedsynthError as exc:
                return Message(refusal(str(exc)), reply_to=msg)
            return Message(body(msg, context, config, data, node_budget), reply_to=msg)

        return handle

    @app.query()
    @answering
    def query(msg: Message, context: Context, config: RunConfig, data: NodeData, node_budget: NodeBudget) -> RecordDict:
        """Catalogue and users; with a run plan in the request, whether it fits this silo's budget."""
        run = run_identity(msg.content, context.run_id)
        item_ids = [str(i) for i in data.item_ids]
        return handle_query(msg.content, data.train, item_ids, config, context.state, node_budget, run)

    def on_training_rows(
        handler: Callable[..., RecordDict], tamper: Callable[..., RecordDict] | None = None
    ) -> Callable[[Message, Context], Message]:
        """A message handler that runs ``handler`` on this node's training rows, budget and run identity;
        ``tamper`` (simulation) then alters the reply if this silo cheats (:mod:`fedsynth.client.attack`)."""

        def body(msg: Message, context: Context, config: RunConfig, data: NodeData, budget: NodeBudget) -> RecordDict:
            run = run_identity(msg.content, context.run_id)
            reply = handler(msg.content, data.train, config, context.state, budget, run)
            return tamper(reply, msg.content, data.malicious) if tamper is not None else reply

        return answering(body)

    app.query(wire.STATISTICS)(on_training_rows(secure_when_asked(handle_statistics), tampered_statistics_reply))
    app.query(wire.COOCCURRENCE)(  # or the first order again
        on_training_rows(secure_when_asked(handle_cooccurrence), tampered_statistics_reply)
    )
    app.query(wire.FEDSGD)(on_training_rows(handle_fedsgd))

    @app.query(UPDATE)
    @answering
    def secure_update(
        msg: Message, context: Context, config: RunConfig, data: NodeData, budget: NodeBudget
    ) -> RecordDict:
        """A secure round's masked update (a simulated cheat tampers with it before it is masked)."""
        run = run_identity(msg.content, context.run_id)
        return handle_secure_update(msg.content, data.train, config, context.state, budget, run, data.malicious)

    @app.query(wire.SECAGG_KEYS)
    @answering
    def secagg_keys(
        msg: Message, context: Context, config: RunConfig, data: NodeData, budget: NodeBudget
    ) -> RecordDict:
        run = run_identity(msg.content, context.run_id)
        signing = Signing.from_node_config(dict(context.node_config))  # checked with the settings above
        return handle_secagg_keys(msg.content, data.train, config, context.state, budget, run, context.node_id,
                                  signing)  # fmt: skip

    @app.query(wire.SECAGG_SHARES)
    def secagg_shares(msg: Message, context: Context) -> Message:
        signing = Signing.from_node_config(dict(context.node_config))
        return Message(handle_shares(msg.content, context.state, signing), reply_to=msg)

    @app.query(wire.SECAGG_CONSISTENCY)
    def secagg_consistency(msg: Message, context: Context) -> Message:
        signing = Signing.from_node_config(dict(context.node_config))
        return Message(handle_consistency(msg.content, context.state, signing), reply_to=msg)

    @app.query(wire.SECAGG_UNMASK)
    def secagg_unmask(msg: Message, context: Context) -> Message:
        return Message(handle_unmask(msg.content, context.state), reply_to=msg)

    app.train()(on_training_rows(handle_train, tampered_train_reply))

    @app.evaluate()
    @answering
    def evaluate(msg: Message, context: Context, config: RunConfig, data: NodeData, budget: NodeBudget) -> RecordDict:
        """DP metric sums, charged (a deployed node always; simulation with evaluation = "dp"), else exact ones."""
        if not dp_evaluation(dict(context.node_config), config):
            return handle_evaluate(msg.content, data.test)
        run = run_identity(msg.content, context.run_id)
        return handle_dp_evaluate(msg.content, data.test, data.train, config, context.state, budget, run)

    return app


app = build_client_app()
