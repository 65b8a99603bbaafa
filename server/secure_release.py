"""The server's side of a secure DP release (statistics, co-occurrence): four SecAgg stages over Flower messages.

The server only relays and sums: it sees public keys, encrypted shares, masked vectors (uniform
residues mod 2^b), and in the end the sum, never one node's vector. Stages and threat model:
:mod:`fedsynth.common.secagg.protocol`; the nodes' side and the two ε numbers: :mod:`fedsynth.client.secure`.

Dropouts: a node lost after sending its masked vector is unmasked from the others' shares; one
lost before is left out of the sum (with its noise). Fewer than t nodes at any stage: the release
fails (:class:`RunFailed`) and nothing is unmasked. The bit width b is fixed after the keys stage
from what the nodes said (users, noise variance), so the sum cannot wrap except with probability
≤ 2^-40 (:func:`fedsynth.common.secagg.skellam.required_bits`); a smaller ``secagg-bits`` is refused there,
before any node has spent anything.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid

from fedsynth.common.config.run import RunConfig
from fedsynth.common.errors import ConfigError
from fedsynth.common.federated import wire
from fedsynth.common.federated.protocol import MaskedReply
from fedsynth.common.federated.round_log import NodeProblem, RoundLog
from fedsynth.common.privacy.releases.cooccurrence import (
    COOCCURRENCE,
    NoisyCooccurrence,
    cooccurrence_quantizer,
    from_upper,
)
from fedsynth.common.privacy.releases.statistics import STATISTICS, NoisyStatistics, split_release, statistics_quantizer
from fedsynth.common.secagg.protocol import (
    SecAggAborted,
    SecAggParams,
    decode,
    require,
    ring_order,
    route,
    unmasked_sum,
)
from fedsynth.common.secagg.skellam import SkellamQuantizer, required_bits
from fedsynth.server.admission import RunFailed, require_quorum
from fedsynth.server.aggregation import ClientReply, as_client_replies, client_outcomes, reply_problem
from fedsynth.server.exchange import send_and_receive

log = logging.getLogger("flwr")
Request = dict[str, wire.ConfigValue]  # what every stage's request says (label, plan, run identity)


def exchange(
    grid: Grid, action: str, requests: dict[int, ConfigRecord], config: RunConfig, arrays: ArrayRecord | None = None
) -> tuple[dict[int, RecordDict], list[ClientReply]]:
    """Send each node its request (``query.<action>``, with ``arrays`` if given); (answered content by node,
    every reply)."""
    messages = [
        Message(
            RecordDict({wire.CONFIG: request, **({wire.ARRAYS: arrays} if arrays is not None else {})}),
            dst_node_id=node,
            message_type=f"{MessageType.QUERY}.{action}",
        )
        for node, request in requests.items()
    ]
    replies = as_client_replies(send_and_receive(grid, messages, config.reply_timeout), messages, config.reply_timeout)
    return {r.node: r.content for r in replies if r.content is not None and reply_problem(r) is None}, replies


def secure_statistics(
    grid: Grid, nodes: list[int], config: RunConfig, num_items: int, identity: dict[str, str]
) -> tuple[NoisyStatistics, RoundLog]:
    """The DP item counts and length histogram summed by secure aggregation; the release's log."""
    quantizer = statistics_quantizer(config.privacy().statistics_clip, num_items)
    total, noise_std, release_log = secure_sum(grid, nodes, config, STATISTICS, quantizer, identity, {})
    counts, histogram = split_release(total, num_items)
    return NoisyStatistics(counts, histogram, noise_std), release_log


def secure_first_order_instead(
    grid: Grid, nodes: list[int], config: RunConfig, num_items: int, identity: dict[str, str]
) -> tuple[NoisyStatistics | None, RoundLog]:
    """The co-occurrence's budget spent on the statistics again, summed by secure aggregation; the log."""
    quantizer = statistics_quantizer(config.privacy().statistics_clip, num_items)
    request: Request = {wire.FIRST_ORDER_INSTEAD: 1}
    total, noise_std, release_log = secure_sum(grid, nodes, config, COOCCURRENCE, quantizer, identity, request)
    counts, histogram = split_release(total, num_items)
    return NoisyStatistics(counts, histogram, noise_std), release_log


def secure_cooccurrence(
    grid: Grid, nodes: list[int], config: RunConfig, items: np.ndarray, identity: dict[str, str]
) -> tuple[NoisyCooccurrence | None, RoundLog]:
    """The DP co-occurrence over ``items`` summed by secure aggregation; the release's log."""
    request: Request = {wire.MARGINAL_ITEMS: [int(i) for i in items]}
    quantizer = cooccurrence_quantizer(len(items))
    total, noise_std, release_log = secure_sum(grid, nodes, config, COOCCURRENCE, quantizer, identity, request)
    return NoisyCooccurrence(items, from_upper(total, len(items)), noise_std), release_log


@dataclass
class SecureSetup:
    """Stages 1–2 of one aggregation, done (alone or in a batch with the run's next rounds): what stages 3–4
    need. ``shared``: recipient → {sender: ciphertext} (U2); ``early``: refusals and failures at the keys stage
    (nothing spent); ``clock``: the setup's seconds (shared by a batch)."""

    params: SecAggParams
    peers: dict[int, tuple[bytes, bytes]]
    shared: dict[int, dict[int, bytes]]
    variance: float
    early: RoundLog
    base: Request
    clock: StageClock
    order: list[int]  # the random ring SecAgg+'s neighbour graph is drawn on
    signed: bool = False  # every node signed its keys: the consistency stage runs before the unmasking


def label_for(identity: dict[str, str], release: str, server_round: int, attempt: int = 0) -> str:
    """One aggregation's label: run key / release (/ round) (#attempt, for a round set up again after a failed
    one): unique per run, bound into every derived key. A node sets each label up once."""
    label = f"{identity[wire.RUN_KEY]}/{release}" + (f"/{server_round}" if server_round else "")
    return label + (f"#{attempt}" if attempt else "")


def secure_setup(
    grid: Grid, nodes: list[int], config: RunConfig, release: str, quantizer: SkellamQuantizer,
    identity: dict[str, str], request: Request, rounds: list[int], attempt: int = 0,
) -> dict[int, SecureSetup]:  # fmt: skip
    """The keys and shares stages of one aggregation per entry of ``rounds`` (0: a one-off release), all in
    one exchange each: every aggregation gets its own fresh keys, self-mask seed and Shamir shares, as if
    set up alone; only the messages are shared. ``attempt``: how many times these rounds were set up before
    (each setup has its own labels). Raises :class:`RunFailed` with fewer than t nodes."""
    clock = StageClock()
    labels = [label_for(identity, release, r, attempt) for r in rounds]
    threshold = config.threshold_for(len(nodes))
    base: Request = {wire.PLANNED_ROUNDS: config.num_server_rounds, **identity, **request}
    own: list[Request] = [{**base, wire.SECAGG_LABEL: label} for label in labels]  # each aggregation's stages 3-4
    for request_of, r in zip(own, rounds, strict=True):
        if r:
            request_of[wire.SERVER_ROUND] = r
    batch: Request = {**own[0], wire.SECAGG_LABELS: labels}  # the batch's first round: the node checks it fits
    del batch[wire.SECAGG_LABEL]
    stage1 = {**batch, wire.SECAGG_THRESHOLD: threshold, wire.SECAGG_NEIGHBOURS: config.secagg_neighbours}
    keyed, replies = exchange(grid, wire.SECAGG_KEYS, {n: ConfigRecord(stage1) for n in nodes}, config)
    clock.lap("keys")
    early = client_outcomes(replies, server_round=0).log  # refusals (budget) and failures before anything is spent
    variance = max((wire.number(c[wire.METRICS], wire.NOISE_VARIANCE) for c in keyed.values()), default=0.0)
    bits = release_bits(keyed, variance, threshold, config, quantizer)
    what = f"round {rounds[0]}" if rounds[0] else f"the DP {release} release"
    require_quorum(what, early, config)  # too few at the keys stage: the nodes' own reasons, nothing spent
    params = [SecAggParams(label, threshold, bits, quantizer.dim, config.secagg_neighbours) for label in labels]
    try:
        require("keys", len(keyed), params[0])
        channels = {n: wire.blobs(c[wire.CONFIG], wire.CHANNEL_KEY) for n, c in keyed.items()}
        masks = {n: wire.blobs(c[wire.CONFIG], wire.MASK_KEY) for n, c in keyed.items()}
        peers = [{n: (channels[n][a], masks[n][a]) for n in keyed} for a in range(len(labels))]
        order = ring_order(list(keyed))
        proofs = relayed_signatures(keyed, len(labels))
        shared = share_stage(grid, peers, params, {**batch, wire.SECAGG_VARIANCE: variance}, config, order, proofs)
    except (SecAggAborted, IndexError) as exc:
        raise RunFailed(str(exc)) from exc
    clock.lap("shares")
    signed = all(wire.SIGNER in c[wire.CONFIG] for c in keyed.values())
    return {
        r: SecureSetup(params[a], peers[a], shared[a], variance, early, own[a], clock, order, signed)
        for a, r in enumerate(rounds)
    }


def relayed_signatures(keyed: dict[int, RecordDict], count: int) -> dict[str, wire.ConfigValue]:
    """What the shares stage relays of the nodes' signed keys (sorted by node): each node's signer and its
    ``count`` signatures (aggregation-major); empty when no node signed, ``b""`` for a node that did not
    (a signed node then refuses to share, naming it)."""
    if not any(wire.SIGNER in c[wire.CONFIG] for c in keyed.values()):
        return {}
    order = sorted(keyed)
    signer = {n: wire.blob(keyed[n][wire.CONFIG], wire.SIGNER) if wire.SIGNER in keyed[n][wire.CONFIG] else b""
              for n in order}  # fmt: skip
    signatures = {n: wire.blobs(keyed[n][wire.CONFIG], wire.SIGNATURES) if signer[n] else [b""] * count for n in order}
    return {wire.SIGNERS: [signer[n] for n in order],
            wire.SIGNATURES: [signatures[n][a] for a in range(count) for n in order]}  # fmt: skip


ROUNDS_PER_SETUP = 20  # the rounds whose keys and shares one keys + shares exchange sets up


class RoundSetups:
    """Keys and shares for the run's rounds, set up ``ROUNDS_PER_SETUP`` rounds at a time (two exchanges per
    batch instead of two per round); each round keeps its own fresh keys, seeds and shares. After a round
    in which a node refused or failed, the rest of the batch is dropped and the next round sets up anew
    (a node that restarted lost its keys and can take part again). ``per_round``: one round per setup
    (rounds that sample different nodes)."""

    def __init__(
        self, grid: Grid, config: RunConfig, release: str, quantizer: SkellamQuantizer, identity: dict[str, str],
        per_round: bool = False,
    ) -> None:  # fmt: skip
        self.grid, self.config, self.release, self.quantizer, self.identity = grid, config, release, quantizer, identity
        self.size = 1 if per_round else ROUNDS_PER_SETUP
        self.ready: dict[int, SecureSetup] = {}
        self.attempts = 0  # setups dropped after a failure: the next one takes new labels

    def take(self, server_round: int, nodes: list[int]) -> SecureSetup:
        """Round ``server_round``'s setup, setting up a batch from it among ``nodes`` when none is ready."""
        if server_round not in self.ready:
            last = min(server_round + self.size - 1, self.config.num_server_rounds)
            rounds = list(range(server_round, last + 1))
            self.ready = secure_setup(self.grid, nodes, self.config, self.release, self.quantizer, self.identity, {},
                                      rounds, self.attempts)  # fmt: skip
        return self.ready.pop(server_round)

    def secure_sum(
        self, server_round: int, nodes: list[int], arrays: ArrayRecord, extra: Request | None = None
    ) -> tuple[np.ndarray, float, RoundLog]:
        """Round ``server_round``'s secure sum among ``nodes`` (its masked stage carries ``arrays`` and ``extra``
        in its request), as :func:`secure_sum` returns; the rest of the batch is dropped if a node refused or
        failed."""
        setup = self.take(server_round, nodes)
        total, noise_std, round_log = finish_secure_sum(
            self.grid, setup, self.config, self.release, self.quantizer, arrays, server_round, extra
        )
        if round_log.refused or round_log.failed:
            self.ready, self.attempts = {}, self.attempts + 1
        return total, noise_std, round_log


def secure_sum(
    grid: Grid, nodes: list[int], config: RunConfig, release: str, quantizer: SkellamQuantizer,
    identity: dict[str, str], request: Request, arrays: ArrayRecord | None = None, server_round: int = 0,
) -> tuple[np.ndarray, float, RoundLog]:  # fmt: skip
    """One release (``query.<release>`` at stage 3, ``request`` in every stage, ``arrays`` with stage 3) summed
    by SecAgg, all four stages: (sum / scale, its noise std, the log; its ``users``: the users of the nodes in
    the sum). ``server_round`` > 0: a round, labelled and logged as that round."""
    setup = secure_setup(grid, nodes, config, release, quantizer, identity, request, [server_round])[server_round]
    return finish_secure_sum(grid, setup, config, release, quantizer, arrays, server_round)


def finish_secure_sum(
    grid: Grid, setup: SecureSetup, config: RunConfig, release: str, quantizer: SkellamQuantizer,
    arrays: ArrayRecord | None = None, server_round: int = 0, extra: Request | None = None,
) -> tuple[np.ndarray, float, RoundLog]:  # fmt: skip
    """Stages 3–4 of an aggregation set up by :func:`secure_setup`: the masked stage (``query.<release>``, with
    ``arrays``, ``extra`` in its request) and the unmasking; as :func:`secure_sum` returns."""
    params, peers, shared, base, clock = setup.params, setup.peers, setup.shared, setup.base, setup.clock
    what = f"round {server_round}" if server_round else f"the DP {release} release"
    silent: list[str] = []  # the unmask stage's missing answers, named if the sum aborts
    try:
        masked, release_log = masked_stage(grid, shared, {**base, **(extra or {})}, config, release, arrays,
                                           server_round)  # fmt: skip
        clock.lap("masked")
        release_log.refused += setup.early.refused
        release_log.failed += setup.early.failed
        require_quorum(what, release_log, config)
        require("masked-input", len(masked), params)
        survivors = sorted(masked)
        log.info("fedsynth %s: %d masked vector(s) in; unmasking", release, len(survivors))
        unmask: Request = {**base, wire.SECAGG_NODES: survivors}
        asked = list(shared)
        if setup.signed:
            confirmations = consistency_stage(grid, base, survivors, params, config)
            clock.lap("consistency")
            unmask.update({wire.CONFIRMED: sorted(confirmations), wire.SIGNATURES: [
                confirmations[n] for n in sorted(confirmations)]})  # fmt: skip
            asked = sorted(confirmations)
        revealed, unmask_replies = exchange(grid, wire.SECAGG_UNMASK, dict.fromkeys(asked, ConfigRecord(unmask)),
                                            config)  # fmt: skip
        silent = problems(unmask_replies)
        clock.lap("unmask")
        shares = {n: wire.by_node(c[wire.CONFIG], wire.SHARES) for n, c in revealed.items()}
        total = decode(unmasked_sum(params, peers, sorted(shared), masked, shares, setup.order), params.bits)
        clock.lap("server unmasking")
    except SecAggAborted as exc:
        raise RunFailed(" ".join([str(exc), *silent])) from exc
    already = {problem.node for problem in release_log.failed}
    for node in sorted(set(shared) - set(revealed) - already):  # lost at the consistency or unmask stage
        why = "its masked vector is in the sum, unmasked from the others' shares" if node in masked else "left out"
        stage = "consistency" if setup.signed and node in masked and node not in asked else "unmask"
        release_log.failed.append(NodeProblem(node, f"no answer at the {stage} stage ({why})"))
    release_log.secagg_signed, release_log.secagg_threshold = setup.signed, params.threshold
    release_log.secagg_nodes = len(peers)
    noise = len(survivors) * setup.variance / params.threshold  # in the sum: each survivor's Sk(V/t)
    log.info("fedsynth %s: secure sum of %d node(s) (threshold %d, %d bits; %s)", release, len(survivors),
             params.threshold, params.bits, clock.pop())  # fmt: skip
    return total / quantizer.scale, float(np.sqrt(noise)) / quantizer.scale, release_log


def consistency_stage(
    grid: Grid, base: Request, survivors: list[int], params: SecAggParams, config: RunConfig
) -> dict[int, bytes]:
    """Signed mode, between stages 3 and 4: every survivor signs the survivor set (the same to all); node →
    signature, at least t of them (each node checks them again before it unmasks anything)."""
    request = ConfigRecord({**base, wire.SECAGG_NODES: survivors})
    signed, replies = exchange(grid, wire.SECAGG_CONSISTENCY, dict.fromkeys(survivors, request), config)
    confirmations = {}
    for node, content in signed.items():
        try:
            confirmations[node] = wire.blobs(content[wire.CONFIG], wire.SIGNATURES)[0]
        except (KeyError, TypeError, IndexError):  # a malformed reply: that node did not confirm
            continue
    require("consistency", len(confirmations), params, problems(replies))
    return confirmations


def problems(replies: list[ClientReply]) -> list[str]:
    """Each failed reply's node and reason, as a sentence (named when a stage aborts)."""
    return [f"Node {p.node}: {p.reason}." for p in map(reply_problem, replies) if p is not None]


class StageClock:
    """Seconds per stage of one secure sum, for its log line ("keys 0.05 s, shares 0.04 s, ...")."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.laps: dict[str, float] = {}

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        self.laps[stage], self.started = now - self.started, now

    def pop(self) -> str:
        """The laps so far, as text; the clock then starts afresh (a batch's next aggregation)."""
        text = ", ".join(f"{stage} {seconds:.2f} s" for stage, seconds in self.laps.items())
        self.laps = {}
        return text


def release_bits(
    keyed: dict[int, RecordDict], variance: float, threshold: int, config: RunConfig, quantizer: SkellamQuantizer
) -> int:
    """b for this release: the fewest that hold Σ users·Δ₂ plus every node's Sk(V/t), or ``secagg-bits`` if enough."""
    users = sum(wire.number(c[wire.METRICS], wire.NUM_EXAMPLES) for c in keyed.values())
    needed = required_bits(users * quantizer.l2, len(keyed) * variance / threshold, quantizer.dim)
    if needed > 64:
        raise RunFailed(f"a secure sum of {users:.0f} users needs {needed} bits, more than 64; nothing was spent.")
    if config.secagg_bits and config.secagg_bits < needed:
        raise ConfigError(
            f"secagg-bits {config.secagg_bits} cannot hold this secure sum: {users:.0f} users and the nodes' noise "
            f"need at least {needed} bits (wrap probability <= 2^-40). Set secagg-bits to 0 (automatic) or >= "
            f"{needed}; nothing was spent."
        )
    return config.secagg_bits or needed


def share_stage(
    grid: Grid,
    peers: list[dict[int, tuple[bytes, bytes]]],
    params: list[SecAggParams],
    base: Request,
    config: RunConfig,
    ring: list[int],
    proofs: dict[str, wire.ConfigValue] | None = None,
) -> list[dict[int, dict[int, bytes]]]:
    """Stage 2 for a batch of aggregations (one message per node): send the key lists (aggregation-major)
    with the nodes' signatures (``proofs``, signed mode); route the encrypted shares. Returns, per
    aggregation, recipient → {sender: ciphertext} (U2)."""
    order = sorted(peers[0])
    request = ConfigRecord(
        {
            **base,
            **(proofs or {}),
            wire.SECAGG_BITS: params[0].bits,
            wire.SECAGG_NODES: order,
            wire.SECAGG_ORDER: ring,
            wire.CHANNEL_KEY: [batch[n][0] for batch in peers for n in order],
            wire.MASK_KEY: [batch[n][1] for batch in peers for n in order],
        }
    )
    answered, replies = exchange(grid, wire.SECAGG_SHARES, dict.fromkeys(order, request), config)
    require("shares", len(answered), params[0], problems(replies))
    routed = []
    for a in range(len(params)):
        outgoing = {n: split_batch(c.config_records[wire.CONFIG], a, len(params)) for n, c in answered.items()}
        routed.append(route(outgoing))
    return routed


def split_batch(record: ConfigRecord, index: int, count: int) -> dict[int, bytes]:
    """Aggregation ``index``'s shares in a batch reply: recipient → ciphertext (SHARES is aggregation-major)."""
    recipients, shares = wire.integers(record, wire.SECAGG_NODES), wire.blobs(record, wire.SHARES)
    if len(shares) != count * len(recipients):
        raise SecAggAborted(f"a node sent {len(shares)} shares for {count} aggregation(s) of {len(recipients)} peers")
    per = len(recipients)
    return dict(zip(recipients, shares[index * per : (index + 1) * per], strict=True))


def masked_stage(
    grid: Grid, shared: dict[int, dict[int, bytes]], base: Request, config: RunConfig, release: str,
    arrays: ArrayRecord | None = None, server_round: int = 0,
) -> tuple[dict[int, np.ndarray], RoundLog]:  # fmt: skip
    """Stage 3: each node of U2 gets the shares addressed to it and releases its masked vector (and pays)."""
    requests = {n: ConfigRecord({**base, **wire.as_lists(incoming, wire.SHARES)}) for n, incoming in shared.items()}
    _, replies = exchange(grid, release, requests, config, arrays)
    outcome = client_outcomes(replies, server_round=server_round)
    answered = {r.node: MaskedReply.from_record(r.content) for r in outcome.trained if r.content is not None}
    outcome.log.users = sum(reply.spent.num_examples for reply in answered.values())
    outcome.log.update_norm_by_node = {str(n): r.update_norm for n, r in answered.items() if r.update_norm is not None}
    return {node: reply.masked for node, reply in answered.items()}, outcome.log
