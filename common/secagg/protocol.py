"""SecAgg (Bonawitz et al., CCS 2017) of integer vectors mod 2^b, as pure client and server steps.

One *aggregation* (a DP statistics release, one round's update) runs four stages among the
nodes asked, each a message exchange relayed by the server:

1. **keys**: node i makes two fresh X25519 key pairs, c_i (share channel) and s_i (masks),
   and sends the public halves. U1 = nodes that answered.
2. **shares**: node i draws a fresh 32-byte self-mask seed b_i, splits b_i and s_i's private
   key into Shamir shares (threshold t, one per node of U1) and sends node j's two shares
   encrypted under HKDF(X25519(c_i, c_j)). U2 = nodes that answered; the server routes each
   ciphertext to its recipient.
3. **masked input**: node i sends
       y_i = x_i + PRG(b_i) + Σ_{j ∈ U2, j ≠ i} sign(i, j)·PRG(s_ij)   (mod 2^b),
   sign(i, j) = +1 if i < j else −1, s_ij = HKDF(X25519(s_i, s_j)): a pairwise seed both ends
   compute. U3 = nodes whose masked input arrived.
4. **unmask**: given U3, each node j of U2 sends, for every i ∈ U2, its share of b_i if i ∈ U3
   and its share of s_i's private key if i ∉ U3 (never both: the state is erased after one
   answer). With ≥ t answers the server rebuilds every b_i (i ∈ U3) and the private key of
   every dropped node, removes their masks and gets Σ_{i ∈ U3} x_i exactly (mod 2^b).

Any stage with fewer than t answers fails with :class:`SecAggAborted` and nothing is unmasked.
Keys are fresh per aggregation, so revealing a dropped node's mask key exposes nothing of
later aggregations.

Threat model: an honest-but-curious server and at most t − 1 colluding nodes learn nothing
about any honest node's x_i beyond the sum. The server relays public keys unauthenticated: a
*malicious* server could substitute keys (man in the middle) or tell nodes different U2/U3
and learn individual inputs; that needs signed keys (Bell et al., CCS 2020), not built here.

Neighbours: by default every node is a neighbour of every other. With ``params.neighbours`` = k
(SecAgg+, Bell et al., CCS 2020) node i shares with and masks against only N(i), the k/2 nodes on
either side of it in a random ring of U1 the server draws (:func:`neighbourhood`); its secrets then
need a majority of N(i) ∪ {i} (:func:`share_threshold`), the masks in stage 3 run over N(i) ∩ U2, and
the unmasking is refused unless the survivors are connected through such edges (:func:`connected`:
otherwise each component's sum could be unmasked on its own). O(k) work per node instead of O(K).
"""

from __future__ import annotations

import base64
import json
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from fedsynth.common.errors import SecAggAborted
from fedsynth.common.secagg import crypto, signing


@dataclass(frozen=True)
class SecAggParams:
    """What every node of one aggregation agrees on (sent by the server with the keys stage).

    ``label``: unique per aggregation (run key and release), bound into every derived key;
    ``threshold``: t, the fewest nodes that can finish it; ``bits``: b, arithmetic mod 2^b;
    ``length``: the vector length.
    """

    label: str
    threshold: int
    bits: int
    length: int
    neighbours: int = 0  # k: SecAgg+'s neighbours per node (even); 0: every node neighbours every other

    def __post_init__(self) -> None:
        if not 2 <= self.bits <= 64:
            raise ValueError(f"secure aggregation works mod 2^b with 2 <= b <= 64, got b = {self.bits}")
        if self.threshold < 2:
            raise ValueError(f"the secure-aggregation threshold must be at least 2, got {self.threshold}")
        if self.neighbours < 0 or self.neighbours % 2:
            raise ValueError(f"SecAgg+ neighbours must be 0 (all) or even and positive, got {self.neighbours}")

    def with_bits(self, bits: int) -> SecAggParams:
        return SecAggParams(self.label, self.threshold, bits, self.length, self.neighbours)

    def purpose(self, what: str) -> bytes:
        return f"fedsynth-secagg/{self.label}/{what}".encode()


def require(stage: str, answered: int, params: SecAggParams, reasons: Sequence[str] = ()) -> None:
    """Abort the aggregation if fewer than t nodes answered ``stage``; ``reasons``: why the others did not."""
    if answered < params.threshold:
        raise SecAggAborted(
            f"secure aggregation {params.label}: only {answered} node(s) answered the {stage} stage, the "
            f"threshold is {params.threshold}; nothing was unmasked. Lower secagg-threshold or bring nodes back."
            + "".join(f" {reason}" for reason in reasons)
        )


def neighbourhood(order: list[int], node: int, neighbours: int) -> set[int]:
    """``node``'s neighbours: SecAgg+'s graph (Bell et al., CCS 2020; the circulant "Harary" graph Flower's
    SecAgg+ also builds): the k/2 nodes on either side of ``node`` in the server's random ``order``.
    Everyone else in ``order`` when k = 0 or the ring is too small for k. Symmetric: j ∈ N(i) ⟺ i ∈ N(j)."""
    size = len(order)
    if not neighbours or neighbours + 1 >= size:
        return set(order) - {node}
    at, half = order.index(node), neighbours // 2
    return {order[(at + offset) % size] for offset in range(-half, half + 1) if offset} - {node}


def share_threshold(params: SecAggParams, members: int) -> int:
    """How many of a node's ``members`` (its neighbours and itself) rebuild its secrets: t with every node a
    neighbour (``neighbours`` = 0), else with SecAgg+ a majority of the neighbourhood."""
    return params.threshold if not params.neighbours else members // 2 + 1


def connected(nodes: list[int], order: list[int], neighbours: int) -> bool:
    """Whether ``nodes`` are connected through SecAgg+ edges among themselves: otherwise their pairwise masks
    cancel within each component, and each component's sum could be unmasked on its own."""
    if not nodes:
        return True
    within, seen, todo = set(nodes), {nodes[0]}, [nodes[0]]
    while todo:
        for peer in neighbourhood(order, todo.pop(), neighbours) & within - seen:
            seen.add(peer)
            todo.append(peer)
    return seen == within


def encode(values: np.ndarray, bits: int) -> np.ndarray:
    """Signed integers (int64) as residues mod 2^bits (uint64)."""
    return np.asarray(values, dtype=np.int64).view(np.uint64) & crypto.modulus_mask(bits)


def decode(residues: np.ndarray, bits: int) -> np.ndarray:
    """Residues mod 2^bits as signed integers in [−2^(bits−1), 2^(bits−1)) (int64)."""
    residues = np.asarray(residues, dtype=np.uint64) & crypto.modulus_mask(bits)
    if bits == 64:
        return residues.view(np.int64)
    signed = residues.astype(np.int64)
    return np.where(signed >= 1 << (bits - 1), signed - (1 << bits), signed)


def _sign(i: int, j: int) -> int:
    return 1 if i < j else -1


def _pack(payload: dict[str, object]) -> bytes:
    return json.dumps(payload, sort_keys=True).encode()


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def _unb64(text: str) -> bytes:
    return base64.b64decode(text)


@dataclass
class SecAggNode:
    """One node's state through one aggregation (kept in the node's context between stages)."""

    node: int
    params: SecAggParams
    channel_key: bytes = field(default_factory=lambda: crypto.private_bytes(crypto.new_private_key()))
    mask_key: bytes = field(default_factory=lambda: crypto.private_bytes(crypto.new_private_key()))
    self_seed: bytes = b""
    peers: dict[int, tuple[bytes, bytes]] = field(default_factory=dict)  # U1: node → (channel, mask) public
    own_shares: tuple[bytes, bytes] = (b"", b"")
    received: dict[int, bytes] = field(default_factory=dict)  # U2 ∩ N(i): sender → ciphertext
    stage: str = "keys"
    order: list[int] = field(default_factory=list)  # the ring SecAgg+'s graph is drawn on (U1, shuffled)
    signed: bool = False  # against an active server (:mod:`fedsynth.common.secagg.signing`): set at creation
    signers: dict[int, bytes] = field(default_factory=dict)  # signed mode: U1's node → its registered key
    survivors: list[int] = field(default_factory=list)  # signed mode: the U3 this node signed

    # stage 1
    def advertise(self) -> tuple[bytes, bytes]:
        """The public channel and mask keys."""
        self._expect("keys", "shares")
        return self.public_keys()

    # stage 2
    def share(
        self, peers: dict[int, tuple[bytes, bytes]], bits: int | None = None, order: list[int] | None = None,
        proof: signing.KeyProof | None = None,
    ) -> dict[int, bytes]:  # fmt: skip
        """Encrypted shares of b_i and of the mask key for each neighbour of this node among U1 (``peers``):
        every other node, or with SecAgg+ (``params.neighbours`` = k) the k around it in ``order`` (the
        server's random ring of U1).

        ``bits``: b, when the server fixes it only now (from what the nodes said at the keys stage).
        ``proof``: in signed mode, each entry's signer and signature, checked before anything is shared.
        """
        self._expect("shares", "masked-input")
        if bits is not None:
            self.params = self.params.with_bits(bits)
        if self.node not in peers or peers[self.node] != self.public_keys():
            raise SecAggAborted(f"secure aggregation {self.params.label}: the key list does not hold this node's keys")
        require("keys", len(peers), self.params)
        if self.signed:
            self.signers = signing.check_proof(self.params.label, self.node, self.params.threshold, peers, proof)
        self.order = list(order) if order is not None else sorted(peers)
        if sorted(self.order) != sorted(peers):
            raise SecAggAborted(f"secure aggregation {self.params.label}: the ring is not the key list")
        self.peers = dict(peers)
        self.self_seed = secrets.token_bytes(crypto.SEED_BYTES)
        members = sorted(self.neighbours() | {self.node})
        threshold = share_threshold(self.params, len(members))
        seed_shares = crypto.split_secret(self.self_seed, threshold, len(members))
        key_shares = crypto.split_secret(self.mask_key, threshold, len(members))
        out: dict[int, bytes] = {}
        for index, peer in enumerate(members):
            plaintext = _pack({"seed": _b64(seed_shares[index]), "key": _b64(key_shares[index])})
            if peer == self.node:
                self.own_shares = (seed_shares[index], key_shares[index])
            else:
                out[peer] = crypto.encrypt(self._channel(peer), plaintext, self._route(self.node, peer))
        return out

    # stage 3
    def mask(self, residues: np.ndarray, received: dict[int, bytes]) -> np.ndarray:
        """y_i = x_i + PRG(b_i) + Σ_j sign(i, j)·PRG(s_ij) mod 2^b over U2 = ``received``'s senders ∪ {i}."""
        self._expect("masked-input", "consistency" if self.signed else "unmask")
        residues = np.asarray(residues, dtype=np.uint64)
        if residues.shape != (self.params.length,):
            raise ValueError(f"secure aggregation {self.params.label}: vector of shape {residues.shape}, "
                             f"expected ({self.params.length},)")  # fmt: skip
        unknown = set(received) - self.neighbours()
        if unknown or self.node in received:
            raise SecAggAborted(f"secure aggregation {self.params.label}: shares from nodes outside its neighbours")
        members = len(self.neighbours()) + 1
        if not self.params.neighbours:
            require("shares", len(received) + 1, self.params)
        elif len(received) + 1 < share_threshold(self.params, members):
            raise SecAggAborted(
                f"secure aggregation {self.params.label}: only {len(received) + 1} of this node's {members} "
                "neighbourhood shared; too few to recover it. Nothing was sent."
            )
        self.received = dict(received)
        masked = crypto.expand_mask(self.self_seed, self.params.length, self.params.bits)
        np.add(masked, residues, out=masked)  # uint64 arithmetic wraps mod 2^64; reduced mod 2^b at the end
        mask_key = self._key(self.mask_key)
        for peer in received:
            seed = crypto.agree(mask_key, self.peers[peer][1], self.params.purpose("mask"))
            pairwise = crypto.expand_mask(seed, self.params.length, self.params.bits)
            (np.add if _sign(self.node, peer) > 0 else np.subtract)(masked, pairwise, out=masked)
        np.bitwise_and(masked, crypto.modulus_mask(self.params.bits), out=masked)
        return masked

    # signed mode, between stages 3 and 4
    def consistency(self, survivors: list[int], signer: signing.NodeSigner) -> bytes:
        """Sign the survivor set U3 this node is shown (it must include this node, which sent its masked input)
        over the view it shared in (:func:`fedsynth.common.secagg.signing.survivors_statement`)."""
        self._expect("consistency", "unmask")
        self._check_survivors(survivors)
        if self.node not in survivors:
            raise SecAggAborted(f"secure aggregation {self.params.label}: this node sent its masked input but is "
                                "not among the survivors; nothing was signed")  # fmt: skip
        self.survivors = sorted(set(survivors))
        return signer.sign(signing.survivors_statement(self.params.label, self.view(), self.survivors))

    def view(self) -> str:
        """The digest of the key list, signers and ring this node shared over."""
        p = self.params
        settings = (p.threshold, p.neighbours, p.bits, p.length)
        return signing.view_digest(p.label, self.peers, self.signers, self.order, settings)

    # stage 4
    def unmask(self, survivors: list[int], confirmations: dict[int, bytes] | None = None) -> dict[int, bytes]:
        """For each node of U2: its self-seed share if it is in U3 (``survivors``), else its mask-key share.

        Signed mode: only for the U3 this node signed, with ``confirmations`` (node → signature of the same
        statement) from at least t of its nodes."""
        self._expect("unmask", "done")
        members = set(self.received) | {self.node}
        self._check_survivors(survivors)
        if self.signed:
            if sorted(set(survivors)) != self.survivors:
                raise SecAggAborted(f"secure aggregation {self.params.label}: asked to unmask for another survivor "
                                    "set than the one this node signed; nothing was unmasked")  # fmt: skip
            signing.check_survivors(self.params.label, self.view(), self.survivors, self.signers, confirmations or {},
                                    self.params.threshold)  # fmt: skip
        out: dict[int, bytes] = {}
        for sender in sorted(members):
            if sender == self.node:
                seed_share, key_share = self.own_shares
            else:
                plain = crypto.decrypt(self._channel(sender), self.received[sender], self._route(sender, self.node))
                shares = json.loads(plain)
                seed_share, key_share = _unb64(shares["seed"]), _unb64(shares["key"])
            out[sender] = seed_share if sender in survivors else key_share
        self.self_seed, self.mask_key, self.channel_key = b"", b"", b""  # one answer only
        return out

    def to_bytes(self) -> bytes:
        """This state for the node's context between stages (it holds private keys: never sent)."""
        return _pack(
            {
                "node": self.node,
                "params": [
                    self.params.label,
                    self.params.threshold,
                    self.params.bits,
                    self.params.length,
                    self.params.neighbours,
                ],
                "channel_key": _b64(self.channel_key),
                "mask_key": _b64(self.mask_key),
                "self_seed": _b64(self.self_seed),
                "peers": {str(n): [_b64(c), _b64(m)] for n, (c, m) in self.peers.items()},
                "own_shares": [_b64(x) for x in self.own_shares],
                "received": {str(n): _b64(c) for n, c in self.received.items()},
                "stage": self.stage,
                "order": self.order,
                "signed": self.signed,
                "signers": {str(n): key.decode() for n, key in self.signers.items()},
                "survivors": self.survivors,
            }
        )

    @classmethod
    def from_bytes(cls, raw: bytes) -> SecAggNode:
        saved = json.loads(raw)
        label, threshold, bits, length, neighbours = saved["params"]
        return cls(
            int(saved["node"]),
            SecAggParams(str(label), int(threshold), int(bits), int(length), int(neighbours)),
            _unb64(saved["channel_key"]),
            _unb64(saved["mask_key"]),
            _unb64(saved["self_seed"]),
            {int(n): (_unb64(c), _unb64(m)) for n, (c, m) in saved["peers"].items()},
            (_unb64(saved["own_shares"][0]), _unb64(saved["own_shares"][1])),
            {int(n): _unb64(c) for n, c in saved["received"].items()},
            str(saved["stage"]),
            [int(n) for n in saved["order"]],
            bool(saved.get("signed", False)),
            {int(n): str(key).encode() for n, key in saved.get("signers", {}).items()},
            [int(n) for n in saved.get("survivors", [])],
        )

    def _check_survivors(self, survivors: list[int]) -> None:
        """Refuse a survivor set U3 this node cannot safely answer for: outside the key list, below t, a
        SecAgg+ graph that falls apart, or holding a neighbour whose shares never reached this node (it did
        not mask against that neighbour: revealing its self-mask seed and the others' mask keys would unmask
        its input; Bonawitz et al.'s U3 ⊆ U2 check, which an active server's routing must not get around)."""
        if not set(survivors) <= set(self.peers):
            raise SecAggAborted(f"secure aggregation {self.params.label}: survivors outside the key list")
        unshared = set(survivors) & self.neighbours() - set(self.received)
        if unshared:
            raise SecAggAborted(f"secure aggregation {self.params.label}: survivors {sorted(unshared)} sent this node "
                                "no shares (it did not mask against them); nothing was revealed")  # fmt: skip
        require("masked-input", len(set(survivors)), self.params)
        if not connected(sorted(set(survivors)), self.order, self.params.neighbours):
            raise SecAggAborted(
                f"secure aggregation {self.params.label}: the survivors' SecAgg+ graph falls apart, so parts of "
                "the sum could be unmasked on their own; nothing was unmasked."
            )

    def neighbours(self) -> set[int]:
        """N(i) within U1 (set at the shares stage)."""
        return neighbourhood(self.order, self.node, self.params.neighbours)

    def public_keys(self) -> tuple[bytes, bytes]:
        return (crypto.public_bytes(self._key(self.channel_key)), crypto.public_bytes(self._key(self.mask_key)))

    def _expect(self, stage: str, following: str) -> None:
        if self.stage != stage:
            raise SecAggAborted(
                f"secure aggregation {self.params.label}: asked for the {stage} stage while at the {self.stage} stage"
            )
        self.stage = following

    def _key(self, raw: bytes) -> crypto.X25519PrivateKey:
        return crypto.private_from_bytes(raw)

    def _channel(self, peer: int) -> bytes:
        return crypto.agree(self._key(self.channel_key), self.peers[peer][0], self.params.purpose("channel"))

    def _route(self, sender: int, recipient: int) -> bytes:
        return self.params.purpose(f"share/{sender}->{recipient}")


def route(shares_by_sender: dict[int, dict[int, bytes]]) -> dict[int, dict[int, bytes]]:
    """The server's relay of stage 2: recipient → {sender: ciphertext}, among the senders (U2) only."""
    senders = set(shares_by_sender)
    routed: dict[int, dict[int, bytes]] = {node: {} for node in senders}
    for sender, outgoing in shares_by_sender.items():
        for recipient, ciphertext in outgoing.items():
            if recipient in senders:
                routed[recipient][sender] = ciphertext
    return routed


def unmasked_sum(
    params: SecAggParams,
    peers: dict[int, tuple[bytes, bytes]],
    shared: list[int],
    masked: dict[int, np.ndarray],
    revealed: dict[int, dict[int, bytes]],
    order: list[int] | None = None,
) -> np.ndarray:
    """Σ_{i ∈ U3} x_i mod 2^b from the masked inputs (U3 = ``masked``) and the revealed shares.

    ``peers``: U1's public keys; ``shared``: U2; ``revealed``: responder → {node: share} (U4), each
    responder holding shares of its neighbours and itself; ``order``: SecAgg+'s ring (None: sorted U1).
    Aborts if a node's secret has fewer than its threshold of shares, or the survivors' graph falls apart.
    """
    require("unmask", len(revealed), params)
    ring = order if order is not None else sorted(peers)
    if not connected(sorted(masked), ring, params.neighbours):
        raise SecAggAborted(f"secure aggregation {params.label}: the survivors' SecAgg+ graph falls apart; "
                            "nothing was unmasked.")  # fmt: skip
    bits, length = params.bits, params.length
    total = np.zeros(length, dtype=np.uint64)  # uint64 arithmetic wraps mod 2^64; reduced mod 2^b at the end
    for vector in masked.values():
        np.add(total, np.asarray(vector, dtype=np.uint64), out=total)

    def secret_of(node: int) -> bytes:
        held = [shares[node] for shares in revealed.values() if node in shares]
        needed = share_threshold(params, len(neighbourhood(ring, node, params.neighbours)) + 1)
        if len(held) < needed:
            raise SecAggAborted(f"secure aggregation {params.label}: node {node}'s secret has {len(held)} of the "
                                f"{needed} shares it needs; nothing was unmasked.")  # fmt: skip
        return crypto.combine_secret(held[:needed])

    for node in sorted(masked):
        np.subtract(total, crypto.expand_mask(secret_of(node), length, bits), out=total)
    for dropped in sorted(set(shared) - set(masked)):
        masked_against = sorted(set(masked) & neighbourhood(ring, dropped, params.neighbours))
        if not masked_against:  # no survivor masked against it: nothing to remove, its key stays secret
            continue
        key = crypto.private_from_bytes(secret_of(dropped))
        for node in masked_against:
            pairwise = crypto.expand_mask(crypto.agree(key, peers[node][1], params.purpose("mask")), length, bits)
            (np.subtract if _sign(node, dropped) > 0 else np.add)(total, pairwise, out=total)
    np.bitwise_and(total, crypto.modulus_mask(bits), out=total)
    return total


STAGES = ("keys", "shares", "masked-input", "unmask")


def aggregate_in_process(
    params: SecAggParams, inputs: dict[int, np.ndarray], silent_from: dict[int, str] | None = None,
    signers: dict[int, signing.NodeSigner] | None = None,
) -> tuple[np.ndarray, list[int]]:  # fmt: skip
    """Run all four stages among ``inputs``' nodes in this process; (Σ x_i mod 2^b over U3, U3).

    The same steps as over Flower, for the simulated DP baselines and the tests. ``silent_from``:
    node → the first stage it does not answer (a dropout). ``signers``: node → its registered key, for
    signed mode (every node trusts exactly these keys), with the consistency stage before the unmasking.
    """
    silent_from = silent_from or {}

    def answers(node: int, stage: str) -> bool:
        return node not in silent_from or STAGES.index(stage) < STAGES.index(silent_from[node])

    nodes = {n: SecAggNode(n, params, signed=signers is not None) for n in sorted(inputs)}
    peers = {n: node.advertise() for n, node in nodes.items() if answers(n, "keys")}
    require("keys", len(peers), params)
    proofs = signed_key_list(params.label, peers, signers) if signers is not None else dict.fromkeys(peers)
    order = ring_order(list(peers))
    outgoing = {n: nodes[n].share(peers, order=order, proof=proofs[n]) for n in peers if answers(n, "shares")}
    require("shares", len(outgoing), params)
    routed = route(outgoing)
    masked = {n: nodes[n].mask(encode_residues(inputs[n]), routed[n]) for n in routed if answers(n, "masked-input")}
    require("masked-input", len(masked), params)
    survivors = sorted(masked)
    confirmations = None
    if signers is not None:
        confirmations = {n: nodes[n].consistency(survivors, signers[n]) for n in survivors if answers(n, "unmask")}
        require("consistency", len(confirmations), params)
    answering = [n for n in routed if answers(n, "unmask") and (confirmations is None or n in confirmations)]
    revealed = {n: nodes[n].unmask(survivors, confirmations) for n in answering}
    return unmasked_sum(params, peers, sorted(routed), masked, revealed, order), survivors


def signed_key_list(
    label: str, peers: dict[int, tuple[bytes, bytes]], signers: dict[int, signing.NodeSigner]
) -> dict[int, signing.KeyProof | None]:
    """Each node's stage-2 proof in an in-process signed aggregation: every node signs its keys, every node
    trusts the ``signers``' public keys."""
    trusted = signing.TrustedKeys(frozenset(s.public for s in signers.values()))
    public = {n: signers[n].public for n in peers}
    signatures = {n: signers[n].sign(signing.keys_statement(label, n, *peers[n])) for n in peers}
    return {n: signing.KeyProof(public[n], public, signatures, trusted) for n in peers}


def ring_order(nodes: list[int]) -> list[int]:
    """The server's random ring of U1 for SecAgg+'s graph (OS CSPRNG shuffle)."""
    order = sorted(nodes)
    secrets.SystemRandom().shuffle(order)
    return order


def encode_residues(values: np.ndarray) -> np.ndarray:
    """Already residues (uint64) pass through; anything else must be."""
    values = np.asarray(values)
    if values.dtype != np.uint64:
        raise TypeError(f"secure aggregation takes residues mod 2^b as uint64 (see encode), got {values.dtype}")
    return values
