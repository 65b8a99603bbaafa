"""After the last round: synthesis → central recommenders → federated evaluation → metrics.json and report.

Rows of the results (all scored by federated evaluation on the same real held-out users):

* ``synthetic/<rec>``: trained on the headline synthesizer's data only (``synthetic-<name>/<rec>``
  for the others); ``synthetic-fitted-<name>/<rec>`` on data from a model as fitted to the DP marginals,
  before the federated DP-SGD rounds refined it (``marginal-items`` > 0; with the rounds off only for a
  model that is not a synthesizer, whose own rows are the fitted start: :func:`fitted_labels`);
* ``fedvae``: the federated DP Mult-VAE used directly as the recommender;
* ``fedsynth-prior``: items ranked by the pipeline's own DP item counts (its popularity prior,
  a share of the same ε);
* simulation only, the simple DP baselines (:mod:`fedsynth.server.baselines`), each an alternative that
  spends the full target ε per client on its own: ``dp-popularity``, ``dp-ease`` and ``dp-als``;
* simulation only, labelled non-private: ``popularity`` (MostPopular) and ``real/<rec>``, trained
  on the real training users, which the server may load only because it is a simulation.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from fedsynth.common.config.run import RunConfig
from fedsynth.common.config.sections import EvalConfig
from fedsynth.common.data.partition import partition_users
from fedsynth.common.data.prepare import PreparedData, prepare
from fedsynth.common.errors import FedsynthError
from fedsynth.common.evaluation.fidelity import fidelity_report
from fedsynth.common.evaluation.report import write_report
from fedsynth.common.federated import wire
from fedsynth.common.models.vae import MultVAEConfig
from fedsynth.common.privacy.releases.cooccurrence import signal_rank_of
from fedsynth.common.recommenders import MostPopular, MultVAERecommender, Recommender
from fedsynth.common.recommenders.registry import RecommenderSettings
from fedsynth.common.recommenders.registry import build_recommender as build_named
from fedsynth.common.recommenders.transfer import known_size, num_values, pack
from fedsynth.common.robustness.attacks import UPDATE_ATTACKS, target_items, target_share
from fedsynth.common.runtime.files import to_plain, write_atomic, write_json_atomic
from fedsynth.common.runtime.seeding import mechanism_seed
from fedsynth.common.synthesis.sampling import synthesize
from fedsynth.server.admission import identity_fields
from fedsynth.server.aggregation import client_participation
from fedsynth.server.baselines import baseline_recommenders
from fedsynth.server.evaluation import evaluation_request, federated_evaluate
from fedsynth.server.federation import TrainingResult, fit_settings, out_directory
from fedsynth.server.privacy_summary import privacy_summary, with_evaluation

log = logging.getLogger("flwr")

EVAL = EvalConfig(ks=(10, 20, 50, 100))
HEADLINE = "ndcg@10"


def build_recommender(name: str, config: RunConfig, ease_l2: float) -> Recommender:
    """A fresh recommender; EASE gets ``ease_l2`` (``ease-l2`` on real data, on synthetic data
    :meth:`RunConfig.synthetic_ease_l2_for`)."""
    vae = MultVAEConfig(epochs=config.central_vae_epochs, seed=config.seed)
    return build_named(name, RecommenderSettings(ease_l2=ease_l2, vae=vae, device=config.device))


def synthetic_label(index: int, synthesizer: str) -> str:
    return "synthetic" if index == 0 else f"synthetic-{synthesizer}"


def real_label(recommender: str) -> str:
    """The non-private upper-bound row of ``recommender`` (MostPopular's is plain ``popularity``)."""
    return "popularity" if recommender == "popularity" else f"real/{recommender}"


def write_synthetic(path: Path, matrix: sp.csr_matrix, item_ids: list[str]) -> None:
    """``user``, ``item`` (original ids) Parquet, written to a temp file and renamed."""
    coo = matrix.tocoo()
    items = pd.Series(np.asarray(item_ids, dtype=object)[coo.col])
    numeric = pd.to_numeric(items, errors="coerce")
    frame = pd.DataFrame({"user": coo.row.astype(np.int64), "item": numeric if numeric.notna().all() else items})
    frame = frame.sort_values(["user", "item"], kind="stable").reset_index(drop=True)
    write_atomic(path, lambda tmp: frame.to_parquet(tmp, index=False))


def marginals_summary(config: RunConfig, training: TrainingResult) -> dict[str, Any]:
    """What second-order statistics were released and what the models were fitted to before the rounds."""
    if config.marginal_items == 0:
        return {"marginal_items": 0, "fitted": False, "synthetic_ease_l2": config.synthetic_ease_l2_for(0)}
    released, rank = training.cooccurrence, signal_rank_of(training.cooccurrence)
    fitted_rows = fitted_labels(config) if released is not None else []
    return {
        "marginal_items": config.marginal_items,
        "cooccurrence_share_of_statistics": config.cooccurrence_share,
        "cooccurrence_min_signal": config.cooccurrence_min_signal,
        "released": released is not None,
        # below the noise (predicted from the DP counts): its budget released the first-order statistics again
        "first_order_instead": training.first_order_instead,
        "noise_std_of_sum": released.noise_std if released is not None else None,
        "fitted": released is not None,
        # the steps the fit ran (marginal-fit-steps, or automatic from the release's signal ratio)
        "fit_steps": fit_settings(config, training.statistics, released).steps if released is not None else 0,
        "fit_steps_automatic": config.marginal_fit_steps == 0,
        "fit_loss": config.marginal_fit_loss,
        "fit_directions": config.marginal_fit_directions,
        "signal_rank": rank,  # the release's directions above its noise edge; the first is popularity's
        "synthetic_ease_l2": config.synthetic_ease_l2_for(rank),
        "fitted_row": fitted_rows[0] if fitted_rows else None,
        "fitted_rows": fitted_rows,
    }


def simulated_baselines(
    reference: PreparedData, config: RunConfig, num_clients: int
) -> tuple[dict[str, Recommender], dict[str, Any]]:
    """The DP baselines from the same client partitions the simulated clients hold (simulation only)."""
    clients = partition_users(reference.interactions, reference.split, config.partitioning(num_clients))
    rows = [reference.interactions.matrix[c.train_users] for c in clients]
    privacy = config.privacy()
    deltas = [privacy.delta_for(r.shape[0]) for r in rows]
    # their noise: fresh OS entropy, or the run seed under reproducible-noise (each release its own stream)
    seed = mechanism_seed("dp-baselines", config.seed if config.reproducible_noise else None)
    return baseline_recommenders(rows, privacy.target_epsilon, deltas, config, seed)


def load_reference(config: RunConfig, num_items: int) -> PreparedData | None:
    """Simulation only: the real data, for fidelity, the upper bounds and the DP baselines."""
    reference = prepare(config.data()) if config.simulation_reference else None
    if reference is not None and reference.interactions.num_items != num_items:
        raise FedsynthError(
            "the reference data's catalogue differs from the clients'; run with simulation-reference=false."
        )
    return reference


def fitted_model_names(config: RunConfig) -> list[str]:
    """The models fitted to the DP marginals, the headline synthesizer first (both are always fitted)."""
    headline = config.synthesizer_names()[0]
    return [headline] + [name for name in ("vae", "gan") if name != headline]


def fitted_labels(config: RunConfig) -> list[str]:
    """Where each model's marginal-fitted start is scored, headline first (:func:`fitted_model_names`): with the
    rounds off a synthesizer's own row (``synthetic``, ``synthetic-gan``: its data come from the fitted start,
    so a second row would repeat it), else ``synthetic-fitted-<name>``."""
    names = config.synthesizer_names()
    return [
        synthetic_label(names.index(name), name)
        if config.num_server_rounds == 0 and name in names
        else f"synthetic-fitted-{name}"
        for name in fitted_model_names(config)
    ]


def synthesize_all(config: RunConfig, training: TrainingResult, out: Path) -> dict[str, sp.csr_matrix]:
    """Synthetic users from each synthesizer (headline first), then from both models' marginal-fitted start
    (``synthetic-fitted-<name>``, headline first, before the rounds refined it: the generator is fitted even
    when the GAN is not trained; with the rounds off only for a model that is not a synthesizer,
    :func:`fitted_labels`), each written to OUT/<label>.parquet."""
    num_items = len(training.item_ids)
    synthesis = config.synthesis(training.statistics.users())
    lengths = training.statistics.length_sampler(num_items)
    names = config.synthesizer_names()
    sources = [(synthetic_label(i, name), training.bundle, name) for i, name in enumerate(names)]
    if training.fitted is not None:  # the fitted starts not already scored as a synthesizer's row
        fitted = zip(fitted_labels(config), fitted_model_names(config), strict=True)
        sources += [(label, training.fitted, name) for label, name in fitted if label.startswith("synthetic-fitted")]
    synthetic: dict[str, sp.csr_matrix] = {}
    for label, bundle, name in sources:
        log.info("fedsynth stage: synthesis (%s, %d users from the %s)", label, synthesis.num_users, name)
        synthetic[label] = synthesize(bundle, name, lengths, synthesis, config.seed)
        write_synthetic(out / f"{label}.parquet", synthetic[label], training.item_ids)
    return synthetic


@dataclass(frozen=True)
class Candidate:
    """One row of the results: its label and how to fit it, called once, right before it is evaluated."""

    label: str
    fit: Callable[[], Recommender]
    central: bool = True  # trained centrally here (logged and timed as such), not already fitted
    size: int | None = None  # values its evaluation request will carry, where known before fitting


def fitted(label: str, recommender: Recommender) -> Candidate:
    """A candidate that is already fitted (the federated models, the DP baselines)."""
    return Candidate(label, lambda: recommender, central=False)


def train_candidates(
    config: RunConfig,
    training: TrainingResult,
    synthetic: dict[str, sp.csr_matrix],
    reference: PreparedData | None,
    num_nodes: int,
) -> tuple[list[Candidate], dict[str, Any]]:
    """Every row to evaluate: recommenders on synthetic (and, simulation only, real) data, fedvae, the prior,
    and (simulation, private runs) the DP baselines; with the baselines' summary.

    The central recommenders are fitted lazily, by :func:`evaluate_all`, one at a time: at 20,000
    items each EASE row is a 1.6 GB matrix, and only the one being evaluated is kept."""
    synthetic_l2 = config.synthetic_ease_l2_for(signal_rank_of(training.cooccurrence))
    to_train = [
        (f"{label}/{name}", name, m, synthetic_l2)
        for label, m in synthetic.items()
        for name in config.recommender_names()
    ]
    if reference is not None:
        to_train += [
            (real_label(name), name, reference.split.train, config.ease_l2) for name in config.recommender_names()
        ]
    candidates = [
        Candidate(label, partial(fit_central, name, config, l2, matrix), size=known_size(name, matrix.shape[1]))
        for label, name, matrix, l2 in to_train
    ]
    candidates.append(fitted("fedvae", MultVAERecommender.from_model(training.bundle.vae, config.device)))
    candidates.append(fitted("fedsynth-prior", MostPopular.from_counts(training.statistics.item_counts)))
    baselines_summary: dict[str, Any] = {}
    if reference is not None and config.dp_baselines and config.privacy().private:
        step = time.perf_counter()
        baselines, baselines_summary = simulated_baselines(reference, config, num_nodes)
        candidates += [fitted(label, recommender) for label, recommender in baselines.items()]
        log.info("fedsynth stage: DP baselines (dp-popularity, dp-ease, dp-als) (%.1f s)", time.perf_counter() - step)
    return candidates, baselines_summary


def fit_central(name: str, config: RunConfig, ease_l2: float, matrix: sp.csr_matrix) -> Recommender:
    """Recommender ``name`` (:func:`build_recommender`, EASE with ``ease_l2``) fitted on ``matrix`` (users × items)."""
    return build_recommender(name, config, ease_l2).fit(matrix)


def evaluate_all(
    grid: Any,
    config: RunConfig,
    candidates: list[Candidate],
    nodes: list[int],
    num_items: int,
    targets: np.ndarray | None = None,
) -> tuple[dict[str, dict[str, float]], dict[str, Any], dict[str, float]]:
    """Fit each candidate, evaluate it federatedly if it is small enough to send, then drop it.

    A candidate whose size is known before fitting (EASE: M² values) and above ``eval-max-values``
    is skipped without being fitted (``fedsynth run`` refuses that configuration before it starts).

    Returns the results, who evaluated what, and the seconds spent fitting (central training)
    and evaluating."""
    results: dict[str, dict[str, float]] = {}
    evaluation: dict[str, Any] = {"users": "each client's real held-out test users (fold-in 80% → target 20%)"}
    identity = identity_fields(out_directory(config))  # a DP-evaluating node charges this run's ledger entries
    skipped: dict[str, str] = {}
    seconds = {"central_training": 0.0, "evaluation": 0.0}
    settings = EvalConfig(ks=EVAL.ks, targets=tuple(int(i) for i in targets) if targets is not None else ())
    for candidate in candidates:
        label, step = candidate.label, time.perf_counter()
        if candidate.size is not None and candidate.size > config.eval_max_values:
            skipped[label] = f"{candidate.size:,} values, above eval-max-values {config.eval_max_values:,}: not fitted"
            log.info("fedsynth stage: %s would be too large to send for evaluation (%s)", label, skipped[label])
            continue
        recommender = candidate.fit()
        if candidate.central:
            seconds["central_training"] += time.perf_counter() - step
            log.info("fedsynth stage: central training of %s (%.1f s)", label, time.perf_counter() - step)
        size = num_values(pack(recommender)[1])
        if size > config.eval_max_values:
            skipped[label] = f"{size:,} values, above eval-max-values {config.eval_max_values:,}: not sent"
            log.info("fedsynth stage: %s is too large to send for evaluation (%s)", label, skipped[label])
            del recommender
            continue
        log.info("fedsynth stage: federated evaluation of %s", label)
        step = time.perf_counter()
        run: dict[str, wire.ConfigValue] = {**identity, wire.PLANNED_ROUNDS: config.num_server_rounds}
        run[wire.EVALUATION_LABEL] = label
        content = evaluation_request(recommender, settings, run)  # the arrays, serialized (a copy)
        del recommender  # so only that copy is held while the clients evaluate, and before the next fit
        results[label], who = federated_evaluate(grid, nodes, content, settings, num_items, config.reply_timeout)
        del content
        seconds["evaluation"] += time.perf_counter() - step
        evaluation[label] = who
    evaluation["skipped"] = skipped
    return results, evaluation, seconds


def utility_retention(config: RunConfig, results: dict[str, dict[str, float]]) -> dict[str, Any]:
    """NDCG@10 of ``synthetic/<rec>`` over ``real/<rec>`` (or MostPopular's), per recommender with both rows,
    and under ``by_row`` the same ratio for every synthetic source (``synthetic-gan/<rec>``, the fitted
    generators' rows …): whether the synthetic data serves every downstream model, not only EASE."""
    retention: dict[str, Any] = {}
    by_row: dict[str, float] = {}
    for name in config.recommender_names():
        real_row = real_label(name)
        if real_row not in results or results[real_row][HEADLINE] <= 0:
            continue
        for row, metrics in results.items():
            source, _, recommender = row.partition("/")
            if recommender == name and source.startswith("synthetic"):
                by_row[row] = metrics[HEADLINE] / results[real_row][HEADLINE]
        if f"synthetic/{name}" in by_row:
            retention[name] = by_row[f"synthetic/{name}"]
    return {**retention, "by_row": by_row} if by_row else retention


def attack_targets(config: RunConfig, reference: PreparedData | None) -> np.ndarray | None:
    """Simulation with ``attack-targets``: the target items the malicious silos promote (the same draw)."""
    if not config.attacks().targets:
        return None
    assert reference is not None, "the run config requires simulation-reference for attack-targets"
    return target_items(reference.interactions.matrix, config.attacks().targets, config.seed)


def attack_summary(
    config: RunConfig,
    targets: np.ndarray,
    synthetic: dict[str, sp.csr_matrix],
    results: dict[str, dict[str, float]],
    item_ids: list[str],
    real: sp.csr_matrix,
) -> dict[str, Any]:
    """metrics.json → attack: what was simulated, the defence, and how far the target items were promoted."""
    attack, headline = config.attacks(), f"synthetic/{config.recommender_names()[0]}"
    ease = "synthetic/ease" if "synthetic/ease" in results else headline
    return {
        "note": "SIMULATED malicious silos (partition ids below `clients`); the others are honest",
        "kind": attack.kind,
        "clients": attack.clients if attack.active else 0,
        "scale": attack.scale if attack.kind in UPDATE_ATTACKS else None,
        "fake_users_share": attack.fake_users if attack.kind == "target-items" else None,
        "robust_aggregation": config.robust_aggregation,
        "robust_malicious": config.robust_malicious if config.robust().active else None,
        "target_items": [item_ids[i] for i in targets],
        "target_share_synthetic": target_share(synthetic["synthetic"], targets),
        "target_share_real_training": target_share(real, targets),
        "target_hit_rate@10": results.get(ease, {}).get("target-hitrate@10"),
        "target_hit_rate_row": ease,
    }


def run_pipeline(grid: Any, config: RunConfig, training: TrainingResult) -> dict[str, Any]:
    """Synthesize, train centrally, evaluate federatedly; writes synthetic data, metrics.json and report.md."""
    out = out_directory(config)
    clock = time.perf_counter()
    seconds: dict[str, float] = {}
    num_items = len(training.item_ids)
    reference = load_reference(config, num_items)
    synthetic = synthesize_all(config, training, out)
    seconds["synthesis"] = time.perf_counter() - clock
    nodes = list(grid.get_node_ids())
    step = time.perf_counter()
    candidates, baselines_summary = train_candidates(config, training, synthetic, reference, len(nodes))
    baselines_seconds = time.perf_counter() - step  # the DP baselines are fitted there, the rest lazily
    targets = attack_targets(config, reference)
    results, evaluation, stage_seconds = evaluate_all(grid, config, candidates, nodes, num_items, targets)
    seconds["central_training"] = baselines_seconds + stage_seconds["central_training"]
    seconds["evaluation"] = stage_seconds["evaluation"]
    fidelity: dict[str, Any] = {}
    if reference is not None:
        held_out = reference.split.test.fold_in + reference.split.test.target
        fidelity = {label: fidelity_report(reference.split.train, m, held_out) for label, m in synthetic.items()}
        fidelity["note"] = "simulation only: computed by the server from the real training users"
    synthesis = config.synthesis(training.statistics.users())
    metrics = {
        "privacy": with_evaluation(privacy_summary(training, config), evaluation, config),
        "baselines": baselines_summary,
        "clients": client_participation(training.logs, nodes),
        "recommenders": results,
        "utility_retention": {"metric": HEADLINE, **utility_retention(config, results)},
        "fidelity": fidelity,
        "evaluation": evaluation,
        "synthesis": {"synthesizers": list(synthetic), **to_plain(synthesis.__dict__)},
        "marginals": marginals_summary(config, training),
        **(
            {"attack": attack_summary(config, targets, synthetic, results, training.item_ids, reference.split.train)}
            if targets is not None and reference is not None
            else {}
        ),
        "rounds": len(training.rounds),
        "seconds": seconds,
    }
    write_outputs(out, config, metrics, training, synthetic, reference)
    return metrics


def write_outputs(
    out: Path,
    config: RunConfig,
    metrics: dict[str, Any],
    training: TrainingResult,
    synthetic: dict[str, sp.csr_matrix],
    reference: PreparedData | None,
) -> None:
    """synthetic_meta.json, report.md and metrics.json (last: its presence marks a complete run)."""
    meta = {
        "synthesizer": config.synthesizer_names()[0],
        "files": {label: f"{label}.parquet" for label in synthetic},
        "privacy": metrics["privacy"],
        "rounds": metrics["rounds"],
        "seed": config.seed,
        "config": to_plain(config.__dict__),
    }
    write_json_atomic(out / "synthetic_meta.json", meta)
    write_report(out, metrics, training.logs, synthetic, reference.split.train if reference else None)
    write_json_atomic(out / "metrics.json", metrics)
    log.info("fedsynth stage: done, wrote %s", out / "metrics.json")
