"""Only accounted outputs leave a deployed node: every number in every reply is either public (stated in
docs/privacy.md) or a DP release charged to the node's ledger; DP evaluation is noisy, charged and bounded."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict

from fedsynth.client.app import build_client_app
from fedsynth.client.evaluation import noisy_numbers, sensitivity
from fedsynth.common.config.run import RunConfig
from fedsynth.common.config.sections import EvalConfig
from fedsynth.common.evaluation.metrics import RankingMetrics
from fedsynth.common.federated import wire
from fedsynth.common.models.bundle import ModelBundle
from fedsynth.common.privacy.ledger import PrivacyLedger
from fedsynth.common.privacy.plan import EVALUATION
from fedsynth.common.recommenders import MostPopular
from fedsynth.server.evaluation import evaluation_request, merge_noisy
from tests.test_node_ledger import write_node_files

pytestmark = pytest.mark.usefixtures("flower_task_identity")

SMALL = {"vae-batch-size": 32, "gan-batch-size": 32, "vae-hidden": 32, "vae-latent": 8, "num-server-rounds": 1}
RUN = {wire.RUN_KEY: "r" * 32, wire.REQUESTER: "test", wire.PLANNED_ROUNDS: 1}

# Numbers a reply may carry besides DP releases, each public by the privacy contract (docs/privacy.md):
PUBLIC = {
    wire.NUM_EXAMPLES,  # the silo's size n (assumed public: FedAvg weights, δ = 0.1/n)
    wire.NUM_ITEMS,  # the shared public catalogue's size
    wire.REFUSED,
    wire.REPLAYED,
    wire.DELTA,  # 0.1/n, a function of n
    wire.EPSILON,  # ε spent: a function of the public plan (n, settings) and of what was asked
    wire.EPSILON_CAP,
    wire.EPSILON_VAE,
    wire.EPSILON_GAN,
    wire.EPSILON_STATISTICS,
    wire.EPSILON_COOCCURRENCE,
    wire.EPSILON_EVALUATION,
    wire.EPSILON_OWN_NOISE,
    wire.NOISE_STD,  # σ·sensitivity of a release: public
    wire.NOISE_VARIANCE,
    wire.DP_EVALUATION,
}
DP_EVALUATION_SUMS = {"users"}  # and every "sum:*": the noisy count and sums of a DP evaluation


def ask(app: Any, context: Context, content: RecordDict, message_type: str) -> RecordDict:
    message = Message(content, dst_node_id=1, message_type=message_type)
    message.metadata.__dict__["_message_id"] = message.object_id
    return app(message, context).content  # type: ignore[no-any-return]


def unaccounted(reply: RecordDict) -> set[str]:
    """Metric names of ``reply`` that are neither public nor a charged DP release."""
    metrics = dict(reply[wire.METRICS])  # type: ignore[arg-type]
    dp_evaluation = bool(metrics.get(wire.DP_EVALUATION, 0))
    return {
        name
        for name in metrics
        if name not in PUBLIC and not (dp_evaluation and (name in DP_EVALUATION_SUMS or name.startswith("sum:")))
    }


def deployed_node(tmp_path: Path, **settings: Any) -> tuple[Any, Context, dict[str, str]]:
    node = write_node_files(tmp_path)
    node["max-epsilon"] = "8"
    app = build_client_app({**SMALL, "epsilon": 4.0, "marginal-items": 0, **settings})
    context = Context(run_id=1, node_id=1, node_config=node, state=RecordDict(), run_config={})  # type: ignore[arg-type]
    return app, context, node


def test_every_number_a_deployed_node_sends_is_public_or_a_charged_dp_release(tmp_path: Path) -> None:
    app, context, node = deployed_node(tmp_path)
    statistics = RecordDict({wire.CONFIG: ConfigRecord(dict(RUN))})
    bundle = ModelBundle.create(40, RunConfig.from_run_config(SMALL).local(), seed=0)
    train = RecordDict(
        {
            wire.ARRAYS: ArrayRecord(bundle.state_dict()),
            wire.CONFIG: ConfigRecord({**RUN, wire.SERVER_ROUND: 1}),
        }
    )
    evaluation = evaluation_request(MostPopular.from_counts(np.arange(40.0)), EvalConfig(), {**RUN, "label": "pop"})

    replies = {
        "query": ask(app, context, RecordDict({wire.CONFIG: ConfigRecord(dict(RUN))}), MessageType.QUERY),
        "statistics": ask(app, context, statistics, f"{MessageType.QUERY}.{wire.STATISTICS}"),
        "train": ask(app, context, train, MessageType.TRAIN),
        "evaluate": ask(app, context, evaluation, MessageType.EVALUATE),
    }

    for name, reply in replies.items():
        assert reply[wire.METRICS][wire.REFUSED] == 0, (name, reply)  # type: ignore[index]
        assert unaccounted(reply) == set(), name
    assert not any(k.startswith("recommended@") for k in dict(replies["evaluate"][wire.METRICS]))  # type: ignore[arg-type]
    assert replies["evaluate"][wire.METRICS][wire.DP_EVALUATION] == 1  # type: ignore[index]
    (ledger,) = map(PrivacyLedger.load, Path(node["ledger-dir"]).glob("ledger-*.json"))
    released = [entry["release"] for entry in ledger.history if "release" in entry]
    assert released == ["statistics", "round", EVALUATION]  # every release that left is in the ledger
    assert ledger.spent()[EVALUATION] > 0


def test_the_wire_check_catches_an_unaccounted_loss() -> None:
    """The check above is not vacuous: a reply with a training loss in it fails it."""
    reply = RecordDict({wire.METRICS: MetricRecord({wire.NUM_EXAMPLES: 5, "vae-loss": 1.0})})

    assert unaccounted(reply) == {"vae-loss"}


def test_a_deployed_node_refuses_exact_evaluation(tmp_path: Path) -> None:
    app, context, node = deployed_node(tmp_path, evaluation="exact")
    evaluation = evaluation_request(MostPopular.from_counts(np.arange(40.0)), EvalConfig(), {**RUN, "label": "pop"})

    reply = ask(app, context, evaluation, MessageType.EVALUATE)

    assert reply[wire.METRICS][wire.REFUSED] == 1  # type: ignore[index]
    assert "evaluation" in str(reply[wire.CONFIG][wire.REASON])  # type: ignore[index]
    assert list(Path(node["ledger-dir"]).glob("*.json")) == []


def test_dp_evaluation_is_refused_past_the_runs_planned_count(tmp_path: Path) -> None:
    app, context, node = deployed_node(tmp_path, **{"evaluation-releases": 2})
    replies = []
    for label in ("a", "b", "c"):
        request = evaluation_request(MostPopular.from_counts(np.arange(40.0)), EvalConfig(), {**RUN, "label": label})
        replies.append(ask(app, context, request, MessageType.EVALUATE))

    assert [r[wire.METRICS][wire.REFUSED] for r in replies] == [0, 0, 1]  # type: ignore[index]
    assert "evaluation-releases" in str(replies[2][wire.CONFIG][wire.REASON])  # type: ignore[index]
    history = json.loads(next(Path(node["ledger-dir"]).glob("ledger-*.json")).read_text())["history"]
    assert [e.get("label") for e in history if e.get("release") == EVALUATION] == ["a", "b"]


def test_dp_evaluation_noise_has_the_gaussian_mechanisms_std_on_every_coordinate() -> None:
    """Checked against the exact sums: the noise (release − exact) has std σ·√(1 + m), mean 0."""
    metrics = RankingMetrics((10, 20), 30, users=50)
    for name in metrics.sums:
        metrics.sums[name] = 20.0
    rng = np.random.default_rng(0)

    draws = np.array([[v for k, v in sorted(noisy_numbers(metrics, 2.0, rng).items()) if k != wire.NOISE_STD]
                      for _ in range(4000)])  # fmt: skip
    exact = np.array([v for k, v in sorted({"users": 50.0, **{f"sum:{n}": 20.0 for n in metrics.sums}}.items())])

    assert sensitivity(metrics) == pytest.approx(np.sqrt(1 + 6))
    noise = draws - exact
    assert np.abs(noise.mean(axis=0)).max() < 4 * 2.0 * np.sqrt(7) / np.sqrt(4000)
    np.testing.assert_allclose(noise.std(axis=0), 2.0 * np.sqrt(7), rtol=0.05)


def test_noisy_evaluations_merge_into_means_with_their_noise_std() -> None:
    def reply(users: float, ndcg: float, std: float) -> RecordDict:
        numbers = {"users": users, "sum:ndcg@10": ndcg, wire.NOISE_STD: std, wire.DP_EVALUATION: 1}
        return RecordDict({wire.METRICS: MetricRecord(numbers)})

    means, users, std = merge_noisy([reply(100.0, 30.0, 3.0), reply(300.0, 50.0, 4.0)])

    assert means == {"ndcg@10": pytest.approx(80.0 / 400.0)}
    assert users == 400.0 and std == pytest.approx(5.0 / 400.0)


def test_too_few_evaluation_releases_for_a_dp_evaluation_is_refused_before_anything_starts() -> None:
    from fedsynth.common.errors import ConfigError

    with pytest.raises(ConfigError, match="evaluation-releases 4 is below the 13 rows"):
        RunConfig.from_run_config({"evaluation": "dp", "evaluation-releases": 4})
    with pytest.raises(ConfigError, match="evaluation must be one of auto, dp, exact"):
        RunConfig.from_run_config({"evaluation": "private"})
    assert RunConfig.from_run_config({"evaluation": "exact", "evaluation-releases": 4}).evaluation == "exact"


def test_a_repeated_cut_off_is_refused_before_anything_is_charged(tmp_path: Path) -> None:
    """ks = (10, 10) would add each user's metric twice while the sensitivity counts it once."""
    app, context, node = deployed_node(tmp_path)
    evaluation = evaluation_request(MostPopular.from_counts(np.arange(40.0)), EvalConfig(), {**RUN, "label": "pop"})
    evaluation[wire.CONFIG]["ks"] = [10, 10]  # type: ignore[index]

    reply = ask(app, context, evaluation, MessageType.EVALUATE)

    assert reply[wire.METRICS][wire.REFUSED] == 1  # type: ignore[index]
    assert "distinct" in str(reply[wire.CONFIG][wire.REASON])  # type: ignore[index]
    assert not any(PrivacyLedger.load(p).events for p in Path(node["ledger-dir"]).glob("ledger-*.json"))
