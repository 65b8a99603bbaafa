"""Robust aggregation: each rule on a hand-computed case, and against Flower's own strategies where both exist."""

from __future__ import annotations

import copy

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, Message, MessageType, MetricRecord, RecordDict

from fedsynth.common.errors import ConfigError
from fedsynth.common.federated import wire
from fedsynth.common.robustness.rules import RobustConfig, robust_arrays, robust_total
from fedsynth.server.aggregation import ClientReply
from fedsynth.server.round import aggregate_train

pytestmark = pytest.mark.usefixtures("flower_task_identity")


def reply(values: list[float], users: int = 10, bias: float = 0.0) -> RecordDict:
    """A trained reply: arrays ``w`` (the values) and ``b`` (one value), and its user count."""
    arrays = ArrayRecord({"w": Array(np.asarray(values)), "b": Array(np.asarray([bias]))})
    return RecordDict({wire.ARRAYS: arrays, wire.METRICS: MetricRecord({wire.NUM_EXAMPLES: users})})


def aggregated(contents: list[RecordDict], kind: str, current: ArrayRecord | None = None, f: int = 1) -> np.ndarray:
    out = robust_arrays(contents, current or reply([0.0, 0.0]).array_records[wire.ARRAYS], RobustConfig(kind, f))
    return np.concatenate([out["w"].numpy(), out["b"].numpy()])


def test_none_is_fedavg_weighted_by_users() -> None:
    contents = [reply([1.0, 2.0], users=30), reply([5.0, 6.0], users=10)]

    assert np.allclose(aggregated(contents, "none"), [2.0, 3.0, 0.0])


def test_median_and_trimmed_mean_are_coordinate_wise_and_ignore_one_outlier() -> None:
    contents = [reply([1.0, 5.0]), reply([2.0, 4.0]), reply([3.0, 3.0]), reply([4.0, 2.0]), reply([100.0, -50.0])]

    assert np.allclose(aggregated(contents, "median"), [3.0, 3.0, 0.0])
    # f = 1 of 5: drop the largest and the smallest per coordinate, mean of the middle three
    assert np.allclose(aggregated(contents, "trimmed-mean"), [3.0, 3.0, 0.0])


def test_norm_bound_scales_each_update_to_the_median_norm_before_fedavg() -> None:
    current = reply([1.0, 1.0]).array_records[wire.ARRAYS]  # global w = (1, 1), b = 0
    contents = [reply([2.0, 1.0]), reply([1.0, 2.0]), reply([31.0, 41.0])]  # updates (1,0), (0,1), (30,40)

    # norms 1, 1, 50: the median is 1, so the third update becomes (0.6, 0.8); mean update (1.6, 1.8) / 3
    assert np.allclose(aggregated(contents, "norm-bound", current), [1 + 1.6 / 3, 1 + 1.8 / 3, 0.0])


def test_krum_picks_the_reply_closest_to_its_neighbours_and_multikrum_averages_the_best() -> None:
    # scalars 0, 1, 2, 3, 50 (n = 5, f = 1: each scored by its n − f − 2 = 2 nearest, squared distances)
    # scores: 0 → 1 + 4 = 5; 1 → 1 + 1 = 2; 2 → 1 + 1 = 2; 3 → 1 + 4 = 5; 50 → 47² + 48²
    contents = [reply([v, 0.0]) for v in (0.0, 1.0, 2.0, 3.0, 50.0)]

    assert aggregated(contents, "krum")[0] in (1.0, 2.0)
    assert np.isclose(aggregated(contents, "multikrum")[0], (0 + 1 + 2 + 3) / 4)  # the n − f best


def test_bulyan_averages_the_values_closest_to_the_median_of_the_multikrum_selection() -> None:
    # n = 7, f = 1: Multi-Krum keeps θ = 5 (the outliers 40, 60 score worst), β = 3 closest to their median
    contents = [reply([v, 0.0]) for v in (0.0, 1.0, 2.0, 3.0, 4.0, 40.0, 60.0)]

    assert np.isclose(aggregated(contents, "bulyan")[0], (1 + 2 + 3) / 3)


def test_a_rule_with_too_few_replies_is_refused_with_what_to_change() -> None:
    contents = [reply([v, 0.0]) for v in (0.0, 1.0, 2.0)]

    with pytest.raises(ConfigError, match="krum with robust-malicious 1 needs at least 5 silos"):
        aggregated(contents, "krum")


def flower_messages(contents: list[RecordDict]) -> list[Message]:
    """Copies (Flower's FedMedian and Bulyan consume the arrays they aggregate)."""
    copies = [copy.deepcopy(c) for c in contents]
    return [Message(c, dst_node_id=k + 1, message_type=MessageType.TRAIN) for k, c in enumerate(copies)]


@pytest.mark.parametrize("kind", ["median", "trimmed-mean", "krum", "multikrum", "bulyan"])
def test_each_rule_matches_flowers_own_strategy(kind: str) -> None:
    from flwr.serverapp.strategy import Bulyan, FedMedian, FedTrimmedAvg, Krum, MultiKrum

    rng = np.random.default_rng(3)
    contents = [
        reply(list(rng.normal(size=6)), users=int(rng.integers(5, 50)), bias=float(rng.normal())) for _ in range(7)
    ]
    contents[0] = reply(list(rng.normal(size=6) * 100), bias=30.0)  # a malicious update
    strategy = {
        "median": FedMedian(),
        "trimmed-mean": FedTrimmedAvg(beta=1 / 7 + 1e-9),
        "krum": Krum(num_malicious_nodes=1),
        "multikrum": MultiKrum(num_malicious_nodes=1, num_nodes_to_select=6),
        "bulyan": Bulyan(num_malicious_nodes=1),
    }[kind]

    expected, _ = strategy.aggregate_train(1, flower_messages(contents))
    ours = aggregated(contents, kind)

    assert expected is not None
    assert np.allclose(ours, np.concatenate([expected["w"].numpy(), expected["b"].numpy()]))


def test_the_round_aggregation_uses_the_configured_rule() -> None:
    metrics = {wire.EPSILON: 1.0, wire.DELTA: 1e-5}
    replies = []
    for node, values in enumerate(([1.0, 1.0], [2.0, 2.0], [1000.0, 1000.0])):
        content = reply(values)
        content[wire.METRICS] = MetricRecord({**dict(content[wire.METRICS]), **metrics, wire.REFUSED: 0})
        replies.append(ClientReply(node, content))

    plain = aggregate_train(1, replies)
    robust = aggregate_train(1, replies, robust=RobustConfig("median"))

    assert plain.arrays is not None and robust.arrays is not None
    assert plain.arrays["w"].numpy()[0] > 300 and robust.arrays["w"].numpy()[0] == 2.0


def test_release_totals_sum_cap_or_clip_each_silo_to_its_own_noise_around_the_centre() -> None:
    users = [10, 20, 30, 40, 50]
    counts = [np.array([1.0, 5.0]), np.array([2.0, 10.0]), np.array([3.0, 15.0]), np.array([4.0, 20.0])]
    counts.append(np.array([50.0, 99.0]))  # a liar: every one of its 50 users "holds" item 0
    noise = [1.0] * 5

    total, std = robust_total(counts, users, noise, RobustConfig("none"))
    assert np.allclose(total, [60.0, 149.0]) and std == pytest.approx(np.sqrt(5))
    capped, _ = robust_total(counts, users, noise, RobustConfig("norm-bound"))
    assert np.allclose(capped, [60.0, 5 + 10 + 15 + 20 + 50])  # 99 > 50 users: capped at 50
    # rates (.1, .1, .1, .1, 1) and (.5, .5, .5, .5, 1.98): the liar's rate is clipped to the centre plus 4 of its
    # own standard deviations, √((σ/n)² + m(1 − m)/n + 1/n²) at n = 50, σ = 1 (the honest rates do not stray)
    liar = [0.1 + 4 * np.sqrt(2 / 50**2 + 0.1 * 0.9 / 50), 0.5 + 4 * np.sqrt(2 / 50**2 + 0.5 * 0.5 / 50)]
    expected = [10 + 50 * liar[0], 50 + 50 * liar[1]]
    for rule in ("median", "trimmed-mean", "krum", "bulyan"):
        total, std = robust_total(counts, users, noise, RobustConfig(rule, malicious=1 if rule != "bulyan" else 0))
        assert np.allclose(total, expected) and std == pytest.approx(np.sqrt(5)), rule  # the sum's noise
    honest, _ = robust_total([*counts[:4], np.array([5.0, 25.0])], users, noise, RobustConfig("median"))
    assert np.allclose(honest, [15.0, 75.0])  # no silo strays: the plain sum


def test_release_totals_without_noise_and_at_rates_zero_or_one_stay_finite() -> None:
    """ε = ∞ (no noise): a coordinate every silo holds at rate 0 or 1 has no spread; the bound is one user's worth."""
    users = [10, 10, 10, 10, 10]
    counts = [np.array([0.0, 10.0, 3.0])] * 4 + [np.array([10.0, 10.0, 3.0])]  # the liar claims item 0 for all
    total, std = robust_total(counts, users, [0.0] * 5, RobustConfig("median"))
    assert np.all(np.isfinite(total)) and std == 0.0
    assert total[1] == pytest.approx(50.0) and total[2] == pytest.approx(15.0)
    assert total[0] == pytest.approx(10 * 4 * np.sqrt(1 / 10**2))  # the liar held to 0 + 4 users' worth
