"""Atomic file writes: a file appears complete or not at all (write temp, fsync, rename)."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


def write_atomic(path: Path, write: Callable[[Path], object], mode: int | None = None) -> None:
    """``write(tmp)`` to a temp file beside ``path`` (same suffix, so writers that key on it work), fsync,
    optionally ``chmod(mode)``, then rename over ``path``: the file appears complete or not at all."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=path.suffix or ".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        with tmp.open("rb+") as handle:
            os.fsync(handle.fileno())
        if mode is not None:
            tmp.chmod(mode)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_csv_atomic(path: Path, frame: Any) -> None:
    """A pandas DataFrame as CSV without its index, atomically."""
    write_atomic(path, lambda tmp: frame.to_csv(tmp, index=False))


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically, creating parent folders."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path: Path, payload: Any) -> None:
    """Write ``payload`` as indented JSON to ``path`` atomically."""
    write_text_atomic(path, json.dumps(payload, indent=2, default=str) + "\n")


def to_plain(value: Any) -> Any:
    """JSON-friendly copy of nested dicts/lists: tuples become lists, other objects (paths) strings."""
    if isinstance(value, dict):
        return {str(k): to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_plain(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)
