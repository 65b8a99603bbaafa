"""The privacy accountants side by side: the noise a plan needs, and the ε the same events spend, RDP vs PLD.

    python -m fedsynth.simulations.bench.accounting [--config pyproject.toml] [--clients 5] [--users N] [--epsilons 1,8]

The plan is the run's (:func:`fedsynth.common.privacy.plan.plan_privacy`) for one silo of the default run:
the settings of ``[tool.flwr.app.config]`` in ``--config``, ``--clients`` silos of the built-in data
(``--users N``: the silo's users instead of the median of the partition the run makes, read from the
data pipeline). For each target ε it calibrates the plan twice: under Opacus' RDP (before: how
fedsynth calibrated every plan, and still does under secure aggregation, whose Skellam events only
RDP composes) and under dp-accounting's PLD (after: how a plan of Gaussian events is calibrated and
reported now). Prints each plan's noise multipliers, its composed ε under both accountants and the
seconds it took, then the textbook example q = 0.25, σ = 1, 20 steps, δ = 1e-5.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time
import warnings
from dataclasses import replace
from pathlib import Path

from fedsynth.common.config.run import RunConfig
from fedsynth.common.privacy.accounting import Accountant, DPEvent, epsilon, epsilon_rdp
from fedsynth.common.privacy.crosscheck import dp_accounting_epsilon
from fedsynth.common.privacy.plan import PrivacyPlan, plan_privacy
from fedsynth.simulations.jobs import read_config_file

PARTS = ("statistics", "cooccurrence", "vae", "gan", "evaluation")
CALIBRATIONS: tuple[tuple[Accountant, str], ...] = (("rdp", "RDP before"), ("pld", "PLD after"))


def silo_users(config: RunConfig, clients: int) -> list[int]:
    """The training users of each of ``clients`` silos, partitioned as the run partitions them."""
    from fedsynth.common.data.partition import partition_users
    from fedsynth.common.data.prepare import prepare

    prepared = prepare(config.data())
    return [
        len(c.train_users) for c in partition_users(prepared.interactions, prepared.split, config.partitioning(clients))
    ]


def noises(plan: PrivacyPlan) -> dict[str, float]:
    return {
        "statistics": plan.statistics_noise,
        "cooccurrence": plan.cooccurrence_noise,
        "vae": plan.vae_noise,
        "gan": plan.gan_noise,
        "evaluation": plan.evaluation_noise,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=Path("pyproject.toml"), help="run-config keys (TOML)")
    parser.add_argument("--clients", type=int, default=5)
    parser.add_argument("--users", type=int, default=0, help="users per silo (0: the median silo of the run's data)")
    parser.add_argument("--epsilons", default="1,8", help="comma-separated target epsilons")
    args = parser.parse_args()
    warnings.filterwarnings("ignore", message="Optimal order is the smallest alpha")  # Opacus, at large ε
    logging.getLogger("absl").setLevel(logging.ERROR)  # dp-accounting's RDP: orders whose series do not converge
    base = RunConfig.from_run_config(read_config_file(args.config) if args.config.is_file() else {})
    if args.users:
        users, where = args.users, "--users"
    else:
        per_silo = silo_users(base, args.clients)
        users, where = int(statistics.median(per_silo)), f"median of the silos' {per_silo}"
    rounds, local = base.num_server_rounds, base.local()
    print(
        f"plan of one silo: {users} users ({where}), {args.clients} silos of {base.dataset} data, {rounds} rounds; "
        f"batch {local.vae.batch_size}, {local.local_epochs} epoch(s) and {local.discriminator_steps} GAN steps "
        "a round"
    )
    print(
        f"{'ε':>4} {'calibrated':<11}" + "".join(f"{'σ ' + p:>15}" for p in PARTS) + f"{'ε PLD':>9}{'ε RDP':>9}{'s':>7}"
    )
    for target in (float(e) for e in args.epsilons.split(",")):
        config = replace(base, epsilon=target)
        for accountant, label in CALIBRATIONS:
            clock = time.perf_counter()
            plan = plan_privacy(config.privacy(), users, config.local(), rounds, accountant=accountant)
            seconds = time.perf_counter() - clock
            events = plan.run_events(True, rounds)
            pld, rdp = epsilon(events, plan.delta, accountant="pld"), epsilon_rdp(events, plan.delta)
            sigmas = "".join(f"{noises(plan)[p]:>15.4f}" for p in PARTS)
            print(f"{target:>4g} {label:<11}{sigmas}{pld:>9.4f}{rdp:>9.4f}{seconds:>7.2f}", flush=True)
        print(f"     (δ = {plan.delta:.3g}; steps: vae {plan.vae_steps * rounds} at q = {plan.vae_rate:.4f}, "
              f"gan {plan.gan_steps * rounds} at q = {plan.gan_rate:.4f}, evaluation {plan.evaluation_releases} "
              "releases at q = 1)")  # fmt: skip
    example = [DPEvent("example", 1.0, 0.25, 20)]
    print(
        "q = 0.25, σ = 1, 20 steps, δ = 1e-5: "
        f"RDP {epsilon_rdp(example, 1e-5):.2f} (Opacus), {dp_accounting_epsilon(example, 1e-5):.2f} (dp-accounting); "
        f"PLD {epsilon(example, 1e-5):.2f} (dp-accounting)"
    )


if __name__ == "__main__":
    main()
