"""Privacy accounting over Poisson-subsampled Gaussian events (DP-SGD steps) and Skellam releases.

Pure functions over immutable :class:`DPEvent` values; state lives in the ledger
(:mod:`fedsynth.common.privacy.ledger`). ε is always computed from the *full* history of events on
a client's records, composing every model and every round in one accountant.

**Which accountant** (:data:`ACCOUNTANT`, :func:`accountant_for`, :func:`accountant_name`):

* a history of Gaussian :class:`DPEvent` s only (every run without secure aggregation) is
  composed by the **privacy loss distribution** (PLD) accountant of Google's dp-accounting
  (Koskela et al. 2020; Doroshenko et al. 2022), the tightest accountant available: its pessimistic
  estimate is a valid upper bound on ε whose only slack is the discretization of the privacy
  loss (:data:`PLD_INTERVAL`, < 0.1% at fedsynth's events). It is 5–20% below RDP on the same
  events, so the same ε buys less noise;
* a history holding any :class:`~fedsynth.common.secagg.skellam.SkellamEvent` (secure aggregation) is
  composed whole by **Rényi DP** (Opacus' analysis for the Gaussian steps, the Skellam bound of
  :mod:`fedsynth.common.secagg.skellam`, summed at each order): PLD cannot express the Skellam
  mechanism (its RDP bound is all there is of it) and RDP curves cannot be mixed with a PLD in
  one composition, so the whole history takes the looser, still valid, RDP bound.

An old ledger needs nothing: ε is recomputed from its stored events, by PLD where it holds
Gaussian events only. :func:`epsilon_rdp` keeps the RDP composition of any history (the
cross-check, and calibration under secure aggregation).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Literal

import numpy as np

from fedsynth.common.errors import ConfigError
from fedsynth.common.secagg.skellam import SkellamEvent

Accountant = Literal["pld", "rdp"]

ACCOUNTANT = "pld"  # histories of Gaussian events; "rdp" for a history with any Skellam event (accountant_for)
PLD_NAME = "pld (dp-accounting)"
RDP_NAME = "rdp (opacus), Skellam events present"
# The PLD's privacy-loss grid: PLD_INTERVAL, and where the ε found there is below 1, PLD_INTERVAL·ε
# (at least PLD_INTERVAL / 20; the smaller ε of the two, both valid bounds, is reported); wider for
# noise multipliers below 0.3 (ε above 10), see _pld_epsilon_on_scaled_grid. The
# pessimistic estimate rounds every loss up to the grid, so ε only shrinks with a finer grid, and the
# error is about absolute: against a 10x finer grid, 1e-3 is < 0.1% above at fedsynth's plans
# (n = 130 to 10⁴ users per silo, ε = 1 to 8; 1e-2: up to 5%) but 2% at ε = 0.15, hence the finer
# grid below ε = 1. A silo's history builds in 0.05–0.2 s.
PLD_INTERVAL = 1e-3
# The integer orders 2-63, a subset of Opacus' defaults, 30x faster to evaluate at large sampling
# rates than the full set (fractional orders need a slowly converging series). A subset of
# orders can only give a larger (looser) ε, so a σ calibrated with them never reports more than
# its target with the default orders; it may add slightly more noise than the least needed.
FAST_ORDERS: tuple[float, ...] = tuple(float(a) for a in range(2, 64))
# Orders above 63, only for calibrating a small part of a budget: converting RDP at order α to
# (ε, δ) costs at least about (log(1/δ) − log α)/(α − 1) (0.07 at α = 63, δ = 1e-4), so a part
# whose own ε is below that (a 10% share of ε = 1) has no σ at orders ≤ 63 alone.
LARGE_ORDERS: tuple[float, ...] = (80.0, 96.0, 128.0, 192.0, 256.0, 384.0, 512.0, 768.0, 1024.0)
MIN_NOISE, MAX_NOISE = 0.05, 1e4  # the noise multipliers calibration searches


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


def accountant_for(events: Iterable[Event]) -> Accountant:
    """The accountant :func:`epsilon` uses for ``events``: ``rdp`` if any is a Skellam event, else ``pld``."""
    return "rdp" if any(isinstance(e, SkellamEvent) and e.steps > 0 for e in events) else "pld"


def accountant_name(events: Iterable[Event]) -> str:
    """Which accountant an ε of ``events`` came from, in words (for ledgers and reports)."""
    return PLD_NAME if accountant_for(events) == "pld" else RDP_NAME


def epsilon(
    events: Iterable[Event],
    delta: float,
    orders: Sequence[float] | None = None,
    accountant: Accountant | None = None,
) -> float:
    """ε at ``delta`` of all ``events`` composed. 0 for no steps; ∞ if any step has no noise.

    ``accountant``: ``pld`` (Gaussian events only, :func:`epsilon_pld`), ``rdp`` (:func:`epsilon_rdp`),
    or None for the reporting choice (module docstring): RDP where a Skellam event is present, or
    where ``orders`` (Rényi orders, an RDP argument) are given; else PLD.
    """
    events = list(events)
    if accountant is None:
        accountant = "rdp" if orders is not None else accountant_for(events)
    if accountant == "rdp":
        return epsilon_rdp(events, delta, orders)
    if accountant == "pld":
        if orders is not None:
            raise ValueError("Rényi orders are an argument of the RDP accountant, not of PLD.")
        return epsilon_pld(events, delta)
    raise ValueError(f"unknown accountant {accountant!r}; use 'pld' or 'rdp'.")


def epsilon_pld(events: Iterable[Event], delta: float, interval: float | None = None) -> float:
    """ε at ``delta`` of Gaussian ``events`` composed by dp-accounting's PLD accountant (pessimistic estimate).

    ``interval``: the privacy-loss grid; None for :data:`PLD_INTERVAL`, refined below ε = 1 (see there).

    The same privacy loss distributions :class:`dp_accounting.pld.PLDAccountant` composes for
    ``SelfComposedDpEvent(PoissonSampledDpEvent(q, GaussianDpEvent(σ)), steps)`` (for q = 1, the
    Gaussian mechanism at σ/√steps), built through its module so that each event's distribution is
    made once per process: events of the same (σ, q) are merged first (a ledger records a round's
    (σ, q) again every round), then the distinct ones are composed in order of first appearance.
    """
    spent = [e for e in events if e.steps > 0]
    if any(isinstance(e, SkellamEvent) for e in spent):
        raise ValueError("the PLD accountant cannot compose Skellam events; use epsilon_rdp (or epsilon).")
    history = [e for e in spent if isinstance(e, DPEvent)]
    if not history:
        return 0.0
    if any(e.noise_multiplier == 0 for e in history):
        return math.inf
    merged: dict[tuple[float, float], int] = {}
    for e in history:
        key = (float(e.noise_multiplier), float(e.sample_rate))
        merged[key] = merged.get(key, 0) + int(e.steps)
    parts = tuple((sigma, rate, steps) for (sigma, rate), steps in merged.items())
    if interval is not None:
        return _pld_epsilon(parts, float(delta), float(interval))
    return _pld_epsilon_on_scaled_grid(parts, float(delta), 1.0)


def _pld_epsilon_on_scaled_grid(parts: tuple[tuple[float, float, int], ...], delta: float, scale: float) -> float:
    """ε on the grid ``scale``·:data:`PLD_INTERVAL` (coarser where σ < 0.3), and below 1 on that grid times
    max(ε, 0.05) (the smaller)."""
    first = _pld_epsilon(parts, delta, scale * PLD_INTERVAL * _widening(parts))
    if not first < 1:
        return first
    return min(first, _pld_epsilon(parts, delta, scale * PLD_INTERVAL * max(first, 0.05)))


def _widening(parts: tuple[tuple[float, float, int], ...]) -> float:
    """How much wider than :data:`PLD_INTERVAL` the grid is for ``parts``: the losses span about 1/σ² (σ/√steps
    without subsampling), so below σ = 0.3, where ε is above 10, the grid widens with that span, which keeps
    it to about 10⁴ points and ε to 10⁻⁴ relative (seconds, not minutes)."""
    smallest = min(sigma**2 / steps if rate >= 1 else sigma**2 for sigma, rate, steps in parts)
    return max(1.0, 0.1 / smallest)


@lru_cache(maxsize=16384)
def _pld_epsilon(parts: tuple[tuple[float, float, int], ...], delta: float, interval: float) -> float:
    """ε at ``delta`` of the (σ, q, steps) ``parts`` composed in order, on the privacy-loss grid ``interval``."""
    distribution = _pld_of(*parts[0], interval)
    for part in parts[1:]:
        distribution = distribution.compose(_pld_of(*part, interval))
    return float(distribution.get_epsilon_for_delta(delta))


@lru_cache(maxsize=16)  # a few MB each: only the few (σ, q, steps) of a ledger's history are worth keeping
def _pld_of(noise_multiplier: float, sample_rate: float, steps: int, interval: float) -> Any:
    """The PLD of ``steps`` Poisson-subsampled Gaussian steps, as :class:`PLDAccountant` builds it."""
    from dp_accounting.pld import privacy_loss_distribution

    if sample_rate >= 1:  # no subsampling: the composition is exactly one Gaussian at σ/√steps
        return privacy_loss_distribution.from_gaussian_mechanism(
            standard_deviation=noise_multiplier / math.sqrt(steps), value_discretization_interval=interval
        )
    return privacy_loss_distribution.from_gaussian_mechanism(
        standard_deviation=noise_multiplier, value_discretization_interval=interval, sampling_prob=sample_rate
    ).self_compose(steps)


def epsilon_rdp(events: Iterable[Event], delta: float, orders: Sequence[float] | None = None) -> float:
    """ε at ``delta`` of all ``events`` composed by Rényi DP. 0 for no steps; ∞ if any step has no noise.

    ``orders`` are the Rényi orders to optimise over (Opacus' defaults when None). For Gaussian
    events this is exactly Opacus' ``RDPAccountant.get_privacy_spent`` (RDP summed over the
    history, then converted), with each (σ, q) curve computed once per process and cached.
    Skellam events (secure aggregation) add their own RDP bound at the same orders
    (:mod:`fedsynth.common.secagg.skellam`).
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
    """ε of each model's events alone, and ``total`` for all of them composed (each by :func:`accountant_for`)."""
    models = sorted({e.model for e in events})
    out = {model: epsilon([e for e in events if e.model == model], delta) for model in models}
    out["total"] = epsilon(events, delta)
    return out


def calibrate_noise(
    target_epsilon: float,
    delta: float,
    sample_rate: float,
    steps: int,
    accountant: Accountant = "pld",
    guess: float | None = None,
) -> float:
    """The smallest noise multiplier σ whose ``steps`` steps at ``sample_rate`` spend at most ``target_epsilon``.

    Searched over the accountant used for reporting (``pld`` for Gaussian events; ``rdp`` where the
    release will be reported by RDP, e.g. replaced by a Skellam event), so a calibrated plan never
    reports more than its target: under PLD, spent(σ) ≤ target and within 0.1% of it; under RDP σ
    is found to 0.1%. Noise multipliers below :data:`MIN_NOISE` are not searched. ``guess`` (PLD): a
    σ near the answer, e.g. from an earlier calibration of the same steps at another target; it
    only saves time.
    """
    if target_epsilon <= 0:
        raise ConfigError(f"the target epsilon must be positive, got {target_epsilon}.")
    if steps <= 0:
        return 0.0
    if accountant == "pld":
        start = None if guess is None else float(guess)
        return _calibrate_pld(float(target_epsilon), float(delta), float(sample_rate), int(steps), start)
    if accountant == "rdp":
        return _calibrate_rdp(float(target_epsilon), float(delta), float(sample_rate), int(steps))
    raise ValueError(f"unknown accountant {accountant!r}; use 'pld' or 'rdp'.")


@lru_cache(maxsize=4096)  # a plan is calibrated by the server and every client, every round: same arguments
def _calibrate_pld(target: float, delta: float, sample_rate: float, steps: int, guess: float | None) -> float:
    """PLD calibration on the reporting grid: for q = 1 from the exact Gaussian σ, else from a search on a 10x
    coarser grid (5x faster; its ε a little above the fine one's) started from ``guess`` or a rough σ."""

    def spent_at(scale: float) -> Callable[[float], float]:
        return lambda sigma: _pld_epsilon_on_scaled_grid(((sigma, sample_rate, steps),), delta, scale)

    if sample_rate >= 1:  # the exact σ is known; the PLD's ε there is a hair above the target: start 0.04% above
        exact = math.sqrt(steps) * _gaussian_noise(target, delta)
        return _smallest_noise(spent_at(1.0), target, exact * (1 + 4e-4))[0]
    start = _classic_noise(target, delta, sample_rate, steps) if guess is None else guess

    def coarse_spent(sigma: float) -> float:
        parts = ((sigma, sample_rate, steps),)
        return _pld_epsilon(parts, delta, 10 * PLD_INTERVAL * _widening(parts))

    coarse, slope = _smallest_noise(coarse_spent, target, start)
    return _smallest_noise(spent_at(1.0), target, coarse, slope=slope)[0]


def _gaussian_noise(target: float, delta: float) -> float:
    """The exact σ of one Gaussian release of sensitivity 1 at (ε, δ) (Balle & Wang 2018), by bisection:
    δ(ε) = Φ(1/2σ − εσ) − e^ε Φ(−1/2σ − εσ)."""

    def phi(x: float) -> float:
        return 0.5 * math.erfc(-x / math.sqrt(2))

    def delta_at(sigma: float) -> float:
        tail = phi(-0.5 / sigma - target * sigma)
        return phi(0.5 / sigma - target * sigma) - (math.exp(target + math.log(tail)) if tail > 0 else 0.0)

    low, high = MIN_NOISE, MAX_NOISE
    for _ in range(100):
        middle = math.sqrt(low * high)
        low, high = (middle, high) if delta_at(middle) > delta else (low, middle)
        if high / low < 1 + 1e-9:
            break
    return high


def _classic_noise(target: float, delta: float, sample_rate: float, steps: int) -> float:
    """A rough σ to start from: the classic Gaussian σ for the whole run, q·√steps releases' worth."""
    releases = sample_rate * math.sqrt(steps)
    return min(MAX_NOISE, max(MIN_NOISE, releases * math.sqrt(2 * math.log(1.25 / delta)) / target))


def _smallest_noise(
    spent: Callable[[float], float], target: float, guess: float, tolerance: float = 1e-3, slope: float = -1.0
) -> tuple[float, float]:
    """The smallest σ in [MIN_NOISE, MAX_NOISE] with ``spent(σ) ≤ target``, to ``tolerance`` relative in ε,
    and the slope d log ε / d log σ met there.

    ``spent`` decreases in σ and log ε is close to linear in log σ, so f(x) = log(spent(eˣ) / target)
    is solved by secant steps from ``guess`` until the root is bracketed, then by regula falsi with
    the Illinois modification, aiming at the middle of the window accepted. Returns a σ whose
    spent(σ) was evaluated: target·(1 − ``tolerance``) ≤ spent(σ) ≤ target, or the least feasible σ
    seen when the window is narrower than ε's own steps (the PLD grid), or :data:`MIN_NOISE`.
    """

    def f(x: float) -> float:
        value = spent(math.exp(x))
        return math.log(value / target) if 0 < value < math.inf else (50.0 if value > 0 else -50.0)

    floor, ceiling = math.log(MIN_NOISE), math.log(MAX_NOISE)
    accept = math.log1p(-tolerance)
    aim = accept / 2  # solve g = f − aim = 0; accepted: accept ≤ f ≤ 0
    x = min(ceiling, max(floor, math.log(guess)))
    fx = f(x)
    while not accept <= fx <= 0:  # secant steps until the root is bracketed
        if fx < accept and x <= floor:
            return MIN_NOISE, slope
        if fx > 0 and x >= ceiling:
            raise ConfigError(f"no noise multiplier up to {MAX_NOISE:g} reaches epsilon {target:g}.")
        step = max(-2.0, min(2.0, -(fx - aim) / slope))
        step = math.copysign(max(abs(step), 1e-4), step)
        x_next = min(ceiling, max(floor, x + step))
        f_next = f(x_next)
        if abs(fx) < 50 and abs(f_next) < 50 and abs(x_next - x) > 2e-3 and (f_next - fx) / (x_next - x) < 0:
            slope = (f_next - fx) / (x_next - x)  # (steps below 0.2% in σ: mostly the grid's noise)
        if (fx > 0) != (f_next > 0):
            break
        x, fx = x_next, f_next
    else:
        return math.exp(x), slope
    if accept <= f_next <= 0:
        return math.exp(x_next), slope
    (low, g_low), (high, g_high) = sorted([(x, fx - aim), (x_next, f_next - aim)])  # g(low) > 0 > g(high)
    side, previous = 0, (x_next, f_next)
    while high - low > 1e-9:  # regula falsi, Illinois: halve the end kept twice in a row
        x = (low * g_high - high * g_low) / (g_high - g_low)
        if not low < x < high:
            x = (low + high) / 2
        fx = f(x)
        if abs(fx) < 50 and abs(previous[1]) < 50 and abs(x - previous[0]) > 2e-3:
            secant = (fx - previous[1]) / (x - previous[0])
            slope = secant if secant < 0 else slope
        previous = (x, fx)
        if accept <= fx <= 0:
            return math.exp(x), slope
        if fx > 0:
            low, g_low = x, fx - aim
            if side == 1:
                g_high /= 2
            side = 1
        else:
            high, g_high = x, fx - aim
            if side == -1:
                g_low /= 2
            side = -1
    return math.exp(high), slope  # feasible: ε steps over the window (the PLD grid)


def _calibrate_rdp(target_epsilon: float, delta: float, sample_rate: float, steps: int) -> float:
    """Bisection on σ over Opacus' RDP (orders 2–63; with :data:`LARGE_ORDERS` for a target too small for them)."""
    orders = FAST_ORDERS
    with warnings.catch_warnings():  # Opacus warns when the best order is the largest: that is the case here
        warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")
        if epsilon_rdp([DPEvent("plan", MAX_NOISE, sample_rate, steps)], delta, orders) > target_epsilon:
            orders = FAST_ORDERS + LARGE_ORDERS

    def spent(sigma: float) -> float:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")
            return epsilon_rdp([DPEvent("plan", sigma, sample_rate, steps)], delta, orders)

    low, high = MIN_NOISE, 1.0
    while spent(high) > target_epsilon:
        low, high = high, high * 2
        if high > MAX_NOISE:
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
