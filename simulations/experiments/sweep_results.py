"""A sweep's tidy results (one row per cell × row × metric) and their summary over seeds."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from fedsynth.common.runtime.files import write_atomic, write_csv_atomic

HEADLINE = "ndcg@10"
ID_COLUMNS = ["cell", "status", "epsilon_requested", "epsilon_spent", "delta", "seed", "private", "clients"]
AUDIT_METRICS = ("auc", "auc_low", "auc_high", "tpr@0.01fpr", "tpr@0.1fpr", "epsilon_lower_bound")


def _rows_of_cell(record: dict[str, Any], reference: dict[str, dict[str, float]], clients: int) -> list[dict[str, Any]]:
    base = {
        "cell": record["cell"],
        "status": record["status"],
        "epsilon_requested": record["epsilon"],
        "seed": record["seed"],
        "private": not math.isinf(record["epsilon"]),
        "clients": int(record["settings"].get("clients", clients)),
        **{k: v for k, v in record["settings"].items() if k != "clients"},
    }
    if record["status"] != "ok":
        return [
            {
                **base,
                "source": "cell",
                "row": "(failed)",
                "metric": "error",
                "value": np.nan,
                "error": record.get("error"),
            }
        ]
    metrics = record["metrics"]
    base["epsilon_spent"] = metrics["privacy"].get("epsilon_max")
    base["delta"] = metrics["privacy"].get("delta")
    rows: list[dict[str, Any]] = []

    def add(source: str, row: str, values: dict[str, Any]) -> None:
        for metric, value in values.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                rows.append({**base, "source": source, "row": row, "metric": metric, "value": float(value)})

    for row, values in metrics["recommenders"].items():
        add("cell", row, values)
    for row, values in reference.items():
        add("reference (non-private, once per seed)", row, values)
    for row, values in metrics["recommenders"].items():
        real = reference.get(f"real/{row.split('/', 1)[1]}") if "/" in row and row.startswith("synthetic") else None
        if real and real.get(HEADLINE):
            add("cell", row, {"retention": values[HEADLINE] / real[HEADLINE]})
    audit = record.get("audit") or {}
    for attack, summary in audit.get("attacks", {}).items():
        add("audit", f"audit/{attack}", {k: summary[k] for k in AUDIT_METRICS})
    if audit:
        add("audit", "audit/bound", {"max_auc": audit["bound"]["max_auc"], "violations": len(audit["violations"])})
    for label, values in audit.get("fidelity", {}).items():
        add("fidelity", f"fidelity/{label}", values)
    accountant = record.get("accountant") or []
    if accountant:
        add(
            "accountant",
            "accountant",
            {
                # as reported (PLD; RDP where a ledger holds Skellam events); older records: Opacus' RDP
                "epsilon_max": max(r.get("epsilon", r["epsilon_opacus"]) for r in accountant),
                "epsilon_opacus_max": max(r["epsilon_opacus"] for r in accountant),
                # nan where a ledger holds Skellam (secure-aggregation) events, which dp-accounting cannot take
                "epsilon_dp_accounting_max": max(
                    (r["epsilon_dp_accounting"] for r in accountant if not math.isnan(r["epsilon_dp_accounting"])),
                    default=math.nan,
                ),
                "relative_difference_max": max(r["relative_difference"] for r in accountant),
            },
        )
    add("cell", "seconds", {"seconds": record["seconds"]})
    return rows


def tidy_results(records: list[dict[str, Any]], references: dict[str, dict[str, Any]], clients: int) -> pd.DataFrame:
    """One row per (cell, row, metric); ``references`` maps a cell name to its seed's upper bounds."""
    rows = []
    for record in records:
        rows += _rows_of_cell(record, references.get(record["cell"], {}), clients)
    frame = pd.DataFrame(rows)
    for column in ("epsilon_spent", "delta", "error"):
        if column not in frame:
            frame[column] = np.nan
    return frame


def grid_columns(frame: pd.DataFrame) -> list[str]:
    """The grid axes present (columns that are neither identifiers nor result fields)."""
    fixed = {*ID_COLUMNS, "source", "row", "metric", "value", "error"}
    return [c for c in frame.columns if c not in fixed]


def summarise(frame: pd.DataFrame) -> pd.DataFrame:
    """Mean, standard deviation and 95% t-interval over seeds for each (settings, row, metric)."""
    done = frame[(frame["status"] == "ok") & frame["value"].notna()]
    keys = ["epsilon_requested", "clients", *grid_columns(frame), "source", "row", "metric"]
    out = []
    for group, part in done.groupby(keys, dropna=False, sort=False):
        values = part["value"].to_numpy(dtype=float)
        n, mean = len(values), float(values.mean())
        std = float(values.std(ddof=1)) if n > 1 else float("nan")
        half = float(stats.t.ppf(0.975, n - 1) * std / math.sqrt(n)) if n > 1 else float("nan")
        spent = pd.to_numeric(part["epsilon_spent"], errors="coerce")
        out.append(
            {
                **dict(zip(keys, group, strict=True)),
                "epsilon_spent_mean": float(spent.mean()) if spent.notna().any() else float("nan"),
                "seeds": n,
                "mean": mean,
                "std": std,
                "ci95_low": mean - half,
                "ci95_high": mean + half,
            }
        )
    columns = [*keys, "epsilon_spent_mean", "seeds", "mean", "std", "ci95_low", "ci95_high"]
    return pd.DataFrame(out, columns=columns)


def write_tables(out: Path, frame: pd.DataFrame, summary: pd.DataFrame) -> None:
    """results.csv, results.parquet and summary.csv (each written whole, then renamed)."""
    write_csv_atomic(out / "results.csv", frame)
    write_csv_atomic(out / "summary.csv", summary)
    parquet = frame.assign(error=frame["error"].astype("string"))
    write_atomic(out / "results.parquet", lambda tmp: parquet.to_parquet(tmp, index=False))


def load_references(out: Path, cells: list[tuple[str, str]]) -> dict[str, dict[str, Any]]:
    """``cells`` = (cell name, data key) → the cell's upper-bound results (empty if not computed)."""
    out_map = {}
    for cell, key in cells:
        path = out / "reference" / f"{key}.json"
        out_map[cell] = json.loads(path.read_text())["results"] if path.is_file() else {}
    return out_map
