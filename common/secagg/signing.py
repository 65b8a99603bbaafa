"""Secure aggregation against an active server: SecAgg keys signed with the nodes' registered keys, and a
consistency round over the survivors (Bonawitz et al., CCS 2017, §4 "active adversary"; Bell et al., CCS 2020).

Each SuperNode already holds the key pair it authenticates to the SuperLink with (ECDSA P-384 or Ed25519,
OpenSSH files; ``--auth-supernode-private-key``), and the operator holds the list of registered public keys
(what ``flwr supernode register`` was given). A node whose node config names both
(``secagg-signing-key``, ``secagg-trusted-keys``) runs every aggregation in *signed* mode:

1. **keys**: it signs ``keys_statement(label, node, c_pk, m_pk)``: the aggregation's label (unique per run
   and release), its node id and its two fresh X25519 public keys;
2. **shares**: before it shares anything it checks every entry of the key list: a signature by a key on
   the operator's list, a different key for each node, its own entry under its own key. A substituted key
   (the server's own, or another node's under a new id), a key from another aggregation (a replay: the label
   is in the statement) or an unsigned entry aborts with the node named, before any share leaves;
3. **consistency** (after the masked input): it signs ``survivors_statement(view, U3)``, where ``view`` is a
   SHA-256 digest of the key list, signers and ring it shared over, and U3 the survivors it is shown
   (which must include itself);
4. **unmask**: it answers only if the request carries valid signatures of that same statement from at least
   t nodes of U3, each under the key that signed that node's SecAgg keys.

What this stops. Key substitution: the server holds no registered key, so it cannot stand in for a node at
stage 2 and read the shares sent to it. A split view: to learn one honest node's input the server must make
some honest nodes reveal its self-mask seed (it "survived") and others its mask key (it "dropped"): two
survivor sets, each signed by t nodes. An honest node signs one set per aggregation, so the two need
2t − c distinct honest signers among n − c: impossible when 2t > n + c, c the nodes colluding with the
server. The node refuses signed mode unless 2t > n (c = 0); ``max_colluding(t, n)`` = 2t − n − 1 is what
a threshold tolerates (raise ``secagg-threshold`` for more: t = ⌈2n/3⌉ tolerates about n/3).

What it does not stop: the server can still leave out nodes, abort, or claim that up to n − t nodes
dropped (the sum is then over t nodes, which secure aggregation allows in any threat model); each node's
noise share V/t is what ``epsilon_max_own_noise`` accounts for.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from fedsynth.common.errors import ConfigError, SecAggAborted

SIGNING_KEY = "secagg-signing-key"  # node config: this node's private key (the SuperNode's auth key file)
TRUSTED_KEYS = "secagg-trusted-keys"  # node config: the operator's list of registered node public keys

PrivateKey = ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey
PublicKey = ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey


def _statement(kind: str, payload: dict[str, Any]) -> bytes:
    return json.dumps({"fedsynth-secagg": kind, **payload}, sort_keys=True).encode()


def keys_statement(label: str, node: int, channel: bytes, mask: bytes) -> bytes:
    """What a node signs at the keys stage: its fresh public keys for aggregation ``label`` as node ``node``."""
    return _statement("keys", {"label": label, "node": node, "channel": channel.hex(), "mask": mask.hex()})


def view_digest(
    label: str, peers: dict[int, tuple[bytes, bytes]], signers: dict[int, bytes], order: list[int],
    settings: tuple[int, ...] = (),
) -> str:  # fmt: skip
    """SHA-256 of what a node shared over: the key list U1 (node → channel and mask keys), who signed each
    entry, SecAgg+'s ring and the aggregation's ``settings`` (threshold, neighbours, bits, length)."""
    entries = {str(n): [c.hex(), m.hex(), signers.get(n, b"").decode()] for n, (c, m) in peers.items()}
    view = {"label": label, "peers": entries, "order": order, "settings": list(settings)}
    return hashlib.sha256(_statement("view", view)).hexdigest()


def survivors_statement(label: str, view: str, survivors: list[int]) -> bytes:
    """What a node signs at the consistency stage: the survivors U3 it was shown, over the view it shared in."""
    return _statement("survivors", {"label": label, "view": view, "survivors": sorted(survivors)})


def max_colluding(threshold: int, nodes: int) -> int:
    """The most nodes that may collude with an active server before it can split the survivors' view:
    2t − n − 1 (−1: not even an honest majority signs; signed mode refuses it)."""
    return 2 * threshold - nodes - 1


def _public_bytes(key: PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)


def _parse_public(text: bytes) -> PublicKey:
    key = serialization.load_ssh_public_key(text)
    if not isinstance(key, ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey):
        raise ValueError(f"a {type(key).__name__}; use ECDSA or Ed25519 keys")
    return key


def verify(public: bytes, signature: bytes, message: bytes) -> bool:
    """Whether ``signature`` is ``public``'s (OpenSSH encoding) over ``message``."""
    try:
        key = _parse_public(public)
        if isinstance(key, ed25519.Ed25519PublicKey):
            key.verify(signature, message)
        else:
            key.verify(signature, message, ec.ECDSA(hashes.SHA384()))
    except (InvalidSignature, ValueError, UnsupportedAlgorithm):
        return False
    return True


@dataclass(frozen=True)
class NodeSigner:
    """This node's registered key pair: signs its SecAgg statements. ``public``: OpenSSH encoding."""

    private: PrivateKey
    public: bytes

    @classmethod
    def from_file(cls, path: Path) -> NodeSigner:
        raw = _read(path, SIGNING_KEY)
        try:
            key = (serialization.load_ssh_private_key if b"OPENSSH" in raw else serialization.load_pem_private_key)(
                raw, password=None
            )
        except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
            raise ConfigError(f"node config {SIGNING_KEY}={str(path)!r}: not an unencrypted private key ({exc}). "
                              "Give the SuperNode's --auth-supernode-private-key file.") from exc  # fmt: skip
        if not isinstance(key, ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey):
            raise ConfigError(f"node config {SIGNING_KEY}={str(path)!r}: a {type(key).__name__}; use an ECDSA or "
                              "Ed25519 key (the SuperNode's authentication key)")  # fmt: skip
        return cls(key, _public_bytes(key.public_key()))

    @classmethod
    def generate(cls) -> NodeSigner:
        """A fresh ECDSA P-384 pair, as ``fedsynth deploy`` makes for each SuperNode (tests and benchmarks)."""
        key = ec.generate_private_key(ec.SECP384R1())
        return cls(key, _public_bytes(key.public_key()))

    def sign(self, message: bytes) -> bytes:
        if isinstance(self.private, ed25519.Ed25519PrivateKey):
            return self.private.sign(message)
        return self.private.sign(message, ec.ECDSA(hashes.SHA384()))


@dataclass(frozen=True)
class TrustedKeys:
    """The operator's list of registered node public keys (OpenSSH encodings)."""

    keys: frozenset[bytes]

    @classmethod
    def from_file(cls, path: Path) -> TrustedKeys:
        """One OpenSSH public key per line (``ecdsa-sha2-nistp384 AAAA... comment``); blank and ``#`` lines
        skipped."""
        keys = set()
        for number, line in enumerate(_read(path, TRUSTED_KEYS).splitlines(), start=1):
            if not line.strip() or line.lstrip().startswith(b"#"):
                continue
            try:
                keys.add(_public_bytes(_parse_public(line.strip())))
            except (ValueError, UnsupportedAlgorithm) as exc:
                raise ConfigError(f"{path}, line {number}: not an OpenSSH ECDSA or Ed25519 public key ({exc}); "
                                  "list one registered node public key per line") from exc  # fmt: skip
        if len(keys) < 2:
            raise ConfigError(f"node config {TRUSTED_KEYS}={str(path)!r}: {len(keys)} key(s); list every registered "
                              "node's public key (at least 2)")  # fmt: skip
        return cls(frozenset(keys))

    def __contains__(self, public: bytes) -> bool:
        return public in self.keys


@dataclass(frozen=True)
class Signing:
    """A node's signed-mode settings (node config): its signer and the operator's trusted keys."""

    signer: NodeSigner
    trusted: TrustedKeys

    @classmethod
    def from_node_config(cls, node_config: dict[str, Any]) -> Signing | None:
        """None when the node config names neither file (unsigned mode); a :class:`ConfigError` naming the
        setting when it names one only, or a file that is missing, unreadable or not a key."""
        given = [k for k in (SIGNING_KEY, TRUSTED_KEYS) if k in node_config]
        if not given:
            return None
        if len(given) == 1:
            missing = TRUSTED_KEYS if given[0] == SIGNING_KEY else SIGNING_KEY
            raise ConfigError(f"node config {given[0]} is set but {missing} is not: signed secure aggregation needs "
                              "both (this node's key and the operator's list of node public keys)")  # fmt: skip
        signing = cls(
            NodeSigner.from_file(Path(str(node_config[SIGNING_KEY]))),
            TrustedKeys.from_file(Path(str(node_config[TRUSTED_KEYS]))),
        )
        if signing.signer.public not in signing.trusted:
            raise ConfigError(f"node config {SIGNING_KEY}: this node's public key is not in {TRUSTED_KEYS} "
                              f"({node_config[TRUSTED_KEYS]}); add it to the operator's list")  # fmt: skip
        return signing


def _read(path: Path, setting: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"node config {setting}={str(path)!r}: cannot read it ({exc.strerror})") from exc


@dataclass(frozen=True)
class KeyProof:
    """What the shares stage carries in signed mode: node → its signer's public key and its keys' signature;
    with this node's own public key and the operator's trusted keys (node config)."""

    own: bytes
    signers: dict[int, bytes]
    signatures: dict[int, bytes]
    trusted: TrustedKeys


def check_proof(
    label: str, node: int, threshold: int, peers: dict[int, tuple[bytes, bytes]], proof: KeyProof | None
) -> dict[int, bytes]:
    """Stage 2 in signed mode: the key list U1 checked (:func:`check_key_list`) and t > n/2 (else a split view
    needs no colluding node); returns U1's node → signer."""
    if proof is None:
        raise SecAggAborted(f"secure aggregation {label}: the key list carries no signatures and this node runs "
                            "signed secure aggregation; nothing was shared")  # fmt: skip
    if max_colluding(threshold, len(peers)) < 0:
        raise SecAggAborted(f"secure aggregation {label}: threshold {threshold} of {len(peers)} nodes lets an "
                            "active server split the survivors' view; signed mode needs more than half "
                            "(secagg-threshold); nothing was shared")  # fmt: skip
    check_key_list(label, node, proof.own, peers, proof.signers, proof.signatures, proof.trusted)
    return {n: proof.signers[n] for n in peers}


def check_key_list(
    label: str, node: int, own: bytes, peers: dict[int, tuple[bytes, bytes]], signers: dict[int, bytes],
    signatures: dict[int, bytes], trusted: TrustedKeys,
) -> None:  # fmt: skip
    """Stage 2's check of the key list U1 (``peers``), before anything is shared: each entry signed by a
    trusted key over its statement, no trusted key behind two entries, this node's entry under ``own``."""
    seen: dict[bytes, int] = {}
    for peer, (channel, mask) in sorted(peers.items()):
        signer, signature = signers.get(peer, b""), signatures.get(peer, b"")
        if signer not in trusted:
            raise SecAggAborted(f"secure aggregation {label}: node {peer}'s keys are not signed by a registered node "
                                "key; nothing was shared")  # fmt: skip
        if not verify(signer, signature, keys_statement(label, peer, channel, mask)):
            raise SecAggAborted(f"secure aggregation {label}: node {peer}'s keys do not match their signature (keys "
                                "substituted or from another aggregation); nothing was shared")  # fmt: skip
        if signer in seen:
            raise SecAggAborted(f"secure aggregation {label}: nodes {seen[signer]} and {peer} are signed by one key; "
                                "nothing was shared")  # fmt: skip
        seen[signer] = peer
    if signers.get(node) != own:
        raise SecAggAborted(f"secure aggregation {label}: this node's entry is not under its own key")


def check_survivors(
    label: str, view: str, survivors: list[int], signers: dict[int, bytes], signatures: dict[int, bytes],
    threshold: int,
) -> None:  # fmt: skip
    """Stage 4's check: at least ``threshold`` nodes of ``survivors`` signed this very survivor set over this
    view, each under the key that signed its SecAgg keys (``signers``, from stage 2)."""
    statement = survivors_statement(label, view, survivors)
    valid = [
        n for n, signature in signatures.items()
        if n in survivors and n in signers and verify(signers[n], signature, statement)
    ]  # fmt: skip
    if len(valid) < threshold:
        raise SecAggAborted(
            f"secure aggregation {label}: {len(valid)} node(s) confirmed the survivor set this node was shown, the "
            f"threshold is {threshold} (the server may have shown other nodes another set); nothing was unmasked"
        )
