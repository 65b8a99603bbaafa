"""Command-line options shared by several commands, turned into validated configs in one place."""

from __future__ import annotations

import codecs
import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from fedsynth.common.config.sections import (
    DATASETS,
    DataConfig,
    GeneratedDataConfig,
    PartitionConfig,
    PreprocessConfig,
    SplitConfig,
)
from fedsynth.common.data.prepare import DataSettings

_DATA_OPTIONS = [
    click.option(
        "--dataset",
        type=click.Choice(DATASETS),
        default="generated",
        show_default=True,
        help="Source: built-in generated data, a MovieLens or Last.fm folder, or a generic CSV/Parquet file.",
    ),
    click.option(
        "--data-path",
        type=click.Path(path_type=Path),
        help="MovieLens/Last.fm folder (or its ratings file), or the CSV/Parquet file.",
    ),
    click.option("--variant", help="Download MovieLens by name instead: 100k, 1m, latest-small, 20m."),
    click.option("--cache-dir", type=click.Path(path_type=Path), help="Download cache [default: ~/.cache/fedsynth]."),
    click.option("--mirror", help="Base URL to download from instead of files.grouplens.org (http(s):// or file://)."),
    click.option("--user-col", help="CSV/Parquet: the user id column."),
    click.option("--item-col", help="CSV/Parquet: the item id column."),
    click.option("--rating-col", help="CSV/Parquet: the rating/count column (omit for implicit data)."),
    click.option("--time-col", help="CSV/Parquet: the timestamp column (optional)."),
    click.option("--attribute-cols", default="", help="CSV/Parquet: comma-separated per-user attribute columns."),
    click.option("--separator", default=",", show_default=True, help=r"CSV field separator ('\t' for tab)."),
    click.option(
        "--bad-rows",
        type=click.Choice(["error", "skip"]),
        default="error",
        show_default=True,
        help="Invalid rows (missing or non-numeric fields): stop with an error, or drop and count them.",
    ),
    click.option(
        "--gen-users", type=int, default=GeneratedDataConfig.num_users, show_default=True, help="Generated data: users."
    ),
    click.option(
        "--gen-items", type=int, default=GeneratedDataConfig.num_items, show_default=True, help="Generated data: items."
    ),
    click.option(
        "--gen-mean-history",
        type=float,
        default=GeneratedDataConfig.mean_history,
        show_default=True,
        help="Generated data: mean ratings per user.",
    ),
    click.option(
        "--gen-clusters",
        type=int,
        default=GeneratedDataConfig.num_clusters,
        show_default=True,
        help="Generated data: taste clusters.",
    ),
    click.option(
        "--implicit-threshold",
        type=float,
        help="Positives are values >= this [default: rating >= 4; play count > 0].",
    ),
    click.option(
        "--min-user-interactions", type=int, default=5, show_default=True, help="k-core: minimum positives per user."
    ),
    click.option(
        "--min-item-interactions", type=int, default=1, show_default=True, help="k-core: minimum users per item."
    ),
    click.option(
        "--validation-fraction",
        type=float,
        default=0.1,
        show_default=True,
        help="Share of users held out for validation.",
    ),
    click.option(
        "--test-fraction", type=float, default=0.1, show_default=True, help="Share of users held out for testing."
    ),
    click.option(
        "--fold-in-fraction",
        type=float,
        default=0.8,
        show_default=True,
        help="Share of a held-out user's items shown to the model.",
    ),
    click.option(
        "--audit-fraction",
        type=float,
        default=0.0,
        show_default=True,
        help="Share of users reserved as never-trained non-members for membership audits (fedsynth run: 0.1).",
    ),
    click.option(
        "--seed", type=int, default=0, show_default=True, help="Seed of the generated data, split and partitions."
    ),
]

_PARTITION_OPTIONS = [
    click.option(
        "--clients", type=int, default=5, show_default=True, help="Number of clients (ignored by natural partitions)."
    ),
    click.option(
        "--partition",
        default="iid",
        show_default=True,
        help="iid | dirichlet:ALPHA (taste clusters) | dirichlet:ALPHA:ATTRIBUTE | natural:ATTRIBUTE.",
    ),
    click.option(
        "--num-clusters", type=int, default=10, show_default=True, help="Taste clusters for dirichlet partitions."
    ),
]


def _apply(options: list[Callable[[Any], Any]], func: Callable[..., Any]) -> Callable[..., Any]:
    for option in reversed(options):
        func = option(func)
    return func


def decode_separator(text: str) -> str:
    r"""Turn ``\t`` and ``tab`` typed on a command line into a tab character."""
    if text.lower() == "tab":
        return "\t"
    return codecs.decode(text, "unicode_escape") if "\\" in text else text


def data_settings_from(kwargs: dict[str, Any]) -> DataSettings:
    """Pop the data options from ``kwargs`` and build the validated DataSettings."""
    seed = kwargs.pop("seed")
    data = DataConfig(
        dataset=kwargs.pop("dataset"),
        data_path=kwargs.pop("data_path"),
        variant=kwargs.pop("variant"),
        cache_dir=kwargs.pop("cache_dir"),
        mirror=kwargs.pop("mirror"),
        user_col=kwargs.pop("user_col"),
        item_col=kwargs.pop("item_col"),
        rating_col=kwargs.pop("rating_col"),
        time_col=kwargs.pop("time_col"),
        attribute_cols=tuple(c.strip() for c in kwargs.pop("attribute_cols").split(",") if c.strip()),
        separator=decode_separator(kwargs.pop("separator")),
        bad_rows=kwargs.pop("bad_rows"),
        generated=GeneratedDataConfig(
            num_users=kwargs.pop("gen_users"),
            num_items=kwargs.pop("gen_items"),
            mean_history=kwargs.pop("gen_mean_history"),
            num_clusters=kwargs.pop("gen_clusters"),
            seed=seed,
        ),
    )
    preprocess = PreprocessConfig(
        implicit_threshold=kwargs.pop("implicit_threshold"),
        min_user_interactions=kwargs.pop("min_user_interactions"),
        min_item_interactions=kwargs.pop("min_item_interactions"),
    )
    split = SplitConfig(
        validation_fraction=kwargs.pop("validation_fraction"),
        test_fraction=kwargs.pop("test_fraction"),
        fold_in_fraction=kwargs.pop("fold_in_fraction"),
        audit_fraction=kwargs.pop("audit_fraction"),
        seed=seed,
    )
    kwargs["seed"] = seed
    return DataSettings(data, preprocess, split)


def data_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """Add the data, preprocessing and split options; the command receives ``settings: DataSettings``."""

    @functools.wraps(func)
    def wrapper(**kwargs: Any) -> Any:
        settings = data_settings_from(kwargs)
        return func(settings=settings, **kwargs)

    return _apply(_DATA_OPTIONS, wrapper)


def partition_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """Add the partition options; the command receives ``partition: PartitionConfig`` (needs ``seed``)."""

    @functools.wraps(func)
    def wrapper(**kwargs: Any) -> Any:
        partition = PartitionConfig.from_spec(
            kwargs.pop("partition"),
            num_clients=kwargs.pop("clients"),
            num_clusters=kwargs.pop("num_clusters"),
            seed=kwargs["seed"],
        )
        return func(partition=partition, **kwargs)

    return _apply(_PARTITION_OPTIONS, wrapper)
