"""The validated interaction table every loader produces.

One row per (user, item) event: columns ``user``, ``item`` (original ids: int64 for the
built-in formats, str for generic files), ``value`` (float64: a rating, a play count, or 1.0
for implicit data) and ``timestamp`` (float64 seconds since the epoch, NaN when the source
has none).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import pandas as pd

from fedsynth.common.data.cleaning_report import CleaningReport

Feedback = Literal["rating", "count", "implicit"]
TABLE_COLUMNS = ("user", "item", "value", "timestamp")


@dataclass(frozen=True)
class InteractionTable:
    """A loaded, validated source.

    Attributes:
        frame: DataFrame with exactly :data:`TABLE_COLUMNS`.
        feedback: what ``value`` means; decides the default implicit-feedback rule.
        user_attributes: optional DataFrame indexed by original user id (e.g. age,
            gender, zip prefix, region), used by natural and attribute partitioning.
        report: counted record of rows removed while loading.
    """

    frame: pd.DataFrame
    feedback: Feedback
    report: CleaningReport
    user_attributes: pd.DataFrame | None = None

    def __post_init__(self) -> None:
        assert tuple(self.frame.columns) == TABLE_COLUMNS, self.frame.columns
