"""The federation's settings, built once from Flower's run config (``[tool.flwr.app.config]``).

The settings themselves (keys, types, defaults, help, each one's check) are declared once in
:mod:`fedsynth.common.config.settings`; :class:`RunConfig` adds the configs derived from them and the
checks between settings. Keys are kebab-case in the run config; unknown keys are errors.
``epsilon = inf`` (carried as :data:`NO_DP_EPSILON`, since Flower's run config has no ∞) turns DP off;
``delta = 0`` means 0.1 / n per client.
"""

from __future__ import annotations

import codecs
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedsynth.common.config.declare import problems, refuse
from fedsynth.common.config.sections import (
    DataConfig,
    GeneratedDataConfig,
    PartitionConfig,
    PreprocessConfig,
    SplitConfig,
    from_mapping,
)
from fedsynth.common.config.settings import (
    AUTO_SYNTHETIC_USERS,
    EVALUATION_MODES,
    NO_DP_EPSILON,
    SYNTHETIC_EASE_L2_FIRST_ORDER,
    SYNTHETIC_EASE_L2_PAIRS,
    RunSettings,
    run_settings,
)
from fedsynth.common.data.prepare import DataSettings
from fedsynth.common.errors import ConfigError
from fedsynth.common.federated.strategies import StrategyConfig
from fedsynth.common.models.gan import GANConfig
from fedsynth.common.models.vae import MultVAEConfig
from fedsynth.common.privacy.dpsgd.training import PrivacyConfig
from fedsynth.common.recommenders.dp_als import DPALSConfig
from fedsynth.common.recommenders.dp_baselines import DPBaselineConfig
from fedsynth.common.robustness.attacks import AttackConfig
from fedsynth.common.robustness.rules import RobustConfig
from fedsynth.common.runtime.device import parse_device
from fedsynth.common.synthesis.marginal_fit import MarginalFitConfig, auto_fit_steps

if TYPE_CHECKING:
    from fedsynth.common.synthesis.sampling import SynthesisConfig

__all__ = [
    "EVALUATION_MODES",
    "NO_DP_EPSILON",
    "SYNTHETIC_EASE_L2_FIRST_ORDER",
    "SYNTHETIC_EASE_L2_PAIRS",
    "LocalTrainingConfig",
    "RunConfig",
    "decode_separator",
    "epsilon_setting",
]


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


@dataclass(frozen=True, kw_only=True)
class RunConfig(RunSettings):
    """The run config as Flower passes it, validated: the settings of :class:`RunSettings` (declared once, in
    common/config/settings.py), the configs derived from them, and the checks that involve several settings."""

    def __post_init__(self) -> None:
        refuse(problems((s, getattr(self, s.field), s.name) for s in run_settings()))  # each setting's own check
        self.check_evaluation()
        self.privacy()  # validates ε, δ, shares and clips before anything starts
        self.data()  # validates the dataset name and its required options
        self.baselines()  # validates the DP baselines' settings
        self.dp_als()  # and DP-ALS's
        self.federated_strategy()  # validates the strategy's settings
        self.local()  # validates the models' sizes and rates
        self.check_secure_aggregation()
        self.marginal_fit()
        self.check_attack()
        parse_device(self.device)

    def evaluation_rows(self) -> int:
        """How many result rows the server evaluates federatedly: synthetic sets (each synthesizer, and the
        marginal-fitted models when marginal-items > 0: both with the rounds on, with the rounds off those that
        are not synthesizers) × recommenders, the real-data rows (simulation reference), fedvae and the prior,
        the DP baselines (simulation, private runs)."""
        recommenders = len(self.recommender_names())
        names = self.synthesizer_names()
        fitted = 2 if self.num_server_rounds > 0 else sum(1 for name in ("vae", "gan") if name not in names)
        synthetic = len(names) + (fitted if self.marginal_items > 0 else 0)  # + the fitted starts
        reference = recommenders + (2 if self.dp_baselines and self.privacy().private else 0)
        return synthetic * recommenders + 2 + (reference if self.simulation_reference else 0)

    def check_evaluation(self) -> None:
        """Where the evaluation may be DP: enough planned releases for every row."""
        may_be_dp = self.evaluation == "dp" or (self.evaluation == "auto" and not self.simulation_reference)
        if may_be_dp and self.pipeline == "full" and self.evaluation_rows() > self.evaluation_releases:
            raise ConfigError(
                f"evaluation-releases {self.evaluation_releases} is below the {self.evaluation_rows()} rows this run "
                "evaluates under DP; raise it (each gets a smaller part of evaluation-share) or evaluate fewer "
                "recommenders (--recommenders)."
            )

    def check_secure_aggregation(self) -> None:
        if self.secure_aggregation and math.isinf(self.privacy().target_epsilon):
            raise ConfigError("secure-aggregation adds Skellam DP noise; it needs a finite epsilon.")
        self.check_round_mode()

    def check_round_mode(self) -> None:
        """fedsgd: one DP-SGD step of the Mult-VAE over every silo's users per round, under secure aggregation."""
        if self.round_mode == "local":
            return
        requirements = [
            (not self.secure_aggregation, "secure-aggregation = true (without it each silo would add the full noise)"),
            ("gan" in self.synthesizer_names(), 'synthesizers = "vae" (fedsgd trains the Mult-VAE only)'),
            (self.strategy != "fedavg", 'strategy = "fedavg" (the server applies Adam to the summed gradient)'),
            (self.fraction_train < 1, "fraction-train = 1 (every silo samples its users instead)"),
            (self.attack in ("scaled-update", "random-update"), "no update attack (fedsgd sends no model update)"),
            (math.isinf(self.privacy().target_epsilon), "a finite epsilon"),
            (self.num_server_rounds == 0, "num-server-rounds of at least 1 (its FedSGD steps)"),
        ]
        needed = [what for unmet, what in requirements if unmet]
        if needed:
            raise ConfigError("round-mode fedsgd needs " + "; ".join(needed) + ".")

    def check_attack(self) -> None:
        """Attacks and defences: valid settings, and no defence that would need what secure aggregation hides."""
        attack, robust = self.attacks(), self.robust()
        if robust.active and self.secure_aggregation and (robust.kind != "norm-bound" or self.round_mode != "local"):
            raise ConfigError(
                f"robust-aggregation {robust.kind} reads each silo's update and release, which secure-aggregation "
                "hides from the server: choose one of the two, or norm-bound (with round-mode local: the silos "
                "bound their own updates and the server checks the sum; docs/attacks.md)."
            )
        if attack.kind in ("scaled-update", "random-update") and self.num_server_rounds == 0:
            raise ConfigError(f"attack {attack.kind} tampers with model updates, and num-server-rounds 0 trains none: "
                              "set num-server-rounds (--rounds) to at least 1.")  # fmt: skip
        if attack.kind == "inflated-counts" and self.secure_aggregation:
            raise ConfigError("attack inflated-counts is simulated on the plain statistics release only: "
                              "turn off secure-aggregation.")  # fmt: skip
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

    def marginal_fit(self, signal_ratio: float = 0.0) -> MarginalFitConfig:
        """The server's fit to a co-occurrence of ``signal_ratio`` (``cooccurrence.signal_ratio``, post-processing):
        its steps are ``marginal-fit-steps``, or when 0, :func:`auto_fit_steps` of the ratio."""
        return MarginalFitConfig(
            steps=self.marginal_fit_steps or auto_fit_steps(signal_ratio),
            temperature=self.synthesis_temperature,
            loss=self.marginal_fit_loss,
            directions=self.marginal_fit_directions,
        )

    def federated_strategy(self) -> StrategyConfig:
        return StrategyConfig(self.strategy, self.proximal_mu, self.server_learning_rate, tau=self.server_tau)

    def synthesis(self, real_users: float) -> SynthesisConfig:
        """How many synthetic users (:meth:`synthetic_users_for`) and at what temperature."""
        from fedsynth.common.synthesis.sampling import SynthesisConfig  # imports the models, which import this

        return SynthesisConfig(self.synthetic_users_for(real_users), self.synthesis_temperature)

    def synthetic_users_for(self, real_users: float) -> int:
        """Synthetic users per synthesizer: ``synthetic-users``, or when 0, ``real_users`` (the silos' users as
        the DP length histogram counts them: post-processing, public) clipped to :data:`AUTO_SYNTHETIC_USERS`.
        Fitted decoders need many synthetic users for their pair structure to show in EASE's Gram: at 10⁴
        users per silo 30,000 beat 2,000 by 0.016 on validation users (docs/results.md)."""
        if self.synthetic_users > 0:
            return self.synthetic_users
        low, high = AUTO_SYNTHETIC_USERS
        return int(min(max(round(real_users), low), high))

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

    def dp_als(self) -> DPALSConfig:
        return DPALSConfig(
            self.dp_als_rank,
            self.dp_als_iterations,
            self.dp_als_l2,
            self.dp_als_unobserved_weight,
            self.dp_als_items,
            self.dp_als_min_signal,
            self.statistics_clip,
        )

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
        """The data settings (empty strings: not given)."""
        data = DataConfig(
            dataset=self.dataset,  # type: ignore[arg-type]  # checked against DATASETS first
            data_path=Path(self.data_path) if self.data_path else None,
            variant=self.variant or None,
            cache_dir=Path(self.cache_dir) if self.cache_dir else None,
            mirror=self.mirror or None,
            user_col=self.user_col or None,
            item_col=self.item_col or None,
            rating_col=self.rating_col or None,
            time_col=self.time_col or None,
            attribute_cols=tuple(c.strip() for c in self.attribute_cols.split(",") if c.strip()),
            separator=decode_separator(self.separator),
            bad_rows=self.bad_rows,  # type: ignore[arg-type]  # checked against BAD_ROWS first
            generated=GeneratedDataConfig(
                num_users=self.gen_users,
                num_items=self.gen_items,
                mean_history=self.gen_mean_history,
                num_clusters=self.gen_clusters,
                seed=self.seed,
            ),
        )
        preprocess = PreprocessConfig(
            implicit_threshold=float(self.implicit_threshold) if self.implicit_threshold else None,
            min_user_interactions=self.min_user_interactions,
            min_item_interactions=self.min_item_interactions,
        )
        split = SplitConfig(
            validation_fraction=self.validation_fraction,
            test_fraction=self.test_fraction,
            fold_in_fraction=self.fold_in_fraction,
            audit_fraction=self.audit_fraction,
            seed=self.seed,
        )
        return DataSettings(data, preprocess, split)

    def partitioning(self, num_clients: int) -> PartitionConfig:
        return PartitionConfig.from_spec(
            self.partition,
            num_clients=num_clients,
            seed=self.seed,
            num_clusters=self.num_clusters,
            min_train_users=max(self.vae_batch_size, self.gan_batch_size),
        )


def decode_separator(text: str) -> str:
    r"""The CSV separator a person typed: ``\t`` (two characters, as from a command line) and ``tab`` are a tab."""
    if text.lower() == "tab":
        return "\t"
    return codecs.decode(text, "unicode_escape") if "\\" in text else text
