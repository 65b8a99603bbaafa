"""The typed wire protocol (common/federated/protocol.py): both sides build and read the same records.

Checked against the record names in common/federated/wire.py (what a Flower message holds), and
against malformed messages: a field missing or of the wrong type is refused with the field named.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from fedsynth.common.federated import protocol, wire
from fedsynth.server.aggregation import ClientReply, client_outcomes

ARRAYS = ArrayRecord({"vae.w": torch.ones(3, 2)})
SPENT = protocol.Spent(
    num_examples=40, epsilon=1.5, delta=1e-5, epsilon_own_noise=2.0, epsilon_vae=0.7, epsilon_gan=0.3
)


def test_a_train_request_reads_back_what_was_built() -> None:
    request = protocol.TrainRequest(2, 5, ARRAYS, protocol.Identity("k" * 32, "host:/out"))

    content = request.to_record()
    again = protocol.TrainRequest.from_record(content)

    assert content[wire.CONFIG][wire.SERVER_ROUND] == 2
    assert content[wire.CONFIG][wire.RUN_KEY] == "k" * 32
    assert (again.server_round, again.planned_rounds, again.identity) == (2, 5, request.identity)
    assert torch.equal(again.arrays.to_torch_state_dict()["vae.w"], torch.ones(3, 2))


def test_a_train_reply_carries_only_the_bundle_and_public_numbers() -> None:
    content = protocol.TrainReply(ARRAYS, SPENT, replayed=True).to_record()

    again = protocol.TrainReply.from_record(content)

    assert set(content.keys()) == {wire.ARRAYS, wire.METRICS}
    assert set(content[wire.METRICS].keys()) == {
        wire.NUM_EXAMPLES, wire.REFUSED, wire.EPSILON, wire.EPSILON_VAE, wire.EPSILON_GAN, wire.EPSILON_STATISTICS,
        wire.EPSILON_COOCCURRENCE, wire.EPSILON_OWN_NOISE, wire.DELTA, wire.REPLAYED,
    }  # fmt: skip
    assert again.spent == SPENT and again.replayed


def test_a_refusal_reads_back_and_an_answer_is_not_one() -> None:
    refusal = protocol.Refusal("over the cap", epsilon=3.0, epsilon_own_noise=3.5, delta=1e-6)

    assert protocol.Refusal.from_record(refusal.to_record()) == refusal
    assert protocol.Refusal.from_record(protocol.TrainReply(ARRAYS, SPENT).to_record()) is None


@pytest.mark.parametrize(
    ("config", "field"),
    [
        ({wire.PLANNED_ROUNDS: 3}, wire.SERVER_ROUND),
        ({wire.SERVER_ROUND: "2", wire.PLANNED_ROUNDS: 3}, wire.SERVER_ROUND),
        ({wire.SERVER_ROUND: 2, wire.PLANNED_ROUNDS: 1.5}, wire.PLANNED_ROUNDS),
    ],
)
def test_a_malformed_train_request_is_refused_naming_the_field(config: dict[str, object], field: str) -> None:
    content = RecordDict({wire.ARRAYS: ARRAYS, wire.CONFIG: ConfigRecord(config)})  # type: ignore[arg-type]

    with pytest.raises(protocol.ProtocolError, match=field):
        protocol.TrainRequest.from_record(content)


def test_a_train_request_without_the_bundle_or_outside_the_plan_is_refused() -> None:
    with pytest.raises(protocol.ProtocolError, match=wire.ARRAYS):
        protocol.TrainRequest.from_record(
            RecordDict({wire.CONFIG: ConfigRecord({wire.SERVER_ROUND: 1, wire.PLANNED_ROUNDS: 1})})
        )
    with pytest.raises(protocol.ProtocolError, match="outside the planned rounds"):
        protocol.TrainRequest(4, 3, ARRAYS)


def test_the_server_counts_a_reply_that_does_not_say_what_it_spent_as_failed() -> None:
    good = ClientReply(1, protocol.TrainReply(ARRAYS, SPENT).to_record())
    silent_metrics = ClientReply(2, RecordDict({wire.ARRAYS: ARRAYS, wire.METRICS: MetricRecord({wire.REFUSED: 0})}))
    refused = ClientReply(3, protocol.Refusal("no budget", epsilon=2.0).to_record())

    outcome = client_outcomes([good, silent_metrics, refused], server_round=1)

    assert outcome.log.trained == [1]
    assert [(p.node, p.reason.startswith("malformed reply")) for p in outcome.log.failed] == [(2, True)]
    assert [(p.node, p.epsilon) for p in outcome.log.refused] == [(3, 2.0)]
    assert outcome.log.epsilon_by_node == {"1": 1.5}


def test_release_replies_read_back_and_refuse_a_vector_that_is_not_finite() -> None:
    counts, lengths = np.array([3.5, -0.2, 7.0]), np.array([1.0, 2.0])
    statistics = protocol.StatisticsReply(counts, lengths, 0.8, SPENT)
    pairs = protocol.CooccurrenceReply(np.array([1.0, 0.5, 2.0]), 0.3, SPENT)

    again = protocol.StatisticsReply.from_record(statistics.to_record())
    pairs_again = protocol.CooccurrenceReply.from_record(pairs.to_record())

    assert np.array_equal(again.item_counts, counts) and np.array_equal(again.length_histogram, lengths)
    assert (again.noise_std, again.spent) == (0.8, SPENT)
    assert np.array_equal(pairs_again.upper, pairs.upper) and pairs_again.noise_std == 0.3
    broken = protocol.StatisticsReply(np.array([np.nan, 1.0]), lengths, 0.8, SPENT).to_record()
    with pytest.raises(protocol.ProtocolError, match=wire.ITEM_COUNTS):
        protocol.StatisticsReply.from_record(broken)


@pytest.mark.parametrize("users,std,field", [(0, 0.8, wire.NUM_EXAMPLES), (40, float("nan"), wire.NOISE_STD),
                                              (40, -1.0, wire.NOISE_STD)])  # fmt: skip
def test_a_release_from_no_users_or_with_a_bad_noise_std_is_refused_naming_the_field(
    users: int, std: float, field: str
) -> None:
    from dataclasses import replace

    spent = replace(SPENT, num_examples=users)
    replies = [
        (protocol.StatisticsReply, protocol.StatisticsReply(np.ones(3), np.ones(2), std, spent)),
        (protocol.CooccurrenceReply, protocol.CooccurrenceReply(np.ones(3), std, spent)),
    ]
    for kind, reply in replies:  # the robust rules divide by both: a NaN total would poison the fit
        with pytest.raises(protocol.ProtocolError, match=field):
            kind.from_record(reply.to_record())


def test_an_admission_query_and_reply_read_back_what_was_built() -> None:
    query = protocol.AdmissionQuery(5, 3, False, True, protocol.Identity("k" * 32, "host:/out"))
    reply = protocol.AdmissionReply(["a", "b"], 2, 40, epsilon=1.0, epsilon_cap=8.0)

    assert protocol.AdmissionQuery.from_record(query.to_record()) == query
    assert protocol.AdmissionQuery.from_record(RecordDict()) == protocol.AdmissionQuery()
    assert protocol.AdmissionReply.from_record(reply.to_record()) == reply
    assert query.to_record()[wire.CONFIG][wire.NEEDS_STATISTICS] == 0


def test_an_evaluation_request_and_its_replies_read_back_what_was_built() -> None:
    request = protocol.EvaluationRequest("itemknn", ARRAYS, (5, 10), (1, 2), {"num-items": 3}, 4, "pop")
    noisy = protocol.NoisySums(30.0, {"ndcg@10": 3.5}, 2.0)
    dp = protocol.DPEvaluationReply(noisy, 1.5, 0.2, 1.8, 1e-5)
    exact = protocol.ExactEvaluationReply({"users": 3, "sum:ndcg@10": 1.5, "recommended@5": [0, 1]})

    again = protocol.EvaluationRequest.from_record(request.to_record())
    assert (again.kind, again.ks, again.targets, again.settings) == ("itemknn", (5, 10), (1, 2), {"num-items": 3})
    assert (again.planned_rounds, again.label) == (4, "pop")
    assert protocol.DPEvaluationReply.from_record(dp.to_record()) == dp
    assert protocol.ExactEvaluationReply.from_record(exact.to_record()) == exact
    assert protocol.flag(dp.to_record(), wire.DP_EVALUATION) and not protocol.flag(
        exact.to_record(), wire.DP_EVALUATION
    )


def test_a_masked_reply_reads_back_what_was_built() -> None:
    reply = protocol.MaskedReply(np.arange(4, dtype=np.uint64), SPENT, 2.5)

    again = protocol.MaskedReply.from_record(reply.to_record())

    assert np.array_equal(again.masked, reply.masked) and again.masked.dtype == np.uint64
    assert (again.spent, again.noise_variance) == (SPENT, 2.5)


@pytest.mark.parametrize(
    ("read", "content", "field"),
    [
        (
            protocol.AdmissionReply.from_record,
            RecordDict({wire.METRICS: MetricRecord({wire.NUM_EXAMPLES: 1})}),
            "config",
        ),
        (
            protocol.AdmissionReply.from_record,
            RecordDict({wire.METRICS: MetricRecord({}), wire.CONFIG: ConfigRecord({wire.ITEM_IDS: [1, 2]})}),
            wire.ITEM_IDS,
        ),
        (
            protocol.AdmissionQuery.from_record,
            RecordDict({wire.CONFIG: ConfigRecord({wire.PLANNED_ROUNDS: "x"})}),
            wire.PLANNED_ROUNDS,
        ),
        (
            protocol.EvaluationRequest.from_record,
            RecordDict({wire.CONFIG: ConfigRecord({"kind": "ease", "ks": [5]})}),
            "arrays",
        ),
        (
            protocol.EvaluationRequest.from_record,
            RecordDict({wire.ARRAYS: ARRAYS, wire.CONFIG: ConfigRecord({"kind": "ease", "ks": ["5"]})}),
            "ks",
        ),
        (
            protocol.DPEvaluationReply.from_record,
            RecordDict({wire.METRICS: MetricRecord({"users": 1.0})}),
            wire.NOISE_STD,
        ),
        (
            protocol.MaskedReply.from_record,
            RecordDict({wire.ARRAYS: ARRAYS, wire.METRICS: MetricRecord({})}),
            wire.MASKED,
        ),
    ],
)
def test_a_malformed_message_is_refused_naming_the_field(
    read: Callable[[RecordDict], object], content: RecordDict, field: str
) -> None:
    with pytest.raises(protocol.ProtocolError, match=repr(field)):
        read(content)


def test_a_malformed_release_fails_its_node_only_and_the_others_are_summed() -> None:
    """A node claiming no users is named as failed and left out; the honest nodes' release (already in their
    ledgers) is kept rather than the whole run aborting."""
    from dataclasses import replace

    from fedsynth.server.aggregation import ClientReply, client_outcomes
    from fedsynth.server.federation import well_formed

    good = protocol.StatisticsReply(np.ones(3), np.ones(2), 0.8, SPENT).to_record()
    empty = protocol.StatisticsReply(np.ones(3), np.ones(2), 0.8, replace(SPENT, num_examples=0)).to_record()
    outcome = client_outcomes([ClientReply(1, good), ClientReply(2, empty), ClientReply(3, good)])
    kept = [r.node for r in outcome.trained if well_formed(r, protocol.StatisticsReply, outcome.log)]

    assert kept == [1, 3] and outcome.log.trained == [1, 3]
    assert [(p.node, wire.NUM_EXAMPLES in p.reason) for p in outcome.log.failed] == [(2, True)]
    assert outcome.log.epsilon_by_node["2"] == SPENT.epsilon  # it spent: its ε stays in the log
