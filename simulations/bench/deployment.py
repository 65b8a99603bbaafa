"""Wall time of one small run in Flower's simulation engine vs a real deployment on loopback.

    python -m fedsynth.simulations.bench.deployment [--clients 3] [--rounds 3] [--out runs/bench-deployment]
        [--modes simulation,deployment-cold,deployment,deployment-database] [--repeats 1]

All run the full pipeline on the same generated data (simulation: partitions of one dataset;
deployment: the same users cut into per-node files, TLS and node authentication, separate
SuperLink / SuperNode processes). ``deployment-cold``: plain ``flower-supernode`` (a fresh
``flwr-clientapp`` process per message); ``deployment``: ``fedsynth-node`` (ClientApps forked
from a warm process, client/warm_node.py), what ``fedsynth deploy local`` uses (SuperLink state in
memory, each node OMP_NUM_THREADS = cores / nodes); ``deployment-database``: the same with the
SuperLink's state, message objects included, in SQLite (``--database``). Prints total
wall time, mean seconds per round and each deployment's per-round overhead over the
simulation. Do not run it next to another Flower run.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import time
from pathlib import Path

from rich.console import Console

from fedsynth.simulations.deployment.local import run_local_deployment
from fedsynth.simulations.jobs import resolve_run_config, run_job

MODES = ("simulation", "deployment-cold", "deployment", "deployment-database")


def run_mode(mode: str, out: Path, clients: int, given: dict[str, object]) -> tuple[float, list[float]]:
    """One run of ``mode`` into ``out``: (wall seconds, each round's seconds from train.json)."""
    settings = resolve_run_config(None, given, out)
    started = time.perf_counter()
    if mode == "simulation":
        run_job(Console(quiet=True), out, clients, {**settings, "pipeline": "full", "simulation-reference": False})
    else:
        run_local_deployment(
            Console(quiet=True),
            out,
            clients,
            settings,
            warm_nodes=mode != "deployment-cold",
            persistent_superlink=mode == "deployment-database",
        )
    wall = time.perf_counter() - started
    return wall, [r["seconds"] for r in json.loads((out / "train.json").read_text())["rounds"]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=1, help="runs of every mode, interleaved; medians printed")
    parser.add_argument("--out", type=Path, default=Path("runs/bench-deployment"))
    parser.add_argument("--modes", default=",".join(MODES))
    args = parser.parse_args()
    modes = args.modes.split(",")
    unknown = set(modes) - set(MODES)
    if unknown:
        parser.error(f"--modes: unknown {', '.join(sorted(unknown))}; choose from {', '.join(MODES)}")
    console = Console()
    shutil.rmtree(args.out, ignore_errors=True)
    given = {"rounds": args.rounds, "gen_users": 600, "recommenders": "popularity,ease", "synthetic_users": 500}
    walls: dict[str, list[float]] = {mode: [] for mode in modes}
    per_round: dict[str, list[float]] = {mode: [] for mode in modes}
    for repeat in range(args.repeats):
        for mode in modes:
            wall, rounds = run_mode(mode, args.out / f"{mode}-{repeat}", args.clients, given)
            walls[mode].append(wall)
            per_round[mode].append(statistics.mean(rounds))
            console.print(
                f"{mode} #{repeat + 1}: {wall:.0f} s wall, {per_round[mode][-1]:.1f} s per round "
                f"(rounds: {[round(r, 1) for r in rounds]})"
            )
    for mode in modes:
        console.print(
            f"{mode}: median {statistics.median(walls[mode]):.0f} s wall, "
            f"{statistics.median(per_round[mode]):.1f} s per round over {args.repeats} run(s)"
        )
    for mode in (m for m in modes if m != "simulation" and "simulation" in modes):
        overheads = [d - s for d, s in zip(per_round[mode], per_round["simulation"], strict=True)]
        console.print(
            f"{mode} overhead per round over simulation (side by side): median {statistics.median(overheads):+.1f} s "
            f"(each: {', '.join(f'{o:+.1f}' for o in overheads)}); wall "
            f"{statistics.median(walls[mode]) - statistics.median(walls['simulation']):+.0f} s"
        )


if __name__ == "__main__":
    main()
