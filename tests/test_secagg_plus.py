"""SecAgg+'s sparse neighbour graph (``secagg-neighbours`` = k): exact sums, dropouts, aborts, the graph, the cost."""

from __future__ import annotations

import numpy as np
import pytest

from fedsynth.common.config.run import RunConfig
from fedsynth.common.errors import ConfigError
from fedsynth.common.secagg import crypto
from fedsynth.common.secagg.protocol import (
    SecAggAborted,
    SecAggNode,
    SecAggParams,
    aggregate_in_process,
    connected,
    decode,
    encode,
    neighbourhood,
    ring_order,
    route,
    share_threshold,
)

BITS = 40


def run(values: dict[int, np.ndarray], k: int, threshold: int = 5, silent: dict[int, str] | None = None):
    params = SecAggParams("test/plus", threshold, BITS, len(next(iter(values.values()))), k)
    total, survivors = aggregate_in_process(params, {n: encode(v, BITS) for n, v in values.items()}, silent)
    return decode(total, BITS), survivors


def inputs(count: int, length: int = 200) -> dict[int, np.ndarray]:
    rng = np.random.default_rng(1)
    return {100 + n: rng.integers(-(10**6), 10**6, length) for n in range(count)}


def test_the_ring_graph_is_symmetric_k_regular_and_everyone_when_small() -> None:
    order = ring_order(list(range(12)))
    for node in order:
        mine = neighbourhood(order, node, 4)
        assert len(mine) == 4 and node not in mine
        assert all(node in neighbourhood(order, peer, 4) for peer in mine)
    assert neighbourhood(order, order[0], 0) == set(order) - {order[0]}
    assert neighbourhood([1, 2, 3, 4, 5], 3, 4) == {1, 2, 4, 5}  # k + 1 ≥ n: the complete graph
    params = SecAggParams("x", 7, BITS, 3, 4)
    assert share_threshold(params, 5) == 3  # a majority of the neighbourhood (itself and 4 neighbours)
    assert share_threshold(SecAggParams("x", 7, BITS, 3), 12) == 7  # the complete graph: t


@pytest.mark.parametrize("k", [2, 4])
def test_the_unmasked_sum_is_exact_with_a_sparse_graph(k: int) -> None:
    values = inputs(11)
    total, survivors = run(values, k)
    assert survivors == sorted(values)
    np.testing.assert_array_equal(total, sum(values.values()))


def test_dropouts_after_and_before_masking_with_a_sparse_graph() -> None:
    values = inputs(11)
    silent = {103: "unmask", 107: "masked-input"}  # 103 sent its vector, 107 did not
    total, survivors = run(values, 4, silent=silent)
    assert 107 not in survivors and 103 in survivors
    np.testing.assert_array_equal(total, sum(v for n, v in values.items() if n != 107))


def test_each_node_shares_and_masks_only_with_its_neighbours(monkeypatch: pytest.MonkeyPatch) -> None:
    expansions: list[int] = []
    real = crypto.expand_mask

    def counted(seed: bytes, length: int, bits: int) -> np.ndarray:
        expansions.append(length)
        return real(seed, length, bits)

    monkeypatch.setattr(crypto, "expand_mask", counted)
    params = SecAggParams("test/cost", 5, BITS, 50, 2)
    nodes = {n: SecAggNode(n, params) for n in range(20)}
    peers = {n: node.advertise() for n, node in nodes.items()}
    order = ring_order(list(peers))
    outgoing = {n: nodes[n].share(peers, order=order) for n in peers}
    assert all(set(out) == neighbourhood(order, n, 2) for n, out in outgoing.items())
    routed = route(outgoing)
    nodes[0].mask(encode(np.zeros(50, dtype=np.int64), BITS), routed[0])
    assert len(expansions) == 3  # its self mask and one per neighbour, not one per node


def test_a_survivor_set_that_falls_apart_is_refused_by_the_nodes_and_the_server() -> None:
    order = list(range(10))
    assert connected([0, 1, 2, 3], order, 2) and not connected([0, 1, 5, 6], order, 2)
    values = inputs(10)
    silent = {100 + n: "masked-input" for n in (2, 3, 7, 8)}  # with k = 2 the ring breaks into two arcs
    with pytest.raises(SecAggAborted, match="falls apart"):
        params = SecAggParams("test/apart", 3, BITS, 200, 2)
        nodes = {n: SecAggNode(n, params) for n in sorted(values)}
        peers = {n: node.advertise() for n, node in nodes.items()}
        ring = sorted(peers)
        routed = route({n: nodes[n].share(peers, order=ring) for n in peers})
        masked = {n: nodes[n].mask(encode(values[n], BITS), routed[n]) for n in routed if n not in silent}
        nodes[100].unmask(sorted(masked))


def test_a_node_whose_neighbours_are_gone_cannot_be_recovered_and_nothing_is_unmasked() -> None:
    values = inputs(9)
    silent = {n: "unmask" for n in list(values)[:7]}  # 7 of 9 lost after masking: most neighbourhoods lack shares
    with pytest.raises(SecAggAborted, match="of the 2 shares it needs; nothing was unmasked"):
        run(values, 2, threshold=2, silent=silent)


def test_secagg_neighbours_must_be_even() -> None:
    with pytest.raises(ConfigError, match="secagg-neighbours must be 0"):
        RunConfig.from_run_config({"secagg-neighbours": 3})
