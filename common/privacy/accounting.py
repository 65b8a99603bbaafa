"""Privacy accounting over Poisson-subsampled Gaussian events (DP-SGD steps).

Pure functions over immutable :class:`DPEvent` values; state lives in the ledger
(:mod:`common.privacy.ledger`). ε is always computed from the *full* history of events on
a client's records, composing every model and every round in one accountant.

The accountant is Opacus' RDP accountant (named explicitly; Opacus' default is PRV). Tests
cross-check it against Google's dp-accounting for the same events.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from common.errors import ConfigError
from common.privacy.skellam import SkellamEvent

ACCOUNTANT = "rdp"
# The integer orders 2-63, a subset of Opacus' defaults, 30x faster to evaluate at large sampling
# rates than the full set (fractional orders need a slowly converging series). A subset of
# orders can only give a larger (looser) ε, so a σ calibrated with them never reports more than
# its target with the default orders; it may add slightly more noise than the least needed.
FAST_ORDERS: tuple[float, ...] = tuple(float(a) for a in range(2, 64))
# Orders above 63, only for calibrating a small part of a budget: converting RDP at order α to
# (ε, δ) costs at least about (log(1/δ) − log α)/(α − 1) (0.07 at α = 63, δ = 1e-4), so a part
# whose own ε is below that (a 10% share of ε = 1) has no σ at orders ≤ 63 alone.
LARGE_ORDERS: tuple[float, ...] = (80.0, 96.0, 128.0, 192.0, 256.0, 384.0, 512.0, 768.0, 1024.0)


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


Event = DPEvent | SkellamEvent  # what a ledger composes


def epsilon(events: Iterable[Event], delta: float, orders: Sequence[float] | None = None) -> float:
    """ε at ``delta`` of all ``events`` composed. 0 for no steps; ∞ if any step has no noise.

    ``orders`` are the Rényi orders to optimise over (Opacus' defaults when None). For Gaussian
    events this is exactly Opacus' ``RDPAccountant.get_privacy_spent`` (RDP summed over the
    history, then converted), with each (σ, q) curve computed once per process and cached: the
    ledger asks for ε of the same few (σ, q) pairs every round. Skellam events (secure
    aggregation) add their own RDP bound at the same orders (:mod:`common.privacy.skellam`).
    """
    events = [e for e in events if e.steps > 0]
    gaussian = [(e.noise_multiplier, e.sample_rate, e.steps) for e in events if isinstance(e, DPEvent)]
    skellam = [e for e in events if isinstance(e, SkellamEvent)]
    if not events:
        return 0.0
    if any(sigma == 0 for sigma, _, _ in gaussian) or any(e.variance <= 0 for e in skellam):
        return math.inf
    from opacus.accountants import RDPAccountant
    from opacus.accountants.analysis.rdp import get_privacy_spent

    alphas = tuple(float(a) for a in (RDPAccountant.DEFAULT_ALPHAS if orders is None else orders))
    rdp = np.zeros(len(alphas))
    for sigma, rate, steps in gaussian:
        rdp = rdp + steps * _rdp_per_step(float(sigma), float(rate), alphas)
    for event in skellam:
        rdp = rdp + event.rdp(alphas)
    eps, _ = get_privacy_spent(orders=list(alphas), rdp=rdp, delta=delta)
    return float(eps)


def event_from_plain(plain: dict[str, object]) -> Event:
    """A ledger file's event (a Skellam event has a ``variance``)."""
    return SkellamEvent(**plain) if "variance" in plain else DPEvent(**plain)  # type: ignore[arg-type]


@lru_cache(maxsize=8192)
def _rdp_per_step(noise_multiplier: float, sample_rate: float, orders: tuple[float, ...]) -> np.ndarray:
    """RDP of one Poisson-subsampled Gaussian step at each order (Opacus' analysis; linear in steps)."""
    from opacus.accountants.analysis.rdp import compute_rdp

    return np.asarray(compute_rdp(q=sample_rate, noise_multiplier=noise_multiplier, steps=1, orders=list(orders)))


def epsilon_by_model(events: Sequence[Event], delta: float) -> dict[str, float]:
    """ε of each model's events alone, and ``total`` for all of them composed."""
    models = sorted({e.model for e in events})
    out = {model: epsilon([e for e in events if e.model == model], delta) for model in models}
    out["total"] = epsilon(events, delta)
    return out


def calibrate_noise(target_epsilon: float, delta: float, sample_rate: float, steps: int) -> float:
    """The smallest noise multiplier σ whose ``steps`` steps at ``sample_rate`` spend at most ``target_epsilon``.

    Bisection on σ over the same accountant used for reporting, so a calibrated plan
    never reports more than its target. A target too small for the orders ≤ 63 to reach at
    any σ ≤ 10⁴ is calibrated with :data:`LARGE_ORDERS` added (a valid RDP bound at every order).
    """
    if target_epsilon <= 0:
        raise ConfigError(f"the target epsilon must be positive, got {target_epsilon}.")
    if steps <= 0:
        return 0.0
    orders = FAST_ORDERS
    with warnings.catch_warnings():  # Opacus warns when the best order is the largest: that is the case here
        warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")
        if epsilon([DPEvent("plan", 1e4, sample_rate, steps)], delta, orders) > target_epsilon:
            orders = FAST_ORDERS + LARGE_ORDERS

    def spent(sigma: float) -> float:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")
            return epsilon([DPEvent("plan", sigma, sample_rate, steps)], delta, orders)

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
