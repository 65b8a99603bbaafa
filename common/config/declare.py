"""How a setting is declared: a dataclass field with its help text and its check, read back as :class:`Setting`.

A settings class writes each setting once, nanoGPT-style::

    epsilon: float = setting(8.0, "Target ε per client.")
    num_server_rounds: int = setting(3, "Federated rounds.", at_least(1), flags=("--rounds",))

The field gives the name (``num_server_rounds`` is the key ``num-server-rounds``), the type and the
default; :func:`setting` stores the help text, the check and the command-line flags in the field's
metadata. :func:`declarations` reads them back in declaration order; the run config's validation, the
command-line options, the ``[tool.flwr.app.config]`` block and docs/settings.md are all made from them.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

from fedsynth.common.errors import ConfigError

T = TypeVar("T")
_KEY = "fedsynth.setting"  # the metadata key of a declaration


@dataclass(frozen=True)
class Check:
    """What a value must be, in words (``at least 1``) and as a test; the words complete "X must be …"."""

    text: str
    test: Callable[[Any], bool]

    def problem(self, name: str, value: Any) -> str | None:
        """``"NAME must be TEXT, got VALUE"`` when ``value`` fails the test, else None."""
        try:
            ok = self.test(value)
        except (TypeError, ValueError):
            ok = False
        return None if ok else f"{name} must be {self.text}, got {value!r}"


def at_least(low: int) -> Check:
    return Check(f"at least {low}", lambda v: v >= low)


def positive() -> Check:
    return Check("positive", lambda v: v > 0)


def in_range(low: float, high: float, *, low_open: bool, high_open: bool) -> Check:
    """``low < v <= high`` and the like; ``"in (0, 1]"``."""
    text = f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    above = (lambda v: v > low) if low_open else (lambda v: v >= low)
    below = (lambda v: v < high) if high_open else (lambda v: v <= high)
    return Check(text, lambda v: above(v) and below(v))


def one_of(choices: Iterable[str]) -> Check:
    names = tuple(choices)
    return Check(f"one of {', '.join(names)}", lambda v: v in names)


def names_from(choices: Iterable[str]) -> Check:
    """A comma-separated, non-empty list of names from ``choices``."""
    names = tuple(choices)

    def test(value: str) -> bool:
        given = [n.strip() for n in value.split(",") if n.strip()]
        return bool(given) and all(n in names for n in given)

    return Check(f"one or more of {', '.join(names)}, comma-separated", test)


@dataclass(frozen=True)
class Declared:
    """What a field's metadata holds: the help text, the check, the command-line flags."""

    help: str
    check: Check | None = None
    flags: tuple[str, ...] = ()  # extra flags (the first is the one shown); ``--NAME`` always works
    option: bool = True  # False: the command sets it (``pipeline``, ``out-dir``), no option


def setting(
    default: T, help: str, check: Check | None = None, *, flags: tuple[str, ...] = (), option: bool = True
) -> T:
    """A declared setting: the field's default, with its help, check and flags in the field's metadata."""
    declared = Declared(help, check, flags, option)
    return dataclasses.field(default=default, metadata={_KEY: declared})


@dataclass(frozen=True)
class Setting:
    """One declared setting as the rest of fedsynth reads it."""

    name: str  # kebab-case, as in the run config: ``num-server-rounds``
    field: str  # the dataclass field: ``num_server_rounds``
    kind: type  # int, float, str or bool
    default: Any
    help: str
    check: Check | None
    flags: tuple[str, ...]  # command-line flags, the shown one first (empty: set by the command)
    section: str

    def problem(self, value: Any, name: str | None = None) -> str | None:
        """Why ``value`` is not allowed (naming it ``name``, by default the key), or None."""
        return None if self.check is None else self.check.problem(name or self.name, value)


def declarations(cls: type, sections: Iterable[tuple[str, str]]) -> tuple[Setting, ...]:
    """Every declared field of dataclass ``cls`` in declaration order.

    ``sections``: ``(title, first key)`` pairs in order; a setting belongs to the last section that
    starts at or before it. Every field must be declared with :func:`setting`.
    """
    hints = typing.get_type_hints(cls)
    starts = dict((first, title) for title, first in sections)
    result, section = [], ""
    for f in dataclasses.fields(cls):
        name = f.name.replace("_", "-")
        declared = f.metadata.get(_KEY)
        if not isinstance(declared, Declared):
            raise TypeError(f"{cls.__name__}.{f.name} is not declared with setting(...).")
        section = starts.get(name, section)
        flags = (*declared.flags, f"--{name}") if declared.option else ()
        result.append(Setting(name, f.name, hints[f.name], f.default, declared.help, declared.check, flags, section))
    missing = set(starts) - {s.name for s in result}
    assert not missing, f"sections start at undeclared settings: {sorted(missing)}"
    return tuple(result)


def problems(values: Iterable[tuple[Setting, Any, str]]) -> list[str]:
    """Every failed check among ``(setting, value, name to call it)`` triples."""
    found = (setting.problem(value, name) for setting, value, name in values)
    return [p for p in found if p is not None]


def refuse(found: list[str], where: str = "") -> None:
    """Raise one ConfigError listing every problem (nothing when ``found`` is empty)."""
    if found:
        prefix = f"{where}: " if where else ""
        raise ConfigError(prefix + "; ".join(found) + ".")
