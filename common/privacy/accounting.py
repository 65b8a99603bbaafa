"""Privacy accounting over Poisson-subsampled Gaussian events (DP-SGD steps).

Pure functions over immutable :class:`DPEvent` values; state lives in the ledger
(:mod:`common.privacy.ledger`). ε is always computed from the *full* history of events on
a client's records, composing every model and every round in one accountant.

The accountant is Opacus' RDP accountant (named explicitly; Opacus' default is PRV). Tests
cross-check it against Google's dp-accounting for the same events.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from common.errors import ConfigError

ACCOUNTANT = "rdp"
# A subset of Opacus' default Rényi orders (1.2, 1.5, 1.8 and the integers 2-63), 3-20x faster
# to evaluate at large sampling rates. A subset of orders can only give a larger (looser) ε, so
# a σ calibrated with them never reports more than its target with the default orders.
FAST_ORDERS: tuple[float, ...] = (1.2, 1.5, 1.8, *(float(a) for a in range(2, 64)))


@dataclass(frozen=True)
class DPEvent:
    """``steps`` DP-SGD steps with Poisson sampling rate ``sample_rate`` and Gaussian noise ``noise_multiplier``.

    ``model`` names which model's training spent it (``vae`` or ``gan``): every event on a
    client's records counts toward its total ε, whatever the model.
    """

    model: str
    noise_multiplier: float
    sample_rate: float
    steps: int

    def __post_init__(self) -> None:
        assert self.noise_multiplier >= 0 and 0 < self.sample_rate <= 1 and self.steps >= 0, self


def epsilon(events: Iterable[DPEvent], delta: float, orders: Sequence[float] | None = None) -> float:
    """ε at ``delta`` of all ``events`` composed. 0 for no steps; ∞ if any step has no noise.

    ``orders`` are the Rényi orders to optimise over (Opacus' defaults when None).
    """
    history = [(e.noise_multiplier, e.sample_rate, e.steps) for e in events if e.steps > 0]
    if not history:
        return 0.0
    if any(sigma == 0 for sigma, _, _ in history):
        return math.inf
    from opacus.accountants import RDPAccountant

    accountant = RDPAccountant()
    accountant.history = history
    return float(accountant.get_epsilon(delta, alphas=None if orders is None else list(orders)))


def epsilon_by_model(events: Sequence[DPEvent], delta: float) -> dict[str, float]:
    """ε of each model's events alone, and ``total`` for all of them composed."""
    models = sorted({e.model for e in events})
    out = {model: epsilon([e for e in events if e.model == model], delta) for model in models}
    out["total"] = epsilon(events, delta)
    return out


def calibrate_noise(target_epsilon: float, delta: float, sample_rate: float, steps: int) -> float:
    """The smallest noise multiplier σ whose ``steps`` steps at ``sample_rate`` spend at most ``target_epsilon``.

    Bisection on σ over the same accountant used for reporting, so a calibrated plan
    never reports more than its target.
    """
    if target_epsilon <= 0:
        raise ConfigError(f"the target epsilon must be positive, got {target_epsilon}.")
    if steps <= 0:
        return 0.0

    def spent(sigma: float) -> float:
        return epsilon([DPEvent("plan", sigma, sample_rate, steps)], delta, FAST_ORDERS)

    low, high = 0.05, 1.0
    while spent(high) > target_epsilon:
        low, high = high, high * 2
        if high > 1e4:
            raise ConfigError(f"no noise multiplier reaches epsilon {target_epsilon} in {steps} steps.")
    if spent(low) <= target_epsilon:
        return low
    for _ in range(50):
        middle = (low + high) / 2
        if spent(middle) > target_epsilon:
            low = middle
        else:
            high = middle
        if high - low < 1e-3 * high:
            break
    return high
