"""The repository's layout as an import package: one ``fedsynth`` namespace, no import circles.

The required top-level folders (``common/``, ``server/``, ``client/``, ``simulations/``) install as
``fedsynth.common`` … (``[tool.setuptools]`` in pyproject.toml); these tests keep that mapping, the
package list and the module-level import graph honest.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TOPS = ("common", "server", "client", "simulations")


def modules() -> dict[str, Path]:
    """Every module of the package by dotted name (``fedsynth.common.privacy.ledger``)."""
    found = {"fedsynth": ROOT / "fedsynth" / "__init__.py"}
    for top in TOPS:
        for path in sorted((ROOT / top).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(("fedsynth", *parts[:-1])) if parts[-1] == "__init__" else ".".join(("fedsynth", *parts))
            found[name] = path
    return found


def module_level_imports(path: Path, name: str) -> set[str]:
    """fedsynth modules imported when ``path`` is imported (not inside functions or TYPE_CHECKING)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    imported: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            imported |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join([*package.split(".")[: len(package.split(".")) - node.level + 1], base]).rstrip(".")
            imported.add(base)
            imported |= {f"{base}.{alias.name}" for alias in node.names}
    return {m for m in imported if m.split(".")[0] == "fedsynth"}


def test_packages_listed_in_pyproject_are_the_folders() -> None:
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    folders = {"fedsynth"} | {
        ".".join(("fedsynth", *p.parent.relative_to(ROOT).parts))
        for top in TOPS
        for p in (ROOT / top).rglob("__init__.py")
    }

    assert set(setuptools["packages"]) == folders
    assert setuptools["package-dir"] == {"fedsynth": "fedsynth", **{f"fedsynth.{top}": top for top in TOPS}}


@pytest.mark.parametrize("top", TOPS)
def test_no_module_imports_a_bare_top_level_folder(top: str) -> None:
    offenders = []
    for name, path in modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                names = [node.module or ""]
            offenders += [f"{name}: {n}" for n in names if n.split(".")[0] == top]

    assert offenders == [], f"import these through fedsynth.{top}: {offenders}"


def test_module_level_imports_have_no_circles() -> None:
    found = modules()
    graph = {
        name: {m for m in module_level_imports(path, name) if m in found and m != name} for name, path in found.items()
    }
    # a package's __init__ is imported before its modules: edges into a package mean its __init__
    cycles: list[list[str]] = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append([*stack[stack.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for name in sorted(graph):
        if name not in state:
            visit(name)

    assert cycles == [], "import circles: " + "; ".join(" → ".join(c) for c in cycles)


def test_import_fedsynth_gives_the_documented_api_and_imports_nothing_heavy() -> None:
    code = (
        "import sys, fedsynth; heavy = sorted(m for m in ('torch', 'flwr', 'fedsynth.common') if m in sys.modules); "
        "print(heavy, callable(fedsynth.run), fedsynth.RunConfig.__name__)"
    )

    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT).stdout

    assert out.split() == ["[]", "True", "RunConfig"]


def test_the_python_api_refuses_bad_settings_naming_them_before_anything_starts(tmp_path: Path) -> None:
    import fedsynth
    from fedsynth.common.errors import FedsynthError

    with pytest.raises(FedsynthError, match="epsilonn"):
        fedsynth.run(out=tmp_path / "out", settings={"epsilonn": 3.0}, quiet=True)
    with pytest.raises(FedsynthError, match="rounds"):
        fedsynth.run(out=tmp_path / "out", settings={"rounds": -1}, quiet=True)
    assert not (tmp_path / "out").exists()  # nothing started, nothing written
