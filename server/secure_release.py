"""The server's side of a secure DP release (statistics, co-occurrence): four SecAgg stages over Flower messages.

The server only relays and sums: it sees public keys, encrypted shares, masked vectors (uniform
residues mod 2^b), and in the end the sum, never one node's vector. Stages and threat model:
:mod:`common.secagg.protocol`; the nodes' side and the two ε numbers: :mod:`client.secure`.

Dropouts: a node lost after sending its masked vector is unmasked from the others' shares; one
lost before is left out of the sum (with its noise). Fewer than t nodes at any stage: the release
fails (:class:`RunFailed`) and nothing is unmasked. The bit width b is fixed after the keys stage
from what the nodes said (users, noise variance), so the sum cannot wrap except with probability
≤ 2^-40 (:func:`common.privacy.skellam.required_bits`); a smaller ``secagg-bits`` is refused there,
before any node has spent anything.
"""

from __future__ import annotations

import logging
import time

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid

from common import keys
from common.errors import ConfigError
from common.privacy.cooccurrence import COOCCURRENCE, NoisyCooccurrence, cooccurrence_quantizer, from_upper
from common.privacy.skellam import SkellamQuantizer, required_bits
from common.privacy.statistics import STATISTICS, NoisyStatistics, split_release, statistics_quantizer
from common.round_log import NodeProblem, RoundLog
from common.run_config import RunConfig
from common.secagg.protocol import SecAggAborted, SecAggParams, decode, require, route, unmasked_sum
from server.admission import RunFailed, require_quorum
from server.aggregation import ClientReply, as_client_replies, client_outcomes, reply_problem
from server.exchange import send_and_receive

log = logging.getLogger("flwr")
Request = dict[str, keys.ConfigValue]  # what every stage's request says (label, plan, run identity)


def exchange(
    grid: Grid, action: str, requests: dict[int, ConfigRecord], config: RunConfig, arrays: ArrayRecord | None = None
) -> tuple[dict[int, RecordDict], list[ClientReply]]:
    """Send each node its request (``query.<action>``, with ``arrays`` if given); (answered content by node,
    every reply)."""
    messages = [
        Message(
            RecordDict({keys.CONFIG: request, **({keys.ARRAYS: arrays} if arrays is not None else {})}),
            dst_node_id=node,
            message_type=f"{MessageType.QUERY}.{action}",
        )
        for node, request in requests.items()
    ]
    replies = as_client_replies(send_and_receive(grid, messages, config.reply_timeout), messages)
    return {r.node: r.content for r in replies if r.content is not None and reply_problem(r) is None}, replies


def secure_statistics(
    grid: Grid, nodes: list[int], config: RunConfig, num_items: int, identity: dict[str, str]
) -> tuple[NoisyStatistics, RoundLog]:
    """The DP item counts and length histogram summed by secure aggregation; the release's log."""
    quantizer = statistics_quantizer(config.privacy().statistics_clip, num_items)
    total, noise_std, release_log = secure_sum(grid, nodes, config, STATISTICS, quantizer, identity, {})
    counts, histogram = split_release(total, num_items)
    return NoisyStatistics(counts, histogram, noise_std), release_log


def secure_cooccurrence(
    grid: Grid, nodes: list[int], config: RunConfig, items: np.ndarray, identity: dict[str, str]
) -> tuple[NoisyCooccurrence | None, RoundLog]:
    """The DP co-occurrence over ``items`` summed by secure aggregation; the release's log."""
    request: Request = {keys.MARGINAL_ITEMS: [int(i) for i in items]}
    quantizer = cooccurrence_quantizer(len(items))
    total, noise_std, release_log = secure_sum(grid, nodes, config, COOCCURRENCE, quantizer, identity, request)
    return NoisyCooccurrence(items, from_upper(total, len(items)), noise_std), release_log


def secure_sum(
    grid: Grid, nodes: list[int], config: RunConfig, release: str, quantizer: SkellamQuantizer,
    identity: dict[str, str], request: Request, arrays: ArrayRecord | None = None, server_round: int = 0,
) -> tuple[np.ndarray, float, RoundLog]:  # fmt: skip
    """One release (``query.<release>`` at stage 3, ``request`` in every stage, ``arrays`` with stage 3) summed
    by SecAgg: (sum / scale, its noise std, the log; its ``users``: the users of the nodes in the sum).

    ``server_round`` > 0: a FedSGD step, labelled and logged as that round."""
    label = f"{identity[keys.RUN_KEY]}/{release}" + (f"/{server_round}" if server_round else "")
    clock = StageClock()
    threshold = config.threshold_for(len(nodes))
    base: Request = {keys.SECAGG_LABEL: label, keys.PLANNED_ROUNDS: config.num_server_rounds, **identity, **request}
    keyed, replies = exchange(
        grid, keys.SECAGG_KEYS, {n: ConfigRecord({**base, keys.SECAGG_THRESHOLD: threshold}) for n in nodes}, config
    )
    clock.lap("keys")
    early = client_outcomes(replies, server_round=0).log  # refusals (budget) and failures before anything is spent
    variance = max((keys.number(c[keys.METRICS], keys.NOISE_VARIANCE) for c in keyed.values()), default=0.0)
    params = SecAggParams(label, threshold, release_bits(keyed, variance, threshold, config, quantizer), quantizer.dim)
    what = f"FedSGD step {server_round}" if server_round else f"the DP {release} release"
    require_quorum(what, early, config)  # too few at the keys stage: the nodes' own reasons, nothing spent
    try:
        require("keys", len(keyed), params)
        peers = {n: (keys.blob(c[keys.CONFIG], keys.CHANNEL_KEY), keys.blob(c[keys.CONFIG], keys.MASK_KEY))
                 for n, c in keyed.items()}  # fmt: skip
        shared = share_stage(grid, peers, params, {**base, keys.SECAGG_VARIANCE: variance}, config)
        clock.lap("shares")
        masked, release_log = masked_stage(grid, shared, base, config, release, arrays, server_round)
        clock.lap("masked")
        release_log.refused += early.refused
        release_log.failed += early.failed
        require_quorum(what, release_log, config)
        require("masked-input", len(masked), params)
        survivors = sorted(masked)
        log.info("fedsynth %s: %d masked vector(s) in; unmasking", release, len(survivors))
        revealed, _ = exchange(
            grid, keys.SECAGG_UNMASK, {n: ConfigRecord({**base, keys.SECAGG_NODES: survivors}) for n in shared}, config
        )
        clock.lap("unmask")
        shares = {n: keys.by_node(c[keys.CONFIG], keys.SHARES) for n, c in revealed.items()}
        total = decode(unmasked_sum(params, peers, sorted(shared), masked, shares), params.bits)
        clock.lap("server unmasking")
    except SecAggAborted as exc:
        raise RunFailed(str(exc)) from exc
    for node in sorted(set(shared) - set(revealed)):  # lost at the unmask stage
        why = "its masked vector is in the sum, unmasked from the others' shares" if node in masked else "left out"
        release_log.failed.append(NodeProblem(node, f"no answer at the unmask stage ({why})"))
    noise = len(survivors) * variance / threshold  # in the sum: each survivor's Sk(V/t)
    log.info("fedsynth %s: secure sum of %d node(s) (threshold %d, %d bits; %s)", release, len(survivors), threshold,
             params.bits, clock)  # fmt: skip
    return total / quantizer.scale, float(np.sqrt(noise)) / quantizer.scale, release_log


class StageClock:
    """Seconds per stage of one secure sum, for its log line ("keys 0.05 s, shares 0.04 s, ...")."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.laps: dict[str, float] = {}

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        self.laps[stage], self.started = now - self.started, now

    def __str__(self) -> str:
        return ", ".join(f"{stage} {seconds:.2f} s" for stage, seconds in self.laps.items())


def release_bits(
    keyed: dict[int, RecordDict], variance: float, threshold: int, config: RunConfig, quantizer: SkellamQuantizer
) -> int:
    """b for this release: the fewest that hold Σ users·Δ₂ plus every node's Sk(V/t), or ``secagg-bits`` if enough."""
    users = sum(keys.number(c[keys.METRICS], keys.NUM_EXAMPLES) for c in keyed.values())
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
    peers: dict[int, tuple[bytes, bytes]],
    params: SecAggParams,
    base: Request,
    config: RunConfig,
) -> dict[int, dict[int, bytes]]:
    """Stage 2: send the key list; route the encrypted shares. Returns recipient → {sender: ciphertext} (U2)."""
    order = sorted(peers)
    request = ConfigRecord(
        {
            **base,
            keys.SECAGG_BITS: params.bits,
            keys.SECAGG_NODES: order,
            keys.CHANNEL_KEY: [peers[n][0] for n in order],
            keys.MASK_KEY: [peers[n][1] for n in order],
        }
    )
    answered, _ = exchange(grid, keys.SECAGG_SHARES, dict.fromkeys(order, request), config)
    outgoing = {n: keys.by_node(c[keys.CONFIG], keys.SHARES) for n, c in answered.items()}
    require("shares", len(outgoing), params)
    return route(outgoing)


def masked_stage(
    grid: Grid, shared: dict[int, dict[int, bytes]], base: Request, config: RunConfig, release: str,
    arrays: ArrayRecord | None = None, server_round: int = 0,
) -> tuple[dict[int, np.ndarray], RoundLog]:  # fmt: skip
    """Stage 3: each node of U2 gets the shares addressed to it and releases its masked vector (and pays)."""
    requests = {n: ConfigRecord({**base, **keys.as_lists(incoming, keys.SHARES)}) for n, incoming in shared.items()}
    _, replies = exchange(grid, release, requests, config, arrays)
    outcome = client_outcomes(replies, server_round=server_round)
    answered = [r for r in outcome.trained if r.content is not None]
    masked = {r.node: r.content.array_records[keys.ARRAYS][keys.MASKED].numpy() for r in answered}  # type: ignore[union-attr]
    users = [keys.number(r.content[keys.METRICS], keys.NUM_EXAMPLES) for r in answered if r.content is not None]
    outcome.log.users = int(sum(users))
    return masked, outcome.log
