"""``fedsynth ledger show|set-cap|new``: a silo operator's view of its own ledgers, the one way to change a
cap, and the one way to start a new ledger.

Both act on the node's disk only (its ``ledger-dir``); nothing here talks to a server.
"""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table

from fedsynth.common.privacy.ledger import PrivacyLedger, ledgers_in, start_anew


def _released(entry: dict[str, object]) -> str:
    for event in ("created", "adopted", "data_changed", "after_archive"):
        if event in entry:
            return f"{event.replace('_', ' ')}: {entry[event]}"
    if "cap" in entry:
        return f"cap {entry['previous_cap']:g} → {entry['cap']:g} ({entry['by']})"
    where = f" {entry['round']}" if entry.get("release") == "round" else ""
    return f"{entry.get('release', '?')}{where}"


def _own_noise(entry: dict[str, object]) -> str:
    """ε total after the entry counting only the node's own noise in secure sums (blank: no entry or the same)."""
    own, total = entry.get("epsilon_total_own_noise"), entry.get("epsilon_total")
    return "" if own is None or own == total else f"{float(str(own)):.3f}"


def ledger_table(ledger: PrivacyLedger) -> Table:
    """One ledger's history: when, which run asked, what was released, the composed ε after it."""
    spent = ledger.spent()["total"]
    title = (
        f"{ledger.path.name}  data {ledger.fingerprint[:12]}…  cap ε {ledger.max_epsilon:g} at δ {ledger.delta:.3g} "
        f"({ledger.cap_source})  spent {spent:.3f}  remaining ≈ {ledger.remaining():.3f}"
    )
    own = ledger.spent_own_noise()
    if own != spent:  # some releases went through secure aggregation
        title += f"  (spent counting only this node's own noise in secure sums: {own:.3f})"
    table = Table(title=title, title_justify="left")
    columns = ("time (UTC)", "run id", "run key", "requester", "release", "ε asked", "ε total after", "own noise")
    for column in columns:
        table.add_column(column, overflow="fold")
    for entry in ledger.history:
        asked = entry.get("requested_epsilon")
        total = entry.get("epsilon_total")
        table.add_row(
            str(entry.get("time", "")),
            str(entry.get("run_id", "")),
            str(entry.get("run_key", ""))[:12],
            str(entry.get("requester", "")),
            _released(entry),
            "" if asked is None else f"{float(str(asked)):g}",
            "" if total is None else f"{float(str(total)):.3f}",
            _own_noise(entry),
        )
    return table


def show_ledgers(console: Console, directory: Path) -> None:
    """Print every ledger in ``directory``: cap, spent, remaining and the spend history."""
    for ledger in ledgers_in(directory):
        console.print(ledger_table(ledger))
    console.print(
        "ε composes (PLD; RDP once secure-aggregation events are in), so 'remaining' is cap − spent as a guide; "
        "a node checks each run's plan composed "
        "with its history against the cap and refuses what does not fit."
    )


def set_cap(console: Console, directory: Path, max_epsilon: float, reason: str) -> None:
    """Change the cap of every ledger in ``directory`` (recorded in each history)."""
    for ledger in ledgers_in(directory):
        previous = ledger.max_epsilon
        ledger.change_cap(max_epsilon, f"fedsynth ledger set-cap: {reason}")
        console.print(f"{ledger.path}: cap {previous:g} → {max_epsilon:g} (spent {ledger.spent()['total']:.3f})")


def new_ledger(console: Console, directory: Path, reason: str) -> None:
    """Archive every ledger in ``directory`` (with ``reason``); the node's next run opens a new one."""
    for ledger in ledgers_in(directory):
        console.print(f"{ledger.path.name}: spent {ledger.spent()['total']:.3f} at δ {ledger.delta:.3g}, archived")
    moved = start_anew(directory, reason)
    console.print(f"archived {len(moved)} file(s) to {moved[0].parent}; the next run starts a new ledger")
