"""Secure aggregation: its cost per silo, and what distributed noise buys, side by side with it off.

    python -m fedsynth.simulations.bench.secure_aggregation overhead [--silos 5,20] [--dims 1500,20000] \\
        [--neighbours 0,8] [--dropped N] [--signed no,yes]
    python -m fedsynth.simulations.bench.secure_aggregation flower [--clients 5] [--rounds 1] [--deployment] \\
        [--modes off/on/'on, fedsgd'] [--repeats N]
    python -m fedsynth.simulations.bench.secure_aggregation utility --data-root ../shared/data \\
        [--datasets movielens,lastfm] [--epsilons 1,2,4,8] [--seeds 0,1,2] [--clients 5] [--threshold T]

``overhead``: one secure sum of D coordinates among K silos run in this process, stage by
stage (keys, shares, masked input, unmask; the server's unmasking apart), seconds and bytes
sent per silo, against the release without secure aggregation (Gaussian noise, D float64s).
``flower``: ``fedsynth train --rounds R`` as a Flower simulation without secure aggregation, with it
(local rounds, every update secure-summed) and with it in ``round-mode fedsgd`` (R FedSGD steps); the
statistics release's and the mean round's seconds (train.json) and the run's wall time. With
``--deployment`` the same modes run as ``fedsynth deploy local`` (SuperLink + one ``fedsynth-node``
per silo as real processes, TLS and node authentication, the full pipeline).
``utility``: the rows whose releases secure aggregation covers, scored on the **test** users of
5 IID silos (no tuning: every setting is the default), NDCG@10 mean over seeds, on vs off:
``fedsynth-prior`` (the pipeline's DP item counts, at its statistics share of ε, the same node
code path as the ClientApp's), ``dp-popularity`` and ``dp-ease`` (full ε each), and the
non-private ``popularity``.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
from flwr.app import ConfigRecord

from fedsynth.client.secure import central_release_variance, secure_release_of
from fedsynth.common.config.run import RunConfig
from fedsynth.common.config.sections import EvalConfig
from fedsynth.common.data.partition import partition_users
from fedsynth.common.data.prepare import prepare
from fedsynth.common.evaluation.scoring import evaluate
from fedsynth.common.privacy.ledger import PrivacyLedger
from fedsynth.common.privacy.plan import plan_privacy
from fedsynth.common.privacy.releases.statistics import noisy_statistics, statistics_contributions, statistics_quantizer
from fedsynth.common.recommenders import MostPopular
from fedsynth.common.recommenders.dp_baselines_secure import secure_release
from fedsynth.common.runtime.seeding import rng_for
from fedsynth.common.secagg.protocol import (
    SecAggNode,
    SecAggParams,
    encode,
    ring_order,
    route,
    signed_key_list,
    unmasked_sum,
)
from fedsynth.common.secagg.signing import NodeSigner
from fedsynth.server.baselines import baseline_recommenders

DATASETS = {"movielens": "ml-latest-small", "lastfm": "lastfm-2k"}
EVAL = EvalConfig(ks=(10,))


def overhead(
    silos: int, dim: int, repeats: int = 3, neighbours: int = 0, dropped: int = 0, signed: bool = False
) -> dict[str, float]:
    """Median seconds per silo of each stage, the server's unmasking, and bytes each silo sends; with SecAgg+'s
    ``neighbours`` per silo (0: all), and ``dropped`` silos lost after the shares stage (the server then
    rebuilds their mask keys and removes their pairwise masks). ``signed``: against an active server (keys
    signed with ECDSA P-384 node keys and checked, a consistency stage; :mod:`fedsynth.common.secagg.signing`)."""
    rng = np.random.default_rng(0)
    values = {n: encode(rng.integers(-(10**6), 10**6, dim), 48) for n in range(silos)}
    stages = ("keys", "shares", "masked-input", "consistency", "unmask", "server", "off")
    times: dict[str, list[float]] = {k: [] for k in stages}
    sent: dict[str, int] = {}
    signers = {n: NodeSigner.generate() for n in values} if signed else None
    for repeat in range(repeats):
        params = SecAggParams(f"bench/{repeat}", silos // 2 + 1, 48, dim, neighbours)
        nodes = {n: SecAggNode(n, params, signed=signed) for n in values}
        order = ring_order(list(values))
        clock = time.perf_counter()
        peers = {n: node.advertise() for n, node in nodes.items()}
        proofs = signed_key_list(params.label, peers, signers) if signers else dict.fromkeys(peers)
        times["keys"].append((time.perf_counter() - clock) / silos)
        clock = time.perf_counter()
        outgoing = {n: node.share(peers, order=order, proof=proofs[n]) for n, node in nodes.items()}
        times["shares"].append((time.perf_counter() - clock) / silos)
        routed = route(outgoing)
        clock = time.perf_counter()
        lost = order[:: max(1, silos // dropped)][:dropped] if dropped else []  # spread over the ring
        masking = [n for n in nodes if n not in lost]
        masked = {n: nodes[n].mask(values[n], routed[n]) for n in masking}
        times["masked-input"].append((time.perf_counter() - clock) / len(masking))
        clock = time.perf_counter()
        confirmations = {n: nodes[n].consistency(sorted(masked), signers[n]) for n in masking} if signers else None
        times["consistency"].append((time.perf_counter() - clock) / len(masking))
        clock = time.perf_counter()
        revealed = {n: nodes[n].unmask(sorted(masked), confirmations) for n in masking}
        times["unmask"].append((time.perf_counter() - clock) / len(masking))
        clock = time.perf_counter()
        unmasked_sum(params, peers, sorted(routed), masked, revealed, order)
        times["server"].append(time.perf_counter() - clock)
        clock = time.perf_counter()
        noise = np.random.default_rng(repeat).normal(0.0, 10.0, (silos, dim))  # the release without SecAgg
        _ = noise.sum(axis=0)
        times["off"].append((time.perf_counter() - clock) / silos)
        sent = {
            "bytes_keys": 64,
            "bytes_shares": sum(len(c) for c in outgoing[0].values()),
            "bytes_masked": 8 * dim,
            "bytes_unmask": sum(len(s) for s in revealed[0].values()),
        }
    result = {f"seconds_{k}": float(np.median(v)) for k, v in times.items()}
    if signers:  # the signer's key and a signature per aggregation; a signature at the consistency stage
        sent["bytes_keys"] += len(signers[0].public) + len(proofs[0].signatures[0])  # type: ignore[union-attr]
    return {"silos": silos, "dim": dim, "neighbours": neighbours, "dropped": dropped, "signed": signed, **result,
            **sent, "bytes_off": 8 * dim}  # fmt: skip


FLOWER_MODES: dict[str, list[str]] = {
    "off": [],
    "on": ["--secure-aggregation"],
    "on, fedsgd": ["--secure-aggregation", "--round-mode", "fedsgd", "--synthesizers", "vae"],
}


# The same modes as run-config keys, for the deployment (``fedsynth deploy local``) runs.
DEPLOYMENT_MODES: dict[str, dict[str, object]] = {
    "off": {},
    "on": {"secure_aggregation": True},
    "on, fedsgd": {"secure_aggregation": True, "round_mode": "fedsgd", "synthesizers": "vae"},
}


def deployed(
    clients: int, rounds: int = 1, modes: list[str] | None = None, users: int = 0
) -> list[dict[str, float | str]]:
    """:func:`flower`'s table for ``fedsynth deploy local`` runs (full pipeline, built-in data, same sizes)."""
    from rich.console import Console

    from fedsynth.simulations.deployment.local import run_local_deployment
    from fedsynth.simulations.jobs import resolve_run_config

    out: list[dict[str, float | str]] = []
    for mode in modes or list(DEPLOYMENT_MODES):
        flags = DEPLOYMENT_MODES[mode]
        with tempfile.TemporaryDirectory() as root:
            given = {"rounds": rounds, "epsilon": 2.0, "gen_users": users or max(943, 150 * clients), **flags}
            settings = resolve_run_config(None, given, Path(root) / "run")
            clock = time.perf_counter()
            run_local_deployment(Console(quiet=True), Path(root) / "run", clients, settings)
            out.append(timings(mode, Path(root) / "run" / "train.json", time.perf_counter() - clock))
    return out


def timings(mode: str, train_json: Path, wall: float) -> dict[str, float | str]:
    """One row of the ``flower`` table from a run's train.json and its wall time: the mean round, the first
    (where a batch of rounds' keys is set up, and the nodes warm up) and the median of the later ones."""
    train = json.loads(train_json.read_text())
    seconds = [r["seconds"] for r in train["rounds"]]
    return {
        "secure_aggregation": mode,
        "statistics_release_seconds": train["statistics_release"].get("seconds", math.nan),
        "round_seconds": sum(seconds) / len(seconds),
        "first_round_seconds": seconds[0],
        "later_rounds_median_seconds": float(np.median(seconds[1:])) if len(seconds) > 1 else math.nan,
        "run_wall_seconds": wall,
    }


def flower(
    clients: int, rounds: int = 1, modes: list[str] | None = None, users: int = 0
) -> list[dict[str, float | str]]:
    """The statistics release, mean round and whole-run seconds of one Flower simulation (``fedsynth train``
    on the built-in data, 150 users per client from 7 clients on) per mode: SecAgg off, on (local rounds),
    on with FedSGD rounds."""
    out: list[dict[str, float | str]] = []
    for mode in modes or list(FLOWER_MODES):
        flags = FLOWER_MODES[mode]
        with tempfile.TemporaryDirectory() as root:
            args = [sys.executable, "-c", "from fedsynth.simulations.cli import main; main()", "train", "--clients",
                    str(clients), "--rounds", str(rounds), "--epsilon", "2", "--out", f"{root}/run",
                    "--gen-users", str(users or max(943, 150 * clients))]  # fmt: skip
            clock = time.perf_counter()
            subprocess.run([*args, *flags], check=True, capture_output=True)
            out.append(timings(mode, Path(f"{root}/run/train.json"), time.perf_counter() - clock))
    return out


def secure_prior(rows: list[sp.csr_matrix], config: RunConfig) -> np.ndarray:
    """The pipeline's DP item counts under SecAgg: each silo's Skellam share as its ClientApp calibrates it."""
    privacy, local = config.privacy(), config.local()
    quantizer = statistics_quantizer(privacy.statistics_clip, rows[0].shape[1])
    variances = []
    for r in rows:
        plan = plan_privacy(privacy, r.shape[0], local, config.num_server_rounds)
        ledger = PrivacyLedger(Path("unsaved"), "bench", plan.delta, privacy.target_epsilon, "bench")
        release = secure_release_of(ConfigRecord(), plan, config, r.shape[1])
        variances.append(central_release_variance(ledger, plan, release, config.num_server_rounds))
    blocks = [iter([statistics_contributions(r, privacy.statistics_clip)]) for r in rows]
    total, _ = secure_release(blocks, quantizer, max(variances), config.threshold_for(len(rows)), "bench-prior")
    return total[: rows[0].shape[1]]


def local_prior(rows: list[sp.csr_matrix], config: RunConfig, seed: int) -> np.ndarray:
    privacy, local = config.privacy(), config.local()
    counts = np.zeros(rows[0].shape[1])
    for index, r in enumerate(rows):
        plan = plan_privacy(privacy, r.shape[0], local, config.num_server_rounds)
        rng = rng_for(seed, f"bench-prior-{index}")
        counts += noisy_statistics(r, privacy.statistics_clip, plan.statistics_noise, rng).item_counts
    return counts


def utility_rows(config: RunConfig, clients: int) -> dict[str, float]:
    """NDCG@10 on the test users of the rows secure aggregation covers, for ``config`` (on or off)."""
    prepared = prepare(config.data())
    parts = partition_users(prepared.interactions, prepared.split, config.partitioning(clients))
    rows = [prepared.interactions.matrix[c.train_users] for c in parts]
    privacy = config.privacy()
    deltas = [privacy.delta_for(r.shape[0]) for r in rows]
    recommenders, _ = baseline_recommenders(rows, privacy.target_epsilon, deltas, config, config.seed)
    prior = secure_prior(rows, config) if config.secure_aggregation else local_prior(rows, config, config.seed)
    recommenders["fedsynth-prior"] = MostPopular.from_counts(prior)
    recommenders["popularity"] = MostPopular().fit(prepared.split.train)
    return {name: evaluate(r, prepared.split.test, EVAL)["ndcg@10"] for name, r in recommenders.items()}


def utility(
    data_root: Path, datasets: list[str], epsilons: list[float], seeds: list[int], clients: int, threshold: int = 0
) -> pd.DataFrame:
    records = []
    for dataset in datasets:
        base = RunConfig(dataset=dataset, data_path=str(data_root / DATASETS[dataset]), secagg_threshold=threshold)
        for epsilon, seed, secure in ((e, s, on) for e in epsilons for s in seeds for on in (False, True)):
            config = replace(base, epsilon=epsilon, seed=seed, secure_aggregation=secure)
            for row, value in utility_rows(config, clients).items():
                records.append({"dataset": dataset, "epsilon": epsilon, "seed": seed, "secure": secure, "row": row,
                                "ndcg@10": value})  # fmt: skip
    frame = pd.DataFrame(records)
    return frame.groupby(["dataset", "row", "epsilon", "secure"])["ndcg@10"].mean().unstack(["epsilon", "secure"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("part", choices=["overhead", "flower", "utility"])
    parser.add_argument("--silos", default="5,20")
    parser.add_argument("--dims", default="1500,20000")
    parser.add_argument("--neighbours", default="0", help="overhead: SecAgg+ neighbours per silo, comma-separated")
    parser.add_argument("--dropped", type=int, default=0, help="overhead: silos lost after the shares stage")
    parser.add_argument("--signed", default="no", help="overhead: no, yes or no,yes (side by side)")
    parser.add_argument("--clients", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=1, help="flower: rounds (FedSGD steps) per run")
    parser.add_argument("--data-root", type=Path, default=Path("../shared/data"))
    parser.add_argument("--datasets", default="movielens,lastfm")
    parser.add_argument("--epsilons", default="1,2,4,8")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--threshold", type=int, default=0, help="secagg-threshold (0: a majority)")
    parser.add_argument("--deployment", action="store_true", help="flower: as fedsynth deploy local runs")
    parser.add_argument("--modes", default="", help="flower: some of off,on,'on, fedsgd' separated by '/' (all)")
    parser.add_argument("--repeats", type=int, default=1, help="flower: runs per mode, the modes interleaved")
    parser.add_argument("--users", type=int, default=0, help="flower: generated users (0: max(943, 150 x clients))")
    args = parser.parse_args()
    pd.set_option("display.width", 200)
    if args.part == "overhead":
        grid = [(int(k), int(d), int(n), s == "yes") for k in args.silos.split(",") for d in args.dims.split(",")
                for n in args.neighbours.split(",") for s in args.signed.split(",")]  # fmt: skip
        rows = [overhead(k, d, neighbours=n, dropped=args.dropped, signed=s) for k, d, n, s in grid]
        print(pd.DataFrame(rows).to_string(index=False))
    elif args.part == "flower":
        modes = args.modes.split("/") if args.modes else list(FLOWER_MODES)
        unknown = sorted(set(modes) - set(FLOWER_MODES))
        if unknown:
            parser.error(f"--modes: unknown {unknown}; choose from {list(FLOWER_MODES)} separated by '/'")
        run = deployed if args.deployment else flower
        measured = [row for _ in range(args.repeats) for row in run(args.clients, args.rounds, modes, args.users)]
        table = pd.DataFrame(measured)
        print(table.to_string(index=False))
        if args.repeats > 1:
            print("medians:")
            print(table.groupby("secure_aggregation", sort=False).median().to_string())
    else:
        table = utility(args.data_root, args.datasets.split(","), [float(e) for e in args.epsilons.split(",")],
                        [int(s) for s in args.seeds.split(",")], args.clients, args.threshold)  # fmt: skip
        print(table.round(4).to_string())


if __name__ == "__main__":
    main()
