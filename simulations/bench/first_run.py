"""First contact: the wall-clock seconds of ``fedsynth run`` on the built-in data, and where they go.

    python -m fedsynth.simulations.bench.first_run
    python -m fedsynth.simulations.bench.first_run --variant "" \
        --variant "--recommenders popularity,itemknn,ease,multvae"

Each variant (extra ``fedsynth run`` options; the first is the reference) runs once, one after the
other, in a fresh temporary directory. Printed per variant: the wall seconds of the whole command,
the stages the run times itself (the marginal fit from the ServerApp's log, the rounds from
``train.json``, synthesis, central training and federated evaluation from ``metrics.json``), the rest
(Flower's SuperLink and Ray start-up, the nodes' imports, admission and DP releases, the outputs), and
the ratio of each wall time to the first's. The target (issue 36): at most 45 s on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

FIT_SECONDS = re.compile(r"marginal fit: .*; ([0-9.]+) s\)")


def stage_seconds(out: Path) -> dict[str, float]:
    """The seconds a finished run in ``out`` recorded for its timed stages."""
    metrics = json.loads((out / "metrics.json").read_text())
    rounds = json.loads((out / "train.json").read_text())["rounds"]
    log = (out / "logs" / "flwr-run.log").read_text(errors="replace")
    fit = FIT_SECONDS.search(log)
    return {
        "marginal fit": float(fit.group(1)) if fit else 0.0,
        "rounds": sum(float(r.get("seconds", 0.0)) for r in rounds),
        **{name.replace("_", " "): float(value) for name, value in metrics.get("seconds", {}).items()},
    }


def run_once(options: str) -> dict[str, float]:
    """``fedsynth run`` with ``options`` in a fresh directory: wall seconds and the stages' seconds."""
    with tempfile.TemporaryDirectory(prefix="fedsynth-first-run-") as tmp:
        out = Path(tmp) / "run"
        command = [str(Path(sys.executable).with_name("fedsynth")), "run", "--out", str(out), *shlex.split(options)]
        started = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        wall = time.perf_counter() - started
        if done.returncode != 0:
            raise SystemExit(f"fedsynth run {options} failed ({done.returncode}):\n{done.stdout[-2000:]}{done.stderr}")
        stages = stage_seconds(out)
    return {"wall": wall, **stages, "rest": wall - sum(stages.values())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", action="append", default=[], help="extra `fedsynth run` options (repeatable)")
    variants = parser.parse_args().variant or [""]
    results = []
    for options in variants:
        results.append(run_once(options))
        shown = "  ".join(f"{name} {seconds:.1f}" for name, seconds in results[-1].items())
        print(f"[{options or 'defaults'}] {shown}  (x{results[-1]['wall'] / results[0]['wall']:.2f})", flush=True)


if __name__ == "__main__":
    main()
