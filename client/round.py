"""A node's step of a local round, shared by the plain reply and the secure-aggregated update.

    request (TrainRequest: round r, global bundle w_g)
      → replay?  round r already charged to this run: its saved result, no new ε (refused if lost)
      → check    the round's planned events fit the node's cap (else PrivacyBudgetExceeded, nothing spent)
      → train    local DP-SGD epochs from w_g (:func:`fedsynth.client.training.train_local_round`)
      → keep     the result saved for a replay, then the events Opacus counted recorded in the ledger
      → answer   the trained bundle w_k (plain) — or its update, masked (secure aggregation wraps this step)

The losses stay on the node (in the replay file): they are functions of the private data, not DP.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import scipy.sparse as sp
import torch

from fedsynth.client.budget import Replay, load_replay, save_replay
from fedsynth.client.training import RoundSeeds, train_local_round
from fedsynth.common.config.run import RunConfig
from fedsynth.common.errors import FedsynthError
from fedsynth.common.federated.protocol import TrainRequest
from fedsynth.common.models.bundle import ModelBundle
from fedsynth.common.privacy.ledger import PrivacyBudgetExceeded, PrivacyLedger, RunIdentity
from fedsynth.common.privacy.plan import PrivacyPlan
from fedsynth.common.runtime.device import training_device


@dataclass(frozen=True)
class RoundAnswer:
    """The node's result for a round: the trained bundle's state, and whether it is a replay (no new ε)."""

    trained: dict[str, torch.Tensor]
    replayed: bool = False


def reproducible_from(config: RunConfig) -> int | None:
    """The run seed when the run asks for ``reproducible-noise`` (simulation only: a deployed node refuses
    it at admission, :func:`fedsynth.client.data.check_node_settings`), else None (fresh OS entropy)."""
    return config.seed if config.reproducible_noise else None


def local_training(
    request: TrainRequest, rows: sp.csr_matrix, config: RunConfig, plan: PrivacyPlan, seeds: RoundSeeds | None = None
) -> tuple[dict[str, torch.Tensor], dict[str, float], list[Any]]:
    """Local DP-SGD epochs from the request's global bundle: (the trained state, mean losses, ε events spent).

    ``rows``: this node's training users, binary CSR (users × items). Each model's DP-SGD gets its own
    seed (:class:`RoundSeeds`; ``seeds`` is for in-process studies that give each simulated silo its own
    reproducible stream, a node always draws fresh ones unless the run asks for ``reproducible-noise``);
    Opacus counts the private steps it ran, and without DP the plan's
    noise-free events (ε = ∞) are recorded instead.
    """
    local = config.local()
    if plan.private and (plan.vae_noise <= 0 or (local.train_gan and plan.gan_noise <= 0)):
        raise FedsynthError(
            f"round {request.server_round}: this node's privacy plan has no DP-SGD noise (it was planned for "
            "num-server-rounds 0); refusing to train without noise."
        )
    bundle = ModelBundle.create(rows.shape[1], local, seed=config.seed)
    bundle.load_state_dict(request.arrays.to_torch_state_dict())
    seeds = seeds or RoundSeeds.for_round(request.server_round, reproducible_from(config))
    device = training_device(config.device)
    vae, gan = train_local_round(bundle, rows, plan, config.privacy(), local, request.server_round, seeds, device)
    spent = vae.events + gan.events if plan.private else plan.round_events()
    return bundle.state_dict(), {**vae.losses, **gan.losses}, spent


def round_replay(ledger: PrivacyLedger, plan: PrivacyPlan, run: RunIdentity, server_round: int) -> Replay | None:
    """A round already charged to this run: its saved reply (sent again, no new ε; refused if lost). A new
    round: None, once it is checked to fit the node's cap."""
    if server_round in ledger.charged_rounds(run.run_key):
        replay = load_replay(ledger, run, server_round)
        if replay is None:
            raise PrivacyBudgetExceeded(f"round {server_round} of this run was already charged; its reply is lost")
        return replay
    ledger.check(plan.round_events(), what=f"round {server_round}")
    return None


def answer_round(
    request: TrainRequest,
    rows: sp.csr_matrix,
    config: RunConfig,
    plan: PrivacyPlan,
    ledger: PrivacyLedger,
    run: RunIdentity,
    **tags: Any,
) -> RoundAnswer:
    """The node's step of round ``request.server_round`` (see the module docstring); ``tags`` go into the
    ledger's record of the round (e.g. ``secure_aggregation=True, mode="local"``).

    Raises :class:`PrivacyBudgetExceeded` (nothing spent) when the round does not fit or its replay is lost.
    """
    replay = round_replay(ledger, plan, run, request.server_round)
    if replay is not None:
        return RoundAnswer(replay.arrays, replayed=True)
    trained, losses, spent = local_training(request, rows, config, plan)
    save_replay(ledger, run, Replay(request.server_round, trained, losses))  # first: a crash after it loses nothing
    target = config.privacy().target_epsilon
    ledger.record(spent, "round", run, round=request.server_round, requested_epsilon=target, **tags)
    return RoundAnswer(trained)
