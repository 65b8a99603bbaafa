"""The utility-under-DP benchmark: fedsynth rows vs the simple DP baselines, per dataset and ε, over seeds.

    python -m fedsynth.simulations.bench.utility --data-root ../shared/data --out runs/bench-utility \\
        [--datasets movielens,lastfm] [--epsilons 1,2,4,8] [--seeds 3] [--recommenders popularity,ease,multvae]

For each dataset this runs ``fedsynth sweep`` (5 IID clients, every cell a real Flower
simulation with its own client ledgers; resumable) into OUT/<dataset>/, then reads its
summary.csv and prints, per ε: NDCG@10 of every row (mean ± 95% interval over seeds), the
best fedsynth row against the best simple DP baseline (dp-popularity, dp-ease), and the
retention synthetic/ease ÷ real/ease. Writes OUT/goals.csv and OUT/goals.md.

Rows: fedsynth = ``synthetic*/…`` (trained on synthetic data only), ``fedvae`` and
``fedsynth-prior``; baselines = ``dp-popularity`` and ``dp-ease`` (each at the full ε);
references = ``popularity`` (MostPopular) and ``real/…`` (non-private).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pandas as pd

from fedsynth.simulations.experiments.sweep_report import markdown_table

DATASETS = {"movielens": "ml-latest-small", "lastfm": "lastfm-2k"}
BASELINES = ("dp-popularity", "dp-ease", "dp-als")
HEADLINE = "ndcg@10"


def is_fedsynth_row(row: str) -> bool:
    return row.startswith("synthetic") or row in ("fedvae", "fedsynth-prior")


def goals_table(summary: pd.DataFrame, dataset: str) -> pd.DataFrame:
    """Per ε: the best fedsynth and baseline rows (means over seeds), whether fedsynth wins, and retention."""
    ndcg = summary[(summary["metric"] == HEADLINE)]
    out = []
    for epsilon, part in ndcg.groupby("epsilon_requested", sort=True):
        means = part.set_index("row")["mean"]
        lows, highs = part.set_index("row")["ci95_low"], part.set_index("row")["ci95_high"]
        fedsynth = means[[r for r in means.index if is_fedsynth_row(r)]]
        baselines = means[[r for r in means.index if r in BASELINES]]
        if fedsynth.empty:
            continue
        best, best_baseline = str(fedsynth.idxmax()), str(baselines.idxmax()) if not baselines.empty else None
        real = means.get("real/ease")
        out.append(
            {
                "dataset": dataset,
                "epsilon": epsilon,
                "best fedsynth row": best,
                "its ndcg@10": fedsynth[best],
                "its 95% interval": f"[{lows[best]:.4f}, {highs[best]:.4f}]",
                "best baseline": best_baseline or "",
                "baseline ndcg@10": baselines.max() if best_baseline else float("nan"),
                "baseline 95% interval": f"[{lows[best_baseline]:.4f}, {highs[best_baseline]:.4f}]"
                if best_baseline
                else "",
                "fedsynth beats baseline": bool(best_baseline and fedsynth[best] > baselines.max()),
                "MostPopular": means.get("popularity", float("nan")),
                "synthetic/ease": means.get("synthetic/ease", float("nan")),
                "real/ease": real if real is not None else float("nan"),
                "retention ease": means.get("synthetic/ease", float("nan")) / real if real else float("nan"),
            }
        )
    return pd.DataFrame(out)


def run_dataset(args: argparse.Namespace, dataset: str) -> Path:
    """``fedsynth sweep`` for one dataset (resumes a partial sweep); returns its directory."""
    out = args.out / dataset
    command = [
        sys.executable,
        "-m",
        "simulations",
        "sweep",
        "--dataset",
        dataset,
        "--data-path",
        str(args.data_root / DATASETS[dataset]),
        "--clients",
        str(args.clients),
        "--partition",
        "iid",
        "--epsilons",
        args.epsilons,
        "--seeds",
        args.seeds,
        "--recommenders",
        args.recommenders,
        "--no-audit" if not args.audit else "--audit",
        "--out",
        str(out),
        *(["--config", str(args.config)] if args.config else []),
    ]
    subprocess.run(command, check=False)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", type=Path, default=Path("../shared/data"))
    parser.add_argument("--datasets", default="movielens,lastfm")
    parser.add_argument("--epsilons", default="1,2,4,8")
    parser.add_argument("--seeds", default="3")
    parser.add_argument("--clients", type=int, default=5)
    parser.add_argument("--recommenders", default="popularity,ease,multvae")
    parser.add_argument("--config", type=Path, default=None, help="TOML of run-config keys for every cell")
    parser.add_argument("--audit", action="store_true", help="also run the membership audits (slower)")
    parser.add_argument("--out", type=Path, default=Path("runs/bench-utility"))
    args = parser.parse_args()
    tables = []
    for dataset in (d.strip() for d in args.datasets.split(",") if d.strip()):
        if dataset not in DATASETS:
            parser.error(f"--datasets: unknown {dataset!r}; choose from {', '.join(DATASETS)}")
        out = run_dataset(args, dataset)
        if (out / "summary.csv").is_file():
            tables.append(goals_table(pd.read_csv(out / "summary.csv"), dataset))
    if not tables:
        print("no results", file=sys.stderr)
        raise SystemExit(1)
    goals = pd.concat(tables, ignore_index=True)
    args.out.mkdir(parents=True, exist_ok=True)
    goals.to_csv(args.out / "goals.csv", index=False)
    (args.out / "goals.md").write_text(markdown_table(goals) + "\n")
    print(goals.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    print(f"wrote {args.out / 'goals.csv'} and {args.out / 'goals.md'}")


if __name__ == "__main__":
    main()
