"""Domain errors: each one names what was wrong and what to do about it."""

from __future__ import annotations

from pathlib import Path


class FedsynthError(Exception):
    """Base class of the errors a user can fix (bad data, bad options)."""


class ConfigError(FedsynthError, ValueError):
    """An option or configuration value is invalid; the message names it."""


class DataFormatError(FedsynthError):
    """A data file cannot be read as the expected format.

    The message always names the file and, where one applies, the line (1-based,
    as an editor shows it, counting the header line) and says what to do.
    """

    def __init__(self, message: str, path: Path | str | None = None, line: int | None = None):
        self.path = None if path is None else Path(path)
        self.line = line
        where = ""
        if path is not None:
            where = f"{path}"
            if line is not None:
                where += f", line {line}"
            where += ": "
        super().__init__(where + message)


class EmptyDataError(FedsynthError):
    """Nothing is left after a processing step; the message names the step and the setting."""


class DownloadError(FedsynthError):
    """A download failed or its file did not match the expected size or checksum."""


class SecAggAborted(FedsynthError):
    """A stage of secure aggregation had fewer than ``threshold`` nodes, or a check failed: nothing was unmasked."""
