"""``report.md`` of a run: the headline table, privacy, fidelity and PNG plots (matplotlib, Agg backend).

Plots: per-round losses and ε (max / min over clients); item-popularity curves of the real
training data (simulation only) and of each synthetic dataset; NDCG@10 per recommender.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from fedsynth.common.federated.round_log import RoundLog
from fedsynth.common.federated.wire import LOSS_KEYS
from fedsynth.common.runtime.files import write_text_atomic

HEADLINE_COLUMNS = ("ndcg@10", "recall@20", "hitrate@10", "coverage@10")


def _figure() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_rounds(path: Path, rounds: list[RoundLog], release: RoundLog | None = None) -> None:
    """Each model's loss on its own axis; cumulative ε from the statistics release (round 0) on.

    ``release``: the statistics release's log (its ε is most of a run's spend), drawn at round 0.
    """
    plt = _figure()
    from matplotlib.ticker import MaxNLocator

    losses = [name for name in LOSS_KEYS if any(name in r.losses for r in rounds)]
    fig, axes = plt.subplots(1, len(losses) + 1, figsize=(3.6 * (len(losses) + 1), 3.4), squeeze=False)
    numbers = [r.round for r in rounds]
    titles = {"vae-loss": "Mult-VAE loss", "gan-d-loss": "GAN discriminator loss", "gan-g-loss": "GAN generator loss"}
    for ax, name in zip(axes[0], losses, strict=False):
        ax.plot(numbers, [r.losses.get(name, math.nan) for r in rounds], marker="o", color="tab:blue")
        ax.set(xlabel="round", ylabel="mean loss (weighted by users)", title=titles[name])
    eps = axes[0][-1]
    logs = ([release] if release and not release.resumed else []) + rounds
    steps = [r.round for r in logs]
    for values, marker, label in (
        ([r.epsilon_max for r in logs], "o", "max over clients"),
        ([r.epsilon_min for r in logs], "x", "min over clients"),
    ):
        eps.plot(steps, [math.nan if v is None else v for v in values], marker=marker, label=label)
    eps.set(xlabel="round (0 = DP statistics release)", ylabel="cumulative ε", title="Privacy spent")
    eps.set_ylim(bottom=0)
    eps.legend()
    for ax in axes[0]:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_popularity(path: Path, datasets: dict[str, sp.csr_matrix]) -> None:
    plt = _figure()
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, matrix in datasets.items():
        counts = np.sort(np.asarray((matrix > 0).sum(axis=0)).ravel())[::-1].astype(float)
        ax.plot(np.arange(1, len(counts) + 1), counts / max(matrix.shape[0], 1), label=label)
    ax.set(xscale="log", yscale="log", xlabel="item rank", ylabel="share of users with the item")
    ax.set_title("Item popularity, real vs synthetic")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


ROW_KINDS = (
    ("fedsynth: trained on synthetic data", "tab:blue"),
    ("fedsynth: federated model / DP prior", "tab:green"),
    ("simple DP baseline (full ε)", "tab:orange"),
    ("non-private upper bound", "tab:gray"),
)


def row_kind(name: str) -> str:
    """Which kind of row a result is (the plot's colour and legend)."""
    if name.startswith("synthetic"):
        return ROW_KINDS[0][0]
    if name in ("fedvae", "fedsynth-prior"):
        return ROW_KINDS[1][0]
    if name.startswith("dp-"):
        return ROW_KINDS[2][0]
    return ROW_KINDS[3][0]


def plot_metrics(path: Path, results: dict[str, dict[str, float]]) -> None:
    """NDCG@10 per row, grouped and coloured by kind, with the best DP baseline as a reference line."""
    plt = _figure()
    colours = dict(ROW_KINDS)
    order = {kind: i for i, (kind, _) in enumerate(ROW_KINDS)}
    names = sorted(results, key=lambda n: (order[row_kind(n)], -results[n].get("ndcg@10", 0.0)))
    values = [results[n].get("ndcg@10", math.nan) for n in names]
    fig, ax = plt.subplots(figsize=(10.5, 0.32 * len(names) + 1.6))
    ax.barh(names, values, color=[colours[row_kind(n)] for n in names])
    baselines = [results[n]["ndcg@10"] for n in names if row_kind(n) == ROW_KINDS[2][0] and "ndcg@10" in results[n]]
    if baselines:
        ax.axvline(max(baselines), color="tab:orange", linestyle="--", linewidth=1)
    ax.invert_yaxis()
    from matplotlib.patches import Patch

    present = [kind for kind, _ in ROW_KINDS if any(row_kind(n) == kind for n in names)]
    handles: list[Any] = [Patch(color=colours[k], label=k) for k in present]
    if baselines:
        from matplotlib.lines import Line2D

        handles.append(Line2D([], [], color="tab:orange", linestyle="--", label="best DP baseline"))
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    ax.set(xlabel="NDCG@10 on real held-out users (federated evaluation)", title="Recommenders")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _fmt(value: Any) -> str:
    if value is None:
        return "not computed"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def _evaluation_lines(evaluation: dict[str, Any], privacy: dict[str, Any]) -> list[str]:
    """How the rows were evaluated: DP (its ε and each row's noise std) or exactly (a simulation measurement)."""
    if "mode" not in evaluation:
        return []
    lines = [f"Evaluation: {evaluation['mode']}."]
    cost = privacy.get("evaluation", {}).get("epsilon_of_evaluations_max")
    if cost:
        noise = {k: v["noise_std_of_mean"] for k, v in evaluation.items() if isinstance(v, dict) and v.get("dp")}
        lines.append(
            f"The DP evaluations cost ε {_fmt(cost)} per client (max; included in the ε above). Noise std of each "
            "row's mean metric: " + ", ".join(f"{k} ±{_fmt(v)}" for k, v in noise.items()) + "."
        )
    return [*lines, ""]


def metrics_table(results: dict[str, dict[str, float]]) -> str:
    lines = ["| recommender | " + " | ".join(HEADLINE_COLUMNS) + " |", "|---" * (len(HEADLINE_COLUMNS) + 1) + "|"]
    for name, values in results.items():
        lines.append(f"| {name} | " + " | ".join(_fmt(values.get(c, "")) for c in HEADLINE_COLUMNS) + " |")
    return "\n".join(lines)


def _baselines_section(baselines: dict[str, Any]) -> list[str]:
    """The DP baselines' own privacy: each alone spends the target ε per client (comparison rows)."""
    rows = [(name, entry) for name, entry in baselines.items() if isinstance(entry, dict)]
    if not rows:
        return []
    lines = ["## DP baselines (comparison rows)", "", baselines.get("note", ""), ""]
    lines += ["| baseline | ε per client (max) | noise std of the sum | settings |", "|---|---|---|---|"]
    for name, entry in rows:
        shown = {k: v for k, v in entry.items() if k not in ("epsilon_per_client", "noise_std_of_sum")}
        settings = ", ".join(f"{k} {_fmt(v)}" for k, v in shown.items())
        lines.append(
            f"| {name} | {_fmt(max(entry['epsilon_per_client']))} | {_fmt(entry['noise_std_of_sum'])} | {settings} |"
        )
    return [*lines, ""]


def _retention_lines(retention: dict[str, Any]) -> list[str]:
    """The headline synthesizer's retention per recommender, then a table: synthetic source × recommender."""
    ratios = {k: v for k, v in retention.items() if k not in ("metric", "by_row")}
    if not ratios:
        absent = "no real-data upper bounds: the server holds no data in a deployment"
        return [f"Utility retention: not computed ({absent})."]
    lines = [f"Utility retention ({retention['metric']}, synthetic / real): " + ", ".join(
        f"{k} {_fmt(v)}" for k, v in ratios.items()
    )]  # fmt: skip
    by_row: dict[str, float] = retention.get("by_row", {})
    sources = list(dict.fromkeys(row.partition("/")[0] for row in by_row))
    recommenders = list(dict.fromkeys(row.partition("/")[2] for row in by_row))
    if len(by_row) > 1:
        lines += [
            "",
            "Retention per downstream model (synthetic-trained ÷ real-trained, each recommender):",
            "",
            "| synthetic data | " + " | ".join(recommenders) + " |",
            "|---" * (len(recommenders) + 1) + "|",
        ]
        for source in sources:
            cells = [_fmt(by_row[f"{source}/{r}"]) if f"{source}/{r}" in by_row else "" for r in recommenders]
            lines.append(f"| {source} | " + " | ".join(cells) + " |")
    return lines


def _privacy_section(privacy: dict[str, Any]) -> list[str]:
    """Every client that spent ε in this run: before it, after it, its own cap; missing ones marked."""
    lines = [
        "## Privacy per client",
        "",
        "ε is each node's cumulative spend on its data as its ledger holds it (earlier runs included); the cap "
        "is the lifetime budget the node set itself (`fedsynth ledger show` on the node lists every release).",
        "",
        "| client | ε before this run | ε after | cap (set on the node) | at the end |",
        "|---|---|---|---|---|",
    ]
    for c in privacy["epsilon_per_client"]:
        cap = "not reported" if c.get("cap") is None else _fmt(c["cap"])
        state = "**missing**" if c.get("missing_at_end") else "connected"
        lines.append(
            f"| {c['client']} | {_fmt(c.get('epsilon_before_run', 0.0))} | {_fmt(c['epsilon'])} | {cap} | {state} |"
        )
    stage = privacy.get("training_stage")
    return [*lines, "", *([f"Training stage: {stage['note']}.", ""] if stage else [])]


def _clients_section(clients: dict[str, Any] | None) -> list[str]:
    """Participants, nodes missing at the end (loudly) and every failure with its round and reason."""
    if not clients:
        return []
    lines = [
        "## Clients",
        "",
        f"Took part: {len(clients['participants'])}; connected at the end: {len(clients['connected_at_end'])}.",
        "",
    ]
    if clients["missing"]:
        lines += [
            f"**Missing at the end: {', '.join(str(n) for n in clients['missing'])}** (failed or disconnected; "
            "the run went on with the others).",
            "",
        ]
    if clients["failures"]:
        lines += ["| round | client | reason |", "|---|---|---|"]
        lines += [f"| {f['round']} | {f['node']} | {f['reason']} |" for f in clients["failures"]]
        lines.append("")
    return lines


def _attack_lines(attack: dict[str, Any] | None) -> list[str]:
    """A simulated attack's summary, loudly labelled (nothing when the run simulated none)."""
    if not attack:
        return []
    hit = attack.get("target_hit_rate@10")
    return [
        "## SIMULATED malicious silos",
        "",
        f"Attack `{attack['kind']}` by {attack['clients']} silo(s); defence `{attack['robust_aggregation']}`. "
        f"Target items {', '.join(attack['target_items'])}: {_fmt(attack['target_share_synthetic'])} of the synthetic "
        f"interactions ({_fmt(attack['target_share_real_training'])} of the real ones); at least one in the top-10 "
        f"of {_fmt(hit) if hit is not None else '-'} of real test users from `{attack['target_hit_rate_row']}` "
        "(every row's `target-hitrate@K` is in metrics.json). See docs/attacks.md.",
        "",
    ]


def _secure_aggregation_lines(privacy: dict[str, Any]) -> list[str]:
    """The second threat model's ε and what secure aggregation covered (nothing when it was off)."""
    secure = privacy.get("secure_aggregation") or {}
    mode = (
        "Training rounds: round-mode **fedsgd**, each round one FedSGD step: one DP-SGD step of the Mult-VAE over "
        "every silo's Poisson-sampled users, the silos' clipped gradient sums secure-aggregated with distributed "
        "Skellam noise (central DP-SGD)."
        if secure.get("round_mode") == "fedsgd"
        else "Training rounds: round-mode **local**, each silo runs DP-SGD on its own users; its update carries "
        "its full noise" + (", masked: the server sees only the sum." if secure.get("enabled") else ".")
    )
    if not secure.get("enabled"):
        return [mode, ""] if "round_mode" in secure else []
    return [
        mode,
        "",
        f"Secure aggregation ({secure['protocol']}) for: {', '.join(secure['applies_to'])}; not for "
        f"{secure['not_applied_to']}. ε above: {secure['threat_model'].split(';')[0].split(': ', 1)[1]}. "
        f"Counting only each client's own noise share in the secure sums: ε ≤ "
        f"{_fmt(privacy.get('epsilon_max_own_noise'))}.",
        "",
    ]


def _marginals_lines(marginals: dict[str, Any]) -> list[str]:
    """What the second-order release did: released and fitted to, or its budget spent on the first order again."""
    if not marginals.get("marginal_items"):
        return []
    if marginals.get("first_order_instead"):
        return [
            f"Second order (marginal-items {marginals['marginal_items']}): the DP counts predicted the co-occurrence "
            f"below its noise (cooccurrence-min-signal {marginals['cooccurrence_min_signal']:g}), so its share of ε "
            "released the item counts and lengths a second time (combined with the first by inverse variance); "
            "nothing was fitted.",
            "",
        ]
    if marginals.get("released"):
        rows = ", ".join(f"`{row}/…`" for row in marginals["fitted_rows"])
        return [
            f"Second order (marginal-items {marginals['marginal_items']}): the DP co-occurrence was released and the "
            f"models fitted to it before the rounds; {rows} are trained on data from the fitted models alone.",
            "",
        ]
    return []


def write_report(
    out: Path,
    metrics: dict[str, Any],
    logs: list[RoundLog],
    synthetic: dict[str, sp.csr_matrix],
    real_train: sp.csr_matrix | None,
) -> Path:
    """Write OUT/report.md and its PNGs; returns the report's path. ``logs``: the release's, then each round's."""
    plot_rounds(out / "rounds.png", [r for r in logs if r.round > 0], logs[0] if logs and logs[0].round == 0 else None)
    plot_popularity(
        out / "popularity.png", ({"real training users": real_train} if real_train is not None else {}) | synthetic
    )
    plot_metrics(out / "recommenders.png", metrics["recommenders"])
    privacy = metrics["privacy"]
    lines = [
        "# fedsynth run report",
        "",
        f"Rounds: {metrics['rounds']}. Privacy: ε ≤ {_fmt(privacy['epsilon_max'])} per client (max over clients), "
        f"δ ≤ {_fmt(privacy['delta'])}, {privacy['accountant']}.",
        "",
        *_secure_aggregation_lines(privacy),
        *_marginals_lines(metrics.get("marginals") or {}),
        *_attack_lines(metrics.get("attack")),
        "## Recommenders (real held-out users, federated evaluation)",
        "",
        "`synthetic*/…` trained on synthetic data only; `fedvae` is the federated DP Mult-VAE; `fedsynth-prior` "
        "ranks by the pipeline's DP item counts; `dp-popularity`, `dp-ease` and `dp-als` are the **DP baselines**, "
        "each spending the full target ε per client on its own (an alternative to fedsynth, simulation only); "
        "`popularity` and `real/…` are **non-private upper bounds** trained on the real training users "
        "(simulation only).",
        "",
        metrics_table(metrics["recommenders"]),
        "",
        *_evaluation_lines(metrics.get("evaluation") or {}, privacy),
        *_retention_lines(metrics["utility_retention"]),
        "",
        "![recommenders](recommenders.png)",
        "",
        *_privacy_section(privacy),
        *_baselines_section(metrics.get("baselines") or {}),
        *_clients_section(metrics.get("clients")),
        "## Training",
        "",
        "![rounds](rounds.png)",
        "",
        "## Fidelity of the synthetic data",
        "",
    ]
    fidelity = {k: v for k, v in metrics["fidelity"].items() if isinstance(v, dict)}
    if fidelity:
        keys = list(next(iter(fidelity.values())))
        lines += ["| measure | " + " | ".join(fidelity) + " |", "|---" * (len(fidelity) + 1) + "|"]
        lines += [f"| {k} | " + " | ".join(_fmt(v[k]) for v in fidelity.values()) + " |" for k in keys]
        lines += ["", f"({metrics['fidelity'].get('note', '')})", ""]
    else:
        lines += ["Not computed: the server has no real data (deployment).", ""]
    lines += ["![popularity](popularity.png)", ""]
    path = out / "report.md"
    write_text_atomic(path, "\n".join(lines))
    return path
