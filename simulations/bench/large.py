"""A large run end to end with its memory per process: wall time, peak RSS / PSS and seconds per stage.

    python -m fedsynth.simulations.bench.large [--out runs/bench-large] [--interval 2] -- \\
        --config presets/ml20m-shape.toml --clients 5 --recommenders popularity,itemknn,ease

Everything after ``--`` goes to ``fedsynth run`` (its ``--out`` is this script's). The run is
started as its own process; every ``--interval`` seconds this script reads ``/proc`` for every
process that did not exist when it started (the CLI, the SuperLink, Flower's simulation process
that hosts the ServerApp, Ray's actors and daemons) and records each one's RSS and PSS
(proportional set size: shared pages, such as Ray's object store in /dev/shm, divided among the
processes that map them, so PSS sums to the memory the run really holds), and the machine's
used memory (MemTotal − MemAvailable). At the end it prints, per process role, the peak RSS and
PSS; the peak of the summed PSS and of the machine's used memory with the stage the run was in
(the last progress line the CLI printed before that sample: start, round, stage); the stages' seconds and the
NDCG@10 rows from OUT/metrics.json. Linux only (reads /proc). Do not run it next to another run.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

STAGE = re.compile(r"^\s*(start:.*|round \d+/\d+.*|stage: .*)$", re.MULTILINE)  # the CLI's progress lines


@dataclass
class Peak:
    """Largest RSS / PSS seen for one process role (bytes), and how many such processes there were."""

    rss: int = 0
    pss: int = 0
    pids: set[int] = field(default_factory=set)


def process_ids() -> set[int]:
    return {int(name) for name in os.listdir("/proc") if name.isdigit()}


def role(pid: int) -> str | None:
    """A readable name for process ``pid`` from its command line (None if it is gone)."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return None
    return role_of([w.decode(errors="replace") for w in argv if w])


def role_of(words: list[str]) -> str | None:
    """The role of a process with command line ``words``: Flower's and Ray's processes by name, else argv[0]."""
    if not words:
        return None
    text = " ".join(words)
    for marker in ("ray::", "flower-superlink", "flwr-simulation", "flwr-serverapp", "flower-supernode", "fedsynth"):
        if marker in text:
            start = text.index(marker)
            return text[start:].split()[0].split(".")[0] if marker == "ray::" else marker  # an actor's task: itself
    for daemon in ("raylet", "gcs_server", "dashboard", "log_monitor", "monitor.py", "runtime_env"):
        if daemon in text:
            return f"ray {daemon}"
    return Path(words[0]).name


def memory_of(pid: int) -> tuple[int, int] | None:
    """(RSS, PSS) of ``pid`` in bytes from /proc/PID/smaps_rollup (None if unreadable)."""
    try:
        lines = Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()
    except OSError:
        return None
    values = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in lines if line.endswith(" kB")}
    return values.get("Rss", 0), values.get("Pss", 0)


def machine_used() -> int:
    """MemTotal − MemAvailable, bytes."""
    info = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in Path("/proc/meminfo").read_text().splitlines()}
    return info["MemTotal"] - info["MemAvailable"]


class Sampler:
    """Samples every new process's memory until stopped; keeps the peaks and the stage at each."""

    def __init__(self, interval: float, run_log: Path):
        self.interval, self.before = interval, process_ids()
        self.run_log, self._offset = run_log, 0
        self.roles: dict[str, Peak] = {}
        self.peak_total = (0, "", 0.0)  # summed PSS, stage, seconds since the start
        self.peak_machine = (0, "", 0.0)
        self.base_machine = machine_used()
        self.stage = "start"
        self.started = time.monotonic()
        self._stop = threading.Event()

    def follow_stage(self) -> None:
        """The last progress line (start, round, stage) the CLI's output has gained since the last look."""
        try:
            with self.run_log.open("rb") as log:
                log.seek(self._offset)
                data = log.read()
        except OSError:
            return
        self._offset += len(data)
        for found in STAGE.finditer(data.decode(errors="replace")):
            self.stage = found.group(1).strip()[:90]

    def sample(self) -> None:
        self.follow_stage()
        total = 0
        for pid in process_ids() - self.before:
            name, memory = role(pid), memory_of(pid)
            if name is None or memory is None:
                continue
            peak = self.roles.setdefault(name, Peak())
            peak.rss, peak.pss = max(peak.rss, memory[0]), max(peak.pss, memory[1])
            peak.pids.add(pid)
            total += memory[1]
        now = time.monotonic() - self.started
        if total > self.peak_total[0]:
            self.peak_total = (total, self.stage, now)
        used = machine_used() - self.base_machine
        if used > self.peak_machine[0]:
            self.peak_machine = (used, self.stage, now)

    def run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def stop(self) -> None:
        self._stop.set()


def gb(value: int) -> str:
    return f"{value / 1e9:.2f} GB"


def report(sampler: Sampler, out: Path, wall: float, rc: int, log: Path) -> None:
    print(f"fedsynth run exited {rc}; wall {wall:.0f} s ({wall / 60:.1f} min); its output: {log}")
    print(f"{'process':<34}{'count':>6}{'peak RSS':>12}{'peak PSS':>12}")
    for name, peak in sorted(sampler.roles.items(), key=lambda kv: -kv[1].pss):
        if peak.pss >= 20e6:
            print(f"{name:<34}{len(peak.pids):>6}{gb(peak.rss):>12}{gb(peak.pss):>12}")
    total, stage, at = sampler.peak_total
    print(f"peak of the run's summed PSS: {gb(total)} at {at:.0f} s, during: {stage}")
    used, stage, at = sampler.peak_machine
    print(f"peak of the machine's used memory above its start: {gb(used)} at {at:.0f} s, during: {stage}")
    metrics_path = out / "metrics.json"
    if not metrics_path.exists():
        print("no metrics.json: the run did not complete")
        return
    metrics = json.loads(metrics_path.read_text())
    rounds = [round(r["seconds"], 1) for r in json.loads((out / "train.json").read_text())["rounds"]]
    print(f"rounds (s): {rounds}; " + ", ".join(f"{k} {v:.0f} s" for k, v in metrics["seconds"].items()))
    rows = {label: row.get("ndcg@10") for label, row in metrics["recommenders"].items()}
    print("NDCG@10: " + ", ".join(f"{label} {value:.3f}" for label, value in rows.items() if value is not None))
    print(f"retention: {metrics['utility_retention']}; skipped: {metrics['evaluation'].get('skipped')}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/bench-large"))
    parser.add_argument("--interval", type=float, default=2.0)
    parser.add_argument("run_args", nargs=argparse.REMAINDER, help="arguments of fedsynth run, after --")
    args = parser.parse_args()
    if not Path("/proc/self/smaps_rollup").exists():
        sys.exit("error: fedsynth.simulations.bench.large reads /proc/PID/smaps_rollup (Linux ≥ 4.14).")
    run_args = [a for a in args.run_args if a != "--"]
    if "--out" in run_args:
        sys.exit("error: give --out to the benchmark, before --, not to fedsynth run.")
    args.out.mkdir(parents=True, exist_ok=True)
    sampler = Sampler(args.interval, args.out / "bench-large.log")
    threading.Thread(target=sampler.run, daemon=True).start()
    started = time.monotonic()
    fedsynth = Path(sys.executable).with_name("fedsynth")  # this environment's CLI
    command = [str(fedsynth), "run", *run_args, "--out", str(args.out / "run")]
    with (args.out / "bench-large.log").open("w") as output:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}  # progress lines reach the file as they happen
        rc = subprocess.run(command, stdout=output, stderr=subprocess.STDOUT, env=env, check=False).returncode
    sampler.stop()
    report(sampler, args.out / "run", time.monotonic() - started, rc, args.out / "bench-large.log")
    sys.exit(rc)


if __name__ == "__main__":
    main()
