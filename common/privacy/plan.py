"""A client's privacy plan: the noise multipliers and sampling rates of everything a run spends.

Calibrated once, before round 1, from the target (ε, δ), the client's number of users, the batch
sizes, the local steps and the planned rounds. The client calibrates it for its own releases and
steps; the server may calibrate the same plan for a client of a given size to predict a release's
noise before asking for it (post-processing: the plan reads no data).
"""

from __future__ import annotations

from dataclasses import dataclass

from common.errors import ConfigError
from common.privacy.accounting import FAST_ORDERS, DPEvent, calibrate_noise, epsilon
from common.privacy.cooccurrence import cooccurrence_event
from common.privacy.dp import PrivacyConfig, sample_rate, steps_per_epoch
from common.privacy.statistics import statistics_event
from common.run_config import LocalTrainingConfig


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

    def round_events(self) -> list[DPEvent]:
        """The events one round spends (noise 0, ε = ∞, when DP is off; no GAN event when the GAN is off)."""
        events = [DPEvent("vae", self.vae_noise, self.vae_rate, self.vae_steps)]
        if self.gan_steps > 0:
            events.append(DPEvent("gan", self.gan_noise, self.gan_rate, self.gan_steps))
        return events

    def run_events(self, statistics: bool, rounds: int, cooccurrence: bool | None = None) -> list[DPEvent]:
        """What a run still to do spends: the statistics release (if ``statistics``), the co-occurrence release
        (if ``cooccurrence``, by default with the statistics) and ``rounds`` rounds."""
        rounds_events = [
            DPEvent(e.model, e.noise_multiplier, e.sample_rate, e.steps * rounds) for e in self.round_events()
        ]
        second = self.cooccurrence_events() if (statistics if cooccurrence is None else cooccurrence) else []
        return (self.statistics_events() if statistics else []) + second + (rounds_events if rounds > 0 else [])


def plan_privacy(privacy: PrivacyConfig, num_users: int, local: LocalTrainingConfig, rounds: int) -> PrivacyPlan:
    """Calibrate σ for the statistics release and each model so that everything planned composes to ≤ the target.

    In round-mode fedsgd a round is one Mult-VAE step at ``local.fedsgd_rate`` (every silo's rate) and
    no GAN step; under secure aggregation each planned Gaussian event is then replaced, node by node,
    by a Skellam event of no more ε (:mod:`client.secure`).

    The statistics' σ is calibrated for ``statistics_share`` of a budget (less the co-occurrence
    release's ``cooccurrence_share`` of it, when that release is planned), the VAE's for
    ``vae_share`` of the rest and the GAN's for the remainder; that budget is then scaled
    (bisection) so that the RDP composition of the statistics release and every planned
    event of every round is as close to the target as possible without exceeding it.
    """
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
    if not privacy.private:
        return PrivacyPlan(
            delta, 0.0, vae_rate, vae_steps, 0.0, gan_rate, gan_steps, private=False, cooccurrence=second
        )
    cooccurrence_share = privacy.statistics_share * privacy.cooccurrence_share
    statistics_share = privacy.statistics_share - cooccurrence_share
    vae_share = (1 - privacy.statistics_share) * (privacy.vae_share if gan_steps > 0 else 1.0)
    gan_share = 1 - privacy.statistics_share - vae_share

    def plan_at(scale: float) -> tuple[PrivacyPlan, float]:
        target = privacy.target_epsilon * scale
        plan = PrivacyPlan(
            delta,
            calibrate_noise(target * vae_share, delta, vae_rate, vae_steps * rounds),
            vae_rate,
            vae_steps,
            calibrate_noise(target * gan_share, delta, gan_rate, gan_steps * rounds) if gan_steps > 0 else 0.0,
            gan_rate,
            gan_steps,
            calibrate_noise(target * statistics_share, delta, 1.0, 1),
            cooccurrence=second,
            cooccurrence_noise=calibrate_noise(target * cooccurrence_share, delta, 1.0, 1) if second else 0.0,
        )
        return plan, epsilon(plan.run_events(True, rounds), delta, FAST_ORDERS)

    # Composition costs less than the sum of the parts: scale all shares up together until
    # the composed total meets the target (it can never exceed 1 / the largest share).
    low, high = 0.5, 1.0 / max(statistics_share, cooccurrence_share, vae_share, gan_share)
    best, total = plan_at(low)
    if total > privacy.target_epsilon:
        raise ConfigError(f"cannot calibrate noise for epsilon {privacy.target_epsilon:g}; check the settings.")
    for _ in range(8):
        middle = (low + high) / 2
        plan, total = plan_at(middle)
        if total <= privacy.target_epsilon:
            best, low = plan, middle
        else:
            high = middle
    return best
