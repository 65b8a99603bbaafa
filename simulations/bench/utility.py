"""Utility retention of synthetic-trained recommenders at several ε: the `fedsynth run` pipeline, end to end.

    python -m simulations.bench.utility --dataset movielens --data-path ../shared/data/ml-latest-small \\
        --epsilons 1,8 --seeds 0 --out runs/bench-utility [--clients 5] [--config extra.toml]

Each (ε, seed) is one full `fedsynth run` (its own run directory and client ledgers). Prints
NDCG@10 of every row and the retention (synthetic / real) of EASE and Mult-VAE, and writes
OUT/utility.csv. A cell already complete is read back, not rerun.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import pandas as pd
from rich.console import Console

from simulations.jobs import resolve_run_config, run_job


def run_cell(console: Console, args: argparse.Namespace, epsilon: float, seed: int) -> dict[str, object]:
    out = args.out / f"eps-{epsilon:g}-seed-{seed}"
    given = {"epsilon": epsilon, "seed": seed, "dataset": args.dataset, "data-path": args.data_path or None}
    started = time.perf_counter()
    if (out / "metrics.json").is_file():
        metrics = json.loads((out / "metrics.json").read_text())
    else:
        metrics = run_job(
            console, out, args.clients, {**resolve_run_config(args.config, given, out), "pipeline": "full"}
        )
    return {"metrics": metrics, "seconds": time.perf_counter() - started}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="generated")
    parser.add_argument("--data-path", default="")
    parser.add_argument("--epsilons", default="1,8")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--clients", type=int, default=5)
    parser.add_argument("--config", type=Path, default=None, help="TOML of extra run-config keys")
    parser.add_argument("--out", type=Path, default=Path("runs/bench-utility"))
    args = parser.parse_args()
    console = Console()
    rows = []
    for epsilon in (float(e) for e in args.epsilons.split(",")):
        for seed in (int(s) for s in args.seeds.split(",")):
            cell = run_cell(console, args, epsilon, seed)
            metrics = cell["metrics"]
            assert isinstance(metrics, dict)
            for name, values in metrics["recommenders"].items():
                rows.append(
                    {
                        "epsilon": epsilon,
                        "seed": seed,
                        "epsilon_spent": metrics["privacy"]["epsilon_max"],
                        "recommender": name,
                        "ndcg@10": values["ndcg@10"],
                        "recall@20": values["recall@20"],
                        "seconds": cell["seconds"],
                    }
                )
    frame = pd.DataFrame(rows)
    args.out.mkdir(parents=True, exist_ok=True)
    frame.to_csv(args.out / "utility.csv", index=False)
    table = frame.pivot_table(index="recommender", columns="epsilon", values="ndcg@10", aggfunc="mean", sort=False)
    console.print("NDCG@10 (mean over seeds) by ε:")
    console.print(table.round(4).to_string())
    for name in ("ease", "multvae"):
        if f"synthetic/{name}" in table.index and f"real/{name}" in table.index:
            retention = table.loc[f"synthetic/{name}"] / table.loc[f"real/{name}"]
            console.print(f"retention {name}: " + ", ".join(f"ε={e:g}: {v:.3f}" for e, v in retention.items()))
    console.print(f"wrote {args.out / 'utility.csv'}")


if __name__ == "__main__":
    main()
