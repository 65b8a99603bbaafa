"""round-mode fedsgd (secure-aggregated DP-SGD steps) vs local rounds, side by side, in Flower simulations.

    python -m fedsynth.simulations.bench.fedsgd [--clients 5] [--gen-users 6000] [--epsilons 2,8] [--steps 150]
                                       [--rounds 3] [--out runs/bench-fedsgd]

Each cell is one ``fedsynth run`` on the same generated data (the README's defaults otherwise):
``local`` (today's rounds: DP-SGD epochs in every silo, each update with the silo's full noise),
``local+secagg`` (the same rounds; the DP statistics and baselines secure-aggregated) and
``fedsgd`` (secure aggregation of everything: ``--steps`` rounds of one DP-SGD step of all silos'
users, every silo sampling at ``fedsgd-sample-rate``). Prints, per cell: NDCG@10 on the real test
users of the headline synthetic rows and the federated VAE, ε against the server with and
without secure aggregation, wall time and seconds per round. Do not run it next to another Flower run.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from fedsynth.simulations.jobs import resolve_run_config, run_job

ROWS = ("synthetic/ease", "synthetic/popularity", "fedvae", "fedsynth-prior", "dp-popularity", "dp-ease", "popularity")
MODES: dict[str, dict[str, Any]] = {
    "local": {},
    "local+secagg": {"secure_aggregation": True},
    "fedsgd": {"secure_aggregation": True, "round_mode": "fedsgd"},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=5)
    parser.add_argument("--gen-users", type=int, default=6000)
    parser.add_argument("--epsilons", default="2,8")
    parser.add_argument("--steps", type=int, default=150, help="fedsgd rounds (one DP-SGD step each)")
    parser.add_argument("--rounds", type=int, default=3, help="local rounds")
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--out", type=Path, default=Path("runs/bench-fedsgd"))
    args = parser.parse_args()
    console = Console(width=240)
    table = Table("mode", "ε", "rounds", *ROWS, "ε max", "ε own noise", "wall s", "s / round")
    for eps in [float(e) for e in args.epsilons.split(",")]:
        for mode in args.modes.split(","):
            out = args.out / f"{mode}-eps{eps:g}"
            shutil.rmtree(out, ignore_errors=True)
            rounds = args.steps if mode == "fedsgd" else args.rounds
            given = {"rounds": rounds, "epsilon": eps, "gen_users": args.gen_users, "synthesizers": "vae",
                     "recommenders": "popularity,ease", **MODES[mode]}  # fmt: skip
            settings = resolve_run_config(None, given, out)
            started = time.perf_counter()
            run_job(Console(quiet=True), out, args.clients, {**settings, "pipeline": "full"})
            wall = time.perf_counter() - started
            metrics = json.loads((out / "metrics.json").read_text())
            seconds = [r["seconds"] for r in json.loads((out / "train.json").read_text())["rounds"]]
            scores = metrics["recommenders"]
            ndcg = [f"{scores[r]['ndcg@10']:.4f}" if r in scores else "-" for r in ROWS]
            privacy = metrics["privacy"]
            table.add_row(mode, f"{eps:g}", str(rounds), *ndcg, f"{privacy['epsilon_max']:.3f}",
                          f"{privacy.get('epsilon_max_own_noise', privacy['epsilon_max']):.3f}", f"{wall:.0f}",
                          f"{sum(seconds) / len(seconds):.2f}")  # fmt: skip
            console.print(table)


if __name__ == "__main__":
    main()
