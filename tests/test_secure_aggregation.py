"""SecAgg: exact sums, dropout recovery, aborts, the mask generator, and what a single upload reveals."""

from __future__ import annotations

import numpy as np
import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from scipy.stats import chisquare

from fedsynth.common.secagg import crypto
from fedsynth.common.secagg.protocol import (
    SecAggAborted,
    SecAggNode,
    SecAggParams,
    aggregate_in_process,
    decode,
    encode,
    route,
)

BITS = 40


def inputs(nodes: list[int], length: int = 300, seed: int = 0) -> dict[int, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {n: rng.integers(-(10**6), 10**6, length) for n in nodes}


def run(values: dict[int, np.ndarray], threshold: int = 3, silent: dict[int, str] | None = None):
    params = SecAggParams("test/round-1", threshold, BITS, len(next(iter(values.values()))))
    total, survivors = aggregate_in_process(params, {n: encode(v, BITS) for n, v in values.items()}, silent)
    return decode(total, BITS), survivors


def test_the_unmasked_sum_is_the_exact_integer_sum() -> None:
    values = inputs([2, 5, 7, 11, 13])
    total, survivors = run(values)
    assert survivors == [2, 5, 7, 11, 13]
    np.testing.assert_array_equal(total, sum(values.values()))


def test_a_node_lost_after_masking_is_recovered_and_one_lost_before_is_left_out() -> None:
    values = inputs([1, 2, 3, 4, 5])
    total, survivors = run(values, silent={4: "unmask", 2: "masked-input"})  # 4 sent its vector, 2 did not
    assert survivors == [1, 3, 4, 5]
    np.testing.assert_array_equal(total, values[1] + values[3] + values[4] + values[5])


@pytest.mark.parametrize(
    ("silent", "stage"),
    [
        ({1: "keys", 2: "keys", 3: "keys"}, "keys"),
        ({1: "masked-input", 2: "masked-input", 3: "masked-input"}, "masked-input"),
        ({1: "unmask", 2: "unmask", 3: "unmask"}, "unmask"),  # vectors in, too few to unmask them
    ],
)
def test_fewer_than_threshold_survivors_abort_and_unmask_nothing(silent: dict[int, str], stage: str) -> None:
    with pytest.raises(SecAggAborted, match=f"only 2 node\\(s\\) answered the {stage} stage, the threshold is 3"):
        run(inputs([1, 2, 3, 4, 5]), threshold=3, silent=silent)


def test_a_node_answers_unmask_once_and_refuses_out_of_order_stages() -> None:
    params = SecAggParams("test/x", 2, BITS, 4)
    nodes = {n: SecAggNode(n, params) for n in (1, 2)}
    peers = {n: node.advertise() for n, node in nodes.items()}
    routed = route({n: node.share(peers) for n, node in nodes.items()})
    for n, node in nodes.items():
        node.mask(encode(np.arange(4), BITS), routed[n])
    nodes[1].unmask([1, 2])
    with pytest.raises(SecAggAborted, match="asked for the unmask stage while at the done stage"):
        nodes[1].unmask([1])  # never both shares of one node: its secrets are gone
    with pytest.raises(SecAggAborted, match="asked for the keys stage"):
        nodes[2].advertise()


def test_shares_are_encrypted_and_bound_to_sender_and_recipient() -> None:
    params = SecAggParams("test/y", 2, BITS, 4)
    nodes = {n: SecAggNode(n, params) for n in (1, 2, 3)}
    peers = {n: node.advertise() for n, node in nodes.items()}
    shares = {n: node.share(peers) for n, node in nodes.items()}
    secret = nodes[1].mask_key
    assert all(secret not in c for c in shares[1].values())
    tampered = route(shares)
    tampered[2][1] = tampered[2][1][:-1] + bytes([tampered[2][1][-1] ^ 1])
    nodes[2].mask(encode(np.zeros(4, dtype=np.int64), BITS), tampered[2])
    with pytest.raises(InvalidTag):
        nodes[2].unmask([1, 2, 3])


def test_masks_are_the_chacha20_keystream_and_uniform() -> None:
    seed = bytes(range(32))
    mask = crypto.expand_mask(seed, 1000, 64)
    stream = Cipher(algorithms.ChaCha20(seed, b"\0" * 16), mode=None).encryptor().update(bytes(8000))
    np.testing.assert_array_equal(mask, np.frombuffer(stream, dtype="<u8"))
    np.testing.assert_array_equal(crypto.expand_mask(seed, 1000, 12), mask & np.uint64(4095))
    low = crypto.expand_mask(bytes(32), 256 * 400, 8)
    assert chisquare(np.bincount(low.astype(np.int64), minlength=256)).pvalue > 1e-3
    assert not np.array_equal(crypto.expand_mask(bytes(31) + b"\1", 1000, 64), crypto.expand_mask(bytes(32), 1000, 64))


def test_a_single_masked_upload_looks_the_same_whatever_its_input() -> None:
    """Node 1's upload for input 0 and for input 200 (mod 2^8): both uniform, indistinguishable.

    The masks come from fresh keys (a CSPRNG), so each run draws anew: the tests reject at p < 10⁻⁶
    (a false alarm about once in 300,000 runs); an upload that kept any trace of its input (a constant
    vector: χ² ≈ 10⁶ on 255 degrees of freedom) fails by hundreds of orders of magnitude."""
    params = SecAggParams("test/z", 2, 8, 4096)
    uploads = []
    for value in (0, 200):
        nodes = {n: SecAggNode(n, params) for n in (1, 2, 3)}
        peers = {n: node.advertise() for n, node in nodes.items()}
        routed = route({n: node.share(peers) for n, node in nodes.items()})
        uploads.append(nodes[1].mask(encode(np.full(4096, value), 8), routed[1]).astype(np.int64))
    counts = [np.bincount(u, minlength=256) for u in uploads]
    assert all(chisquare(c).pvalue > 1e-6 for c in counts)
    table = np.vstack(counts)
    expected = table.sum(axis=0) * table.sum(axis=1)[:, None] / table.sum()
    from scipy.stats import chi2

    statistic = float(((table - expected) ** 2 / np.maximum(expected, 1e-12)).sum())
    assert chi2.sf(statistic, 255) > 1e-6  # two-sample test: same distribution


def test_signed_values_survive_encoding() -> None:
    values = np.array([-(2**39), -1, 0, 1, 2**39 - 1])
    np.testing.assert_array_equal(decode(encode(values, 40), 40), values)
    np.testing.assert_array_equal(decode(encode(values, 64), 64), values)
    with pytest.raises(ValueError, match="2 <= b <= 64"):
        SecAggParams("x", 2, 65, 3)
