"""The DP baselines side by side (dp-popularity, dp-ease, dp-als), and a grid over their settings.

    python -m fedsynth.simulations.bench.dp_baselines --base gen-users=6500 --epsilons 1,8 --seeds 0,1 \\
        --set dp-als-rank=8,16 --set dp-als-min-signal=4,8

No Flower, no synthesis: each silo's releases are computed as :func:`fedsynth.server.baselines.baseline_recommenders`
computes them for a run (each baseline at the full target ε per client, its own δ), then every row is
scored by NDCG@10 on the **validation** users (``--held-out test`` for the final numbers, once the
settings are chosen), next to the non-private ``real/ease`` and, with ``--non-private``, ALS without noise
(the ceiling of the factorisation). Prints one row per (ε, setting, seed) and the means over seeds.
"""

from __future__ import annotations

import time
from typing import Any

import pandas as pd

from fedsynth.common.config.run import RunConfig
from fedsynth.common.config.sections import EvalConfig
from fedsynth.common.data.partition import partition_users
from fedsynth.common.data.prepare import prepare
from fedsynth.common.evaluation.scoring import evaluate
from fedsynth.common.recommenders import EASE
from fedsynth.common.recommenders.dp_als import dp_als
from fedsynth.server.baselines import baseline_recommenders
from fedsynth.simulations.bench.levers import federation_parser, parse_settings

EVAL = EvalConfig(ks=(10,))
NON_PRIVATE = 1e7  # an ε at which the noise is negligible: the factorisation's own ceiling


def score(config: RunConfig, seed: int, clients: int, held_out: str, non_private: bool) -> dict[str, float]:
    """NDCG@10 of each DP baseline (and real/ease, and noiseless ALS with ``non_private``) on ``held_out`` users."""
    prepared = prepare(config.data())
    silos = partition_users(prepared.interactions, prepared.split, config.partitioning(clients))
    rows = [prepared.interactions.matrix[s.train_users] for s in silos]
    privacy = config.privacy()
    deltas = [privacy.delta_for(r.shape[0]) for r in rows]
    users = getattr(prepared.split, held_out)
    models, summary = baseline_recommenders(rows, privacy.target_epsilon, deltas, config, seed)
    scores = {name: evaluate(model, users, EVAL)["ndcg@10"] for name, model in models.items()}
    scores["dp-als items"] = summary["dp-als"]["items"]
    if non_private:
        ceiling, _ = dp_als(rows, NON_PRIVATE, deltas, config.dp_als(), seed)
        scores["als (no noise)"] = evaluate(ceiling, users, EVAL)["ndcg@10"]
    scores["real/ease"] = evaluate(EASE(config.ease_l2).fit(prepared.split.train), users, EVAL)["ndcg@10"]
    return scores


def main() -> None:
    parser = federation_parser(__doc__)
    parser.add_argument("--epsilons", default="", help="comma-separated ε (default: --epsilon)")
    parser.add_argument("--set", action="append", default=[], help="KEY=V1,V2 run-config values to compare")
    parser.add_argument("--held-out", choices=("validation", "test"), default="validation")
    parser.add_argument("--non-private", action="store_true", help="also ALS without noise")
    args = parser.parse_args()
    epsilons = [float(e) for e in (args.epsilons or str(args.epsilon)).split(",")]
    base: dict[str, Any] = {"dataset": args.dataset, "data-path": args.data_path}
    base.update(dict(v.partition("=")[::2] for v in args.base))
    rows = []
    for epsilon in epsilons:
        for setting in parse_settings(args.set):
            for seed in (int(s) for s in args.seeds.split(",")):
                started = time.perf_counter()
                config = RunConfig.from_run_config({**base, **setting, "epsilon": epsilon, "seed": seed})
                scores = score(config, seed, args.clients, args.held_out, args.non_private)
                row: dict[str, Any] = {"epsilon": epsilon, **setting, "seed": seed, **scores}
                rows.append({**row, "seconds": time.perf_counter() - started})
                print({k: (round(v, 4) if isinstance(v, float) else v) for k, v in rows[-1].items()}, flush=True)
    frame = pd.DataFrame(rows)
    keys = ["epsilon", *parse_settings(args.set)[0]]
    print(f"NDCG@10 on {args.held_out} users, {args.clients} silos, mean over seeds {args.seeds}:")
    print(frame.drop(columns=["seed"]).groupby(keys, sort=False).mean(numeric_only=True).round(4).to_string())


if __name__ == "__main__":
    main()
