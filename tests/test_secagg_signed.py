"""Signed secure aggregation against an active server (:mod:`fedsynth.common.secagg.signing`), step by step.

The server here is the test: it runs the protocol's pure steps among real nodes and lies where an
active server could. Key substitution, a replayed key, an unsigned list and one key behind two nodes are
each refused at the shares stage, before anything is shared; a split view of the survivors, which
recovers one node's input exactly without signatures, stops at the unmask stage with signatures.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest

from fedsynth.common.errors import ConfigError
from fedsynth.common.secagg import crypto
from fedsynth.common.secagg.protocol import (
    SecAggAborted,
    SecAggNode,
    SecAggParams,
    aggregate_in_process,
    route,
    share_threshold,
    signed_key_list,
)
from fedsynth.common.secagg.signing import NodeSigner, Signing, keys_statement, max_colluding

BITS = 32


def inputs(nodes: int, length: int = 50, seed: int = 0) -> dict[int, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {n: rng.integers(0, 2**BITS, size=length, dtype=np.uint64) for n in range(nodes)}


def total(values: dict[int, np.ndarray], nodes: list[int]) -> np.ndarray:
    return sum((values[n] for n in nodes), np.zeros_like(values[0])) & crypto.modulus_mask(BITS)


@pytest.mark.parametrize(("nodes", "neighbours", "silent"), [(5, 0, {}), (5, 0, {4: "unmask"}), (10, 4, {2: "unmask"})])
def test_the_honest_signed_aggregation_sums_exactly(nodes: int, neighbours: int, silent: dict[int, str]) -> None:
    values = inputs(nodes)
    params = SecAggParams("run/statistics", nodes // 2 + 1, BITS, 50, neighbours)
    signers = {n: NodeSigner.generate() for n in values}

    summed, survivors = aggregate_in_process(params, values, silent, signers)

    assert survivors == list(range(nodes))  # a node lost at the unmask stage is unmasked from the others' shares
    assert np.array_equal(summed, total(values, survivors))


class Server:
    """Stage 1 among ``nodes`` signed nodes (each trusting all of them), the key list ready to tamper with."""

    def __init__(self, nodes: int, label: str = "run/statistics", threshold: int = 3, neighbours: int = 0) -> None:
        self.params = SecAggParams(label, threshold, BITS, 50, neighbours)
        self.signers = {n: NodeSigner.generate() for n in range(nodes)}
        self.nodes = {n: SecAggNode(n, self.params, signed=True) for n in range(nodes)}
        self.peers = {n: node.advertise() for n, node in self.nodes.items()}
        self.proofs = signed_key_list(label, self.peers, self.signers)


def test_a_substituted_key_is_refused_before_anything_is_shared() -> None:
    server = Server(4)
    own = SecAggNode(1, server.params)  # the server's own keys in node 1's place
    peers = {**server.peers, 1: own.advertise()}

    with pytest.raises(SecAggAborted, match="node 1's keys do not match their signature"):
        server.nodes[0].share(peers, proof=server.proofs[0])

    intruder = NodeSigner.generate()  # signed by a key the operator never registered
    proof = copy.copy(server.proofs[0])
    object.__setattr__(proof, "signers", {**proof.signers, 1: intruder.public})
    object.__setattr__(proof, "signatures", {**proof.signatures, 1: intruder.sign(keys_statement(
        server.params.label, 1, *peers[1]))})  # fmt: skip
    with pytest.raises(SecAggAborted, match="node 1's keys are not signed by a registered node key"):
        server.nodes[2].share(peers, proof=proof)


def test_without_signatures_a_substituted_key_gives_the_server_the_shares() -> None:
    """The attack the signatures stop: an unsigned node encrypts node 1's shares to the server's key."""
    params = SecAggParams("run/statistics", 3, BITS, 50)
    nodes = {n: SecAggNode(n, params) for n in range(4)}
    peers = {n: node.advertise() for n, node in nodes.items()}
    impostor = SecAggNode(1, params)
    fake = {**peers, 1: impostor.advertise()}

    shares = nodes[0].share(fake)  # accepted

    key = crypto.agree(crypto.private_from_bytes(impostor.channel_key), fake[0][0], params.purpose("channel"))
    assert b"seed" in crypto.decrypt(key, shares[1], params.purpose("share/0->1"))


def test_a_replayed_key_an_unsigned_list_and_one_key_for_two_nodes_are_refused() -> None:
    earlier = Server(4, label="run/round/1")
    server = Server(4, label="run/round/2")
    server.signers = earlier.signers  # the same registered node keys, a later aggregation
    server.proofs = signed_key_list(server.params.label, server.peers, server.signers)
    replayed_peers = {**server.peers, 1: earlier.peers[1]}
    proof = copy.copy(server.proofs[0])
    object.__setattr__(proof, "signatures", {**proof.signatures, 1: earlier.proofs[0].signatures[1]})

    with pytest.raises(SecAggAborted, match="node 1's keys do not match their signature"):
        server.nodes[0].share(replayed_peers, proof=proof)
    with pytest.raises(SecAggAborted, match="carries no signatures"):
        server.nodes[1].share(server.peers)
    sybil = copy.copy(server.proofs[2])  # node 3's entry re-signed by node 1's key (a colluding node)
    object.__setattr__(sybil, "signers", {**sybil.signers, 3: server.signers[1].public})
    object.__setattr__(sybil, "signatures", {**sybil.signatures, 3: server.signers[1].sign(keys_statement(
        server.params.label, 3, *server.peers[3]))})  # fmt: skip
    with pytest.raises(SecAggAborted, match="nodes 1 and 3 are signed by one key"):
        server.nodes[2].share(server.peers, proof=sybil)


def test_signed_mode_needs_more_than_half_as_threshold() -> None:
    server = Server(4, threshold=2)
    assert max_colluding(2, 4) == -1 and max_colluding(3, 4) == 1 and max_colluding(7, 10) == 3
    with pytest.raises(SecAggAborted, match="signed mode needs more than half"):
        server.nodes[0].share(server.peers, proof=server.proofs[0])


Answers = dict[object, "dict[int, bytes] | SecAggAborted"]


def split_view(signed: bool) -> tuple[dict[int, np.ndarray], Answers, np.ndarray, dict[int, bytes]]:
    """SecAgg+ among 10 nodes (k = 4 neighbours, t = 6) in the ring 0..9. The server, with node 3 (a neighbour
    of node 5) colluding, tells one group that node 5 survived and another that it dropped, to collect
    both node 5's self-mask seed and its mask key. Returns the inputs, each node's unmask answer (or its
    refusal; "colluder": node 3's second answer), node 5's masked vector and the mask public keys."""
    values = inputs(10)
    params = SecAggParams("run/statistics", 6, BITS, 50, 4)
    signers = {n: NodeSigner.generate() for n in values}
    nodes = {n: SecAggNode(n, params, signed=signed) for n in values}
    peers = {n: node.advertise() for n, node in nodes.items()}
    proofs = signed_key_list(params.label, peers, signers) if signed else dict.fromkeys(peers)
    routed = route({n: nodes[n].share(peers, order=list(range(10)), proof=proofs[n]) for n in nodes})
    masked = {n: nodes[n].mask(values[n], routed[n]) for n in nodes}
    everyone, without_5 = list(range(10)), [n for n in range(10) if n != 5]
    shown: dict[object, list[int]] = {n: everyone if n in (0, 1, 2, 4, 5) else without_5 for n in nodes}
    shown["colluder"] = everyone  # node 3 answers both ways: its state copied before it answers
    answering: dict[object, SecAggNode] = {**nodes, "colluder": copy.deepcopy(nodes[3])}
    confirmations: dict[object, dict[int, bytes]] = {}
    if signed:  # each signs the set it is shown; the server forwards the signatures of the same set
        signatures = {n: answering[n].consistency(shown[n], signers[3 if n == "colluder" else n]) for n in answering}
        for n in answering:
            confirmations[n] = {3 if m == "colluder" else m: sig for m, sig in signatures.items()  # type: ignore[misc]
                                if shown[m] == shown[n]}  # fmt: skip
    answers: Answers = {}
    for n, node in answering.items():
        try:
            answers[n] = node.unmask(shown[n], confirmations.get(n))
        except SecAggAborted as exc:
            answers[n] = exc
    return values, answers, masked[5], {n: keys[1] for n, keys in peers.items()}


def unmask_node_5(answers: Answers, masked: np.ndarray, mask_keys: dict[int, bytes]) -> np.ndarray:
    """The server's attack: node 5's seed from the 'survived' group, its mask key from the 'dropped' group."""
    needed = share_threshold(SecAggParams("run/statistics", 6, BITS, 50, 4), 5)  # 3 of its 5-node neighbourhood
    survived, dropped = [answers[n] for n in (4, 5, "colluder")], [answers[n] for n in (6, 7, 3)]
    seed = rebuild([a[5] for a in survived if isinstance(a, dict)], needed)
    key = crypto.private_from_bytes(rebuild([a[5] for a in dropped if isinstance(a, dict)], needed))
    x = masked - crypto.expand_mask(seed, 50, BITS)
    for peer in (3, 4, 6, 7):
        seed_5_peer = crypto.agree(key, mask_keys[peer], b"fedsynth-secagg/run/statistics/mask")
        pairwise = crypto.expand_mask(seed_5_peer, 50, BITS)
        x = x - pairwise if peer > 5 else x + pairwise  # node 5 added +PRG towards larger ids, −PRG towards smaller
    return x & crypto.modulus_mask(BITS)


def rebuild(shares: list[bytes], needed: int) -> bytes:
    if len(shares) < needed:
        raise ValueError(f"{len(shares)} shares, {needed} needed")
    return crypto.combine_secret(shares[:needed])


def test_a_split_view_of_the_survivors_unmasks_one_node_without_signatures_and_stops_with_them() -> None:
    values, answers, masked, mask_keys = split_view(signed=False)
    assert np.array_equal(unmask_node_5(answers, masked, mask_keys), values[5]), "the attack, unsigned"

    _, signed_answers, masked, mask_keys = split_view(signed=True)
    refused = sorted(str(n) for n, a in signed_answers.items() if isinstance(a, SecAggAborted))
    # the group shown the set with fewer than t = 6 signatures (5: nodes 3, 6, 7, 8, 9) answers nothing, so
    # node 5's mask key stays secret and its self-mask seed alone does not unmask it
    assert refused == ["3", "6", "7", "8", "9"]
    assert all("confirmed the survivor set" in str(signed_answers[int(n)]) for n in refused)
    with pytest.raises(ValueError, match="0 shares, 3 needed"):  # none of node 5's mask key
        unmask_node_5(signed_answers, masked, mask_keys)


def test_node_config_errors_name_the_setting_and_the_file(tmp_path: Path) -> None:
    from fedsynth.simulations.deployment.setup import make_node_keys

    keys = make_node_keys(tmp_path, ["a", "b", "c"])
    trusted = tmp_path / "trusted.pub"
    trusted.write_bytes(keys[0].public.read_bytes() + b"# the operator's list\n" + keys[1].public.read_bytes())
    given = {"secagg-signing-key": str(keys[0].private), "secagg-trusted-keys": str(trusted)}
    signing = Signing.from_node_config(given)
    assert signing is not None and signing.signer.public in signing.trusted
    assert Signing.from_node_config({}) is None
    with pytest.raises(ConfigError, match="secagg-signing-key is set but secagg-trusted-keys is not"):
        Signing.from_node_config({"secagg-signing-key": str(keys[0].private)})
    with pytest.raises(ConfigError, match="this node's public key is not in secagg-trusted-keys"):
        Signing.from_node_config({"secagg-signing-key": str(keys[2].private), "secagg-trusted-keys": str(trusted)})
    with pytest.raises(ConfigError, match="cannot read it"):
        Signing.from_node_config({"secagg-signing-key": str(tmp_path / "none"), "secagg-trusted-keys": str(trusted)})
    broken = tmp_path / "broken.pub"
    broken.write_bytes(keys[0].public.read_bytes() + b"ssh-nonsense AAAA\n")
    with pytest.raises(ConfigError, match=r"broken.pub, line 2: not an OpenSSH"):
        Signing.from_node_config({"secagg-signing-key": str(keys[0].private), "secagg-trusted-keys": str(broken)})


@pytest.mark.parametrize("signed", [False, True])
def test_a_node_whose_peer_shares_were_withheld_reveals_nothing(signed: bool) -> None:
    """The server withholds node 2's shares from node 1 (so node 1 masks against node 3 only), then declares
    node 3 dropped: with U3 = {1, 2}, node 1's self-mask seed and node 3's mask key would unmask x_1 exactly.
    Node 1 refuses: node 2, a survivor, sent it no shares (U3 ⊆ U2 as node 1 saw it)."""
    params = SecAggParams("run/statistics", 2, BITS, 4)
    signers = {n: NodeSigner.generate() for n in (1, 2, 3)}
    nodes = {n: SecAggNode(n, params, signed=signed) for n in (1, 2, 3)}
    peers = {n: node.advertise() for n, node in nodes.items()}
    proofs = signed_key_list(params.label, peers, signers) if signed else dict.fromkeys(peers)
    out = {n: nodes[n].share(peers, proof=proofs[n]) for n in nodes}
    values = {n: np.full(4, 10 * n, dtype=np.uint64) for n in nodes}
    nodes[1].mask(values[1], {3: out[3][1]})  # node 2's ciphertext withheld
    nodes[2].mask(values[2], {1: out[1][2], 3: out[3][2]})

    with pytest.raises(SecAggAborted, match=r"survivors \[2\] sent this node no shares"):
        if signed:
            nodes[1].consistency([1, 2], signers[1])
        else:
            nodes[1].unmask([1, 2])
