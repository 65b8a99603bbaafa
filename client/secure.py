"""A node's side of a secure DP release (statistics or co-occurrence): SecAgg stages, distributed Skellam noise.

Stages (see :mod:`fedsynth.common.secagg.protocol`): ``keys`` (the node checks the release fits its
budget, calibrates its Skellam share and makes fresh keys; nothing is spent), ``shares``,
then the release itself (quantize, add the node's noise share, mask, *charge the ledger*, send)
and ``unmask``. The node's SecAgg state (private keys included) lives in its ``context.state``
between stages and is erased after the unmask answer.

Noise for secure releases is drawn from the OS's entropy, never from a seed the server knows.

Accounting, two threat models, both in the ledger:
* **with secure aggregation** (honest-but-curious server, fewer than t colluding nodes): every
  node adds Sk(V/t), V the largest central variance any node needs (each calibrates its own at
  the keys stage, :func:`central_release_variance`), so the sum carries at least t·V/t = V whatever
  nodes drop out (fewer than t: nothing is unmasked), and the event is Sk(V) at the rounded
  sensitivities;
* **own noise** (secure aggregation broken, or the server colluding with every other node):
  only this node's share V/t protects its users.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
from flwr.app import ConfigRecord, RecordDict

from fedsynth.common.config.run import LocalTrainingConfig, RunConfig
from fedsynth.common.errors import FedsynthError
from fedsynth.common.federated import wire
from fedsynth.common.models.bundle import ModelBundle
from fedsynth.common.models.vae import MultVAE
from fedsynth.common.privacy.accounting import DPEvent, Event, epsilon
from fedsynth.common.privacy.dpsgd.fedsgd import FEDSGD, clipped_gradient_sum, gradient_quantizer, poisson_sample
from fedsynth.common.privacy.ledger import PrivacyLedger, RunIdentity
from fedsynth.common.privacy.plan import PrivacyPlan
from fedsynth.common.privacy.releases.cooccurrence import (
    COOCCURRENCE,
    check_items,
    cooccurrence_contributions,
    cooccurrence_quantizer,
)
from fedsynth.common.privacy.releases.statistics import STATISTICS, statistics_contributions, statistics_quantizer
from fedsynth.common.runtime.device import training_device
from fedsynth.common.secagg.protocol import SecAggNode, SecAggParams, encode
from fedsynth.common.secagg.signing import KeyProof, Signing, keys_statement
from fedsynth.common.secagg.skellam import SkellamEvent, SkellamQuantizer, calibrate_variance, skellam_noise
from fedsynth.common.secagg.updates import UPDATE, UpdateQuantizer, update_size

_STATE = "secagg-state"
_VARIANCE = "secagg-variance"
_RELEASE = "secagg-release"
_STEP_VARIANCE = "fedsgd-step-variance"


@dataclass(frozen=True)
class SecureRelease:
    """What one secure release sums: its name (ledger model and message action), rounding, the plan's
    Gaussian release it replaces, and what a node sums: each user's contribution (CSR rows of norm ≤ the
    quantizer's clip, rounded per user) for a one-off release, or for a FedSGD step (``step``, at Poisson
    rate ``sample_rate``) the rounded clipped gradient sum of a Poisson sample, from the rows and a fresh
    random generator."""

    name: str
    quantizer: SkellamQuantizer
    noise_multiplier: float
    planned: list[DPEvent]
    contributions: Callable[[sp.csr_matrix], sp.csr_matrix] | None = None
    step: Callable[[sp.csr_matrix, np.random.Generator], np.ndarray] | None = None
    sample_rate: float = 1.0
    noise_free: bool = False  # a local round's model update: it carries the silo's DP-SGD noise already

    def integer_sum(self, rows: sp.csr_matrix, rng: np.random.Generator) -> np.ndarray:
        """This node's integer sum, (dim,) int64, before noise and masking."""
        if self.step is not None:
            return self.step(rows, rng)
        assert self.contributions is not None
        return self.quantizer.user_sum(self.contributions(rows), rng)

    @property
    def repeated(self) -> bool:
        """Whether every round left is this release again (FedSGD steps, at any sampling rate), same noise."""
        return self.step is not None


def secure_release_of(
    request: ConfigRecord, plan: PrivacyPlan, config: RunConfig, num_items: int, content: RecordDict | None = None
) -> SecureRelease:
    """The release a request is for: a round (``server-round`` in it; the global weights in ``content`` at the
    masked stage): a FedSGD step or a local round's model update, by the run's round mode; the co-occurrence
    (``marginal-items`` in it), the statistics again in its place (``first-order-instead``), or the statistics."""
    if wire.SERVER_ROUND in request and config.round_mode == "fedsgd":
        return fedsgd_release(request, plan, config, num_items, content)
    if wire.SERVER_ROUND in request:
        return update_release(config, num_items)
    clip = config.privacy().statistics_clip
    if first_order_instead(request):  # the co-occurrence's budget spent on the statistics again
        return SecureRelease(
            COOCCURRENCE, statistics_quantizer(clip, num_items), plan.cooccurrence_noise, plan.cooccurrence_events(),
            lambda rows: statistics_contributions(rows, clip),
        )  # fmt: skip
    if wire.MARGINAL_ITEMS not in request:
        return SecureRelease(
            STATISTICS, statistics_quantizer(clip, num_items), plan.statistics_noise, plan.statistics_events(),
            lambda rows: statistics_contributions(rows, clip),
        )  # fmt: skip
    items = check_items(np.asarray(wire.integers(request, wire.MARGINAL_ITEMS)), num_items)
    return SecureRelease(
        COOCCURRENCE, cooccurrence_quantizer(len(items)), plan.cooccurrence_noise, plan.cooccurrence_events(),
        lambda rows: cooccurrence_contributions(rows, items),
    )  # fmt: skip


def first_order_instead(request: Any) -> bool:
    """Whether a co-occurrence request's ConfigRecord asks for the statistics instead (see handle_cooccurrence)."""
    return bool(wire.number(request, wire.FIRST_ORDER_INSTEAD)) if wire.FIRST_ORDER_INSTEAD in request else False


def fedsgd_release(
    request: ConfigRecord, plan: PrivacyPlan, config: RunConfig, num_items: int, content: RecordDict | None
) -> SecureRelease:
    """One FedSGD step (:mod:`fedsynth.common.privacy.dpsgd.fedsgd`).

    This node's Poisson sample's clipped gradient sum.
    """
    server_round, vae = int(wire.number(request, wire.SERVER_ROUND)), config.local().vae
    clip = config.privacy().max_grad_norm
    quantizer = gradient_quantizer(num_items, vae, clip)

    def step(rows: sp.csr_matrix, rng: np.random.Generator) -> np.ndarray:
        if content is None or wire.ARRAYS not in content:
            raise FedsynthError("a FedSGD step needs the global weights in the request")
        model = MultVAE.from_config(num_items, vae)
        model.load_state_dict(content.array_records[wire.ARRAYS].to_torch_state_dict())
        model.to(training_device(config.device))
        torch.manual_seed(int(rng.integers(2**62)))  # dropout and the reparameterisation draw
        batch = poisson_sample(rows, plan.vae_rate, rng)
        return quantizer.round_sum(clipped_gradient_sum(model, batch, clip, vae, server_round))

    events = [DPEvent(FEDSGD, plan.vae_noise, plan.vae_rate, 1)]
    return SecureRelease(FEDSGD, quantizer, plan.vae_noise, events, step=step, sample_rate=plan.vae_rate)


def update_release(config: RunConfig, num_items: int) -> SecureRelease:
    """A local round's model update (:mod:`fedsynth.common.secagg.updates`): fixed-point, no noise added here."""
    return SecureRelease(UPDATE, update_quantizer(config, num_items), 0.0, [], noise_free=True)


def update_quantizer(config: RunConfig, num_items: int) -> UpdateQuantizer:
    """The fixed point of this run's bundle updates."""
    return UpdateQuantizer.for_bundle(bundle_update_size(num_items, config.local()))


@lru_cache(maxsize=16)
def bundle_update_size(num_items: int, local: LocalTrainingConfig) -> int:
    """D: the float entries of this run's bundle (built once per shape: every stage and round asks)."""
    return update_size(ModelBundle.create(num_items, local, seed=0).state_dict())


def release_events(
    variance: float, threshold: int, release: SecureRelease
) -> tuple[list[SkellamEvent], list[SkellamEvent]]:
    """(events with secure aggregation: the central Sk(variance); with this node's share variance/t alone)."""
    quantizer, rate = release.quantizer, release.sample_rate
    central = SkellamEvent(release.name, variance, quantizer.l2, quantizer.l1, sample_rate=rate)
    own = SkellamEvent(release.name, variance / threshold, quantizer.l2, quantizer.l1, sample_rate=rate)
    return [central], [own]


def central_release_variance(
    ledger: PrivacyLedger, plan: PrivacyPlan, release: SecureRelease, rounds_left: int
) -> float:
    """The central Skellam variance V whose release, with what the run still plans after it, spends no more
    than the plan (the statistics are followed by the co-occurrence release when planned, then the rounds).

    A FedSGD step: V for which all ``rounds_left`` steps (this one included) as Skellam releases spend no
    more than they would as the planned Gaussian steps.
    """
    quantizer = release.quantizer
    if release.repeated:
        allowed = rdp_after(ledger, plan.run_events(False, rounds_left, cooccurrence=False, evaluations=0))
        repeats, later = rounds_left, []
    else:
        later = plan.run_events(False, rounds_left, cooccurrence=release.name == STATISTICS and plan.cooccurrence)
        allowed, repeats = rdp_after(ledger, [*release.planned, *later]), 1

    def fits(variance: float) -> bool:
        skellam = SkellamEvent(release.name, variance, quantizer.l2, quantizer.l1, repeats, release.sample_rate)
        return rdp_after(ledger, [skellam, *later]) <= allowed

    return calibrate_variance(release.noise_multiplier, quantizer.l2, fits)


def rdp_after(ledger: PrivacyLedger, planned: Sequence[Event]) -> float:
    """ε of the ledger's events and ``planned`` composed by RDP, the accountant of every history that holds a
    Skellam event (:mod:`fedsynth.common.privacy.accounting`): a Gaussian plan and the Skellam release
    replacing part of it are compared like for like (the plan of a secure run is calibrated under RDP,
    ``LocalTrainingConfig``)."""
    return epsilon([*ledger.events, *planned], ledger.delta, accountant="rdp")


MAX_BATCH = 64  # the most aggregations one keys stage sets up (each holds private keys in the node's state)


def start_secure_release(
    request: ConfigRecord, node: int, ledger: PrivacyLedger, release: SecureRelease, plan: PrivacyPlan,
    state: RecordDict, run: RunIdentity, signing: Signing | None = None,
) -> tuple[ConfigRecord, float]:  # fmt: skip
    """The keys stage (the release already checked against the ledger): calibrate this node's noise share,
    make fresh keys for each aggregation the request names (one release, or a batch of the run's next
    rounds: every one gets its own key pairs, as if set up alone). ``signing`` (node config): every
    aggregation runs in signed mode, its keys signed (:mod:`fedsynth.common.secagg.signing`).

    Returns the public keys (lists, one per aggregation) and the central Skellam variance V this node
    needs (public, like a noise std); the server answers with the largest any node needs, and every
    node adds that divided by t.
    """
    planned = int(wire.number(request, wire.PLANNED_ROUNDS))
    rounds_left = planned - len(ledger.charged_rounds(run.run_key))

    def calibrate() -> float:
        if release.noise_free:
            return 0.0
        return central_release_variance(ledger, plan, release, rounds_left)

    labels = wire.texts(request, wire.SECAGG_LABELS)
    if not 1 <= len(labels) <= MAX_BATCH or len(set(labels)) != len(labels):
        raise FedsynthError(f"secure aggregation: asked to set up {len(labels)} aggregation(s); 1 to {MAX_BATCH}, "
                            "each named once")  # fmt: skip
    variance = step_variance(state, run, calibrate) if release.repeated else calibrate()
    threshold = int(wire.number(request, wire.SECAGG_THRESHOLD))
    neighbours = int(wire.number(request, wire.SECAGG_NEIGHBOURS)) if wire.SECAGG_NEIGHBOURS in request else 0
    channels, masks, signatures = [], [], []
    for label in labels:
        if _slot(label) in state:  # its keys are out already: a second pair would let the server split the view
            raise FedsynthError(f"secure aggregation {label}: already set up on this node; refused")
    for label in labels:
        params = SecAggParams(label, threshold, 64, release.quantizer.dim, neighbours)
        secure = SecAggNode(node, params, signed=signing is not None)
        channel, mask = secure.advertise()
        channels.append(channel)
        masks.append(mask)
        if signing is not None:
            signatures.append(signing.signer.sign(keys_statement(label, node, channel, mask)))
        _save(state, secure, variance, release.name)
    keys: dict[str, wire.ConfigValue] = {wire.CHANNEL_KEY: channels, wire.MASK_KEY: masks}
    if signing is not None:
        keys.update({wire.SIGNER: signing.signer.public, wire.SIGNATURES: signatures})
    return ConfigRecord(keys), variance


def step_variance(state: RecordDict, run: RunIdentity, calibrate: Callable[[], float]) -> float:
    """The FedSGD steps' central variance: calibrated at this run's first step for all its steps, then kept
    in the node's state, so every step of the run carries the same noise and the whole run spends no more
    than its plan (a node that lost its state calibrates again for the steps left)."""
    saved = state.config_records.get(_STEP_VARIANCE)
    if saved is not None and wire.text(saved, wire.RUN_KEY) == run.run_key:
        return wire.number(saved, _VARIANCE)
    variance = calibrate()
    state[_STEP_VARIANCE] = ConfigRecord({wire.RUN_KEY: run.run_key, _VARIANCE: variance})
    return variance


def _slot(label: str) -> str:
    return f"{_STATE}/{label}"


def _load(state: RecordDict, label: str, release: str | None = None) -> tuple[SecAggNode, float]:
    """This node's state for aggregation ``label`` and its V; with ``release``, refused unless the keys stage
    set the aggregation up for that kind of release (its check and noise were for that kind only)."""
    if _slot(label) not in state:
        raise FedsynthError(f"secure aggregation {label}: this node holds no state for it (restarted mid-release?)")
    saved = state.config_records[_slot(label)]
    secure = SecAggNode.from_bytes(wire.blob(saved, "node"))
    if secure.params.label != label:
        raise FedsynthError(f"secure aggregation {label}: this node's state is for {secure.params.label}")
    if release is not None and wire.text(saved, _RELEASE) != release:
        raise FedsynthError(f"secure aggregation {label}: set up for a {wire.text(saved, _RELEASE)} release, asked "
                            f"for a {release}; refused")  # fmt: skip
    return secure, wire.number(saved, _VARIANCE)


def _save(state: RecordDict, secure: SecAggNode, variance: float, release: str | None = None) -> None:
    """Keep ``secure``'s state and V; ``release`` (the kind the keys stage checked and calibrated for) is set
    once, at the keys stage, and kept by every later save."""
    slot = _slot(secure.params.label)
    kind = release if release is not None else wire.text(state.config_records[slot], _RELEASE)
    state[slot] = ConfigRecord({"node": secure.to_bytes(), _VARIANCE: variance, _RELEASE: kind})


def handle_shares(content: RecordDict, state: RecordDict, signing: Signing | None = None) -> RecordDict:
    """The shares stage: encrypted Shamir shares of this node's secrets for every other node, for each
    aggregation of the batch (key lists, their signatures and the reply's SHARES aggregation-major). In
    signed mode (``signing``), nothing is shared unless every entry of the key list is signed."""
    request = content.config_records[wire.CONFIG]
    labels, nodes = wire.texts(request, wire.SECAGG_LABELS), wire.integers(request, wire.SECAGG_NODES)
    channels, masks = wire.blobs(request, wire.CHANNEL_KEY), wire.blobs(request, wire.MASK_KEY)
    if not len(channels) == len(masks) == len(labels) * len(nodes):
        raise FedsynthError(f"secure aggregation: {len(channels)} keys for {len(labels)} aggregation(s) of "
                            f"{len(nodes)} nodes")  # fmt: skip
    variance, bits = wire.number(request, wire.SECAGG_VARIANCE), int(wire.number(request, wire.SECAGG_BITS))
    recipients: list[int] = []
    out: list[bytes] = []
    for index, label in enumerate(labels):
        secure, needed = _load(state, label)
        if variance < needed:
            raise FedsynthError(
                f"secure aggregation {label}: the server asks for noise variance {variance:.6g}, less than the "
                f"{needed:.6g} this node's budget needs; refused"
            )
        batch = slice(index * len(nodes), (index + 1) * len(nodes))
        peers = dict(zip(nodes, zip(channels[batch], masks[batch], strict=True), strict=True))
        proof = key_proof(request, nodes, index, signing)
        shares = secure.share(peers, bits, wire.integers(request, wire.SECAGG_ORDER), proof)
        _save(state, secure, variance)
        recipients = sorted(shares)
        out += [shares[n] for n in recipients]
    return RecordDict({wire.CONFIG: ConfigRecord({wire.SECAGG_NODES: recipients, wire.SHARES: out})})


def key_proof(request: ConfigRecord, nodes: list[int], index: int, signing: Signing | None) -> KeyProof | None:
    """Aggregation ``index``'s signers and signatures in a shares request (None in unsigned mode, or when the
    request carries none: a signed node then refuses)."""
    if signing is None or wire.SIGNATURES not in request:
        return None
    signers, signatures = wire.blobs(request, wire.SIGNERS), wire.blobs(request, wire.SIGNATURES)
    if len(signers) != len(nodes) or len(signatures) < (index + 1) * len(nodes):
        raise FedsynthError(f"secure aggregation: {len(signers)} signers and {len(signatures)} signatures for "
                            f"{len(nodes)} nodes")  # fmt: skip
    batch = signatures[index * len(nodes) : (index + 1) * len(nodes)]
    return KeyProof(signing.signer.public, dict(zip(nodes, signers, strict=True)),
                    dict(zip(nodes, batch, strict=True)), signing.trusted)  # fmt: skip


def masked_release(
    content: RecordDict, rows: sp.csr_matrix, release: SecureRelease, state: RecordDict
) -> tuple[np.ndarray, list[SkellamEvent], list[SkellamEvent], float]:  # fmt: skip
    """The release: Σ rounded contributions + this node's Skellam share, masked; and its two events."""
    request = content.config_records[wire.CONFIG]
    secure, variance = _load(state, wire.text(request, wire.SECAGG_LABEL), release.name)
    quantizer = release.quantizer
    if quantizer.dim != secure.params.length:
        raise FedsynthError(f"secure aggregation {secure.params.label}: the request is for another release")
    rng = np.random.default_rng(secrets.randbits(128))  # noise no server can reproduce
    threshold = secure.params.threshold
    values = release.integer_sum(rows, rng)
    values += skellam_noise(variance / threshold, quantizer.dim, rng)
    central, own = release_events(variance, threshold, release)
    return masked_vector(request, values, state, release.name), central, own, variance / threshold


def masked_vector(request: ConfigRecord, values: np.ndarray, state: RecordDict, release: str) -> np.ndarray:
    """``values`` (int64, the aggregation's length) masked with this node's SecAgg state and the shares it got;
    ``release``: its kind, which must be the one the keys stage set the aggregation up for."""
    secure, variance = _load(state, wire.text(request, wire.SECAGG_LABEL), release)
    if values.shape != (secure.params.length,):
        raise FedsynthError(f"secure aggregation {secure.params.label}: the request is for another release")
    masked = secure.mask(encode(values, secure.params.bits), wire.by_node(request, wire.SHARES))
    _save(state, secure, variance)
    return masked


def handle_consistency(content: RecordDict, state: RecordDict, signing: Signing | None) -> RecordDict:
    """Signed mode's consistency stage: this node's signature of the survivor set it is shown."""
    request = content.config_records[wire.CONFIG]
    label = wire.text(request, wire.SECAGG_LABEL)
    if signing is None:
        raise FedsynthError(f"secure aggregation {label}: this node has no signing key (node config); unsigned")
    secure, variance = _load(state, label)
    signature = secure.consistency(wire.integers(request, wire.SECAGG_NODES), signing.signer)
    _save(state, secure, variance)
    return RecordDict({wire.CONFIG: ConfigRecord({wire.SIGNATURES: [signature]})})


def handle_unmask(content: RecordDict, state: RecordDict) -> RecordDict:
    """The unmask stage: shares of the survivors' self-mask seeds and of the dropped nodes' mask keys (in
    signed mode, only with at least t signatures confirming the survivor set)."""
    request = content.config_records[wire.CONFIG]
    label = wire.text(request, wire.SECAGG_LABEL)
    secure, _ = _load(state, label)
    confirmations = None
    if wire.CONFIRMED in request:
        confirmed, signatures = wire.integers(request, wire.CONFIRMED), wire.blobs(request, wire.SIGNATURES)
        confirmations = dict(zip(confirmed, signatures, strict=True))
    shares = secure.unmask(wire.integers(request, wire.SECAGG_NODES), confirmations)
    del state[_slot(label)]
    return RecordDict({wire.CONFIG: ConfigRecord(wire.as_lists(shares, wire.SHARES))})
