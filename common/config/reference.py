"""The run settings written out: the ``[tool.flwr.app.config]`` block and docs/settings.md.

Both are made from the declarations (:mod:`fedsynth.common.config.settings`) by
``fedsynth settings --toml`` and ``fedsynth settings --markdown``; tests/test_settings.py checks
that the committed pyproject.toml block and page are what these functions write.
"""

from __future__ import annotations

import itertools
import json
from typing import Any

from fedsynth.common.config.declare import Setting
from fedsynth.common.config.settings import run_settings

TOML_HEADER = "[tool.flwr.app.config]"
_TOML_INTRO = (
    "# Every run setting and its default, written by `fedsynth settings --toml` from common/config/settings.py",
    "# (change them there; tests/test_settings.py checks this block). docs/settings.md describes each one.",
)
_COMMENT_COLUMN = 34  # comments start here, or two spaces after a longer `key = value`


def toml_value(value: Any) -> str:
    """``value`` as TOML writes it: ``true``, ``3``, ``0.001``, ``"vae,gan"``."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # a TOML basic string (same escapes as JSON here)
    return repr(value)


def _sections() -> list[tuple[str, list[Setting]]]:
    return [(title, list(group)) for title, group in itertools.groupby(run_settings(), key=lambda s: s.section)]


def toml_block() -> str:
    """The ``[tool.flwr.app.config]`` table: one ``key = default  # help`` line per setting, by section."""
    lines = [TOML_HEADER, *_TOML_INTRO]
    for title, settings in _sections():
        lines += ["", f"# {title}"]
        for s in settings:
            assignment = f"{s.name} = {toml_value(s.default)}"
            lines.append(f"{assignment.ljust(_COMMENT_COLUMN - 2)}  # {s.help}")
    return "\n".join(lines) + "\n"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _options(s: Setting) -> str:
    if not s.flags:
        return "set by the command"
    if s.kind is bool:
        return ", ".join(f"`{f}` / `--no-{f[2:]}`" for f in s.flags)
    return ", ".join(f"`{f}`" for f in s.flags)


def markdown_page() -> str:
    """docs/settings.md: a table per section of every setting's key, options, type, default, check and help."""
    lines = [
        "# Settings",
        "",
        "<!-- Written by `fedsynth settings --markdown > docs/settings.md` from common/config/settings.py; "
        "tests/test_settings.py checks it is current. -->",
        "",
        "Every setting of a run, declared once in `common/config/settings.py`. Give them",
        "",
        "- as options of `fedsynth run`, `train`, `sweep` and `deploy local` (`--epsilon 4`, `--dataset csv`),",
        "- in a TOML file (`--config FILE`: keys at top level or under `[tool.flwr.app.config]`),",
        '- to Flower directly (`flwr run . --run-config "epsilon=4.0"`; the defaults are the',
        "  `[tool.flwr.app.config]` block of pyproject.toml, `fedsynth settings --toml`).",
        "",
        "Options override the file, which overrides the defaults. `fedsynth data`, `baseline` and",
        "`deploy split-data` take the Data and Cleaning and split options and `--seed`. Unknown keys and",
        "bad values are refused before anything starts, naming the option or key and the value. A setting",
        "with nothing under Allowed is checked by the part of fedsynth that uses it (the privacy plan, the",
        "attack and robust rules, the data loaders), also before anything starts.",
    ]
    for title, settings in _sections():
        lines += [
            "",
            f"## {title}",
            "",
            "| Setting | Option | Type | Default | Allowed | Meaning |",
            "|---|---|---|---|---|---|",
        ]
        for s in settings:
            allowed = "" if s.check is None else _cell(s.check.text)
            row = [f"`{s.name}`", _options(s), s.kind.__name__, f"`{toml_value(s.default)}`", allowed, _cell(s.help)]
            lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"
