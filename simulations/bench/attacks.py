"""Malicious silos: every attack × defence, utility and promotion, measured side by side (simulation only).

    python -m fedsynth.simulations.bench.attacks --epsilon 8 --seeds 0,1
    python -m fedsynth.simulations.bench.attacks --dataset movielens --data-path ../shared/data/ml-latest-small \\
        --attacks none,target-items --defences none,median --epsilon inf

Each cell is an in-process federation (:mod:`fedsynth.simulations.bench.levers`: the clients' own code
for releases and DP-SGD, the server's own totals and aggregation rules, and the ClientApp's own
tampering), with ``--clients`` silos of which ``--attack-clients`` cheat. Printed per
attack × defence, averaged over seeds, on the **test** users (a measurement, not a tuning run):

* ``ndcg@10`` of ``synthetic/ease`` and ``fedvae`` (utility), and of ``dp-ease`` (computed from the
  silos' data: poisoned under ``target-items``, never lied about);
* ``target_share``: the target items' share of the synthetic interactions;
* ``target_hit@10``: share of real test users whose top-10 from ``synthetic/ease`` holds a target;
* the ratios to the clean cell (attack ``none``, same defence): the goals are, without defence,
  target hit ≥ 5× clean and scaled-update NDCG ≤ 0.5× clean; with the matching defence, NDCG ≥
  0.9× and target hit ≤ 2× the clean run without defence.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

import pandas as pd

from fedsynth.common.config.run import RunConfig, epsilon_setting
from fedsynth.common.errors import ConfigError
from fedsynth.common.robustness.attacks import ATTACKS
from fedsynth.common.robustness.rules import ROBUST_AGGREGATIONS
from fedsynth.simulations.bench.levers import federation_parser, row_metrics, train

ROWS = ("synthetic/ease", "fedvae", "dp-ease")


def cell(config: RunConfig, seed: int, clients: int) -> dict[str, float]:
    """One attack × defence × seed: utility and promotion numbers on the test users."""
    config = replace(config, seed=seed)
    federation = train(config, seed, clients)
    assert federation.targets is not None, "the bench always names attack-targets"
    targets = tuple(int(i) for i in federation.targets)
    scored = row_metrics(federation, config, federation.prepared.split.test, seed, targets)
    out = {f"{row} ndcg@10": scored[row]["ndcg@10"] for row in ROWS if row in scored}
    out["target_share"] = scored["synthetic data"]["target-share"]
    out["target_hit@10"] = scored["synthetic/ease"]["target-hitrate@10"]
    out["test_users"] = len(federation.prepared.split.test)
    return out


def with_ratios(frame: pd.DataFrame) -> pd.DataFrame:
    """Each cell's NDCG and target-hit ratios to the clean run (attack none, defence none); a clean hit rate
    of 0 is floored at one test user's hit (1 / test users), so the ratios stay finite."""
    clean = {column: float(frame[column].loc[("none", "none")]) for column in frame.columns}
    ratios = frame.drop(columns=["test_users"])
    ratios["ndcg ÷ clean"] = frame["synthetic/ease ndcg@10"] / clean["synthetic/ease ndcg@10"]
    ratios["hit ÷ clean"] = frame["target_hit@10"] / max(clean["target_hit@10"], 1.0 / clean["test_users"])
    return ratios


def check_names(values: list[str], allowed: tuple[str, ...], option: str) -> list[str]:
    for value in values:
        if value not in allowed:
            raise ConfigError(f"{option} {value!r}: choose from {', '.join(allowed)}.")
    return values


def main() -> None:
    parser = federation_parser(__doc__)
    parser.add_argument("--attacks", default=",".join(ATTACKS))
    parser.add_argument("--defences", default="none,norm-bound,median,trimmed-mean,krum,multikrum")
    args = parser.parse_args()
    attacks = check_names(args.attacks.split(","), ATTACKS, "--attacks")
    defences = check_names(args.defences.split(","), ROBUST_AGGREGATIONS, "--defences")
    base: dict[str, Any] = {"dataset": args.dataset, "data-path": args.data_path, "synthesizers": "vae"}
    base.update({"epsilon": epsilon_setting(args.epsilon), "attack-targets": 5})
    base.update(dict(v.partition("=")[::2] for v in args.base))
    rows = []
    for attack in ["none", *(a for a in attacks if a != "none")]:
        for defence in ["none", *(d for d in defences if d != "none")]:
            config = RunConfig.from_run_config({**base, "attack": attack, "robust-aggregation": defence})
            for seed in (int(s) for s in args.seeds.split(",")):
                started = time.perf_counter()
                row = {"attack": attack, "defence": defence, "seed": seed, **cell(config, seed, args.clients)}
                row["seconds"] = time.perf_counter() - started
                rows.append(row)
                print({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}, flush=True)
    frame = pd.DataFrame(rows).drop(columns=["seed"]).groupby(["attack", "defence"], sort=False).mean()
    print(f"\n{args.dataset}, {args.clients} silos, ε = {args.epsilon:g}, seeds {args.seeds}, test users:")
    print(with_ratios(frame).round(4).to_string())


if __name__ == "__main__":
    main()
