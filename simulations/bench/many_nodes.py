"""Many SuperNodes on one machine: ``fedsynth deploy local`` with K nodes, seconds per round and peak memory.

    python -m fedsynth.simulations.bench.many_nodes [--clients 20] [--rounds 2] [--neighbours 8] \\
        [--secure | --no-secure] [--out runs/bench-many-nodes]

Runs the full pipeline as real processes (one SuperLink, K ``fedsynth-node`` SuperNodes, TLS, node
authentication; with ``--secure`` signed SecAgg+ with ``--neighbours`` neighbours per node) on the
built-in data, while sampling once a second:

* the proportional set size (PSS: shared pages split among the processes sharing them, so the warm
  nodes' forked ClientApps are not counted twice) summed over the deployment's processes (every
  process whose command line names the run's directory, and their children), and its peak;
* the machine's used memory (MemTotal − MemAvailable) above what it was at the start.

Prints the statistics release's and each round's seconds (train.json), the wall time, and both
peaks. Linux only (``/proc``). Do not run it beside another Flower run.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from pathlib import Path


def used_memory() -> int:
    """MemTotal − MemAvailable, bytes."""
    fields = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
    return (int(fields["MemTotal"].split()[0]) - int(fields["MemAvailable"].split()[0])) * 1024


def children() -> dict[int, list[int]]:
    """ppid → pids, for every process now."""
    tree: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parts = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        tree.setdefault(int(parts[1]), []).append(int(stat.parent.name))
    return tree


def deployment_pids(root: Path) -> set[int]:
    """Processes whose command line names ``root`` (the SuperLink and SuperNodes), and all their descendants."""
    marker = str(root.resolve()).encode()
    found = set()
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if marker in cmdline.read_bytes():
                found.add(int(cmdline.parent.name))
        except OSError:
            continue
    tree, todo = children(), list(found)
    while todo:
        for child in tree.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def pss(pid: int) -> int:
    """A process's proportional set size in bytes (0 if it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class Sampler(threading.Thread):
    """Samples the deployment's summed PSS and the machine's used memory once a second; keeps the peaks."""

    def __init__(self, root: Path) -> None:
        super().__init__(daemon=True)
        self.root, self.baseline = root, used_memory()
        self.peak_pss = self.peak_used = 0
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(1.0):
            self.peak_pss = max(self.peak_pss, sum(pss(p) for p in deployment_pids(self.root)))
            self.peak_used = max(self.peak_used, used_memory() - self.baseline)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--neighbours", type=int, default=8)
    parser.add_argument("--secure", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--out", type=Path, default=Path("runs/bench-many-nodes"))
    args = parser.parse_args()
    out = args.out / f"k{args.clients}-{'secure' if args.secure else 'plain'}"
    users = str(max(943, 150 * args.clients))  # about 110 training users per node: above the default batch
    command = [sys.executable, "-m", "fedsynth.simulations", "deploy", "local", "--clients", str(args.clients),
               "--rounds", str(args.rounds), "--out", str(out), "--gen-users", users]  # fmt: skip
    if args.secure:
        command += ["--secure-aggregation", "--secagg-neighbours", str(args.neighbours)]
    sampler = Sampler(out)
    sampler.start()
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    wall = time.perf_counter() - started
    sampler.done.set()
    sampler.join()
    failed = out / "failed.json"
    if done.returncode != 0 or failed.is_file():
        print(done.stdout[-3000:], done.stderr[-3000:], failed.read_text()[:3000] if failed.is_file() else "")
        raise SystemExit(f"the deployment failed (exit {done.returncode})")
    train = json.loads((out / "train.json").read_text())
    rounds = [r.get("seconds") for r in train["rounds"]]
    secure = json.loads((out / "metrics.json").read_text())["privacy"]["secure_aggregation"]
    print(f"{args.clients} SuperNodes, {args.rounds} rounds, secure aggregation: "
          f"{secure.get('protocol', 'off')}, signed: {secure.get('signed', False)}")  # fmt: skip
    print(f"statistics release {train['statistics_release'].get('seconds')} s; rounds (s): {rounds}; wall {wall:.0f} s")
    gib = 2**30
    print(
        f"peak memory: deployment PSS {sampler.peak_pss / gib:.2f} GiB, machine used +{sampler.peak_used / gib:.2f} GiB"
    )


if __name__ == "__main__":
    main()
