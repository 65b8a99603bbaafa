"""The ``fedsynth`` command.

Commands: ``run`` (the main job), ``train`` (federated training only), ``sweep`` (ε × seed ×
grid cells with audits and a privacy-utility report), ``audit`` (membership inference on a
finished run), ``baseline``
(real-data upper bounds), ``data`` (load, clean, split, partition and print what happened),
``download`` (fetch a MovieLens release into the cache), ``settings`` (every run setting, as
pyproject.toml's block or docs/settings.md).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click
from rich.console import Console

from fedsynth.common.config.sections import EvalConfig
from fedsynth.common.errors import FedsynthError
from fedsynth.common.models.vae import MultVAEConfig
from fedsynth.common.recommenders.registry import RECOMMENDER_NAMES
from fedsynth.simulations.options import data_options, partition_options, run_options

_CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 110}


@click.group(context_settings=_CONTEXT)
@click.version_option(package_name="fedsynth")
def cli() -> None:
    """fedsynth: federated, differentially private synthetic data for recommender systems."""


def _ks(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(k) for k in text.split(",") if k.strip())
    except ValueError as exc:
        raise click.BadParameter(f"expected comma-separated integers, got {text!r}", param_hint="--ks") from exc


@cli.command(context_settings=_CONTEXT)
@data_options
@click.option(
    "--recommenders",
    default=",".join(RECOMMENDER_NAMES),
    show_default=True,
    help="Comma-separated: popularity, itemknn, ease, multvae.",
)
@click.option("--ks", default="10,20,50,100", show_default=True, help="Cut-offs K of the ranking metrics.")
@click.option("--ease-l2", type=float, default=300.0, show_default=True, help="EASE regularisation λ.")
@click.option("--knn-neighbours", type=int, default=100, show_default=True, help="ItemKNN neighbourhood size.")
@click.option("--vae-epochs", type=int, default=MultVAEConfig.epochs, show_default=True, help="Mult-VAE epochs.")
@click.option(
    "--vae-hidden", default="600", show_default=True, help="Mult-VAE hidden sizes, comma-separated (decoder mirrors)."
)
@click.option(
    "--vae-latent", type=int, default=MultVAEConfig.latent_dim, show_default=True, help="Mult-VAE latent size."
)
@click.option("--device", default="cpu", show_default=True, help="Torch device for Mult-VAE: cpu or cuda.")
@click.option(
    "--out", type=click.Path(path_type=Path), default=Path("runs/baseline"), show_default=True, help="Output folder."
)
def baseline(
    settings: Any,
    recommenders: str,
    ks: str,
    ease_l2: float,
    knn_neighbours: int,
    vae_epochs: int,
    vae_hidden: str,
    vae_latent: int,
    device: str,
    out: Path,
    seed: int,
) -> None:
    """Train the central recommenders on real training users and evaluate them on real test users.

    Writes OUT/baseline.json: the protocol (settings, data summary, cleaning report) and
    each recommender's Recall/NDCG/HitRate/coverage@K. These are the non-private upper bounds.
    """
    from fedsynth.simulations.console import print_data_report, print_results
    from fedsynth.simulations.experiments.upper_bounds import UpperBoundConfig, run_baseline, save_baseline

    console = Console()
    config = UpperBoundConfig(
        recommenders=tuple(r.strip() for r in recommenders.split(",") if r.strip()),
        ease_l2=ease_l2,
        knn_neighbours=knn_neighbours,
        vae=MultVAEConfig(
            epochs=vae_epochs,
            hidden_dims=tuple(int(h) for h in vae_hidden.split(",") if h.strip()),
            latent_dim=vae_latent,
            seed=seed,
        ),
        eval=EvalConfig(ks=_ks(ks)),
        device=device,
    )
    from fedsynth.common.data.prepare import prepare

    with console.status("loading and preparing data"):
        prepared = prepare(settings)
    print_data_report(console, prepared)

    def progress(name: str, metrics: dict[str, float], seconds: float) -> None:
        console.print(f"  {name:<11} ndcg@10 {metrics.get('ndcg@10', float('nan')):.4f}  ({seconds:.1f} s)")

    payload = run_baseline(settings, config, prepared, on_result=progress)
    print_results(console, payload["results"], f"Test users ({payload['protocol']['split']['test_users']:,})")
    path = save_baseline(payload, out)
    console.print(f"wrote {path}")


@cli.command(context_settings=_CONTEXT)
@data_options
@partition_options
@click.option(
    "--out", type=click.Path(path_type=Path), default=None, help="Write data_summary.json and partitions.* here."
)
def data(settings: Any, partition: Any, out: Path | None, seed: int) -> None:
    """Load, clean, split and partition the data; print (and save) what each step did."""
    from fedsynth.common.data.partition import partition_table, partition_users, save_partitions
    from fedsynth.common.data.prepare import prepare
    from fedsynth.common.runtime.files import write_json_atomic
    from fedsynth.simulations.console import print_data_report, print_frame

    console = Console()
    prepared = prepare(settings)
    print_data_report(console, prepared)
    clients = partition_users(prepared.interactions, prepared.split, partition)
    scheme = partition.scheme + (f" α={partition.alpha} by {partition.by}" if partition.scheme == "dirichlet" else "")
    scheme += f" by {partition.by} (one client per value)" if partition.scheme == "natural" else ""
    print_frame(
        console, partition_table(clients, prepared.interactions.matrix), f"Partition: {len(clients)} clients, {scheme}"
    )
    if out is not None:
        write_json_atomic(out / "data_summary.json", prepared.protocol(settings))
        save_partitions(clients, prepared.interactions.matrix, partition, out)
        console.print(f"wrote {out / 'data_summary.json'}, {out / 'partitions.csv'}, {out / 'partitions.json'}")


@cli.command(context_settings=_CONTEXT)
@run_options
@click.option("--out", type=click.Path(path_type=Path), default=Path("runs/run"), show_default=True)
def run(config_file: Path | None, clients: int, out: Path, **given: Any) -> None:
    """The main job: data → partition → federated DP training → synthesis → central training → federated evaluation.

    Runs Flower's simulation engine locally (5 clients, ε = 8 per client by default) and writes
    OUT/metrics.json, OUT/report.md (+ PNGs), OUT/synthetic.parquet, OUT/synthetic_meta.json,
    OUT/train.json and OUT/checkpoints/. Run the same command again to resume an interrupted run.
    """
    from fedsynth.simulations.console import print_results
    from fedsynth.simulations.jobs import resolve_run_config, run_job

    console = Console()
    run_config = resolve_run_config(config_file, given, out)
    metrics = run_job(console, out, clients, {**run_config, "pipeline": "full"})
    print_results(console, metrics["recommenders"], "Recommenders on real held-out users (federated evaluation)")
    retention = {k: v for k, v in metrics["utility_retention"].items() if k not in ("metric", "by_row")}
    console.print(
        "utility retention (ndcg@10, synthetic / real): " + ", ".join(f"{k} {v:.3f}" for k, v in retention.items())
    )
    privacy = metrics["privacy"]
    console.print(f"epsilon (max over clients): {privacy['epsilon_max']:.3f} at delta <= {privacy['delta']:.3g}")
    if privacy.get("training_stage", {}).get("rounds") == 0:
        console.print("training stage: off (" + privacy["training_stage"]["note"] + ")")
    if privacy.get("secure_aggregation", {}).get("enabled"):
        console.print(
            f"  with secure aggregation (honest-but-curious server); counting only each client's own noise share: "
            f"{privacy['epsilon_max_own_noise']:.3f}"
        )
    if "attack" in metrics:
        attack = metrics["attack"]
        hit = attack["target_hit_rate@10"]
        console.print(
            f"SIMULATED attack {attack['kind']} ({attack['clients']} silo(s)), defence {attack['robust_aggregation']}: "
            f"target items {attack['target_share_synthetic']:.2%} of synthetic interactions "
            f"({attack['target_share_real_training']:.2%} of real), in the top-10 of "
            f"{'-' if hit is None else f'{hit:.1%}'} of real test users ({attack['target_hit_rate_row']})"
        )
    console.print(f"wrote {out / 'metrics.json'}, {out / 'report.md'}, {out / 'synthetic.parquet'}")


@cli.command(context_settings=_CONTEXT)
@run_options
@click.option("--out", type=click.Path(path_type=Path), default=Path("runs/train"), show_default=True)
def train(config_file: Path | None, clients: int, out: Path, **given: Any) -> None:
    """Federated DP training only, in Flower's simulation engine (wraps `flwr run`).

    Writes OUT/train.json (per-round log, ε per client), OUT/checkpoints/round-N.pt and
    OUT/logs/flwr-run.log. Each client's spent ε is kept in its ledger (OUT/ledgers unless
    --ledger-dir) across runs.
    """
    from fedsynth.simulations.jobs import resolve_run_config, run_job

    console = Console()
    run_config = resolve_run_config(config_file, given, out)
    summary = run_job(console, out, clients, {**run_config, "pipeline": "train"})
    console.print(f"epsilon (max over clients) after {len(summary['rounds'])} round(s): {summary['epsilon_max']:.3f}")
    for node, value in summary["epsilon_by_client"].items():
        console.print(f"  client {node}: epsilon {value:.3f}")
    console.print(f"wrote {out / 'train.json'}")


@cli.command(context_settings=_CONTEXT)
@run_options
@click.option("--epsilons", default="0.5,1,2,4,8,inf", show_default=True, help="Target ε values; inf = no DP.")
@click.option("--seeds", default="3", show_default=True, help="A count (3 → seeds 0,1,2) or a list (0,4).")
@click.option(
    "--grid", multiple=True, help="KEY=V1,V2 axis, repeatable: clients, partition, synthesizers, local-epochs, …"
)
@click.option("--audit/--no-audit", default=True, show_default=True, help="Membership-inference audit of every cell.")
@click.option(
    "--bootstrap", type=int, default=200, show_default=True, help="Bootstrap resamples of the audit's intervals."
)
@click.option(
    "--reaudit", is_flag=True, help="Redo the audit of complete cells (no retraining), e.g. after an upgrade."
)
@click.option("--out", type=click.Path(path_type=Path), default=Path("runs/sweep"), show_default=True)
def sweep(
    config_file: Path | None,
    clients: int,
    epsilons: str,
    seeds: str,
    grid: tuple[str, ...],
    audit: bool,
    bootstrap: int,
    reaudit: bool,
    out: Path,
    **given: Any,
) -> None:
    """The pipeline for every (ε, seed, grid) cell, with audits, results tables and a privacy-utility report.

    Resumable: complete cells are skipped, interrupted ones redone, failed ones recorded (and
    retried on the next run). Writes OUT/results.csv (+ .parquet), OUT/summary.csv,
    OUT/report.md, OUT/report.html and one run directory per cell under OUT/cells/.
    """
    from fedsynth.common.errors import ConfigError
    from fedsynth.common.evaluation.membership_audit import AuditConfig
    from fedsynth.simulations.experiments.sweep import (
        SweepPlan,
        check_sweep_settings,
        finish_sweep,
        make_cells,
        parse_epsilons,
        parse_grid,
        parse_seeds,
        run_sweep,
    )
    from fedsynth.simulations.jobs import resolve_run_config, run_job

    for name in ("epsilon", "seed"):
        if given.get(name) is not None:
            raise ConfigError(f"fedsynth sweep takes --{name}s, not --{name}.")
    console = Console()
    base = {k: v for k, v in resolve_run_config(config_file, given, out).items() if k != "ledger-dir"}
    plan = SweepPlan(
        out,
        make_cells(parse_epsilons(epsilons), parse_seeds(seeds), parse_grid(grid)),
        base,
        clients,
        audit,
        AuditConfig(bootstrap=bootstrap),
    )
    check_sweep_settings(out, {"base": base, "clients": clients})
    quiet = Console(quiet=True)
    records = run_sweep(
        plan, lambda directory, n, config: run_job(quiet, directory, n, config), console, reaudit=reaudit and audit
    )
    finish_sweep(plan, records)
    failed = sum(r["status"] != "ok" for r in records)
    console.print(
        f"{len(records) - failed} of {len(records)} cells complete"
        + (f", {failed} failed (rerun to retry)" if failed else "")
    )
    console.print(f"wrote {out / 'results.csv'}, {out / 'summary.csv'}, {out / 'report.md'}, {out / 'report.html'}")
    if failed:
        sys.exit(1)


@cli.command(context_settings=_CONTEXT)
@click.argument("run_path", metavar="[RUN_DIR]", required=False, type=click.Path(path_type=Path, file_okay=False))
@click.option(
    "--run",
    "run_dir",
    type=click.Path(path_type=Path, file_okay=False),
    help="A complete run directory (the same as RUN_DIR).",
)
@click.option("--bootstrap", type=int, default=200, show_default=True, help="Bootstrap resamples of the intervals.")
@click.option(
    "--canaries",
    type=int,
    help="M: instead, the white-box one-run audit of the DP releases with M canaries (no run directory needed).",
)
@click.option("--epsilon", "epsilons", help="With --canaries: target ε values, comma-separated [default: 1,4,8].")
@click.option(
    "--release",
    type=click.Choice(["statistics", "cooccurrence", "vae-round", "all"]),
    help="With --canaries: which release to audit [default: all].",
)
@click.option(
    "--broken",
    type=click.Choice(["none", "shared-noise", "half-noise", "uncharged"]),
    help="With --canaries: a deliberately broken variant, for demonstrations [default: none].",
)
@click.option("--seed", type=int, help="With --canaries: seed of the silo, the canaries and the noise [default: 0].")
@click.option(
    "--out",
    type=click.Path(path_type=Path, file_okay=False),
    help="With --canaries: where audit.json goes [default: runs/mechanism-audit].",
)
def audit(
    run_path: Path | None,
    run_dir: Path | None,
    bootstrap: int,
    canaries: int | None,
    epsilons: str | None,
    release: str | None,
    broken: str | None,
    seed: int | None,
    out: Path | None,
) -> None:
    """Membership-inference audit of a finished simulation run: DCR, density ratio, discriminator, VAE ELBO.

    Members are the clients' training users, non-members the users reserved by audit-fraction.
    Prints AUC and TPR at 1% / 10% FPR with bootstrap 95% intervals against the (ε, δ) bound,
    and writes RUN/audit.json.

    With --canaries M: the one-run audit of the DP mechanisms (Steinke, Nasr, Jagielski 2023): M canary
    users put into one silo with probability 1/2 each, every release made once with the project's own code
    and privacy plan, each canary scored from what the server receives; prints the ε the accountant charges
    for each release and the empirical lower bound at 95%, and writes OUT/audit.json (exit status 3 when a
    correct release's bound is above its accounted ε: a bug to investigate).
    """
    if run_path is not None and run_dir is not None and run_path != run_dir:
        raise click.UsageError(f"two run directories given ({run_path} and --run {run_dir}); give one.")
    run_dir = run_dir or run_path
    if canaries is not None:
        if run_dir is not None:
            raise click.UsageError(
                "--canaries runs the one-run audit of the DP releases, which reads no run directory; "
                "drop the run directory, or drop --canaries for the membership-inference audit of that run."
            )
        _mechanism_audit(canaries, epsilons, release, broken, seed, out)
        return
    given = [name for name, value in (("--epsilon", epsilons), ("--release", release), ("--broken", broken),
                                      ("--seed", seed), ("--out", out)) if value is not None]  # fmt: skip
    if given:
        raise click.UsageError(f"{', '.join(given)}: only for the one-run audit; add --canaries M to run it.")
    if run_dir is None:
        raise click.UsageError(
            "give a run directory (fedsynth audit RUN_DIR) for the membership-inference audit of a finished run, "
            "or --canaries M for the one-run audit of the DP releases."
        )
    from fedsynth.common.evaluation.membership_audit import AuditConfig
    from fedsynth.simulations.experiments.audit import audit_run, run_settings

    console = Console()
    with console.status(f"auditing {run_dir}"):
        result = audit_run(run_dir, AuditConfig(bootstrap=bootstrap, seed=run_settings(run_dir).seed))
    bound = result["bound"]
    console.print(
        f"{result['members']} members, {result['non_members']} non-members; ε = {bound['epsilon']:.3f}, "
        f"δ = {bound['delta']:.2g}: no attack can exceed AUC {bound['max_auc']:.4f}"
    )
    for name, s in result["attacks"].items():
        console.print(
            f"  {name:<32} AUC {s['auc']:.3f} [{s['auc_low']:.3f}, {s['auc_high']:.3f}]  "
            f"TPR@1%FPR {s['tpr@0.01fpr']:.3f}  TPR@10%FPR {s['tpr@0.1fpr']:.3f}  ε ≥ {s['epsilon_lower_bound']:.2f}",
            markup=False,
        )
    for line in result["violations"]:
        console.print(f"[bold red]ABOVE THE DP BOUND (a bug to investigate): {line}[/bold red]")
    console.print(f"wrote {run_dir / 'audit.json'}")
    if result["violations"]:
        sys.exit(3)


def _epsilons(text: str) -> list[float]:
    try:
        values = [float(e) for e in text.split(",") if e.strip()]
    except ValueError:
        values = []
    if not values or not all(0 < v < float("inf") for v in values):
        raise click.BadParameter(
            f"expected positive, finite target epsilons separated by commas (e.g. 1,4,8), got {text!r}",
            param_hint="--epsilon",
        )
    return values


def _mechanism_audit(
    canaries: int, epsilons: str | None, release: str | None, broken: str | None, seed: int | None, out: Path | None
) -> None:
    """`fedsynth audit --canaries M`: the one-run audit of the DP releases (experiments/mechanism_audit.py)."""
    from fedsynth.simulations.experiments.mechanism_audit import RELEASES, audit_mechanisms, print_audit, write_audit

    if canaries < 2:
        raise click.BadParameter(f"at least 2 canaries are needed, got {canaries}.", param_hint="--canaries")
    targets = _epsilons(epsilons or "1,4,8")
    releases = list(RELEASES) if release in (None, "all") else [str(release)]
    variant, seed, out = broken or "none", 0 if seed is None else seed, out or Path("runs/mechanism-audit")
    console = Console()
    with console.status(f"auditing {', '.join(releases)} at epsilon {', '.join(f'{e:g}' for e in targets)}"):
        results = audit_mechanisms(releases, targets, canaries, variant, seed)
    print_audit(console, results)
    settings = {"canaries": canaries, "epsilons": targets, "releases": releases, "broken": variant, "seed": seed}
    console.print(f"wrote {write_audit(out, results, settings)}")
    above = [r for r in results if r.violation]
    if variant != "none":
        missed = [f"{r.release} at {r.target_epsilon:g}" for r in results if not r.violation]
        console.print(
            f"broken variant {variant}: above the accounted epsilon in {len(above)} of {len(results)} audits"
            + (f"; not detected with {canaries:,} canaries: {', '.join(missed)}" if missed else "")
        )
    elif above:
        for r in above:
            console.print(
                f"[bold red]ABOVE THE ACCOUNTED EPSILON (a bug to investigate): {r.release} at target "
                f"{r.target_epsilon:g}: {r.empirical:.3f} > {r.accounted:.3f}[/bold red]"
            )
        sys.exit(3)


@cli.group(context_settings=_CONTEXT)
def deploy() -> None:
    """Deployment across machines: certificates, node keys, per-node data files, a local trial launcher."""


@deploy.command(context_settings=_CONTEXT)
@click.option("--host", "hosts", multiple=True, required=True, help="Hostname or IP the SuperNodes dial (repeatable).")
@click.option("--days", type=int, default=365, show_default=True, help="Validity of the certificates.")
@click.option("--out", type=click.Path(path_type=Path), default=Path("deploy/certs"), show_default=True)
def certs(hosts: tuple[str, ...], days: int, out: Path) -> None:
    """A CA and a SuperLink TLS certificate (subject alternative names = every --host)."""
    from fedsynth.simulations.deployment.setup import make_certificates

    paths = make_certificates(out, list(hosts), days)
    click.echo(
        f"SuperLink: --ssl-ca-certfile {paths.ca_certificate} --ssl-certfile {paths.server_certificate} "
        f"--ssl-keyfile {paths.server_key}"
    )
    click.echo(f"every SuperNode and flwr: root certificates {paths.ca_certificate}; keep {paths.ca_key} offline")


@deploy.command(context_settings=_CONTEXT)
@click.option("--nodes", type=int, default=None, help="Make keys node-0 … node-(N-1).")
@click.option("--name", "names", multiple=True, help="Make a key with this name (repeatable).")
@click.option("--out", type=click.Path(path_type=Path), default=Path("deploy/keys"), show_default=True)
def keys(nodes: int | None, names: tuple[str, ...], out: Path) -> None:
    """ECDSA P-384 SuperNode key pairs (OpenSSH format) for node authentication."""
    from fedsynth.common.errors import ConfigError
    from fedsynth.simulations.deployment.setup import make_node_keys

    chosen = list(names) + [f"node-{i}" for i in range(nodes or 0)]
    if not chosen:
        raise ConfigError("give --nodes N or --name NAME.")
    for key in make_node_keys(out, chosen):
        click.echo(
            f"{key.private} (stays on the node: --auth-supernode-private-key)  "
            f"{key.public} (register: flwr supernode register {key.public} <connection>)"
        )


@deploy.command("split-data", context_settings=_CONTEXT)
@data_options
@click.option("--nodes", type=int, required=True, help="Number of node files.")
@click.option("--out", type=click.Path(path_type=Path), default=Path("deploy/data"), show_default=True)
def split_data_command(settings: Any, nodes: int, out: Path, seed: int) -> None:
    """Cut a dataset into one file of disjoint users per node, plus the shared item catalogue (for trials)."""
    from fedsynth.simulations.deployment.setup import split_data

    files = split_data(settings, nodes, out, seed)
    click.echo(f"catalogue (give to every node): {files.catalogue}")
    for index, path in enumerate(files.data):
        click.echo(f"node {index}: {path}")


@deploy.command(context_settings=_CONTEXT)
@run_options
@click.option("--out", type=click.Path(path_type=Path), default=Path("runs/deploy"), show_default=True)
@click.option(
    "--node-max-epsilon",
    type=float,
    default=None,
    help="Each trial node's lifetime cap (its node config max-epsilon) [default: the run's --epsilon].",
)
def local(config_file: Path | None, clients: int, out: Path, node_max_epsilon: float | None, **given: Any) -> None:
    """Try a real deployment on this machine: SuperLink + --clients SuperNodes as processes, TLS, node auth.

    Makes certificates, keys and per-node data files under OUT/deploy, starts the SuperLink (its
    state in memory) and the SuperNodes (fedsynth-node, each with its own data file and ledger
    directory and an equal share of the cores), submits `flwr run`, streams the progress and stops
    every process at the end. Outputs land in OUT as with `fedsynth run` (the server never reads
    the data: simulation-reference is off).
    """
    from fedsynth.simulations.deployment.local import run_local_deployment
    from fedsynth.simulations.jobs import resolve_run_config

    console = Console()
    run_config = resolve_run_config(config_file, given, out)
    run_local_deployment(console, out, clients, run_config, node_max_epsilon)


@cli.group(context_settings=_CONTEXT)
def ledger() -> None:
    """A silo's privacy ledgers (on the node's own disk): spend history, remaining budget, cap."""


_LEDGER_DIR = click.option(
    "--ledger-dir",
    type=click.Path(path_type=Path),
    required=True,
    help="The node's ledger directory (its node config ledger-dir; simulation: OUT/ledgers or --ledger-dir).",
)


@ledger.command("show", context_settings=_CONTEXT)
@_LEDGER_DIR
def ledger_show(ledger_dir: Path) -> None:
    """Print each ledger's cap, spent ε, remaining budget and every release with the run that asked for it."""
    from fedsynth.simulations.ledger_view import show_ledgers

    show_ledgers(Console(width=160), ledger_dir)


@ledger.command("set-cap", context_settings=_CONTEXT)
@_LEDGER_DIR
@click.option("--max-epsilon", type=float, required=True, help="The silo's new lifetime ε cap (at the ledger's δ).")
@click.option("--reason", default="operator", show_default=True, help="Recorded in the ledger's history.")
def ledger_set_cap(ledger_dir: Path, max_epsilon: float, reason: str) -> None:
    """Change the silo's lifetime cap: an act on the node's own disk, recorded in each ledger's history."""
    from fedsynth.simulations.ledger_view import set_cap

    set_cap(Console(), ledger_dir, max_epsilon, reason)


@ledger.command("new", context_settings=_CONTEXT)
@_LEDGER_DIR
@click.option("--reason", required=True, help="Why this node starts a new ledger (recorded with the archive).")
def ledger_new(ledger_dir: Path, reason: str) -> None:
    """Start a new ledger: archive the current ones (ledger-dir/archive/TIME/, with the reason); nothing deleted.

    The only way a node's spent budget stops counting, and a deliberate act on the node's disk:
    only do it when the users the old ledger covered are gone from the node's data.
    """
    from fedsynth.simulations.ledger_view import new_ledger

    try:
        new_ledger(Console(), ledger_dir, reason)
    except FedsynthError as exc:
        raise click.UsageError(str(exc)) from exc


@cli.command(context_settings=_CONTEXT)
@click.option("--variant", required=True, help="100k, 1m, latest-small or 20m.")
@click.option("--cache-dir", type=click.Path(path_type=Path), help="Download cache [default: ~/.cache/fedsynth].")
@click.option("--mirror", help="Base URL to download from instead of files.grouplens.org.")
def download(variant: str, cache_dir: Path | None, mirror: str | None) -> None:
    """Download a MovieLens release, verify its size and sha256, and unpack it into the cache."""
    from fedsynth.common.data.download import fetch_movielens

    path = fetch_movielens(variant, cache_dir, mirror)
    click.echo(f"MovieLens {variant} verified and unpacked in {path}")


@cli.command("settings", context_settings=_CONTEXT)
@click.option("--toml", "form", flag_value="toml", default=True, help="The [tool.flwr.app.config] block (default).")
@click.option("--markdown", "form", flag_value="markdown", help="The reference page docs/settings.md.")
def settings_command(form: str) -> None:
    """Print every run setting with its default and help: as pyproject.toml's block, or as docs/settings.md.

    Both are made from the declarations in common/config/settings.py:
    `fedsynth settings --markdown > docs/settings.md` refreshes the page.
    """
    from fedsynth.common.config.reference import markdown_page, toml_block

    click.echo(markdown_page() if form == "markdown" else toml_block(), nl=False)


def main(argv: list[str] | None = None) -> None:
    """Entry point: user errors print one clear line and exit with status 2."""
    try:
        cli.main(args=argv, standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except FedsynthError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
