"""A client's privacy plan: the noise multipliers and sampling rates of everything a run spends.

Calibrated once, before round 1, from the target (ε, δ), the client's number of users, the batch
sizes, the local steps and the planned rounds. The client calibrates it for its own releases and
steps; the server may calibrate the same plan for a client of a given size to predict a release's
noise before asking for it (post-processing: the plan reads no data).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from fedsynth.common.config.run import LocalTrainingConfig
from fedsynth.common.errors import ConfigError
from fedsynth.common.privacy.accounting import FAST_ORDERS, Accountant, DPEvent, calibrate_noise, epsilon
from fedsynth.common.privacy.dpsgd.training import PrivacyConfig, sample_rate, steps_per_epoch
from fedsynth.common.privacy.releases.cooccurrence import cooccurrence_event
from fedsynth.common.privacy.releases.statistics import statistics_event

EVALUATION = "evaluation"  # the ledger's name for a DP federated evaluation (:mod:`fedsynth.client.evaluation`)


@dataclass(frozen=True)
class PrivacyPlan:
    """Noise and sampling for every round, calibrated once before round 1."""

    delta: float
    vae_noise: float
    vae_rate: float
    vae_steps: int  # per round
    gan_noise: float
    gan_rate: float
    gan_steps: int  # per round
    statistics_noise: float = 0.0  # the one release of DP statistics before round 1
    private: bool = True
    cooccurrence: bool = False  # whether the second-order release is planned (after the statistics)
    cooccurrence_noise: float = 0.0
    evaluation_noise: float = 0.0  # each DP federated evaluation: one Gaussian release (q = 1, 1 step)
    evaluation_releases: int = 0  # how many the run may ask for (0: no DP evaluation planned)

    def statistics_events(self) -> list[DPEvent]:
        """The event the DP statistics release spends.

        Without DP the events carry noise 0, whose ε is ∞: data used without DP keeps no
        guarantee, and its ledger says so from then on.
        """
        return [statistics_event(self.statistics_noise if self.private else 0.0)]

    def cooccurrence_events(self) -> list[DPEvent]:
        """The event the second-order release spends (none when it is not planned; noise 0 without DP)."""
        if not self.cooccurrence:
            return []
        return [cooccurrence_event(self.cooccurrence_noise if self.private else 0.0)]

    def evaluation_events(self) -> list[DPEvent]:
        """The event one DP federated evaluation spends (none when not planned; noise 0 without DP)."""
        if self.evaluation_releases == 0:
            return []
        return [DPEvent(EVALUATION, self.evaluation_noise if self.private else 0.0, 1.0, 1)]

    def round_events(self) -> list[DPEvent]:
        """The events one round spends (noise 0, ε = ∞, when DP is off; no GAN event when the GAN is off)."""
        events = [DPEvent("vae", self.vae_noise, self.vae_rate, self.vae_steps)]
        if self.gan_steps > 0:
            events.append(DPEvent("gan", self.gan_noise, self.gan_rate, self.gan_steps))
        return events

    def run_events(
        self, statistics: bool, rounds: int, cooccurrence: bool | None = None, evaluations: int | None = None
    ) -> list[DPEvent]:
        """What a run still to do spends: the statistics release (if ``statistics``), the co-occurrence release
        (if ``cooccurrence``, by default with the statistics), ``rounds`` rounds and ``evaluations`` DP
        evaluations (by default all those planned)."""
        rounds_events = [
            DPEvent(e.model, e.noise_multiplier, e.sample_rate, e.steps * rounds) for e in self.round_events()
        ]
        second = self.cooccurrence_events() if (statistics if cooccurrence is None else cooccurrence) else []
        count = self.evaluation_releases if evaluations is None else evaluations
        evaluation = [DPEvent(EVALUATION, e.noise_multiplier, 1.0, count) for e in self.evaluation_events()]
        return (
            (self.statistics_events() if statistics else [])
            + second
            + (rounds_events if rounds > 0 else [])
            + (evaluation if count > 0 else [])
        )


def plan_privacy(
    privacy: PrivacyConfig,
    num_users: int,
    local: LocalTrainingConfig,
    rounds: int,
    accountant: Accountant | None = None,
) -> PrivacyPlan:
    """Calibrate σ for the statistics release and each model so that everything planned composes to ≤ the target.

    In round-mode fedsgd a round is one Mult-VAE step at ``local.fedsgd_rate`` (every silo's rate) and
    no GAN step; under secure aggregation each planned Gaussian event is then replaced, node by node,
    by a Skellam event of no more ε (:mod:`fedsynth.client.secure`).

    The statistics' σ is calibrated for ``statistics_share`` of a budget (less the co-occurrence
    release's ``cooccurrence_share`` of it, when that release is planned), the VAE's for
    ``vae_share`` of the rest and the GAN's for the remainder (with no rounds, ``num-server-rounds`` 0, the
    releases get the models' part too: nothing is planned that will not be spent); that budget is then scaled
    (secant steps) so that the composition of the statistics release and every planned
    event of every round is as close to the target as possible (within 0.2%) without exceeding it.

    ``accountant``: the one the ledger will report the run by, and so calibrate under
    (:mod:`fedsynth.common.privacy.accounting`): by default PLD, or RDP (at the orders 2–63, a bound on Opacus'
    defaults) under secure aggregation (``local.secure_aggregation``, or round-mode fedsgd), whose
    Skellam events make the ledger's whole history an RDP composition.
    """
    if accountant is None:
        accountant = "rdp" if local.secure_aggregation or local.fedsgd_rate > 0 else "pld"
    batches = [("Mult-VAE", local.vae.batch_size)] + ([("GAN", local.gan.batch_size)] if local.train_gan else [])
    for name, batch in batches if local.fedsgd_rate == 0 else []:
        if batch > num_users:
            raise ConfigError(
                f"the {name} batch size {batch} is larger than this client's {num_users} users; "
                "lower the batch size or give the client more users."
            )
    delta = privacy.delta_for(num_users)
    vae_rate, gan_rate = sample_rate(num_users, local.vae.batch_size), sample_rate(num_users, local.gan.batch_size)
    vae_steps = local.local_epochs * steps_per_epoch(num_users, local.vae.batch_size)
    gan_steps = local.discriminator_steps if local.train_gan else 0
    if local.fedsgd_rate > 0:  # round-mode fedsgd: one step of the Mult-VAE per round, at the run's common rate
        vae_rate, vae_steps, gan_steps = local.fedsgd_rate, 1, 0
    second = privacy.cooccurrence_share > 0
    evaluation_share = privacy.evaluation_share
    evaluations = privacy.evaluation_releases if evaluation_share > 0 else 0
    if not privacy.private:
        return PrivacyPlan(
            delta, 0.0, vae_rate, vae_steps, 0.0, gan_rate, gan_steps, private=False, cooccurrence=second,
            evaluation_releases=evaluations,
        )  # fmt: skip
    rest = 1 - evaluation_share  # the evaluation's share first, the others divide the rest
    training = 1 - privacy.statistics_share if rounds > 0 else 0.0  # no rounds: the releases get it all
    cooccurrence_share = rest * (1 - training) * privacy.cooccurrence_share
    statistics_share = rest * (1 - training) - cooccurrence_share
    vae_share = rest * training * (privacy.vae_share if gan_steps > 0 else 1.0)
    gan_share = rest * training - vae_share

    calibrated: dict[str, list[tuple[float, float]]] = {}  # each part's (target, σ) at the scales tried so far

    def noise(part: str, target: float, rate: float, steps: int) -> float:
        """``calibrate_noise``, started from the σ the scales tried so far found for this part (only faster)."""
        seen = calibrated.setdefault(part, [])
        sigma = calibrate_noise(target, delta, rate, steps, accountant, guess=_interpolated(seen, target))
        seen.append((target, sigma))
        return sigma

    def plan_at(scale: float) -> tuple[PrivacyPlan, float]:
        target = privacy.target_epsilon * scale
        plan = PrivacyPlan(
            delta,
            noise("vae", target * vae_share, vae_rate, vae_steps * rounds) if vae_share > 0 else 0.0,
            vae_rate,
            vae_steps,
            noise("gan", target * gan_share, gan_rate, gan_steps * rounds) if gan_share > 0 else 0.0,
            gan_rate,
            gan_steps,
            noise("statistics", target * statistics_share, 1.0, 1),
            cooccurrence=second,
            cooccurrence_noise=noise("cooccurrence", target * cooccurrence_share, 1.0, 1) if second else 0.0,
            evaluation_noise=noise("evaluation", target * evaluation_share, 1.0, evaluations) if evaluations else 0.0,
            evaluation_releases=evaluations,
        )
        orders = FAST_ORDERS if accountant == "rdp" else None
        return plan, epsilon(plan.run_events(True, rounds), delta, orders, accountant)

    # Composition costs less than the sum of the parts: scale all shares up together until
    # the composed total meets the target (it can never exceed 1 / the largest share).
    # Gaussian mechanisms compose as the root of the sum of squares: the first scale tried.
    shares = [statistics_share, cooccurrence_share, vae_share, gan_share, evaluation_share]
    start = 1.0 / math.sqrt(sum(share**2 for share in shares))
    return _largest_scale(plan_at, privacy.target_epsilon, 0.5, 1.0 / max(shares), start)


def _interpolated(seen: list[tuple[float, float]], target: float) -> float | None:
    """σ at ``target`` from the (target, σ) pairs ``seen``: log σ linear in log target through the two nearest
    (σ ∝ 1/ε through one). None when nothing was seen."""
    if not seen:
        return None
    nearest = sorted(seen, key=lambda pair: abs(math.log(pair[0] / target)))[:2]
    (t0, s0), (t1, s1) = nearest[0], nearest[-1]
    if len(nearest) < 2 or t0 == t1 or s0 <= 0 or s1 <= 0:
        return s0 * t0 / target if s0 > 0 else None
    power = math.log(s1 / s0) / math.log(t1 / t0)
    return s0 * (target / t0) ** power


def _largest_scale(
    plan_at: Callable[[float], tuple[PrivacyPlan, float]], target: float, low: float, high: float, start: float,
    tolerance: float = 2e-3,
) -> PrivacyPlan:  # fmt: skip
    """The plan at the largest scale in [``low``, ``high``] whose composed ε is ≤ ``target``, to ``tolerance``
    relative in ε (or the best of 12 tries): secant steps on log ε against log scale from ``start``, then
    regula falsi (Illinois) once bracketed. A ConfigError if even ``low`` spends more than ``target``.
    """
    accept = math.log1p(-tolerance)
    aim = accept / 2  # solve g = log(ε / target) − aim = 0; accepted: accept ≤ log(ε / target) ≤ 0
    floor, ceiling = math.log(low), math.log(high)
    best: tuple[float, PrivacyPlan] | None = None  # the largest feasible log scale tried, and its plan
    below: list[float] | None = None  # [log scale, g] of the largest feasible scale tried
    above: list[float] | None = None  # [log scale, g] of the smallest infeasible one
    slope, previous, last = 1.0, (math.nan, math.nan), ""
    x = min(ceiling, max(floor, math.log(start)))
    for _ in range(12):
        plan, total = plan_at(math.exp(x))
        f = math.log(total / target) if 0 < total < math.inf else 50.0
        if f <= 0 and (best is None or x > best[0]):
            best = (x, plan)
        if accept <= f <= 0:
            break
        if f > 0 and x <= floor:
            raise ConfigError(f"cannot calibrate noise for epsilon {target:g}; check the settings.")
        if x != previous[0] and abs(f) < 50 and abs(previous[1]) < 50 and (f - previous[1]) / (x - previous[0]) > 0:
            slope = (f - previous[1]) / (x - previous[0])
        previous = (x, f)
        end = "above" if f > 0 else "below"
        if last == end and above is not None and below is not None:  # Illinois: halve the end kept twice
            (below if end == "above" else above)[1] /= 2
        if f > 0:
            above = [x, f - aim]
        else:
            below = [x, f - aim]
        last = end
        if above is not None and below is not None:
            (x_low, g_low), (x_high, g_high) = below, above
            x = (x_low * g_high - x_high * g_low) / (g_high - g_low)
            if not x_low < x < x_high:
                x = (x_low + x_high) / 2
        else:
            x_next = min(ceiling, max(floor, x - (f - aim) / slope))
            if x_next == x:  # at the top of the range and still below the target
                break
            x = x_next
    if best is None:
        raise ConfigError(f"cannot calibrate noise for epsilon {target:g}; check the settings.")
    return best[1]
