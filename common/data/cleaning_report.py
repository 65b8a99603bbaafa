"""A counted record of everything the data layer removed or changed.

Nothing is dropped silently: every step that removes rows appends a :class:`Step`
with the counts before and after, and the commands print and save the whole report.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class Step:
    """One processing step: its name, rows before and after, and a human-readable note."""

    name: str
    rows_before: int
    rows_after: int
    note: str = ""

    @property
    def removed(self) -> int:
        return self.rows_before - self.rows_after


@dataclass
class CleaningReport:
    """Ordered steps applied to one data source, plus free-form warnings."""

    source: str
    steps: list[Step] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def add(self, name: str, rows_before: int, rows_after: int, note: str = "") -> None:
        self.steps.append(Step(name, rows_before, rows_after, note))

    def warn(self, message: str) -> None:
        self.warnings.append(message)

    @property
    def rows_removed(self) -> int:
        return sum(step.removed for step in self.steps)

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "steps": [asdict(step) | {"removed": step.removed} for step in self.steps],
            "warnings": list(self.warnings),
        }

    def lines(self) -> list[str]:
        """The report as plain text lines, one per step, for logs and terminals."""
        out = [f"data source: {self.source}"]
        for step in self.steps:
            note = f"  ({step.note})" if step.note else ""
            out.append(
                f"  {step.name:<28} {step.rows_before:>10,} → {step.rows_after:>10,}  removed {step.removed:>9,}{note}"
            )
        out.extend(f"  warning: {w}" for w in self.warnings)
        return out
