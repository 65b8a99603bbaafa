"""The federation's settings, built once from Flower's run config (``[tool.flwr.app.config]``).

Keys are kebab-case in the run config; unknown keys are errors. ``epsilon = inf`` (carried as
:data:`NO_DP_EPSILON`, since Flower's run config has no ∞) turns DP off; ``delta = 0`` means 0.1 / n
per client.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedsynth.common.config.sections import (
    DataConfig,
    GeneratedDataConfig,
    PartitionConfig,
    PreprocessConfig,
    SplitConfig,
    from_mapping,
)
from fedsynth.common.data.prepare import DataSettings
from fedsynth.common.errors import ConfigError
from fedsynth.common.federated.strategies import StrategyConfig
from fedsynth.common.models.gan import GANConfig
from fedsynth.common.models.vae import MultVAEConfig
from fedsynth.common.privacy.dpsgd.training import PrivacyConfig
from fedsynth.common.privacy.releases.cooccurrence import MAX_MARGINAL_ITEMS, MIN_SIGNAL_DEFAULT
from fedsynth.common.recommenders.dp_baselines import DPBaselineConfig
from fedsynth.common.recommenders.registry import RECOMMENDER_NAMES, check_recommender_names
from fedsynth.common.robustness.attacks import AttackConfig
from fedsynth.common.robustness.rules import RobustConfig
from fedsynth.common.runtime.device import parse_device
from fedsynth.common.synthesis.marginal_fit import MarginalFitConfig

EVALUATION_MODES = ("auto", "dp", "exact")  # federated evaluation (client/evaluation.py)
NO_DP_EPSILON = 1e9  # the run config's ε for "no DP" (any value at least this large means ∞)
SYNTHETIC_EASE_L2_PAIRS = 1000.0  # EASE λ on synthetic users fitted to released taste structure (signal rank ≥ 2)
SYNTHETIC_EASE_L2_FIRST_ORDER = 3000.0  # ... and on synthetic users that carry popularity only


def epsilon_setting(epsilon: float) -> float:
    """ε as the run config carries it: ∞ becomes :data:`NO_DP_EPSILON`."""
    return NO_DP_EPSILON if math.isinf(epsilon) else epsilon


@dataclass(frozen=True)
class LocalTrainingConfig:
    """What a client trains each round."""

    vae: MultVAEConfig = field(default_factory=lambda: MultVAEConfig(hidden_dims=(200,), latent_dim=64, batch_size=64))
    gan: GANConfig = field(default_factory=GANConfig)
    local_epochs: int = 1  # Mult-VAE epochs per round
    discriminator_steps: int = 10  # GAN discriminator steps per round
    train_gan: bool = True  # False when the GAN is not a synthesizer: no GAN steps, its ε share goes to the VAE
    proximal_mu: float = 0.0  # FedProx: μ/2 ‖w − w_global‖² added to every local objective (0: plain local SGD)
    fedsgd_rate: float = 0.0  # > 0: round-mode fedsgd, one Mult-VAE step per round at this Poisson rate (no GAN)
    # the DP releases go through SecAgg as Skellam events, which only RDP composes: the plan is calibrated under RDP
    secure_aggregation: bool = False

    def __post_init__(self) -> None:
        if self.local_epochs < 1 or self.discriminator_steps < 1:
            raise ConfigError("local epochs and discriminator steps per round must be at least 1.")
        if self.proximal_mu < 0:
            raise ConfigError(f"proximal-mu must be non-negative, got {self.proximal_mu}.")


@dataclass(frozen=True)
class RunConfig:
    """Flat run config as Flower passes it (kebab-case keys ↔ these snake_case fields)."""

    num_server_rounds: int = 3
    fraction_train: float = 1.0
    min_clients: int = 2  # fewer answering at the start, in the statistics release or in a round: the run fails
    allow_degraded: bool = False  # true: leave out nodes that cannot take part, accept rounds below min-clients
    secure_aggregation: bool = False  # true: the DP releases, every round's update, the DP baselines go through SecAgg
    secagg_threshold: int = 0  # t: the fewest nodes a secure sum can be unmasked from (0: a majority of the nodes)
    secagg_neighbours: int = 0  # k: SecAgg+'s neighbours per node, even (0: every node neighbours every other)
    secagg_bits: int = 0  # b: secure sums are mod 2^b (0: the fewest that cannot wrap, see common/secagg/skellam.py)
    round_mode: str = "local"  # local: local DP-SGD epochs per round | fedsgd: one secure-aggregated step per round
    fedsgd_sample_rate: float = 0.2  # fedsgd: the Poisson rate of every silo per step (best of 0.07, 0.2: validation)
    reproducible_noise: bool = False  # true (studies only): DP noise from the run seed, so NOT private vs the server
    evaluation: str = "auto"  # auto: DP on deployed nodes, exact on simulated ones | dp | exact (simulation only)
    evaluation_share: float = 0.1  # of ε, set aside for DP federated evaluation
    evaluation_releases: int = 24  # the evaluations (result rows) that share it, at most, per run
    strategy: str = "fedavg"  # fedavg | fedprox (clients add μ/2 ‖w − w_global‖²) | fedadam (server-side Adam)
    proximal_mu: float = 0.01  # FedProx μ (used with strategy = "fedprox")
    server_learning_rate: float = 0.03  # FedAdam η (strategy = "fedadam"; best of 0.01–0.3 on validation users)
    server_tau: float = 1e-3  # FedAdam τ, its degree of adaptivity
    epsilon: float = 8.0
    delta: float = 0.0
    max_grad_norm: float = 1.0
    vae_share: float = 0.5
    statistics_share: float = 0.8  # chosen on validation users (docs/results.md, "Marginal-fitted synthesis")
    statistics_clip: float = 4.0
    marginal_items: int = 500  # M items of the second-order DP release the models are fitted to (0: none; see README)
    cooccurrence_share: float = 0.8  # of the statistics' share of ε, the part for that second-order release
    marginal_fit_steps: int = 300  # Adam steps fitting the generator and the VAE decoder to the DP marginals
    marginal_fit_loss: str = "likelihood"  # or "relative" (common/synthesis/marginal_fit.py; presets/large-silos.toml)
    marginal_fit_directions: str = "all"  # or "signal": which directions are fitted (common/synthesis/marginal_fit.py)
    cooccurrence_min_signal: float = MIN_SIGNAL_DEFAULT  # release the co-occurrence only above it (see README)
    local_epochs: int = 1
    discriminator_steps: int = 10
    generator_steps: int = 1
    vae_batch_size: int = 64
    gan_batch_size: int = 64
    vae_hidden: int = 200
    vae_latent: int = 64
    vae_learning_rate: float = 1e-3
    dataset: str = "generated"
    data_path: str = ""
    gen_users: int = 943
    gen_items: int = 1682
    partition: str = "iid"
    min_item_interactions: int = 1  # k-core: items need at least this many users (the catalogue is treated as public)
    audit_fraction: float = 0.1  # users reserved per client as never-trained non-members for the audit
    seed: int = 0
    ledger_dir: str = ""
    out_dir: str = ""
    pipeline: str = "full"  # "train": rounds only; "full": then synthesis, central training, evaluation
    synthesizers: str = "vae,gan"  # the first is the headline ("synthetic/…"), others "synthetic-<name>/…"
    synthetic_users: int = 2000
    synthesis_temperature: float = 0.5
    recommenders: str = ",".join(RECOMMENDER_NAMES)
    central_vae_epochs: int = 20
    ease_l2: float = 300.0  # EASE λ on real training users (the upper bound)
    synthetic_ease_l2: float = 0.0  # EASE λ on synthetic users (0: automatic, see synthetic_ease_l2_for)
    simulation_reference: bool = True  # simulation: the server may load the data for fidelity and upper bounds
    eval_max_values: int = 50_000_000  # larger recommenders are not sent for federated evaluation
    dp_baselines: bool = True  # simulation: DP popularity and DP-EASE at the full target ε, as comparison rows
    dp_ease_items: int = 500  # DP-EASE's Gram matrix over the top items by DP counts (at most 10,000)
    dp_ease_clip: float = 1.0  # per-user Frobenius bound of x xᵀ in DP-EASE (1 = x / ‖x‖: best of 1–64 on validation)
    reply_timeout: float = 600.0  # seconds the server waits for a round's replies; silent clients count as failed
    device: str = "cpu"  # cpu | cuda[:N]: the clients' DP-SGD and the server's central training
    attack: str = "none"  # simulation only: none | scaled-update | random-update | target-items | inflated-counts
    attack_clients: int = 1  # silos with partition-id below this cheat
    attack_targets: int = 0  # target items measured (metrics.json -> attack) and promoted by the targeted attacks
    attack_scale: float = 1000.0  # update attacks: the update's scale (scaled-update) or the random update's norm ratio
    attack_fake_users: float = 2.0  # target-items: fake users as a share of the silo's users
    robust_aggregation: str = "none"  # none | norm-bound | median | trimmed-mean | krum | multikrum | bulyan
    robust_malicious: int = 1  # f: the silos the robust rule must withstand

    def __post_init__(self) -> None:
        if self.num_server_rounds < 1:
            raise ConfigError("num-server-rounds must be at least 1.")
        if not 0 < self.fraction_train <= 1:
            raise ConfigError(f"fraction-train must be in (0, 1], got {self.fraction_train}.")
        if self.min_clients < 1:
            raise ConfigError("min-clients must be at least 1.")
        if self.reply_timeout <= 0:
            raise ConfigError(f"reply-timeout must be positive (seconds), got {self.reply_timeout}.")
        self.check_evaluation()
        if self.pipeline not in ("full", "train"):
            raise ConfigError(f"pipeline must be 'full' or 'train', got {self.pipeline!r}.")
        unknown = [s for s in self.synthesizer_names() if s not in ("gan", "vae")] or not self.synthesizer_names()
        if unknown:
            raise ConfigError(f"synthesizers {self.synthesizers!r}: choose one or more of gan, vae (comma-separated).")
        check_recommender_names(self.recommender_names(), "recommenders")
        self.privacy()  # validates ε, δ, shares and clips before anything starts
        self.data()  # validates the dataset name and its required options
        self.baselines()  # validates the DP baselines' settings
        self.federated_strategy()  # validates the strategy's settings
        self.check_secure_aggregation()
        self.check_marginals()
        self.check_attack()
        parse_device(self.device)

    def evaluation_rows(self) -> int:
        """How many result rows the server evaluates federatedly: synthetic sets (each synthesizer, and both
        marginal-fitted models when marginal-items > 0) × recommenders, the real-data
        rows (simulation reference), fedvae and the prior, the DP baselines (simulation, private runs)."""
        recommenders = len(self.recommender_names())
        synthetic = len(self.synthesizer_names()) + (2 if self.marginal_items > 0 else 0)  # + the fitted starts
        reference = recommenders + (2 if self.dp_baselines and self.privacy().private else 0)
        return synthetic * recommenders + 2 + (reference if self.simulation_reference else 0)

    def check_evaluation(self) -> None:
        """A known mode, and, where the evaluation may be DP, enough planned releases for every row."""
        if self.evaluation not in EVALUATION_MODES:
            raise ConfigError(f"evaluation must be one of {', '.join(EVALUATION_MODES)}, got {self.evaluation!r}.")
        may_be_dp = self.evaluation == "dp" or (self.evaluation == "auto" and not self.simulation_reference)
        if may_be_dp and self.pipeline == "full" and self.evaluation_rows() > self.evaluation_releases:
            raise ConfigError(
                f"evaluation-releases {self.evaluation_releases} is below the {self.evaluation_rows()} rows this run "
                "evaluates under DP; raise it (each gets a smaller part of evaluation-share) or evaluate fewer "
                "recommenders (--recommenders)."
            )

    def check_secure_aggregation(self) -> None:
        if self.secagg_threshold < 0 or self.secagg_threshold == 1:
            raise ConfigError(f"secagg-threshold must be 0 (a majority) or at least 2, got {self.secagg_threshold}.")
        if self.secagg_neighbours < 0 or self.secagg_neighbours % 2:
            raise ConfigError(
                f"secagg-neighbours must be 0 (every node a neighbour) or even (k/2 on either side of each node in "
                f"a random ring, SecAgg+), got {self.secagg_neighbours}."
            )
        if self.secagg_bits and not 8 <= self.secagg_bits <= 64:
            raise ConfigError(f"secagg-bits must be 0 (automatic) or in [8, 64], got {self.secagg_bits}.")
        if self.secure_aggregation and math.isinf(self.privacy().target_epsilon):
            raise ConfigError("secure-aggregation adds Skellam DP noise; it needs a finite epsilon.")
        self.check_round_mode()

    def check_round_mode(self) -> None:
        """fedsgd: one DP-SGD step of the Mult-VAE over every silo's users per round, under secure aggregation."""
        if self.round_mode not in ("local", "fedsgd"):
            raise ConfigError(f"round-mode must be 'local' or 'fedsgd', got {self.round_mode!r}.")
        if not 0 < self.fedsgd_sample_rate <= 1:
            raise ConfigError(f"fedsgd-sample-rate must be in (0, 1], got {self.fedsgd_sample_rate}.")
        if self.round_mode == "local":
            return
        problems = [
            (not self.secure_aggregation, "secure-aggregation = true (without it each silo would add the full noise)"),
            ("gan" in self.synthesizer_names(), 'synthesizers = "vae" (fedsgd trains the Mult-VAE only)'),
            (self.strategy != "fedavg", 'strategy = "fedavg" (the server applies Adam to the summed gradient)'),
            (self.fraction_train < 1, "fraction-train = 1 (every silo samples its users instead)"),
            (self.attack in ("scaled-update", "random-update"), "no update attack (fedsgd sends no model update)"),
            (math.isinf(self.privacy().target_epsilon), "a finite epsilon"),
        ]
        needed = [what for bad, what in problems if bad]
        if needed:
            raise ConfigError("round-mode fedsgd needs " + "; ".join(needed) + ".")

    def check_marginals(self) -> None:
        if not 0 <= self.marginal_items <= MAX_MARGINAL_ITEMS or self.marginal_items == 1:
            raise ConfigError(
                f"marginal-items must be 0 (no second-order release) or in [2, {MAX_MARGINAL_ITEMS:,}] (a dense "
                f"items x items matrix per node), got {self.marginal_items}."
            )
        if not self.synthetic_ease_l2 >= 0:
            raise ConfigError(
                f"synthetic-ease-l2 must be 0 (automatic: {SYNTHETIC_EASE_L2_PAIRS:g} when the models were fitted "
                f"to released taste structure, else {SYNTHETIC_EASE_L2_FIRST_ORDER:g}) or positive, "
                f"got {self.synthetic_ease_l2}."
            )
        if not self.cooccurrence_min_signal >= 0:
            raise ConfigError(
                f"cooccurrence-min-signal must be >= 0 (0: always release the co-occurrence), "
                f"got {self.cooccurrence_min_signal}."
            )
        self.marginal_fit()

    def check_attack(self) -> None:
        """Attacks and defences: valid settings, and no defence that would need what secure aggregation hides."""
        attack, robust = self.attacks(), self.robust()
        if robust.active and self.secure_aggregation:
            raise ConfigError(
                f"robust-aggregation {robust.kind} reads each silo's update and release, which secure-aggregation "
                "hides from the server: choose one of the two (docs/attacks.md explains the trade-off)."
            )
        if attack.kind == "inflated-counts" and self.secure_aggregation:
            raise ConfigError("attack inflated-counts is simulated on the plain statistics release only: "
                              "turn off secure-aggregation.")  # fmt: skip
        if attack.kind in ("scaled-update", "random-update") and self.secure_aggregation and self.round_mode == "local":
            raise ConfigError(f"attack {attack.kind} is simulated on plain train replies only: turn off "
                              "secure-aggregation.")  # fmt: skip
        if (attack.active or attack.targets) and not self.simulation_reference:
            raise ConfigError("attack and attack-targets are for simulations: they need simulation-reference = true.")

    def threshold_for(self, nodes: int) -> int:
        """t for a secure sum over ``nodes`` nodes: ``secagg-threshold``, or a majority (at least 2)."""
        threshold = self.secagg_threshold or max(2, nodes // 2 + 1)
        if threshold > nodes:
            raise ConfigError(f"secagg-threshold {threshold} is more than the {nodes} node(s) taking part.")
        return threshold

    def synthesizer_names(self) -> list[str]:
        return [s.strip() for s in self.synthesizers.split(",") if s.strip()]

    def recommender_names(self) -> list[str]:
        return [r.strip() for r in self.recommenders.split(",") if r.strip()]

    @classmethod
    def from_run_config(cls, run_config: dict[str, Any]) -> RunConfig:
        return from_mapping(cls, dict(run_config), where="run config")

    def privacy(self) -> PrivacyConfig:
        target = math.inf if self.epsilon >= NO_DP_EPSILON else self.epsilon
        return PrivacyConfig(
            target,
            self.delta or None,
            self.max_grad_norm,
            self.vae_share,
            self.statistics_share,
            self.statistics_clip,
            self.cooccurrence_share if self.marginal_items > 0 else 0.0,
            self.evaluation_share,
            self.evaluation_releases,
        )

    def attacks(self) -> AttackConfig:
        return AttackConfig(
            self.attack, self.attack_clients, self.attack_targets, self.attack_scale, self.attack_fake_users
        )

    def robust(self) -> RobustConfig:
        return RobustConfig(self.robust_aggregation, self.robust_malicious)

    def marginal_fit(self) -> MarginalFitConfig:
        return MarginalFitConfig(
            steps=self.marginal_fit_steps,
            temperature=self.synthesis_temperature,
            loss=self.marginal_fit_loss,
            directions=self.marginal_fit_directions,
        )

    def federated_strategy(self) -> StrategyConfig:
        return StrategyConfig(self.strategy, self.proximal_mu, self.server_learning_rate, tau=self.server_tau)

    def synthetic_ease_l2_for(self, signal_rank: int) -> float:
        """EASE's λ on this run's synthetic users: ``synthetic-ease-l2``, or when 0, by what the synthesis carries.

        ``signal_rank``: the directions of the released co-occurrence above its noise edge
        (:meth:`NoisyCooccurrence.signal_rank`; 0 when none was released). With r ≥ 2 the models were
        fitted to taste structure beyond popularity, and a smaller λ lets EASE use it; with r ≤ 1 the
        synthetic pairs beyond popularity are the generator's guesses, and a larger λ keeps EASE near
        popularity. Both values and the cut chosen on validation users (docs/results.md, "EASE's λ on
        synthetic users")."""
        if self.synthetic_ease_l2 > 0:
            return self.synthetic_ease_l2
        return SYNTHETIC_EASE_L2_PAIRS if signal_rank >= 2 else SYNTHETIC_EASE_L2_FIRST_ORDER

    def baselines(self) -> DPBaselineConfig:
        return DPBaselineConfig(self.statistics_clip, self.dp_ease_clip, self.dp_ease_items, self.ease_l2)

    def local(self) -> LocalTrainingConfig:
        vae = MultVAEConfig(
            hidden_dims=(self.vae_hidden,),
            latent_dim=self.vae_latent,
            batch_size=self.vae_batch_size,
            learning_rate=self.vae_learning_rate,
            seed=self.seed,
        )
        return LocalTrainingConfig(
            vae,
            GANConfig(batch_size=self.gan_batch_size, generator_steps=self.generator_steps),
            self.local_epochs,
            self.discriminator_steps,
            train_gan="gan" in self.synthesizer_names(),
            proximal_mu=self.federated_strategy().client_proximal_mu,
            fedsgd_rate=self.fedsgd_sample_rate if self.round_mode == "fedsgd" else 0.0,
            secure_aggregation=self.secure_aggregation,
        )

    def data(self) -> DataSettings:
        data = DataConfig(
            dataset=self.dataset,  # type: ignore[arg-type]
            data_path=Path(self.data_path) if self.data_path else None,
            generated=GeneratedDataConfig(num_users=self.gen_users, num_items=self.gen_items, seed=self.seed),
        )
        preprocess = PreprocessConfig(min_item_interactions=self.min_item_interactions)
        return DataSettings(data, preprocess, SplitConfig(audit_fraction=self.audit_fraction, seed=self.seed))

    def partitioning(self, num_clients: int) -> PartitionConfig:
        return PartitionConfig.from_spec(
            self.partition,
            num_clients=num_clients,
            seed=self.seed,
            min_train_users=max(self.vae_batch_size, self.gan_batch_size),
        )
