"""round-mode fedsgd on the server: each round, one secure-aggregated DP-SGD step of the Mult-VAE.

The server sends the global Mult-VAE with the masked stage of a secure sum
(:func:`fedsynth.server.secure_release.secure_sum`, action ``query.fedsgd``); each silo answers with its
Poisson sample's clipped gradient sum, rounded, plus its Skellam noise share, masked. The
server unmasks only the sum and takes one Adam step on ĝ = sum / (q · N), N the users of the
silos in the sum (:mod:`fedsynth.common.privacy.dpsgd.fedsgd` has the maths). The Adam state is saved with each
round's checkpoint, so a resumed run continues the same optimisation; a step already charged on
a node cannot be replayed (its masks are gone) and is refused there.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import torch
from flwr.app import ArrayRecord
from flwr.serverapp import Grid

from fedsynth.common.config.run import RunConfig
from fedsynth.common.federated import wire
from fedsynth.common.federated.round_log import RoundLog
from fedsynth.common.models.bundle import ModelBundle
from fedsynth.common.models.optim import adam
from fedsynth.common.privacy.dpsgd.fedsgd import apply_gradient, gradient_quantizer, trainable
from fedsynth.server.secure_release import RoundSetups

log = logging.getLogger("flwr")
Checkpoint = Callable[[int, ArrayRecord, RoundLog, Any], None]  # (round, global state, log, optimizer state)


def fedsgd_optimizer(bundle: ModelBundle, config: RunConfig, saved: dict[str, Any] | None) -> torch.optim.Adam:
    """The server's Adam on the Mult-VAE (the learning rate is ``vae-learning-rate``), resumed if saved."""
    optimizer = adam(trainable(bundle.vae), config.vae_learning_rate, config.local().vae.weight_decay)
    if saved is not None:
        optimizer.load_state_dict(saved)
    return optimizer


def fedsgd_round(
    grid: Grid, config: RunConfig, server_round: int, participants: list[int], bundle: ModelBundle,
    optimizer: torch.optim.Optimizer, identity: dict[str, str], setups: RoundSetups | None = None,
) -> RoundLog:  # fmt: skip
    """One secure FedSGD step on ``bundle.vae`` in place; the round's log (ε both ways per node). Keys from
    ``setups`` (or set up for this step alone)."""
    started = time.perf_counter()
    nodes = sorted(set(grid.get_node_ids()) & set(participants))
    setups = setups or step_setups(grid, config, bundle, identity, per_round=True)
    arrays = ArrayRecord(bundle.vae.state_dict())
    total, noise_std, round_log = setups.secure_sum(server_round, nodes, arrays)
    expected_batch = config.fedsgd_sample_rate * (round_log.users or 0)
    if round_log.trained:
        apply_gradient(bundle.vae, optimizer, total, expected_batch)
    round_log.sampled, round_log.missing_from_sample = nodes, sorted(set(participants) - set(nodes))
    round_log.seconds = time.perf_counter() - started
    log.info(
        "fedsynth FedSGD step %d/%d: %d silo(s) in the secure sum, expected batch %.0f users, noise std %.3g "
        "on the clipped sum, epsilon max %s (%.1f s)",
        server_round, config.num_server_rounds, len(round_log.trained), expected_batch, noise_std,
        "-" if round_log.epsilon_max is None else f"{round_log.epsilon_max:.3f}", round_log.seconds,
    )  # fmt: skip
    return round_log


def step_setups(
    grid: Grid, config: RunConfig, bundle: ModelBundle, identity: dict[str, str], per_round: bool = False
) -> RoundSetups:
    """The steps' keys and shares, set up ``ROUNDS_PER_SETUP`` steps at a time (or one, ``per_round``)."""
    quantizer = gradient_quantizer(bundle.vae.num_items, config.local().vae, config.max_grad_norm)
    return RoundSetups(grid, config, wire.FEDSGD, quantizer, identity, per_round)


def fedsgd_rounds(
    grid: Grid, config: RunConfig, participants: list[int], bundle: ModelBundle, done: list[RoundLog],
    saved_optimizer: dict[str, Any] | None, identity: dict[str, str], checkpoint: Checkpoint,
) -> list[RoundLog]:  # fmt: skip
    """The rounds after ``done`` (a resumed run's), each checkpointed; all rounds' logs."""
    optimizer = fedsgd_optimizer(bundle, config, saved_optimizer)
    setups = step_setups(grid, config, bundle, identity)
    rounds = list(done)
    for server_round in range(len(rounds) + 1, config.num_server_rounds + 1):
        round_log = fedsgd_round(grid, config, server_round, participants, bundle, optimizer, identity, setups)
        rounds.append(round_log)
        checkpoint(server_round, ArrayRecord(bundle.state_dict()), round_log, optimizer.state_dict())
    return rounds
