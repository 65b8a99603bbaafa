"""Every run setting, declared once: name, type, default, help text and check.

:class:`RunSettings` is the single list. Its fields are the run config's keys (``epsilon``,
``num_server_rounds`` ↔ ``num-server-rounds``); :class:`fedsynth.common.config.run.RunConfig` adds
the derived configs and the checks that involve several settings. From these declarations follow
the options of ``fedsynth run`` / ``train`` / ``sweep`` / ``deploy local`` (and the data options of
``fedsynth data`` / ``baseline``), the ``[tool.flwr.app.config]`` block of pyproject.toml
(``fedsynth settings --toml``) and docs/settings.md (``fedsynth settings --markdown``); tests check
that both files agree with them.

A setting without a check here is checked by the part of fedsynth that uses it (the privacy plan
checks ε, δ and the shares; the attack and robust configs their kinds), still before anything runs.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fedsynth.common.config.declare import (
    Check,
    Setting,
    at_least,
    declarations,
    in_range,
    names_from,
    one_of,
    positive,
    problems,
    refuse,
    setting,
)
from fedsynth.common.config.sections import BAD_ROWS, DATASETS, from_mapping
from fedsynth.common.federated.strategies import STRATEGIES
from fedsynth.common.privacy.releases.cooccurrence import MAX_MARGINAL_ITEMS, MIN_SIGNAL_DEFAULT
from fedsynth.common.recommenders.dp_baselines import MAX_DP_EASE_ITEMS
from fedsynth.common.recommenders.registry import DEFAULT_RECOMMENDERS, RECOMMENDER_NAMES
from fedsynth.common.robustness.attacks import ATTACKS
from fedsynth.common.robustness.rules import ROBUST_AGGREGATIONS
from fedsynth.common.synthesis.marginal_fit import AUTO_FIT_STEPS, AUTO_FIT_STRONG_SIGNAL, FIT_DIRECTIONS, FIT_LOSSES

EVALUATION_MODES = ("auto", "dp", "exact")  # federated evaluation (client/evaluation.py)
ROUND_MODES = ("local", "fedsgd")
PIPELINES = ("full", "train")
SYNTHESIZERS = ("vae", "gan")
NO_DP_EPSILON = 1e9  # the run config's ε for "no DP" (any value at least this large means ∞)
SYNTHETIC_EASE_L2_PAIRS = 1000.0  # EASE λ on synthetic users fitted to released taste structure (signal rank ≥ 2)
SYNTHETIC_EASE_L2_FIRST_ORDER = 3000.0  # ... and on synthetic users that carry popularity only
AUTO_SYNTHETIC_USERS = (2000, 30000)  # synthetic-users 0: the silos' users, clipped to this range (docs/results.md)


def _is_number_or_empty(value: str) -> bool:
    return value == "" or float(value) == float(value)  # float() raises on anything else; NaN is refused


# (title, first setting): each section runs from its first setting to the next section's.
SECTIONS = (
    ("Run", "pipeline"),
    ("Federation", "num-server-rounds"),
    ("Secure aggregation", "secure-aggregation"),
    ("Privacy", "epsilon"),
    ("DP marginals and the fit", "marginal-items"),
    ("Local training", "local-epochs"),
    ("Data", "dataset"),
    ("Cleaning and split", "implicit-threshold"),
    ("Partition", "partition"),
    ("Synthesis and evaluation", "synthesizers"),
    ("Attacks and defences (simulation only)", "attack"),
)
DATA_SECTIONS = ("Data", "Cleaning and split")  # with ``seed``: the options of fedsynth data / baseline


@dataclass(frozen=True, kw_only=True)
class RunSettings:
    """The run config's settings (kebab-case keys ↔ these snake_case fields), each declared once."""

    # Run
    pipeline: str = setting(
        "full",
        "full: the rounds, then synthesis, central training and federated evaluation | train: the rounds only "
        "(fedsynth run sets full, fedsynth train sets train).",
        one_of(PIPELINES),
        option=False,
    )
    seed: int = setting(0, "Seed of the data, split, partition, models and synthesis.")
    device: str = setting("cpu", "cpu | cuda | cuda:N: where the clients' DP-SGD and the central training run.")
    out_dir: str = setting(
        "",
        "Where the ServerApp writes its outputs; empty: runs/federation, relative to where it runs "
        "(fedsynth run / train set it from --out).",
        option=False,
    )

    # Federation
    num_server_rounds: int = setting(
        0,
        "Federated rounds of DP-SGD (round-mode fedsgd: steps); 0 (default: they did not pay at any measured "
        "size, docs/results.md): none, the releases get the models' share and the fitted generators synthesize.",
        at_least(0),
        flags=("--rounds",),
    )
    fraction_train: float = setting(
        1.0,
        "Share of the admitted nodes sampled to train each round (at least min-clients).",
        in_range(0, 1, low_open=True, high_open=False),
    )
    min_clients: int = setting(
        2,
        "Fewest nodes that must answer at the start, in the statistics release and in every round; "
        "with fewer the run fails.",
        at_least(1),
    )
    allow_degraded: bool = setting(
        False, "Leave out nodes that cannot take part and accept rounds below min-clients (instead of failing)."
    )
    reply_timeout: float = setting(
        600.0, "Seconds the server waits for a round's replies; a silent node counts as failed.", positive()
    )
    strategy: str = setting(
        "fedavg",
        "fedavg | fedprox (clients add μ/2 ‖w − w_global‖² to every local objective) | fedadam (server-side Adam).",
        one_of(STRATEGIES),
    )
    proximal_mu: float = setting(0.01, "FedProx μ (with strategy fedprox).")
    server_learning_rate: float = setting(
        0.03, "FedAdam's server learning rate η (with strategy fedadam; best of 0.01–0.3 on validation users)."
    )
    server_tau: float = setting(1e-3, "FedAdam's τ, its degree of adaptivity (with strategy fedadam).")
    round_mode: str = setting(
        "local",
        "local: DP-SGD epochs on every silo each round | fedsgd: one secure-aggregated DP-SGD step over all "
        "silos' users each round (needs secure-aggregation).",
        one_of(ROUND_MODES),
    )
    fedsgd_sample_rate: float = setting(
        0.2,
        "fedsgd: the Poisson rate at which every silo samples its users each step (best of 0.07, 0.2 on "
        "validation users).",
        in_range(0, 1, low_open=True, high_open=False),
    )

    # Secure aggregation
    secure_aggregation: bool = setting(
        False,
        "Sum the DP releases, every round's update and the DP baselines with SecAgg (distributed Skellam noise; "
        "needs a finite epsilon).",
    )
    secagg_threshold: int = setting(
        0,
        "t: the fewest nodes a secure sum can be unmasked from (0: a majority of the nodes).",
        Check("0 (a majority) or at least 2", lambda v: v == 0 or v >= 2),
    )
    secagg_neighbours: int = setting(
        0,
        "k: SecAgg+ neighbours per node, even (0: every node neighbours every other).",
        Check(
            "0 (every node a neighbour) or even (k/2 on either side of each node in a random ring, SecAgg+)",
            lambda v: v >= 0 and v % 2 == 0,
        ),
    )
    secagg_bits: int = setting(
        0,
        "b: secure sums are mod 2^b (0: the fewest bits that cannot wrap, see common/secagg/skellam.py).",
        Check("0 (automatic) or in [8, 64]", lambda v: v == 0 or 8 <= v <= 64),
    )

    # Privacy
    epsilon: float = setting(
        8.0,
        "Target ε per client over everything computed from its users (all rounds, both models, the releases); "
        f"inf: no DP (a run config carries inf as {NO_DP_EPSILON:,.0f} or more).",
    )
    delta: float = setting(0.0, "δ per client; 0: 0.1 / n for a client with n users.")
    max_grad_norm: float = setting(1.0, "DP-SGD's bound on each user's gradient (L2 norm).")
    vae_share: float = setting(0.5, "Of the ε left after the statistics, the Mult-VAE's part; the GAN gets the rest.")
    statistics_share: float = setting(
        0.8,
        "Share of ε for the DP statistics: item counts, length histogram, co-occurrence (chosen on validation "
        "users, docs/results.md).",
    )
    statistics_clip: float = setting(
        4.0, "Per-user L2 bound of the item-count vector in the statistics release (and in DP popularity)."
    )
    evaluation: str = setting(
        "auto",
        "Federated evaluation: auto (DP on deployed nodes, exact on simulated ones) | dp | exact (simulation "
        "only: a measurement, not private).",
        one_of(EVALUATION_MODES),
    )
    evaluation_share: float = setting(0.1, "Share of ε set aside for DP federated evaluation (docs/privacy.md).")
    evaluation_releases: int = setting(24, "The DP evaluations (result rows) that share it, at most, per run.")
    reproducible_noise: bool = setting(
        False,
        "Studies only: DP noise drawn from the run seed, so NOT private against the server (a deployed node "
        "refuses it).",
    )
    ledger_dir: str = setting(
        "",
        "The clients' privacy ledgers; empty: OUT/ledgers with fedsynth run / train, $FEDSYNTH_LEDGER_DIR or "
        "~/.local/state/fedsynth/ledgers with flwr run.",
    )

    # DP marginals and the fit
    marginal_items: int = setting(
        500,
        "M > 0: a DP co-occurrence over the top-M items by DP counts, to which the generator and the VAE decoder "
        "are fitted (released only above its noise, see cooccurrence-min-signal); 0: none.",
        Check(
            f"0 (no second-order release) or in [2, {MAX_MARGINAL_ITEMS:,}] (a dense items x items matrix per node)",
            lambda v: v == 0 or 2 <= v <= MAX_MARGINAL_ITEMS,
        ),
    )
    cooccurrence_share: float = setting(
        0.8, "Of statistics-share, the part for the co-occurrence release (the rest: item counts and lengths)."
    )
    cooccurrence_min_signal: float = setting(
        MIN_SIGNAL_DEFAULT,
        "Release the co-occurrence only when the DP counts predict structure above this multiple of its noise "
        "edge; else its share of ε buys a second first-order release (0: always).",
        Check(">= 0 (0: always release the co-occurrence)", lambda v: v >= 0),
    )
    marginal_fit_steps: int = setting(
        0,
        f"Adam steps fitting the generator and the VAE decoder to the DP marginals (post-processing, free in ε); "
        f"0: automatic, {AUTO_FIT_STEPS[1]:,} where the co-occurrence's predicted signal is at least "
        f"{AUTO_FIT_STRONG_SIGNAL:g}× its noise edge, else {AUTO_FIT_STEPS[0]:,}.",
        Check("0 (automatic) or at least 1", lambda v: v >= 0),
    )
    marginal_fit_loss: str = setting(
        "likelihood",
        "likelihood | relative: the co-occurrence errors relative to each direction's size.",
        one_of(FIT_LOSSES),
    )
    marginal_fit_directions: str = setting(
        "all",
        "all: fit every eigen-direction of the co-occurrence (its likelihood) | signal: only those above its "
        "noise edge.",
        one_of(FIT_DIRECTIONS),
    )

    # Local training
    local_epochs: int = setting(1, "Mult-VAE epochs per round.", at_least(1))
    discriminator_steps: int = setting(10, "GAN discriminator steps per round.", at_least(1))
    generator_steps: int = setting(
        1, "Generator steps per discriminator step (post-processing: free in ε).", at_least(1)
    )
    vae_batch_size: int = setting(64, "Expected users per DP Mult-VAE step.", at_least(1))
    gan_batch_size: int = setting(64, "Expected users per DP discriminator step.", at_least(1))
    vae_hidden: int = setting(200, "The federated Mult-VAE's hidden layer size.", at_least(1))
    vae_latent: int = setting(64, "The federated Mult-VAE's latent size.", at_least(1))
    vae_learning_rate: float = setting(1e-3, "The federated Mult-VAE's learning rate.", positive())

    # Data
    dataset: str = setting(
        "generated",
        " | ".join(DATASETS) + ": built-in generated data (shaped like MovieLens-100K), a MovieLens or Last.fm "
        "folder, or a generic CSV/Parquet file (with user-col, item-col).",
        one_of(DATASETS),
    )
    data_path: str = setting("", "MovieLens/Last.fm folder (or its ratings file), or the CSV/Parquet file.")
    variant: str = setting("", "Download MovieLens by name instead of data-path: 100k, 1m, latest-small, 20m.")
    cache_dir: str = setting("", "Download cache; empty: ~/.cache/fedsynth.")
    mirror: str = setting("", "Base URL to download from instead of files.grouplens.org (http(s):// or file://).")
    user_col: str = setting("", "CSV/Parquet: the user id column (required for them).")
    item_col: str = setting("", "CSV/Parquet: the item id column (required for them).")
    rating_col: str = setting("", "CSV/Parquet: the rating/count column (empty: implicit data).")
    time_col: str = setting("", "CSV/Parquet: the timestamp column (optional).")
    attribute_cols: str = setting("", "CSV/Parquet: comma-separated per-user attribute columns.")
    separator: str = setting(",", r"CSV field separator ('\t' or tab for a tab).")
    bad_rows: str = setting(
        "error",
        "Invalid rows (missing or non-numeric fields): error stops naming the file and line | skip drops and "
        "counts them.",
        one_of(BAD_ROWS),
    )
    gen_users: int = setting(943, "Generated data: users.")
    gen_items: int = setting(1682, "Generated data: items.")
    gen_mean_history: float = setting(112.0, "Generated data: mean ratings per user.")
    gen_clusters: int = setting(12, "Generated data: taste clusters.")

    # Cleaning and split
    implicit_threshold: str = setting(
        "",
        "Positives are values >= this; empty: the source's rule (ratings >= 4, play counts > 0, implicit data all).",
        Check("empty (the source's rule) or a number", _is_number_or_empty),
    )
    min_user_interactions: int = setting(5, "k-core: users need at least this many positives.")
    min_item_interactions: int = setting(
        1,
        "k-core: items need at least this many users (the catalogue is treated as public; e.g. 10 for "
        "Last.fm's 17,632 artists: EASE needs <= 10,000 items).",
    )
    validation_fraction: float = setting(0.1, "Share of users held out for validation.")
    test_fraction: float = setting(0.1, "Share of users held out for testing.")
    fold_in_fraction: float = setting(0.8, "Share of a held-out user's items shown to the model.")
    audit_fraction: float = setting(
        0.1, "Share of users reserved as never-trained non-members for the membership audit (fedsynth data: 0)."
    )

    # Partition
    partition: str = setting(
        "iid",
        "iid | dirichlet:ALPHA (over taste clusters) | dirichlet:ALPHA:ATTRIBUTE | natural:ATTRIBUTE (one "
        "client per value).",
    )
    num_clusters: int = setting(10, "Taste clusters that dirichlet:ALPHA partitions are drawn over.")

    # Synthesis and evaluation
    synthesizers: str = setting(
        "vae,gan",
        "Comma-separated, headline first: its rows are synthetic/…, the others' synthetic-<name>/….",
        names_from(SYNTHESIZERS),
    )
    synthetic_users: int = setting(
        0,
        f"Synthetic users per synthesizer (free in ε); 0: automatic, as many as the silos' users (the DP length "
        f"histogram's total), at least {AUTO_SYNTHETIC_USERS[0]:,} and at most {AUTO_SYNTHETIC_USERS[1]:,}.",
        Check("0 (automatic) or at least 1", lambda v: v >= 0),
    )
    synthesis_temperature: float = setting(
        0.5, "Sampling temperature of synthetic users' items (< 1 sharpens each user's item distribution)."
    )
    recommenders: str = setting(
        ",".join(DEFAULT_RECOMMENDERS),
        "Central recommenders, comma-separated (multvae: a central Mult-VAE per row, the slowest).",
        names_from(RECOMMENDER_NAMES),
    )
    central_vae_epochs: int = setting(20, "Epochs of the central Mult-VAE recommender.", at_least(1))
    ease_l2: float = setting(300.0, "EASE λ on the real training users (the simulation's upper bound) and in DP-EASE.")
    synthetic_ease_l2: float = setting(
        0.0,
        f"EASE λ on synthetic users; 0: automatic, {SYNTHETIC_EASE_L2_PAIRS:g} when the models were fitted to a "
        f"released co-occurrence, else {SYNTHETIC_EASE_L2_FIRST_ORDER:g}.",
        Check(
            f"0 (automatic: {SYNTHETIC_EASE_L2_PAIRS:g} when the models were fitted to released taste structure, "
            f"else {SYNTHETIC_EASE_L2_FIRST_ORDER:g}) or positive",
            lambda v: v >= 0,
        ),
    )
    simulation_reference: bool = setting(
        True, "Simulation: the server may load the data for fidelity and the real-data upper bounds."
    )
    eval_max_values: int = setting(
        50_000_000, "Recommenders larger than this (values) are not sent to the nodes for federated evaluation."
    )
    dp_baselines: bool = setting(
        True, "Simulation: DP popularity, DP-EASE and DP-ALS at the full target ε, as comparison rows."
    )
    dp_ease_items: int = setting(
        500, f"DP-EASE's item x item matrix covers the top items by DP counts (at most {MAX_DP_EASE_ITEMS:,})."
    )
    dp_ease_clip: float = setting(
        1.0, "Per-user Frobenius bound of x xᵀ in DP-EASE (1 = x / ‖x‖: best of 1–64 on validation users)."
    )
    dp_als_rank: int = setting(
        0, "DP-ALS's rank d (the dp-als row, docs/design.md); 0: automatic, √(trained items) within 8–32."
    )
    dp_als_iterations: int = setting(2, "DP-ALS's alternating iterations (3 Gaussian releases each).")
    dp_als_l2: float = setting(1.0, "DP-ALS's ridge λ on user and item factors (plus the noise's spectral edge).")
    dp_als_unobserved_weight: float = setting(0.3, "DP-ALS's weight w₀ on every unobserved (user, item) pair.")
    dp_als_min_signal: float = setting(
        8.0, "DP-ALS trains the items whose weighted DP count is at least this many noise stds (others by count)."
    )
    dp_als_items: int = setting(20_000, "DP-ALS trains at most this many items.")

    # Attacks and defences (simulation only)
    attack: str = setting("none", "Simulated malicious silos: " + " | ".join(ATTACKS) + " (docs/attacks.md).")
    attack_clients: int = setting(1, "How many silos cheat (partition ids 0 … N-1).")
    attack_targets: int = setting(
        0, "Target items (unpopular, from the seed) measured in metrics.json -> attack, promoted by targeted attacks."
    )
    attack_scale: float = setting(
        1000.0, "Update attacks: the factor on the update (scaled-update) or the random update's norm ratio."
    )
    attack_fake_users: float = setting(2.0, "target-items: fake users as a share of the silo's users.")
    robust_aggregation: str = setting(
        "none", " | ".join(ROBUST_AGGREGATIONS) + " (with secure-aggregation: norm-bound only, round-mode local)."
    )
    robust_malicious: int = setting(1, "f: the malicious silos the robust rule must withstand.")


@functools.cache
def run_settings() -> tuple[Setting, ...]:
    """Every run setting, in declaration order."""
    return declarations(RunSettings, SECTIONS)


def check_values(values: Mapping[str, Any], where: str, names: Mapping[str, str] | None = None) -> None:
    """Refuse unknown keys, wrong types and values that fail their setting's own check, naming ``where``.

    ``values``: some settings by key (kebab- or snake_case). ``names``: what to call each key in the messages
    (``{"num-server-rounds": "--rounds"}``, for options); without it they name the key after ``where``
    (``--config run.toml: dataset must be …``). Every problem is listed at once.
    """
    typed = from_mapping(RunSettings, dict(values), where)
    given = {key.replace("_", "-") for key in values}
    called = names or {}
    found = problems(
        (s, getattr(typed, s.field), called.get(s.name, s.name)) for s in run_settings() if s.name in given
    )
    refuse(found, where if names is None else "")


def by_name(name: str) -> Setting | None:
    """The setting called ``name``: its key (kebab- or snake_case) or one of its flags (``rounds``)."""
    wanted = name.removeprefix("--").replace("_", "-")
    for s in run_settings():
        if wanted == s.name or f"--{wanted}" in s.flags:
            return s
    return None
