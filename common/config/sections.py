"""Validated, frozen configuration: built once (CLI options, a TOML file, Flower's run config).

Every dataclass checks its values in ``__post_init__`` and says what to change. Use
:func:`from_mapping` to build one from a dict of kebab- or snake-case keys; unknown keys
and wrong types are errors, never ignored.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin

from fedsynth.common.errors import ConfigError

DatasetName = Literal["generated", "movielens", "lastfm", "csv", "parquet"]
DATASETS: tuple[str, ...] = get_args(DatasetName)
PartitionScheme = Literal["iid", "dirichlet", "natural"]
BadRows = Literal["error", "skip"]
BAD_ROWS: tuple[str, ...] = get_args(BadRows)


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


@dataclass(frozen=True)
class GeneratedDataConfig:
    """The built-in generated dataset (default: shaped and sized like MovieLens-100K)."""

    num_users: int = 943
    num_items: int = 1682
    mean_history: float = 112.0  # before clipping long tails; gives about 100,000 ratings as ML-100K
    min_history: int = 20  # ML-100K keeps users with at least 20 ratings
    num_clusters: int = 12  # taste clusters
    num_regions: int = 5  # values of the 'region' user attribute (for natural partitions)
    seed: int = 0

    def __post_init__(self) -> None:
        _check(self.num_users >= 10, f"generated num-users must be at least 10, got {self.num_users}.")
        _check(self.num_items >= 10, f"generated num-items must be at least 10, got {self.num_items}.")
        _check(
            0 < self.min_history <= self.mean_history < 0.45 * self.num_items,
            "generated histories need 0 < min-history <= mean-history < 0.45 × num-items, got "
            f"{self.min_history}, {self.mean_history}, {self.num_items}.",
        )
        _check(self.num_clusters >= 1, "generated num-clusters must be at least 1.")
        _check(self.num_regions >= 1, "generated num-regions must be at least 1.")


@dataclass(frozen=True)
class DataConfig:
    """Where interactions come from and how the source file is read."""

    dataset: DatasetName = "generated"
    data_path: Path | None = None  # a directory (MovieLens, Last.fm) or a file
    variant: str | None = None  # download by name: 100k, 1m, latest-small, 20m
    cache_dir: Path | None = None  # download cache; default ~/.cache/fedsynth
    mirror: str | None = None  # base URL replacing files.grouplens.org (offline mirrors, tests)
    user_col: str | None = None  # generic csv/parquet only
    item_col: str | None = None
    rating_col: str | None = None
    time_col: str | None = None
    attribute_cols: tuple[str, ...] = ()  # per-user attribute columns in a generic file
    separator: str = ","
    bad_rows: BadRows = "error"
    generated: GeneratedDataConfig = field(default_factory=GeneratedDataConfig)

    def __post_init__(self) -> None:
        _check(self.dataset in DATASETS, f"--dataset must be one of {', '.join(DATASETS)}; got {self.dataset!r}.")
        _check(self.bad_rows in BAD_ROWS, f"--bad-rows must be 'error' or 'skip', got {self.bad_rows!r}.")
        if self.dataset in ("csv", "parquet"):
            _check(
                self.data_path is not None,
                f"--dataset {self.dataset} needs --data-path naming the file.",
            )
            _check(
                bool(self.user_col) and bool(self.item_col),
                f"--dataset {self.dataset} needs --user-col and --item-col naming the columns.",
            )
        if self.dataset in ("movielens", "lastfm"):
            _check(
                self.data_path is not None or self.variant is not None,
                f"--dataset {self.dataset} needs --data-path DIR"
                + (" or --variant 100k|1m|latest-small|20m to download it." if self.dataset == "movielens" else "."),
            )
        if self.variant is not None:
            _check(self.dataset == "movielens", "--variant (download) is available for --dataset movielens only.")
            _check(self.data_path is None, "give either --data-path or --variant, not both.")
        _check(self.separator != "", "--separator must not be empty.")


@dataclass(frozen=True)
class PreprocessConfig:
    """Cleaning and implicit-feedback conversion.

    ``implicit_threshold``: keep rows with value >= threshold as positives. ``None`` uses the
    source's default: ratings >= 4.0 (5-point scale), play counts > 0, implicit data all.
    """

    implicit_threshold: float | None = None
    min_user_interactions: int = 5  # k-core: users need at least this many positives
    min_item_interactions: int = 1  # k-core: items need at least this many users

    def __post_init__(self) -> None:
        _check(self.min_user_interactions >= 1, "--min-user-interactions must be at least 1.")
        _check(self.min_item_interactions >= 1, "--min-item-interactions must be at least 1.")


@dataclass(frozen=True)
class SplitConfig:
    """Strong-generalization split (Liang et al. 2018): disjoint train / validation / test users."""

    validation_fraction: float = 0.1
    test_fraction: float = 0.1
    fold_in_fraction: float = 0.8  # share of each held-out user's items given to the model
    audit_fraction: float = 0.0  # users reserved as never-trained non-members for membership audits
    seed: int = 0

    def __post_init__(self) -> None:
        fractions = (
            ("validation", self.validation_fraction),
            ("test", self.test_fraction),
            ("audit", self.audit_fraction),
        )
        for name, value in fractions:
            _check(0.0 <= value < 1.0, f"--{name}-fraction must be in [0, 1), got {value}.")
        _check(
            self.validation_fraction + self.test_fraction + self.audit_fraction < 1.0,
            "validation, test and audit fractions must leave some training users (their sum must be < 1).",
        )
        _check(0.0 < self.fold_in_fraction < 1.0, f"--fold-in-fraction must be in (0, 1), got {self.fold_in_fraction}.")


@dataclass(frozen=True)
class PartitionConfig:
    """How users are spread over clients.

    ``scheme``: ``iid``; ``dirichlet`` over ``by`` (``cluster`` = taste clusters, or a user
    attribute) with concentration ``alpha``; ``natural``: one client per value of attribute ``by``.
    """

    num_clients: int = 5
    scheme: PartitionScheme = "iid"
    alpha: float = 0.5
    by: str = "cluster"
    num_clusters: int = 10  # taste clusters for dirichlet over 'cluster'
    min_train_users: int = 2  # per client; the training issues raise it to the batch size
    seed: int = 0

    def __post_init__(self) -> None:
        _check(self.num_clients >= 1, f"--clients must be at least 1, got {self.num_clients}.")
        _check(self.scheme in ("iid", "dirichlet", "natural"), f"unknown partition scheme {self.scheme!r}.")
        _check(self.alpha > 0, f"the Dirichlet alpha must be positive, got {self.alpha}.")
        _check(self.num_clusters >= 2, "--num-clusters must be at least 2.")
        _check(self.min_train_users >= 1, "the minimum of training users per client must be at least 1.")

    @classmethod
    def from_spec(cls, spec: str, **kwargs: Any) -> PartitionConfig:
        """Parse ``iid``, ``dirichlet:ALPHA``, ``dirichlet:ALPHA:ATTRIBUTE`` or ``natural:ATTRIBUTE``."""
        parts = spec.strip().split(":")
        scheme = parts[0]
        try:
            if scheme == "iid" and len(parts) == 1:
                return cls(scheme="iid", **kwargs)
            if scheme == "dirichlet" and len(parts) in (2, 3):
                by = parts[2] if len(parts) == 3 else kwargs.pop("by", "cluster")
                kwargs.pop("by", None)
                return cls(scheme="dirichlet", alpha=float(parts[1]), by=by, **kwargs)
            if scheme == "natural" and len(parts) == 2 and parts[1]:
                kwargs.pop("by", None)
                return cls(scheme="natural", by=parts[1], **kwargs)
        except ValueError as exc:
            if isinstance(exc, ConfigError):
                raise
            raise ConfigError(f"--partition {spec!r}: {exc}") from exc
        raise ConfigError(
            f"--partition {spec!r} is not understood; use iid, dirichlet:ALPHA (over taste clusters), "
            "dirichlet:ALPHA:ATTRIBUTE or natural:ATTRIBUTE."
        )


@dataclass(frozen=True)
class EvalConfig:
    """Ranking evaluation: cut-offs and batch size (users scored at once)."""

    ks: tuple[int, ...] = (10, 20, 50, 100)
    batch_size: int = 512
    targets: tuple[int, ...] = ()  # items whose appearance in each top K is counted (attack studies)

    def __post_init__(self) -> None:
        _check(len(self.ks) > 0 and all(k >= 1 for k in self.ks), f"cut-offs K must be positive, got {self.ks}.")
        _check(len(set(self.ks)) == len(self.ks), f"cut-offs K must be distinct, got {self.ks}.")
        _check(self.batch_size >= 1, "the evaluation batch size must be at least 1.")


T = TypeVar("T")


def from_mapping(cls: type[T], values: dict[str, Any], where: str = "configuration") -> T:
    """Build dataclass ``cls`` from ``values`` (kebab- or snake-case keys), rejecting unknown keys.

    Nested dataclass fields take nested dicts. Values are converted to the field's type
    (int, float, str, bool, Path, tuple) and a value that cannot be is a ConfigError.
    """
    assert dataclasses.is_dataclass(cls)
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for raw_key, value in values.items():
        key = raw_key.replace("-", "_")
        if key not in fields:
            known = sorted(k.replace("_", "-") for k in fields)
            close = difflib.get_close_matches(raw_key.replace("_", "-"), known, n=3)
            hint = f"did you mean {' or '.join(close)}? " if close else ""
            raise ConfigError(f"unknown key {raw_key!r} in {where}; {hint}known keys: {', '.join(known)}.")
        kwargs[key] = _convert(hints[key], value, f"{where}: {raw_key}")
    return cls(**kwargs)


def _convert(hint: Any, value: Any, where: str) -> Any:
    origin = get_origin(hint)
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a table of settings, got {value!r}.")
        return from_mapping(hint, value, where)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in get_args(hint) if a is not type(None)]
        if value is None:
            return None
        return _convert(options[0], value, where)
    if origin is Literal:
        if value not in get_args(hint):
            raise ConfigError(f"{where} must be one of {get_args(hint)}, got {value!r}.")
        return value
    if origin is tuple:
        items = value.split(",") if isinstance(value, str) else list(value)
        item_type = get_args(hint)[0]
        return tuple(_convert(item_type, v, where) for v in items if v != "")
    try:
        if hint is bool:
            if isinstance(value, str):
                if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError(value)
                return value.lower() in ("true", "1", "yes")
            return bool(value)
        if hint is Path:
            return Path(value)
        if hint in (int, float, str):
            if hint is int and isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return hint(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where} must be {getattr(hint, '__name__', hint)}, got {value!r}.") from exc
    return value
