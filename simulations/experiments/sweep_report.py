"""A sweep's ``report.md`` and self-contained ``report.html`` (images embedded), with PNG plots.

Plots (ε on a log axis; ∞ = no DP drawn right of the largest finite ε): the privacy-utility
curve (NDCG@10 per row with 95% intervals over seeds, upper bounds and MostPopular as
horizontal lines), utility retention, audit AUC with the (ε, δ) ceiling, fidelity.
"""

from __future__ import annotations

import base64
import html
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fedsynth.common.evaluation.membership_audit import max_auc
from fedsynth.common.evaluation.report import ROW_KINDS, _figure, row_kind
from fedsynth.common.runtime.files import write_text_atomic
from fedsynth.simulations.experiments.sweep_results import HEADLINE, grid_columns

UTILITY_SOURCES = ("cell",)
FIDELITY_METRICS = ("popularity_jsd", "length_jsd", "cooccurrence_correlation", "dcr_median_synthetic")


def _x(epsilons: pd.Series | np.ndarray, finite_max: float) -> np.ndarray:
    values = np.asarray(epsilons, dtype=float)
    return np.where(np.isinf(values), finite_max * 2, values)


def _axis(ax: Any, epsilons: list[float]) -> float:
    finite = [e for e in epsilons if math.isfinite(e)] or [8.0]
    top = max(finite)
    ax.set_xscale("log")
    ticks = sorted(set(epsilons))
    ax.set_xticks(_x(np.asarray(ticks), top))
    ax.set_xticklabels(["∞\n(no DP)" if math.isinf(t) else f"{t:g}" for t in ticks])
    ax.minorticks_off()
    ax.set_xlabel("target ε per client (log scale)")
    ax.grid(alpha=0.3)
    return top


def _setting_label(row: pd.Series, grid: list[str]) -> str:
    return ", ".join(f"{g}={row[g]}" for g in grid if g in row and pd.notna(row[g]))


def kind_styles(rows: list[str]) -> dict[str, dict[str, Any]]:
    """A colour per row from its kind's palette (as in a run's recommenders.png), DP baselines dashed."""
    import matplotlib

    palettes = dict(zip([kind for kind, _ in ROW_KINDS], ["Blues", "Greens", "Oranges", "Greys"], strict=True))
    styles: dict[str, dict[str, Any]] = {}
    for kind, palette in palettes.items():
        members = [r for r in rows if row_kind(r) == kind]
        shades = np.linspace(0.85, 0.45, len(members)) if len(members) > 1 else [0.7] * len(members)
        for row, shade in zip(members, shades, strict=True):
            dashed = kind == ROW_KINDS[2][0]
            styles[row] = {"color": matplotlib.colormaps[palette](shade), "linestyle": "--" if dashed else "-"}
    return styles


def _lines(
    ax: Any,
    summary: pd.DataFrame,
    top: float,
    grid: list[str],
    label_prefix: str = "",
    styles: dict[str, dict[str, Any]] | None = None,
) -> None:
    keys = [g for g in grid if g in summary.columns]
    for name, part in summary.groupby(["row", *keys], sort=False, dropna=False):
        part = part.sort_values("epsilon_requested")
        setting = _setting_label(part.iloc[0], keys)
        label = f"{label_prefix}{name[0] if isinstance(name, tuple) else name}" + (f" [{setting}]" if setting else "")
        low, high = part["mean"] - part["ci95_low"], part["ci95_high"] - part["mean"]
        ax.errorbar(
            _x(part["epsilon_requested"], top),
            part["mean"],
            yerr=np.vstack([low.fillna(0), high.fillna(0)]),
            marker="o",
            capsize=3,
            label=label,
            **(styles or {}).get(str(name[0] if isinstance(name, tuple) else name), {}),
        )


def plot_utility(path: Path, summary: pd.DataFrame, grid: list[str]) -> None:
    plt = _figure()
    fig, ax = plt.subplots(figsize=(8, 5))
    headline = summary[summary["metric"] == HEADLINE]
    top = _axis(ax, list(headline["epsilon_requested"].unique()))
    curves = headline[headline["source"].isin(UTILITY_SOURCES)]
    _lines(ax, curves, top, grid, styles=kind_styles(list(curves["row"].unique())))
    reference = headline[headline["source"].str.startswith("reference")]
    styles = iter(["--", "-.", ":", (0, (5, 1)), (0, (3, 1, 1, 1))] * 4)
    for (row, _), part in reference.groupby(["row", "source"], sort=False):
        color = "grey" if row == "popularity" else "black"
        ax.axhline(part["mean"].mean(), linestyle=next(styles), color=color, alpha=0.8, label=f"{row} (non-private)")
    ax.set_ylabel(f"{HEADLINE} on real held-out users")
    ax.set_title("Privacy-utility curve (95% intervals over seeds)")
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_metric(
    path: Path, summary: pd.DataFrame, grid: list[str], metric: str, rows_prefix: str, title: str, ylabel: str
) -> None:
    plt = _figure()
    fig, ax = plt.subplots(figsize=(8, 5))
    part = summary[summary["row"].str.startswith(rows_prefix)]
    if metric:
        part = part[part["metric"] == metric]
    top = _axis(ax, list(part["epsilon_requested"].unique()) or [1.0])
    _lines(ax, part, top, grid)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if len(part):
        ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_audit(path: Path, summary: pd.DataFrame, frame: pd.DataFrame, grid: list[str]) -> None:
    plt = _figure()
    fig, ax = plt.subplots(figsize=(8, 5))
    auc_rows = summary[
        (summary["metric"] == "auc") & summary["row"].str.startswith("audit/") & (summary["row"] != "audit/bound")
    ]
    epsilons = sorted(auc_rows["epsilon_requested"].unique()) or [1.0]
    top = _axis(ax, epsilons)
    # With one seed there is no interval over seeds: show the attack's own bootstrap interval.
    keys = ["epsilon_requested", *[g for g in grid if g in summary.columns], "row"]
    for bound in ("low", "high"):
        boot = summary[summary["metric"] == f"auc_{bound}"][[*keys, "mean"]].rename(columns={"mean": f"boot_{bound}"})
        auc_rows = auc_rows.merge(boot, on=keys, how="left")
        column = f"ci95_{bound}"
        auc_rows[column] = auc_rows[column].where(auc_rows[column].notna(), auc_rows[f"boot_{bound}"])
    _lines(ax, auc_rows, top, grid)
    delta = float(pd.to_numeric(frame["delta"], errors="coerce").max() or 0.0)
    finite = np.geomspace(min(0.1, min(epsilons)), top, 200)
    ax.plot(
        finite, [max_auc(e, delta) for e in finite], "k-", lw=2, label=f"(ε, δ={delta:.1e}) ceiling on any attack's AUC"
    )
    ax.axhline(0.5, color="grey", linestyle=":", label="chance")
    ax.set_ylim(0.3, 1.02)
    ax.set_ylabel("attack AUC (members vs reserved non-members)")
    ax.set_title("Membership-inference audit against the DP bound")
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return ""
        return "∞" if math.isinf(value) else f"{value:.4g}"
    return html.escape(str(value)) if value is not None else ""


def cell_table(frame: pd.DataFrame, records: list[dict[str, Any]]) -> pd.DataFrame:
    """One line per cell: status, ε requested / spent, accountant cross-check, headline rows, worst audit AUC."""
    grid = grid_columns(frame)
    lines = []
    for record in records:
        part = frame[frame["cell"] == record["cell"]]

        def value(row: str, metric: str, part: pd.DataFrame = part) -> float:
            hit = part[(part["row"] == row) & (part["metric"] == metric)]["value"]
            return float(hit.iloc[0]) if len(hit) else float("nan")

        audits = part[(part["metric"] == "auc") & part["row"].str.startswith("audit/")]
        lines.append(
            {
                "cell": record["cell"],
                "status": record["status"],
                "ε target": record["epsilon"],
                "ε spent": value("accountant", "epsilon_max"),
                "ε rdp": value("accountant", "epsilon_opacus_max"),
                "ε rdp dp-accounting": value("accountant", "epsilon_dp_accounting_max"),
                **{g: record["settings"].get(g, "") for g in grid},
                "synthetic/ease": value("synthetic/ease", HEADLINE),
                "synthetic/multvae": value("synthetic/multvae", HEADLINE),
                "dp-popularity": value("dp-popularity", HEADLINE),
                "dp-ease": value("dp-ease", HEADLINE),
                "dp-als": value("dp-als", HEADLINE),
                "max audit AUC": float(audits["value"].max()) if len(audits) else float("nan"),
                "minutes": record["seconds"] / 60,
                "error": record.get("error", ""),
            }
        )
    return pd.DataFrame(lines)


def markdown_table(table: pd.DataFrame) -> str:
    if table.empty:
        return "(none)"
    head = "| " + " | ".join(table.columns) + " |\n|" + "---|" * len(table.columns) + "\n"
    return head + "\n".join("| " + " | ".join(_fmt(v) for v in row) + " |" for row in table.itertuples(index=False))


def _html_table(table: pd.DataFrame) -> str:
    if table.empty:
        return "<p>(none)</p>"
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in table.columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{_fmt(v)}</td>" for v in row) + "</tr>" for row in table.itertuples(index=False)
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def headline_table(summary: pd.DataFrame) -> pd.DataFrame:
    """NDCG@10 mean [95% interval] per row × ε (first grid setting's layout: rows by row and setting)."""
    part = summary[summary["metric"] == HEADLINE].copy()
    if part.empty:
        return part
    part["value"] = [
        f"{m:.4f}" + (f" [{lo:.4f}, {hi:.4f}]" if not math.isnan(lo) else "")
        for m, lo, hi in zip(part["mean"], part["ci95_low"], part["ci95_high"], strict=True)
    ]
    part["ε"] = ["∞" if math.isinf(e) else f"{e:g}" for e in part["epsilon_requested"]]
    index = ["row", *[g for g in grid_columns(summary) if g in part.columns and g not in ("source",)]]
    index = [c for c in index if c not in ("epsilon_spent_mean", "seeds", "mean", "std", "ci95_low", "ci95_high")]
    wide = part.pivot_table(index=index, columns="ε", values="value", aggfunc="first", sort=False)
    return wide.reset_index()


def audit_table(summary: pd.DataFrame) -> pd.DataFrame:
    part = summary[
        summary["row"].str.startswith("audit/")
        & summary["metric"].isin(["auc", "tpr@0.01fpr", "tpr@0.1fpr", "epsilon_lower_bound", "max_auc"])
    ]
    if part.empty:
        return part
    part = part.assign(ε=["∞" if math.isinf(e) else f"{e:g}" for e in part["epsilon_requested"]])
    wide = part.pivot_table(index=["row", "metric"], columns="ε", values="mean", aggfunc="first", sort=False)
    return wide.reset_index()


Section = tuple[str, str, str | None, pd.DataFrame | None]  # title, text, image under plots/, table


def write_plots(plots: Path, frame: pd.DataFrame, summary: pd.DataFrame) -> None:
    """utility.png, retention.png, audit.png and fidelity.png under ``plots``."""
    plots.mkdir(exist_ok=True)
    grid = grid_columns(frame)
    plot_utility(plots / "utility.png", summary, grid)
    title, label = "Utility retention (synthetic / real-data recommender)", "retention of NDCG@10"
    plot_metric(plots / "retention.png", summary, grid, "retention", "synthetic", title, label)
    plot_audit(plots / "audit.png", summary, frame, grid)
    fidelity = summary[summary["row"].str.startswith("fidelity/") & summary["metric"].isin(FIDELITY_METRICS)]
    fidelity = fidelity.assign(row=fidelity["row"] + " " + fidelity["metric"])
    plot_metric(plots / "fidelity.png", fidelity, grid, "", "fidelity/", "Fidelity of the synthetic data", "value")


def report_sections(frame: pd.DataFrame, summary: pd.DataFrame, records: list[dict[str, Any]]) -> list[Section]:
    """The report's sections in order: summary, audit verdict, curves, audit, fidelity, cells, failures."""
    violations = [(r["cell"], v) for r in records for v in (r.get("audit") or {}).get("violations", [])]
    failed = [r for r in records if r["status"] != "ok"]
    accountant = frame[(frame["row"] == "accountant") & (frame["metric"] == "relative_difference_max")]["value"]
    summary_text = (
        f"{len(records)} cells, {len(records) - len(failed)} complete, {len(failed)} failed. "
        "ε is the target per client; 'ε spent' is the largest cumulative ε over clients (dp-accounting's PLD; "
        "Opacus RDP where a ledger holds secure-aggregation events), with the same ledger events' RDP by Opacus "
        "and by dp-accounting beside it"
        + (f" (largest relative difference {accountant.max():.2%})." if len(accountant) else ".")
        + " ∞ = the same pipeline without clipping or noise: non-private."
    )
    audit_verdict = (
        "\n".join(f"- {cell}: {v}" for cell, v in violations)
        if violations
        else "No attack proves more leakage than the spent (ε, δ) allows: every AUC's bootstrap interval "
        "reaches below the ceiling and every empirical ε lower bound (Clopper-Pearson, 95%) is below ε."
    )
    audit_text = (
        "AUC, TPR at 1% / 10% FPR and the empirical ε lower bound (Clopper-Pearson, 95%) (mean over "
        "seeds); members = clients' training users, non-members = reserved audit users. The black curve is "
        "the highest AUC any attack can reach under the spent (ε, δ)."
    )
    sections: list[Section] = [
        ("Summary", summary_text, None, None),
        ("AUDIT ABOVE THE DP BOUND: A BUG TO INVESTIGATE" if violations else "Audit against the bound", audit_verdict,
         None, None),
        ("Privacy-utility curve", "NDCG@10 mean [95% t-interval over seeds].", "utility.png", headline_table(summary)),
        ("Utility retention", "Synthetic-trained / real-trained recommender, NDCG@10.", "retention.png", None),
        ("Membership-inference audit", audit_text, "audit.png", audit_table(summary)),
        ("Fidelity", "Of the synthetic data against the real training users (simulation only).", "fidelity.png", None),
        ("Every cell", "", None, cell_table(frame, records)),
    ]  # fmt: skip
    if failed:
        sections.append(("Failed cells", "\n".join(f"- {r['cell']}: {r.get('error')}" for r in failed), None, None))
    return sections


def write_sweep_report(out: Path, frame: pd.DataFrame, summary: pd.DataFrame, records: list[dict[str, Any]]) -> None:
    """Plots under ``out/plots``, then report.md and report.html (the same sections, images embedded)."""
    plots = out / "plots"
    write_plots(plots, frame, summary)
    md, body = ["# fedsynth sweep report\n"], []
    for title, text, image, table in report_sections(frame, summary, records):
        md.append(f"## {title}\n\n{text}\n")
        body.append(f"<h2>{html.escape(title)}</h2><p>{html.escape(text).replace(chr(10), '<br>')}</p>")
        if image:
            md.append(f"![{title}](plots/{image})\n")
            encoded = base64.b64encode((plots / image).read_bytes()).decode()
            body.append(f'<img alt="{html.escape(title)}" src="data:image/png;base64,{encoded}">')
        if table is not None:
            md.append(markdown_table(table) + "\n")
            body.append(_html_table(table))
    write_text_atomic(out / "report.md", "\n".join(md))
    style = (
        "body{font-family:sans-serif;max-width:1100px;margin:auto}table{border-collapse:collapse;font-size:12px}"
        "td,th{border:1px solid #ccc;padding:3px}img{max-width:100%}"
    )
    write_text_atomic(
        out / "report.html",
        f"<!doctype html><html><head><meta charset='utf-8'><title>fedsynth sweep</title><style>{style}</style></head>"
        f"<body><h1>fedsynth sweep report</h1>{''.join(body)}</body></html>",
    )
