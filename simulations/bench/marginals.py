"""Synthesis fitted to DP marginals, stage by stage, against the simple DP baselines (issue: second order).

    python -m fedsynth.simulations.bench.marginals --dataset movielens --data-path ../shared/data/ml-latest-small \\
        --epsilons 1,2,4,8 --seeds 0,1,2 [--secure-aggregation] [--held-out test] \\
        [--set marginal-items=0,500] [--fit-only]

An in-process federation over the clients' own code path (no Flower transport): each client
calibrates its plan (``plan_privacy``) and makes the pipeline's two releases, first-order
statistics, then the co-occurrence over the top ``marginal-items`` by the summed counts, with
its own Gaussian noise, or (``--secure-aggregation``) rounded, with its Skellam share, summed by
SecAgg in process (``fedsynth.common.recommenders.dp_baselines_secure.secure_release``), each node's variance
calibrated by ``fedsynth.client.secure.central_release_variance`` as its ClientApp does. The server then
fits the generator and VAE decoder exactly as ``fedsynth.server.federation.fitted_bundle`` does, and the
rounds refine them (``fedsynth.simulations.bench.levers.federated_rounds``).

Rows (NDCG@10 on the ``--held-out`` users: ``validation`` for choosing settings, ``test`` to
report): ``synthetic-fitted-gan/ease`` and ``synthetic-fitted-vae/ease`` (the fitted start alone),
``synthetic/ease`` and ``synthetic-gan/ease`` (after the DP-SGD rounds; the GAN's row only when it
is a synthesizer, as in the pipeline), the same data under MostPopular (``…/popularity``),
``fedsynth-prior``, the DP baselines at the full ε under the same aggregation, ``popularity`` and
``real/ease`` (non-private); ``pairs-corr``, the fitted VAE's synthetic pair co-occurrence
correlation with the real training users (``fedsynth.common.evaluation.fidelity``); and the issue's comparisons:
``best-synthetic`` (the best ``synthetic*`` row), ``best-dp-baseline``, their ``gap``, and
``retention`` (the best ``synthetic*/ease`` ÷ ``real/ease``).
"""

from __future__ import annotations

import argparse
import copy
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
from flwr.app import ConfigRecord

from fedsynth.client.secure import central_release_variance, secure_release_of
from fedsynth.common.config.run import RunConfig
from fedsynth.common.config.sections import EvalConfig
from fedsynth.common.data.partition import partition_users
from fedsynth.common.data.prepare import prepare
from fedsynth.common.evaluation.fidelity import cooccurrence_correlation
from fedsynth.common.evaluation.scoring import evaluate
from fedsynth.common.federated import wire
from fedsynth.common.privacy.ledger import PrivacyLedger
from fedsynth.common.privacy.plan import PrivacyPlan, plan_privacy
from fedsynth.common.privacy.releases.cooccurrence import NoisyCooccurrence, from_upper, marginal_items, signal_rank_of
from fedsynth.common.privacy.releases.statistics import NoisyStatistics, split_release
from fedsynth.common.recommenders import EASE, MostPopular, Recommender
from fedsynth.common.recommenders.dp_baselines_secure import secure_release
from fedsynth.common.synthesis.sampling import synthesize
from fedsynth.server.baselines import baseline_recommenders
from fedsynth.server.federation import cooccurrence_expected_to_pay, fitted_bundle
from fedsynth.simulations.bench.levers import federated_rounds, parse_settings, plain_releases

EVAL = EvalConfig(ks=(10,))


def secure_sum(rows: list[sp.csr_matrix], plans: list[PrivacyPlan], config: RunConfig, request: ConfigRecord,
               label: str) -> tuple[np.ndarray, float]:  # fmt: skip
    """One release summed by SecAgg with each node's Skellam share (variance: the largest any node needs)."""
    num_items, variances = rows[0].shape[1], []
    for plan in plans:
        ledger = PrivacyLedger(Path("unsaved"), "bench", plan.delta, config.privacy().target_epsilon, "bench")
        variances.append(central_release_variance(ledger, plan, secure_release_of(request, plan, config, num_items),
                                                  config.num_server_rounds))  # fmt: skip
    release = secure_release_of(request, plans[0], config, num_items)
    contributions = release.contributions
    assert contributions is not None  # a one-off release
    blocks = [iter([contributions(r)]) for r in rows]
    return secure_release(blocks, release.quantizer, max(variances), config.threshold_for(len(rows)), label)


def secure_releases(
    rows: list[sp.csr_matrix], plans: list[PrivacyPlan], config: RunConfig
) -> tuple[NoisyStatistics, NoisyCooccurrence | None]:
    """The same two releases under secure aggregation with distributed Skellam noise."""
    num_items = rows[0].shape[1]
    total, std = secure_sum(rows, plans, config, ConfigRecord(), "bench-statistics")
    statistics = NoisyStatistics(*split_release(total, num_items), std)
    if not config.marginal_items:
        return statistics, None
    items = marginal_items(statistics.item_counts, config.marginal_items)
    if not cooccurrence_expected_to_pay(config, statistics, items, len(rows)):  # its budget on the first order
        total, std = secure_sum(rows, plans, config, ConfigRecord({wire.FIRST_ORDER_INSTEAD: 1}), "bench-again")
        return statistics.combined(NoisyStatistics(*split_release(total, num_items), std)), None
    request = ConfigRecord({wire.MARGINAL_ITEMS: [int(i) for i in items]})
    total, std = secure_sum(rows, plans, config, request, "bench-cooccurrence")
    return statistics, NoisyCooccurrence(items, from_upper(total, len(items)), std)


def score(config: RunConfig, seed: int, num_clients: int, held_out_name: str, rounds: bool = True) -> dict[str, float]:
    """One (config, seed): releases, fit, rounds (``rounds`` False: skipped, their budget still planned, so the
    fitted rows are the pipeline's); NDCG@10 of every row on the held-out users."""
    prepared = prepare(config.data())
    clients = partition_users(prepared.interactions, prepared.split, config.partitioning(num_clients))
    rows = [prepared.interactions.matrix[c.train_users] for c in clients]
    num_items, privacy = rows[0].shape[1], config.privacy()
    plans = [plan_privacy(privacy, r.shape[0], config.local(), config.num_server_rounds) for r in rows]
    secure = config.secure_aggregation
    statistics, pairs = secure_releases(rows, plans, config) if secure else plain_releases(rows, plans, config, seed)
    fitted = fitted_bundle(config, num_items, statistics, pairs)
    lengths = statistics.length_sampler(num_items)
    synthesis = config.synthesis(statistics.users())
    data = {
        f"synthetic-fitted-{name}/ease": synthesize(fitted, name, lengths, synthesis, seed) for name in ("gan", "vae")
    }
    if rounds and config.num_server_rounds > 0:  # with the rounds off (the default) the fitted rows are the run's
        refined = copy.deepcopy(fitted)
        federated_rounds(refined, rows, plans, config, seed)
        data["synthetic/ease"] = synthesize(refined, "vae", lengths, synthesis, seed)
        if "gan" in config.synthesizer_names():  # a row of the pipeline only when the GAN is trained
            data["synthetic-gan/ease"] = synthesize(refined, "gan", lengths, synthesis, seed)
    l2 = config.synthetic_ease_l2_for(signal_rank_of(pairs))
    candidates: dict[str, Recommender] = {k: EASE(l2).fit(m) for k, m in data.items()}
    for label, matrix in data.items():  # the pipeline's MostPopular rows on the same synthetic data
        candidates[label.replace("/ease", "/popularity")] = MostPopular().fit(matrix)
    candidates["fedsynth-prior"] = MostPopular.from_counts(statistics.item_counts)
    deltas = [privacy.delta_for(r.shape[0]) for r in rows]
    if privacy.private:
        candidates.update(baseline_recommenders(rows, privacy.target_epsilon, deltas, config, seed)[0])
    real = prepared.split.train
    candidates.update({"popularity": MostPopular().fit(real), "real/ease": EASE(config.ease_l2).fit(real)})
    held_out = getattr(prepared.split, held_out_name)
    scores = {label: evaluate(model, held_out, EVAL)["ndcg@10"] for label, model in candidates.items()}
    scores["pairs-corr"] = cooccurrence_correlation(real, data["synthetic-fitted-vae/ease"])
    return {**scores, **goal_columns(scores)}


def goal_columns(scores: dict[str, float]) -> dict[str, float]:
    """Best ``synthetic*`` row, best DP baseline (dp-als too), their gap; retention: best synthetic*/ease ÷ real."""
    synthetic = max(v for k, v in scores.items() if k.startswith("synthetic"))
    baseline = max((scores[k] for k in ("dp-popularity", "dp-ease", "dp-als") if k in scores), default=float("nan"))
    return {"best-synthetic": synthetic, "best-dp-baseline": baseline, "gap": synthetic - baseline,
            "retention": max(v for k, v in scores.items() if k.startswith("synthetic") and k.endswith("/ease"))
            / scores["real/ease"]}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="generated")
    parser.add_argument("--data-path", default="")
    parser.add_argument("--epsilons", default="1,8")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--clients", type=int, default=5)
    parser.add_argument("--held-out", choices=("validation", "test"), default="validation")
    parser.add_argument("--secure-aggregation", action="store_true")
    parser.add_argument("--set", action="append", default=[], help="KEY=V1,V2 run-config values to compare")
    parser.add_argument("--base", action="append", default=[], help="KEY=VALUE fixed run-config values")
    parser.add_argument("--fit-only", action="store_true", help="skip the DP-SGD rounds (tuning the fit)")
    args = parser.parse_args()
    base: dict[str, Any] = {"dataset": args.dataset, "data-path": args.data_path,
                            "secure-aggregation": args.secure_aggregation}  # fmt: skip
    base.update(dict(v.partition("=")[::2] for v in args.base))
    results = []
    for setting in parse_settings(args.set):
        for epsilon in (float(e) for e in args.epsilons.split(",")):
            for seed in (int(s) for s in args.seeds.split(",")):
                started = time.perf_counter()
                config = replace(RunConfig.from_run_config({**base, **setting, "epsilon": epsilon}), seed=seed)
                scores = score(config, seed, args.clients, args.held_out, not args.fit_only)
                row: dict[str, Any] = {**setting, "epsilon": epsilon, "seed": seed, **scores}
                row["seconds"] = time.perf_counter() - started
                results.append(row)
                print({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}, flush=True)
    frame = pd.DataFrame(results)
    groups = [*parse_settings(args.set)[0], "epsilon"]
    summary = frame.drop(columns=["seed"]).groupby(groups, sort=False).agg(["mean", "std"])
    aggregation = "secure aggregation" if args.secure_aggregation else "each client's own noise"
    print(f"NDCG@10 on {args.held_out} users, {args.clients} clients, {aggregation}, seeds {args.seeds}:")
    with pd.option_context("display.width", 250, "display.max_columns", 40):
        print(summary.round(4).to_string())


if __name__ == "__main__":
    main()
