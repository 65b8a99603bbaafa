"""Model updates under secure aggregation: fixed-point integers whose sum gives the users-weighted FedAvg.

A local round (``round-mode = local``) with ``secure-aggregation = true``: node k, with n_k
users, starts from the global bundle θ (every float entry of its state, flattened in state-dict
order: D entries) and trains θ_k locally with DP-SGD. It sends, masked by SecAgg
(:mod:`fedsynth.common.secagg.protocol`),

    u_k = round(s · n_k · (θ_k − θ))                        (D,) int64,  s = UPDATE_SCALE = 2^24

and the server, which unmasks only Σ_{k ∈ U3} u_k (U3: the nodes whose masked update is in the
sum), sets

    θ' = θ + Σ_{k ∈ U3} u_k / (s · Σ_{k ∈ U3} n_k),

the survivors' FedAvg weighted by users, as the plain path computes it, up to rounding: each entry
is off by at most |U3| / (2 s Σ n_k) ≤ 2^-25 (s = 2^24, n_k ≥ 1).

Bits: a node refuses (with the reason, before anything is charged) an update with an entry that is
not finite or exceeds UPDATE_LIMIT = 2^10 in magnitude (a diverged local model), so each user adds
at most s·2^10 + 1 to any coordinate of the sum (the +1 covers each node's rounding);
:attr:`UpdateQuantizer.l2` states that bound and the server picks b from it as for the releases
(:func:`fedsynth.server.secure_release.release_bits`: 2^-40 wrap probability; 1,000 users need 45 bits).

No DP noise is added here: each θ_k already carries its silo's full DP-SGD noise (Opacus), so the
rounds' ε is the same under both threat models. What secure aggregation adds to a local round is
that the server sees only the sum of the silos' updates, never one silo's model.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch

from fedsynth.common.errors import FedsynthError
from fedsynth.common.secagg.skellam import SumRoundingQuantizer

UPDATE = "update"  # the release name and message action (query.update) of a secure local round
UPDATE_SCALE = 2.0**24
UPDATE_LIMIT = 2.0**10

State = Mapping[str, torch.Tensor]


@dataclass(frozen=True)
class UpdateQuantizer(SumRoundingQuantizer):
    """Fixed-point rounding of a node's users-weighted update; ``clip`` is the bound on any entry of θ_k − θ."""

    @classmethod
    def for_bundle(cls, dim: int) -> UpdateQuantizer:
        return cls(UPDATE_LIMIT, dim, UPDATE_SCALE)

    @property
    def l2(self) -> float:
        """The most one user adds to any coordinate of the integer sum: s·limit + 1 (the bits need no more)."""
        return self.scale * self.clip + 1


def float_entries(state: State) -> list[str]:
    """The names of the state's floating-point tensors, in state-dict order: what an update carries."""
    return [name for name, tensor in state.items() if torch.is_floating_point(tensor)]


def flat(state: State, names: list[str]) -> np.ndarray:
    """The named tensors flattened into one float64 vector."""
    return np.concatenate([state[name].detach().cpu().numpy().astype(np.float64).ravel() for name in names])


def encode_update(trained: State, start: State, users: int, quantizer: UpdateQuantizer) -> np.ndarray:
    """u_k = round(s · users · (trained − start)) over the float entries, (D,) int64.

    Raises :class:`FedsynthError` (nothing is sent) if an entry moved by more than the limit or is
    not finite: the local model diverged, and the sum could wrap.
    """
    names = float_entries(start)
    delta = flat(trained, names) - flat(start, names)
    if delta.shape != (quantizer.dim,):
        raise FedsynthError(f"the update has {delta.size} entries; this run's bundle has {quantizer.dim}")
    worst = float(np.max(np.abs(delta))) if delta.size else 0.0
    if not math.isfinite(worst) or worst > quantizer.clip:
        raise FedsynthError(  # the reason goes to the server: it says no more than one bit about the data
            f"the local model diverged (an entry is not finite or moved by more than {quantizer.clip:g}, the most "
            "the secure sum holds); nothing was sent. Lower vae-learning-rate / gan-learning-rate."
        )
    return quantizer.round_sum(users * delta)


def update_norm(trained: State, start: State) -> float:
    """‖trained − start‖₂ over the float entries (what ``norm-bound`` bounds)."""
    names = float_entries(start)
    return float(np.linalg.norm(flat(trained, names) - flat(start, names)))


def bounded_update(trained: State, start: State, norm: float, bound: float | None) -> State:
    """``trained`` with its update scaled to L2 norm ≤ ``bound`` (as is when it is within, or no bound):
    start + min(1, bound / norm)·(trained − start), float entries only."""
    if bound is None or norm <= bound:
        return trained
    factor = bound / norm
    names = set(float_entries(start))
    return {n: start[n] + factor * (t - start[n]) if n in names else t for n, t in trained.items()}


def apply_update(start: State, total: np.ndarray, users: int) -> dict[str, torch.Tensor]:
    """θ' = θ + total / users, ``total`` = Σ u_k / s (the unmasked sum, unscaled): the global state after the
    round; non-float entries are kept as they are."""
    mean = np.asarray(total, dtype=np.float64) / users
    updated = {name: tensor.clone() for name, tensor in start.items()}
    offset = 0
    for name in float_entries(start):
        tensor = start[name]
        part = mean[offset : offset + tensor.numel()].reshape(tensor.shape)
        updated[name] = (tensor.double() + torch.from_numpy(part)).to(tensor.dtype)
        offset += tensor.numel()
    return updated


def update_size(state: State) -> int:
    """D: the float entries an update of this state carries."""
    return sum(state[name].numel() for name in float_entries(state))
