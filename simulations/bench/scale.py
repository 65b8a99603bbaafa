"""Utility against users per client on the generated data, at a fixed ε: the federation's noise averaging.

    python -m fedsynth.simulations.bench.scale --epsilon 1 --users-per-client 100,1000,10000 --seeds 0 \\
        --out runs/bench-scale [--sample-rate 0.07] [--clients 5] [--base vae-learning-rate=0.01 ...]

For each size the generated dataset (12 taste clusters, ML-100K-like items and lengths) is
drawn with enough users that each of the ``--clients`` IID clients holds about that many
training users. The clients' own code runs in-process (``fedsynth.simulations.bench.levers.train``:
the ClientApp's privacy plan, DP statistics release and DP-SGD rounds, FedAvg by users),
with batch sizes ``sample-rate × users per client`` so the sampling rate, and hence the
noise per step relative to the batch, is the same at every size. Rows are scored on the
real held-out **test** users (nothing is tuned here). Prints NDCG@10 per row and the
retention synthetic/ease ÷ real/ease; writes OUT/scale.csv and OUT/scale.png.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd

from fedsynth.common.config.run import RunConfig
from fedsynth.simulations.bench.levers import score_rows, train

TRAIN_SHARE = 0.7  # validation, test and audit fractions are 0.1 each


def run_size(users_per_client: int, args: argparse.Namespace, seed: int) -> dict[str, float]:
    batch = max(16, round(args.sample_rate * users_per_client))
    config = RunConfig.from_run_config(
        {
            "epsilon": args.epsilon,
            "gen-users": round(users_per_client * args.clients / TRAIN_SHARE),
            "vae-batch-size": batch,
            "gan-batch-size": batch,
            "synthetic-users": args.synthetic_users,
            "seed": seed,
            **dict(item.partition("=")[::2] for item in args.base),
        }
    )
    started = time.perf_counter()
    federation = train(config, seed, args.clients)
    scores = score_rows(federation, config, federation.prepared.split.test, seed)
    return {
        "users_per_client": users_per_client,
        "seed": seed,
        "batch": batch,
        **scores,
        "retention": scores["synthetic/ease"] / scores["real/ease"],
        "seconds": time.perf_counter() - started,
    }


def plot(path: Path, frame: pd.DataFrame, epsilon: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    means = frame.drop(columns=["seed", "batch", "seconds"]).groupby("users_per_client").mean()
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    styles = {"real/ease": ("black", "--"), "popularity": ("grey", ":")}
    for row in [c for c in means.columns if c != "retention"]:
        color, line = styles.get(row, (None, "-"))
        ax.plot(means.index, means[row], marker="o", label=row, color=color, linestyle=line)
    ax.set_xscale("log")
    ax.set_xlabel("training users per client (5 IID clients)")
    ax.set_ylabel("NDCG@10 (real test users)")
    ax.set_title(f"Generated data, ε = {epsilon:g} per client")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epsilon", type=float, default=1.0)
    parser.add_argument("--users-per-client", default="100,1000,10000")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--clients", type=int, default=5)
    parser.add_argument("--sample-rate", type=float, default=0.07)
    parser.add_argument("--synthetic-users", type=int, default=5000)
    parser.add_argument("--base", action="append", default=[], help="KEY=VALUE run-config settings for every size")
    parser.add_argument("--out", type=Path, default=Path("runs/bench-scale"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for size in (int(v) for v in args.users_per_client.split(",")):
        for seed in (int(s) for s in args.seeds.split(",")):
            rows.append(run_size(size, args, seed))
            print({k: round(v, 4) if isinstance(v, float) else v for k, v in rows[-1].items()}, flush=True)
            frame = pd.DataFrame(rows)
            frame.to_csv(args.out / "scale.csv", index=False)  # after every point: a long run keeps its progress
    plot(args.out / "scale.png", frame, args.epsilon)
    print(frame.drop(columns=["seed"]).groupby("users_per_client").mean().round(4).to_string())
    print(f"wrote {args.out / 'scale.csv'} and {args.out / 'scale.png'}")


if __name__ == "__main__":
    main()
