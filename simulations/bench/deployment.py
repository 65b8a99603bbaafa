"""Wall time of one small run in Flower's simulation engine vs a real deployment on loopback.

    python -m simulations.bench.deployment [--clients 3] [--rounds 3] [--out runs/bench-deployment]
        [--modes simulation,deployment-cold,deployment]

All run the full pipeline on the same generated data (simulation: partitions of one dataset;
deployment: the same users cut into per-node files, TLS and node authentication, separate
SuperLink / SuperNode processes). ``deployment-cold``: plain ``flower-supernode`` (a fresh
``flwr-clientapp`` process per message); ``deployment``: ``fedsynth-node`` (ClientApps forked
from a warm process, client/warm_node.py), what ``fedsynth deploy local`` uses. Prints total
wall time, mean seconds per round and each deployment's per-round overhead over the
simulation. Do not run it next to another Flower run.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

from rich.console import Console

from simulations.deployment.local import run_local_deployment
from simulations.jobs import resolve_run_config, run_job


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("runs/bench-deployment"))
    parser.add_argument("--modes", default="simulation,deployment-cold,deployment")
    args = parser.parse_args()
    console = Console()
    shutil.rmtree(args.out, ignore_errors=True)
    given = {"rounds": args.rounds, "gen_users": 600, "recommenders": "popularity,ease", "synthetic_users": 500}
    rows = {}
    for mode in args.modes.split(","):
        out = args.out / mode
        settings = resolve_run_config(None, given, out)
        started = time.perf_counter()
        if mode == "simulation":
            run_job(
                Console(quiet=True), out, args.clients, {**settings, "pipeline": "full", "simulation-reference": False}
            )
        else:
            run_local_deployment(Console(quiet=True), out, args.clients, settings, warm_nodes=mode == "deployment")
        wall = time.perf_counter() - started
        rounds = [r["seconds"] for r in json.loads((out / "train.json").read_text())["rounds"]]
        rows[mode] = (wall, sum(rounds) / len(rounds))
        console.print(
            f"{mode}: {wall:.0f} s wall, {rows[mode][1]:.1f} s per round (rounds: {[round(r, 1) for r in rounds]})"
        )
    for mode in (m for m in rows if m != "simulation" and "simulation" in rows):
        console.print(
            f"{mode} overhead: {rows[mode][0] - rows['simulation'][0]:+.0f} s wall, "
            f"{rows[mode][1] - rows['simulation'][1]:+.1f} s per round"
        )


if __name__ == "__main__":
    main()
