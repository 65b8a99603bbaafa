"""Printing reports and tables to the terminal (rich)."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
from rich import box
from rich.console import Console
from rich.table import Table

from fedsynth.common.data.prepare import PreparedData

HEADLINE_METRICS = ("ndcg@10", "recall@20", "ndcg@100", "hitrate@10", "coverage@10")


def print_data_report(console: Console, prepared: PreparedData) -> None:
    """The cleaning report (every removed row counted), data and split summaries."""
    report = prepared.interactions.report
    table = Table(title=f"Data: {report.source}", title_justify="left")
    for column in ("step", "rows before", "rows after", "removed", "note"):
        table.add_column(column, justify="right" if column.startswith(("rows", "removed")) else "left")
    for step in report.steps:
        table.add_row(step.name, f"{step.rows_before:,}", f"{step.rows_after:,}", f"{step.removed:,}", step.note)
    console.print(table)
    for warning in report.warnings:
        console.print(f"[yellow]warning:[/yellow] {warning}")
    data, split = prepared.interactions.summary(), prepared.split.summary()
    console.print(
        f"{data['users']:,} users × {data['items']:,} items, {data['interactions']:,} positives "
        f"(density {data['density']:.4f}); split: {split['train_users']:,} train, "
        f"{split['validation_users']:,} validation, {split['test_users']:,} test users"
    )


def print_frame(console: Console, frame: pd.DataFrame, title: str) -> None:
    table = Table(title=title, title_justify="left")
    for column in frame.columns:
        table.add_column(str(column), justify="right")
    for row in frame.itertuples(index=False):
        table.add_row(*(f"{v:,}" if isinstance(v, int) else str(v) for v in row))
    console.print(table)


def print_results(
    console: Console, results: dict[str, dict[str, float]], title: str, metrics: Sequence[str] = HEADLINE_METRICS
) -> None:
    """One row per recommender, one column per metric."""
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD)
    table.add_column("recommender", no_wrap=True, min_width=max((len(n) for n in results), default=11))
    shown = [m for m in metrics if any(m in r for r in results.values())]
    for metric in shown:
        table.add_column(metric, justify="right", no_wrap=True, min_width=len(metric))
    for name, values in results.items():
        table.add_row(name, *(f"{values[m]:.4f}" if m in values else "" for m in shown))
    console.print(table, width=max(console.width, 100), crop=False)  # whole headers on an 80-column terminal
