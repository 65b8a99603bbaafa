"""Command-line options, made from the setting declarations (common/config/settings.py) and nothing else.

Every run setting is an option of ``fedsynth run`` / ``train`` / ``sweep`` / ``deploy local``
(:func:`run_options`) under its key (``--epsilon``) and any older flag (``--rounds``); its help and
default are the declaration's. The options default to None ("not given"), so a value from a
``--config`` file stands unless the option is given. ``fedsynth data`` / ``baseline`` /
``deploy split-data`` take the data settings (:func:`data_options`) and the partition
(:func:`partition_options`) the same way.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import click

from fedsynth.common.config.declare import Setting
from fedsynth.common.config.run import RunConfig
from fedsynth.common.config.sections import PartitionConfig
from fedsynth.common.config.settings import DATA_SECTIONS, by_name, check_values, run_settings

Decorator = Callable[[Any], Any]  # a click option
DATA_DEFAULTS = {"audit-fraction": 0.0}  # fedsynth data / baseline reserve no audit users unless asked
_TYPES: dict[type, click.ParamType] = {int: click.INT, float: click.FLOAT, str: click.STRING}


def shown_default(value: Any) -> str:
    """A default as help text shows it: ``false``, ``0.001``, ``vae,gan`` (empty: nothing)."""
    if isinstance(value, bool):
        return str(value).lower()
    return f"{value:g}" if isinstance(value, float) else str(value)


def setting_option(s: Setting, default: Any = None) -> Decorator:
    """The option of setting ``s`` (``--key``, older flags too); bools are ``--key/--no-key`` switches."""
    shown = shown_default(s.default if default is None else default)
    text = f"{s.help} [default: {shown}]" if shown else s.help
    parameter = s.flags[0].removeprefix("--").replace("-", "_")
    if s.kind is bool:
        flags = [f"{flag}/--no-{flag.removeprefix('--')}" for flag in s.flags]
        return click.option(*flags, parameter, default=None, help=text)
    return click.option(*s.flags, parameter, type=_TYPES[s.kind], default=None, help=text)


def _apply(options: Iterable[Decorator], func: Callable[..., Any]) -> Callable[..., Any]:
    for option in reversed(list(options)):
        func = option(func)
    return func


def run_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """Every run setting as an option, ``--clients`` and ``--config``; the command receives them as keywords."""
    func = _apply((setting_option(s) for s in run_settings() if s.flags), func)
    func = click.option("--clients", type=int, default=5, show_default=True, help="Simulated clients (SuperNodes).")(
        func
    )
    return click.option(
        "--config", "config_file", type=click.Path(path_type=Path), help="TOML file of run-config keys."
    )(func)


def given_settings(given: dict[str, Any]) -> dict[str, Any]:
    """The options given (not None), by setting key: ``{"rounds": 5}`` → ``{"num-server-rounds": 5}``.

    Names that are no setting are kept (kebab-cased), for the run config to refuse by name.
    """
    settings = {}
    for name, value in given.items():
        if value is not None:
            found = by_name(name)
            settings[found.name if found else name.replace("_", "-")] = value
    return settings


def check_options(given: dict[str, Any]) -> None:
    """Refuse given options whose values fail their setting's check, naming each option as typed."""
    names = {}
    for name, value in given.items():
        found = by_name(name)
        if value is not None and found is not None:
            names[found.name] = "--" + name.removeprefix("--").replace("_", "-")
    check_values(given_settings(given), "options", names)


def _data_settings() -> list[Setting]:
    return [s for s in run_settings() if s.section in DATA_SECTIONS or s.name == "seed"]


def data_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """The data, cleaning and split options and ``--seed``; the command receives ``settings: DataSettings``
    (built as a run builds it, :meth:`RunConfig.data`) and ``seed``."""
    declared = _data_settings()

    @functools.wraps(func)
    def wrapper(**kwargs: Any) -> Any:
        given = {s.field: kwargs.pop(s.field) for s in declared}
        check_options(given)
        values = {**DATA_DEFAULTS, **given_settings(given)}
        config = RunConfig.from_run_config(values)
        return func(settings=config.data(), seed=config.seed, **kwargs)

    return _apply((setting_option(s, DATA_DEFAULTS.get(s.name)) for s in declared), wrapper)


def partition_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """``--clients`` and the partition settings; the command receives ``partition: PartitionConfig`` (needs
    ``seed``, from :func:`data_options`)."""
    declared = [s for s in run_settings() if s.section == "Partition"]

    @functools.wraps(func)
    def wrapper(clients: int, **kwargs: Any) -> Any:
        given = {s.field: kwargs.pop(s.field) for s in declared}
        check_options(given)
        values = {s.name: s.default for s in declared} | given_settings(given)
        partition = PartitionConfig.from_spec(
            values["partition"], num_clients=clients, num_clusters=values["num-clusters"], seed=kwargs["seed"]
        )
        return func(partition=partition, **kwargs)

    options = [
        click.option(
            "--clients",
            type=int,
            default=5,
            show_default=True,
            help="Number of clients (ignored by natural partitions).",
        ),
        *(setting_option(s) for s in declared),
    ]
    return _apply(options, wrapper)
