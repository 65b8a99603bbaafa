"""What DP federated evaluation costs: the utility rows with and without its share of ε, and its noise.

    python -m fedsynth.simulations.bench.dp_evaluation [--epsilon 8] [--seeds 0,1] [--clients 5]
        [--out runs/bench-dp-evaluation] [-- extra run-config key=value ...]

Three ``fedsynth run`` jobs per seed on the built-in data (one at a time: never two Flower runs at
once), all evaluated on the same simulated held-out users:

* ``no-share``: ``evaluation-share = 0``, exact evaluation: the pipeline as it was before DP evaluation;
* ``share``: the default ``evaluation-share`` set aside (training gets the rest), exact evaluation:
  the training cost of the reserve alone;
* ``dp``: the default share spent on DP evaluation (``evaluation = "dp"``, what every deployed node
  does): the numbers a deployment would print, with each row's noise std of the mean.

Every run uses ``reproducible-noise`` (simulation only): paired draws across the modes. Prints,
per seed and mode, NDCG@10 of the headline rows, the DP evaluation's noise std of the mean
(NDCG's error bar) and ε: the total spent (max over clients) and the evaluations' own.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path
from typing import Any

from rich.console import Console

from fedsynth.simulations.jobs import run_job

ROWS = ("synthetic/ease", "synthetic-gan/ease", "fedvae", "dp-ease", "real/ease")
MODES: dict[str, dict[str, Any]] = {
    "no-share": {"evaluation-share": 0.0, "evaluation": "exact"},
    "share": {"evaluation": "exact"},
    "dp": {"evaluation": "dp"},
}


def run(out: Path, clients: int, settings: dict[str, Any]) -> dict[str, Any]:
    shutil.rmtree(out, ignore_errors=True)
    ledgers = str((out / "ledgers").resolve())  # each run its own simulated silos' ledgers
    return run_job(Console(quiet=True), out, clients, {**settings, "out-dir": str(out), "ledger-dir": ledgers})


def summary(metrics: dict[str, Any]) -> dict[str, Any]:
    rows = metrics["recommenders"]
    evaluation, privacy = metrics["evaluation"], metrics["privacy"]
    return {
        "ndcg@10": {row: rows[row]["ndcg@10"] for row in ROWS if row in rows},
        "noise_std_of_mean": {
            row: evaluation[row].get("noise_std_of_mean") for row in ROWS if isinstance(evaluation.get(row), dict)
        },
        "epsilon_max": privacy["epsilon_max"],
        "epsilon_of_evaluations": privacy.get("evaluation", {}).get("epsilon_of_evaluations_max"),
    }


def typed(value: str) -> Any:
    """A run-config value from the command line: a JSON number / boolean, else the string."""
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        return value


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epsilon", type=float, default=8.0)
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--clients", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("runs/bench-dp-evaluation"))
    parser.add_argument("extra", nargs="*", help="run-config key=value overrides")
    args = parser.parse_args(argv)
    extra = {key: typed(value) for key, value in (item.split("=", 1) for item in args.extra)}
    results = {}
    for seed in (int(s) for s in args.seeds.split(",")):
        for mode, settings in MODES.items():
            # reproducible-noise (a study tool): the three modes draw the same standard normals, so their rows
            # differ by the share and the evaluation noise, not by another draw of the training noise
            given = {"epsilon": args.epsilon, "seed": seed, "reproducible-noise": True, **settings, **extra}
            metrics = run(args.out / f"seed-{seed}-{mode}", args.clients, given)
            results[f"seed {seed} {mode}"] = summary(metrics)
            print(f"seed {seed} {mode}: {json.dumps(results[f'seed {seed} {mode}'])}", flush=True)
    (args.out / "summary.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
