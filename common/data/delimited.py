"""Reading delimited text and Parquet into an :class:`InteractionTable`, with line-numbered errors.

Every value is read as text first, then validated column by column, so a bad row is
reported with the line an editor shows (header included) rather than as a dtype error
from deep inside pandas.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from fedsynth.common.data.cleaning_report import CleaningReport
from fedsynth.common.data.table import TABLE_COLUMNS, Feedback, InteractionTable
from fedsynth.common.errors import DataFormatError

BadRowPolicy = Literal["error", "skip"]
_MAX_LINES_LISTED = 5


@dataclass(frozen=True)
class ColumnSpec:
    """Which source columns hold the user, item, value and timestamp.

    ``rating`` and ``timestamp`` are optional; with no rating column every row is an
    implicit positive (value 1.0). ``numeric_ids`` makes non-numeric ids an error (the
    built-in formats); generic files keep ids as text.
    """

    user: str
    item: str
    rating: str | None = None
    timestamp: str | None = None
    numeric_ids: bool = True


def require_file(path: Path, what: str, hint: str) -> Path:
    """Return ``path`` if it is a readable file, else raise a DataFormatError saying what to do."""
    if not path.exists():
        raise DataFormatError(f"{what} not found. {hint}", path)
    if not path.is_file():
        raise DataFormatError(f"expected a file ({what}) but this is a directory. {hint}", path)
    return path


def read_delimited_text(
    path: Path,
    separator: str,
    names: list[str] | None,
) -> pd.DataFrame:
    """Read a delimited file as strings, with ``names`` (no header) or its header line.

    Multi-character separators (MovieLens' ``::``) are replaced by a tab in memory so the
    fast C parser can be used. Returns a DataFrame of ``str`` (missing fields are NaN).
    """
    header: int | None = None if names is not None else 0
    try:
        if len(separator) > 1:
            raw = path.read_bytes().replace(separator.encode(), b"\t")
            source: io.BytesIO | Path = io.BytesIO(raw)
            sep = "\t"
        else:
            source, sep = path, separator
        frame = pd.read_csv(
            source,
            sep=sep,
            header=header,
            names=names,
            dtype=str,
            keep_default_na=False,
            na_values=[],
            engine="c",
            skip_blank_lines=True,
            encoding_errors="replace",
        )
    except pd.errors.EmptyDataError as exc:
        raise DataFormatError("the file is empty; it must hold one interaction per line.", path) from exc
    except pd.errors.ParserError as exc:
        match = re.search(r"Expected (\d+) fields in line (\d+), saw (\d+)", str(exc))
        if match:
            expected, line, seen = (int(g) for g in match.groups())
            raise DataFormatError(
                f"expected {expected} fields separated by {separator!r} but found {seen}. "
                "Check the separator (--separator) and that every line has the same number of columns.",
                path,
                line,
            ) from exc
        raise DataFormatError(f"cannot parse as {separator!r}-separated text: {exc}", path) from exc
    frame.columns = [str(c).strip() for c in frame.columns]
    if frame.empty:
        raise DataFormatError("the file has no data rows; it must hold one interaction per line.", path)
    return frame


def check_columns(frame: pd.DataFrame, spec: ColumnSpec, path: Path, separator: str | None) -> None:
    """Raise a DataFormatError if a column named in ``spec`` is absent, listing what is there."""
    wanted = [("--user-col", spec.user), ("--item-col", spec.item)]
    if spec.rating is not None:
        wanted.append(("--rating-col", spec.rating))
    if spec.timestamp is not None:
        wanted.append(("--time-col", spec.timestamp))
    for option, column in wanted:
        if column not in frame.columns:
            found = ", ".join(repr(c) for c in frame.columns)
            hint = ""
            if separator is not None and len(frame.columns) == 1:
                hint = (
                    f" Only one column was found, so the file is probably not separated by "
                    f"{separator!r}: pass the right --separator."
                )
            raise DataFormatError(
                f"column {column!r} ({option}) does not exist; the columns are {found}.{hint}",
                path,
            )


def _listed(lines: np.ndarray) -> str:
    shown = ", ".join(str(int(n)) for n in lines[:_MAX_LINES_LISTED])
    return shown + (", ..." if len(lines) > _MAX_LINES_LISTED else "")


def validate_rows(
    frame: pd.DataFrame,
    spec: ColumnSpec,
    path: Path,
    first_line: int,
    bad_rows: BadRowPolicy,
    report: CleaningReport,
    unit: str = "line",
) -> pd.DataFrame:
    """Turn text columns into the table's typed columns, handling invalid rows by ``bad_rows``.

    ``first_line`` is the file line of the first data row (2 with a header, 1 without).
    With ``bad_rows="error"`` the first invalid row raises, naming its line, the reason and
    how many rows are bad in all; with ``"skip"`` they are dropped and counted in ``report``.
    Returns a DataFrame with :data:`TABLE_COLUMNS`.
    """
    n = len(frame)
    problems: list[tuple[np.ndarray, str]] = []
    bad = np.zeros(n, dtype=bool)

    def text(column: str) -> pd.Series:
        return frame[column].astype("string").str.strip()

    def numeric(column: str, role: str, integral: bool) -> np.ndarray:
        values = text(column)
        missing = values.isna().to_numpy() | (values.fillna("") == "").to_numpy()
        parsed = pd.to_numeric(values.where(~missing), errors="coerce").to_numpy(dtype=float)
        not_number = ~missing & np.isnan(parsed)
        if integral:
            not_number |= ~missing & ~np.isnan(parsed) & (parsed != np.round(parsed))
        problems.append((missing, f"missing {role} ({column!r})"))
        kind = "an integer" if integral else "a number"
        problems.append((not_number, f"{role} ({column!r}) is not {kind}"))
        bad[:] |= missing | not_number
        return parsed

    if spec.numeric_ids:
        users: np.ndarray = numeric(spec.user, "user id", integral=True)
        items: np.ndarray = numeric(spec.item, "item id", integral=True)
    else:
        users_text, items_text = text(spec.user), text(spec.item)
        for values, role, column in ((users_text, "user id", spec.user), (items_text, "item id", spec.item)):
            missing = values.isna().to_numpy() | (values.fillna("") == "").to_numpy()
            problems.append((missing, f"missing {role} ({column!r})"))
            bad |= missing
        users, items = users_text.to_numpy(dtype=object), items_text.to_numpy(dtype=object)
    value = numeric(spec.rating, "rating", integral=False) if spec.rating else np.ones(n)
    no_time = np.full(n, np.nan)
    timestamp = numeric(spec.timestamp, "timestamp", integral=False) if spec.timestamp else no_time

    if bad.any():
        lines = np.flatnonzero(bad) + first_line
        first = int(np.flatnonzero(bad)[0])
        reasons = [reason for mask, reason in problems if mask[first]]
        counts = "; ".join(f"{int(mask.sum()):,} with {reason}" for mask, reason in problems if mask.any())
        if bad_rows == "error":
            raise DataFormatError(
                f"{reasons[0]}: {frame.iloc[first].to_dict()}. {int(bad.sum()):,} invalid row(s) in all "
                f"({counts}; {unit}s {_listed(lines)}). Fix the file, check --separator and the column "
                "options, or pass --bad-rows skip to drop invalid rows (they are counted in the summary).",
                path,
                int(lines[0]) if unit == "line" else None,
            )
        report.add("invalid rows", n, n - int(bad.sum()), f"{counts}; {unit}s {_listed(lines)}")
        report.warn(f"{path}: dropped {int(bad.sum()):,} invalid row(s) ({counts}).")

    keep = ~bad
    out = pd.DataFrame(
        {
            "user": users[keep].astype(np.int64) if spec.numeric_ids else users[keep].astype(str),
            "item": items[keep].astype(np.int64) if spec.numeric_ids else items[keep].astype(str),
            "value": value[keep].astype(np.float64),
            "timestamp": timestamp[keep].astype(np.float64),
        },
        columns=list(TABLE_COLUMNS),
    )
    return out.reset_index(drop=True)


def load_delimited(
    path: Path,
    spec: ColumnSpec,
    separator: str,
    feedback: Feedback,
    bad_rows: BadRowPolicy,
    source: str,
    names: list[str] | None = None,
    attribute_columns: tuple[str, ...] = (),
) -> InteractionTable:
    """Load a delimited file (header line unless ``names`` is given) into an InteractionTable."""
    frame = read_delimited_text(path, separator, names)
    check_columns(frame, spec, path, separator)
    report = CleaningReport(source=source)
    report.add("rows read", len(frame), len(frame))
    attributes = _user_attributes(frame, spec, attribute_columns, path, report)
    table = validate_rows(frame, spec, path, 1 if names is not None else 2, bad_rows, report)
    return InteractionTable(table, feedback, report, attributes)


def load_parquet(
    path: Path,
    spec: ColumnSpec,
    feedback: Feedback,
    bad_rows: BadRowPolicy,
    attribute_columns: tuple[str, ...] = (),
) -> InteractionTable:
    """Load a Parquet file; invalid rows are reported by row number (1-based)."""
    try:
        frame = pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises several unrelated types for a non-Parquet file
        raise DataFormatError(f"cannot read as Parquet ({exc}). Is this really a Parquet file?", path) from exc
    if frame.empty:
        raise DataFormatError("the file has no rows; it must hold one interaction per row.", path)
    frame.columns = [str(c) for c in frame.columns]
    check_columns(frame, spec, path, None)
    report = CleaningReport(source=f"parquet {path}")
    report.add("rows read", len(frame), len(frame))
    attributes = _user_attributes(frame, spec, attribute_columns, path, report)
    text = frame.astype("string")
    table = validate_rows(text, spec, path, 1, bad_rows, report, unit="row")
    return InteractionTable(table, feedback, report, attributes)


def _user_attributes(
    frame: pd.DataFrame,
    spec: ColumnSpec,
    columns: tuple[str, ...],
    path: Path,
    report: CleaningReport,
) -> pd.DataFrame | None:
    """Per-user attributes taken from columns of the interaction file (first value per user).

    A user whose attribute value varies across rows keeps the first one; the number of
    such users is reported as a warning.
    """
    if not columns:
        return None
    for column in columns:
        if column not in frame.columns:
            found = ", ".join(repr(c) for c in frame.columns)
            raise DataFormatError(f"attribute column {column!r} does not exist; the columns are {found}.", path)
    sub = frame[[spec.user, *columns]].astype("string")
    sub[spec.user] = sub[spec.user].str.strip()
    if spec.numeric_ids:
        ids = pd.to_numeric(sub[spec.user], errors="coerce")
        sub = sub[ids.notna()].assign(**{spec.user: ids[ids.notna()].astype(np.int64)})
    varying = sub.groupby(spec.user)[list(columns)].nunique()
    n_varying = int((varying > 1).any(axis=1).sum())
    if n_varying:
        report.warn(f"{n_varying:,} user(s) have more than one value of {columns}; the first value is used.")
    attrs = sub.groupby(spec.user)[list(columns)].first()
    attrs.index.name = "user"
    return attrs
