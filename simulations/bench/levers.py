"""Which settings move synthetic-data utility under DP: a fast in-process federation, scored on validation users.

    python -m fedsynth.simulations.bench.levers --dataset movielens --data-path ../shared/data/ml-latest-small \\
        --epsilon 8 --set local-epochs=1,3 --set vae-batch-size=32,64 --seeds 0,1

The clients' code path without Flower's transport: every client calibrates its plan and
releases its DP statistics exactly as the ClientApp does (``plan_privacy``,
``noisy_statistics``, ``train_local_round``), the server averages the
models weighted by users (FedAvg; FedProx's term and FedAdam's server step when
``strategy`` says so), then synthesizes and trains EASE on the synthetic users. Every
setting is scored by NDCG@10 on the **validation** users (never the test users), so this
is the selection tool; its privacy cost is that of looking at validation users, which the
final benchmark does not reuse. The GAN is trained too when ``synthesizers`` includes
``gan`` (its row: ``synthetic-gan/ease``).

Prints one row per setting: NDCG@10 of synthetic/ease, fedvae, the DP baselines at the
same ε, and the non-private real/ease, averaged over seeds.
"""

from __future__ import annotations

import argparse
import itertools
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
from flwr.app import ArrayRecord, ConfigRecord

from fedsynth.client.attack import MaliciousSilo, malicious_silo, silo_rows, tampered_train_reply
from fedsynth.client.round import local_training
from fedsynth.client.secure import central_release_variance, fedsgd_release
from fedsynth.client.training import RoundSeeds
from fedsynth.common.config.run import RunConfig
from fedsynth.common.config.sections import EvalConfig
from fedsynth.common.data.partition import partition_users
from fedsynth.common.data.prepare import PreparedData, prepare
from fedsynth.common.data.split import HeldOutUsers
from fedsynth.common.evaluation.scoring import evaluate
from fedsynth.common.federated import wire
from fedsynth.common.federated.protocol import Identity, Spent, TrainReply
from fedsynth.common.models.bundle import ModelBundle
from fedsynth.common.privacy.dpsgd.fedsgd import (
    apply_gradient,
    clipped_gradient_sum,
    gradient_quantizer,
    poisson_sample,
)
from fedsynth.common.privacy.ledger import PrivacyLedger
from fedsynth.common.privacy.plan import PrivacyPlan, plan_privacy
from fedsynth.common.privacy.releases.cooccurrence import (
    NoisyCooccurrence,
    marginal_items,
    noisy_cooccurrence,
    signal_rank_of,
)
from fedsynth.common.privacy.releases.statistics import NoisyStatistics, noisy_statistics
from fedsynth.common.recommenders import EASE, MostPopular, MultVAERecommender, Recommender
from fedsynth.common.robustness.attacks import inflate_counts, target_items, target_share
from fedsynth.common.robustness.rules import robust_statistics, robust_total
from fedsynth.common.runtime.seeding import rng_for, seed_for
from fedsynth.common.secagg.skellam import skellam_noise
from fedsynth.common.synthesis.sampling import synthesize
from fedsynth.server.aggregation import ClientReply, RoundOutcome
from fedsynth.server.baselines import baseline_recommenders
from fedsynth.server.federation import cooccurrence_expected_to_pay, fitted_bundle
from fedsynth.server.fedsgd import fedsgd_optimizer
from fedsynth.server.round import RoundPlan, aggregate_train, run_rounds

EVAL = EvalConfig(ks=(10,))


@dataclass
class Federation:
    """What an in-process federation produced: data, the clients' rows and plans, statistics, global models."""

    prepared: PreparedData
    rows: list[sp.csr_matrix]
    plans: list[PrivacyPlan]
    statistics: NoisyStatistics
    bundle: ModelBundle
    signal_rank: int = 0  # the released co-occurrence's directions above its noise (EASE's λ on synthetic users)
    targets: np.ndarray | None = None  # an attack's target items (``attack`` set), as the cheating silos hold them


def federate(config: RunConfig, seed: int, num_clients: int) -> dict[str, float]:
    """Train, synthesize and score one configuration; NDCG@10 per row on validation users."""
    config = replace(config, seed=seed)
    federation = train(config, seed, num_clients)
    return score_rows(federation, config, federation.prepared.split.validation, seed)


def score_rows(federation: Federation, config: RunConfig, held_out: HeldOutUsers, seed: int) -> dict[str, float]:
    """NDCG@10 on ``held_out`` of synthetic/ease (VAE synthesizer), fedvae, the DP baselines, MostPopular, real/ease."""
    return {label: metrics["ndcg@10"] for label, metrics in row_metrics(federation, config, held_out, seed).items()}


def row_metrics(
    federation: Federation, config: RunConfig, held_out: HeldOutUsers, seed: int, targets: tuple[int, ...] = ()
) -> dict[str, dict[str, float]]:
    """Every row's metrics @10 on ``held_out`` (with ``targets``: their hit rate too, and the target items' share
    of the synthetic data as row ``synthetic data``)."""
    rows, statistics, bundle = federation.rows, federation.statistics, federation.bundle
    num_items = rows[0].shape[1]
    privacy = config.privacy()
    synthesis = config.synthesis(statistics.users())
    synthetic = synthesize(bundle, "vae", statistics.length_sampler(num_items), synthesis, seed)
    real = federation.prepared.split.train
    l2 = config.synthetic_ease_l2_for(federation.signal_rank)
    candidates: dict[str, Recommender] = {
        "synthetic/ease": EASE(l2).fit(synthetic),
        **(
            {
                "synthetic-gan/ease": EASE(l2).fit(
                    synthesize(bundle, "gan", statistics.length_sampler(num_items), synthesis, seed)
                )
            }
            if "gan" in config.synthesizer_names()
            else {}
        ),
        "fedvae": MultVAERecommender.from_model(bundle.vae),
        "popularity": MostPopular().fit(real),
        "real/ease": EASE(config.ease_l2).fit(real),
    }
    if privacy.private:
        deltas = [privacy.delta_for(r.shape[0]) for r in rows]
        candidates.update(baseline_recommenders(rows, privacy.target_epsilon, deltas, config, seed)[0])
    settings = EvalConfig(ks=EVAL.ks, targets=targets)
    scored = {label: evaluate(model, held_out, settings) for label, model in candidates.items()}
    if targets:
        scored["synthetic data"] = {"target-share": target_share(synthetic, np.asarray(targets))}
    return scored


def train(config: RunConfig, seed: int, num_clients: int) -> Federation:
    """The clients' statistics release and ``num-server-rounds`` rounds of DP Mult-VAE training, aggregated as
    the server does; silos ``partition-id < attack-clients`` cheat when the config names an ``attack``."""
    prepared = prepare(config.data())
    clients = partition_users(prepared.interactions, prepared.split, config.partitioning(num_clients))
    attack = config.attacks()
    targets = target_items(prepared.interactions.matrix, attack.targets, seed) if attack.targets else None
    silos = [malicious_silo(attack, targets, k, seed) for k in range(len(clients))]  # simulated cheats (attack)
    rows = [silo_rows(prepared.interactions.matrix[c.train_users], s) for c, s in zip(clients, silos, strict=True)]
    num_items = rows[0].shape[1]
    privacy, local = config.privacy(), config.local()
    plans = [plan_privacy(privacy, r.shape[0], local, config.num_server_rounds) for r in rows]
    statistics, pairs = plain_releases(rows, plans, config, seed, silos)
    bundle = fitted_bundle(config, num_items, statistics, pairs)
    federated_rounds(bundle, rows, plans, config, seed, silos)
    return Federation(prepared, rows, plans, statistics, bundle, signal_rank_of(pairs), targets)


def plain_releases(
    rows: list[sp.csr_matrix],
    plans: list[PrivacyPlan],
    config: RunConfig,
    seed: int,
    silos: Sequence[MaliciousSilo | None] = (),
) -> tuple[NoisyStatistics, NoisyCooccurrence | None]:
    """Each client's Gaussian releases, totalled as the server does (``robust-aggregation``): the statistics,
    then the co-occurrence when planned (or, below its noise, the statistics again, combined). A cheating
    silo in ``silos`` lies as the ClientApp's would."""
    clip, robust = config.privacy().statistics_clip, config.robust()
    users = [r.shape[0] for r in rows]
    parts = [
        noisy_statistics(r, clip, p.statistics_noise if p.private else 0.0, rng_for(seed, f"stats-{k}"))
        for k, (r, p) in enumerate(zip(rows, plans, strict=True))
    ]
    statistics = robust_statistics(as_sent(parts, silos, users), users, robust)
    if not config.marginal_items:
        return statistics, None
    items = marginal_items(statistics.item_counts, config.marginal_items)
    if not cooccurrence_expected_to_pay(config, statistics, items, len(rows)):  # its budget on the first order
        again = [
            noisy_statistics(r, clip, p.cooccurrence_noise if p.private else 0.0, rng_for(seed, f"again-{k}"))
            for k, (r, p) in enumerate(zip(rows, plans, strict=True))
        ]
        return statistics.combined(robust_statistics(as_sent(again, silos, users), users, robust)), None
    pairs = [
        noisy_cooccurrence(r, items, p.cooccurrence_noise if p.private else 0.0, rng_for(seed, f"pairs-{k}"))
        for k, (r, p) in enumerate(zip(rows, plans, strict=True))
    ]
    matrix, pair_noise = robust_total([p.matrix for p in pairs], users, [p.noise_std for p in pairs], robust)
    return statistics, NoisyCooccurrence(items, matrix, pair_noise)


def as_sent(
    parts: list[NoisyStatistics], silos: Sequence[MaliciousSilo | None], users: list[int]
) -> list[NoisyStatistics]:
    """Each client's first-order release as it is sent: a cheating silo inflates its targets' counts."""
    sent = list(parts)
    for k, silo in enumerate(silos):
        if silo is not None and silo.attack.kind == "inflated-counts":
            counts = inflate_counts(sent[k].item_counts, silo.targets, users[k])
            sent[k] = NoisyStatistics(counts, sent[k].length_histogram, sent[k].noise_std)
    return sent


def federated_rounds(
    bundle: ModelBundle,
    rows: list[sp.csr_matrix],
    plans: list[PrivacyPlan],
    config: RunConfig,
    seed: int,
    silos: Sequence[MaliciousSilo | None] = (),
) -> None:
    """``num-server-rounds`` rounds of every client's local DP-SGD round from ``bundle``, aggregated as the
    server does (FedAvg by users, or ``robust-aggregation``), in place; cheating ``silos`` tamper as the
    ClientApp's would."""
    if config.round_mode == "fedsgd":
        federated_steps(bundle, rows, plans, config, seed)
        return
    transport = InProcessRound(rows, plans, config, seed, list(silos) + [None] * (len(rows) - len(silos)))
    arrays, _ = run_rounds(transport, config, list(range(len(rows))), ArrayRecord(bundle.state_dict()), Identity())
    bundle.load_state_dict(arrays.to_torch_state_dict())


@dataclass
class InProcessRound:
    """The round transport of the in-process federation: each sampled silo runs the node's own step
    (:func:`fedsynth.client.round.local_training`, its own reproducible seeds) and replies as the ClientApp
    does (a cheating silo tampers), then the server's :func:`fedsynth.server.round.aggregate_train`.
    No ledger: a benchmark spends nothing on disk."""

    rows: list[sp.csr_matrix]
    plans: list[PrivacyPlan]
    config: RunConfig
    seed: int
    silos: list[MaliciousSilo | None]

    def connected(self) -> set[int]:
        return set(range(len(self.rows)))

    def train(self, plan: RoundPlan) -> RoundOutcome:
        request, server_round, replies = plan.request, plan.request.server_round, []
        for index in plan.sampled:
            rows, node_plan = self.rows[index], self.plans[index]
            seeds = RoundSeeds.for_round(server_round, seed_for(self.seed, f"silo-{index}"))  # each silo its own noise
            trained, _, _ = local_training(request, rows, self.config, node_plan, seeds)
            spent = Spent(num_examples=rows.shape[0], epsilon=0.0, delta=node_plan.delta, epsilon_own_noise=0.0)
            reply = TrainReply(ArrayRecord(trained), spent).to_record()
            replies.append(ClientReply(index, tampered_train_reply(reply, request.to_record(), self.silos[index])))
        return aggregate_train(server_round, replies, request.arrays, self.config.robust())


def federated_steps(
    bundle: ModelBundle, rows: list[sp.csr_matrix], plans: list[PrivacyPlan], config: RunConfig, seed: int
) -> None:
    """round-mode fedsgd in process: per round, every client's rounded clipped gradient sum of its Poisson sample
    plus its Skellam share Sk(V/t), summed (what the secure sum unmasks: the masks cancel exactly, see
    tests/test_fedsgd.py), then the server's Adam step, in place. Each client's V is calibrated by the
    ClientApp's own ``central_release_variance`` (here from an empty ledger), the largest taken."""
    num_items, vae, clip = rows[0].shape[1], config.local().vae, config.max_grad_norm
    steps, threshold = config.num_server_rounds, config.threshold_for(len(rows))
    request = ConfigRecord({wire.SERVER_ROUND: 1})
    variance = max(
        central_release_variance(
            PrivacyLedger(Path("unsaved"), "bench", p.delta, config.privacy().target_epsilon, "bench"),
            p, fedsgd_release(request, p, config, num_items, None), steps,
        )
        for p in plans
    )  # fmt: skip
    quantizer = gradient_quantizer(num_items, vae, clip)
    optimizer = fedsgd_optimizer(bundle, config, None)
    rng, users = rng_for(seed, "fedsgd-steps"), sum(r.shape[0] for r in rows)
    for server_round in range(1, steps + 1):
        total = np.zeros(quantizer.dim, dtype=np.int64)
        for r in rows:
            torch.manual_seed(int(rng.integers(2**62)))
            batch = poisson_sample(r, config.fedsgd_sample_rate, rng)
            total += quantizer.round_sum(clipped_gradient_sum(bundle.vae, batch, clip, vae, server_round))
            total += skellam_noise(variance / threshold, quantizer.dim, rng)
        apply_gradient(bundle.vae, optimizer, total / quantizer.scale, config.fedsgd_sample_rate * users)


def parse_settings(values: list[str]) -> list[dict[str, str]]:
    """``KEY=V1,V2`` options → every combination as {key: value}."""
    axes = []
    for value in values:
        key, _, options = value.partition("=")
        axes.append([(key, option) for option in options.split(",")])
    return [dict(combination) for combination in itertools.product(*axes)] if axes else [{}]


def federation_parser(description: str | None) -> argparse.ArgumentParser:
    """The options every in-process federation bench takes: data, ε, seeds, clients, fixed run-config values."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="generated")
    parser.add_argument("--data-path", default="")
    parser.add_argument("--epsilon", type=float, default=8.0)
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--clients", type=int, default=5)
    parser.add_argument("--base", action="append", default=[], help="KEY=VALUE fixed run-config values")
    return parser


def main() -> None:
    parser = federation_parser(__doc__)
    parser.add_argument("--set", action="append", default=[], help="KEY=V1,V2 run-config values to compare")
    args = parser.parse_args()
    base: dict[str, Any] = {"dataset": args.dataset, "data-path": args.data_path, "epsilon": args.epsilon}
    base.update(dict(v.partition("=")[::2] for v in args.base))
    rows = []
    for setting in parse_settings(args.set):
        for seed in (int(s) for s in args.seeds.split(",")):
            started = time.perf_counter()
            config = RunConfig.from_run_config({**base, **setting})
            scores = federate(config, seed, args.clients)
            row: dict[str, Any] = {**setting, "seed": seed, **scores, "seconds": time.perf_counter() - started}
            rows.append(row)
            print({k: (round(v, 4) if isinstance(v, float) else v) for k, v in rows[-1].items()}, flush=True)
    frame = pd.DataFrame(rows)
    keys = list(parse_settings(args.set)[0])
    summary = frame.drop(columns=["seed"]).groupby(keys, sort=False).mean() if keys else frame.mean(numeric_only=True)
    print(f"NDCG@10 on validation users, ε = {args.epsilon:g}, mean over seeds {args.seeds}:")
    print(summary.round(4).to_string())


if __name__ == "__main__":
    main()
