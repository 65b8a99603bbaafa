"""fedsynth: federated, differentially private synthetic data for recommender systems.

The import package. Its subpackages live in the repository's top-level folders:

- ``fedsynth.common``: data, models, privacy (accounting, ledger, DP-SGD, releases), secure
  aggregation, synthesis, recommenders, evaluation: everything both sides of the wire share;
- ``fedsynth.server``: the ServerApp (``fedsynth.server.app:app``) and the server's steps;
- ``fedsynth.client``: the ClientApp (``fedsynth.client.app:app``) and the node's steps;
- ``fedsynth.simulations``: the ``fedsynth`` command, local simulations, deployment and benchmarks.

The Python API, for notebooks and scripts::

    import fedsynth

    metrics = fedsynth.run(out="runs/notebook", clients=5, settings={"epsilon": 4.0})
    print(metrics["privacy"]["epsilon_max"])

``fedsynth.run`` is ``fedsynth run``: the same settings (``docs/settings.md``), the same
outputs (metrics.json, report.md, synthetic.parquet) and the same privacy ledger.
``fedsynth.RunConfig`` is the validated, frozen type of those settings.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

# In a source tree or an unpacked Flower app bundle the subpackages are the sibling folders
# (server/, client/, common/, simulations/); an installed wheel holds them inside this folder.
_here = Path(__file__).resolve().parent
if not (_here / "common").is_dir() and (_here.parent / "common" / "__init__.py").is_file():
    __path__.append(str(_here.parent))

if TYPE_CHECKING:
    from fedsynth.common.config.run import RunConfig

__all__ = ["RunConfig", "run"]


def run(
    out: str | Path,
    clients: int = 5,
    settings: dict[str, Any] | None = None,
    config_file: str | Path | None = None,
    quiet: bool = False,
) -> dict[str, Any]:
    """Run the main job (``fedsynth run``) and return its ``metrics.json`` as a dict.

    ``settings`` are run settings by their kebab-case or snake_case names or option names
    (``{"epsilon": 4, "rounds": 5}``; every one is listed in ``docs/settings.md``),
    applied over ``config_file`` (a TOML file like the ``[tool.flwr.app.config]`` block) and the
    defaults. Unknown names and bad values raise ``fedsynth.common.errors.FedsynthError`` before
    anything starts. Running again with the same ``out`` resumes an interrupted run.
    """
    from rich.console import Console

    from fedsynth.simulations.jobs import resolve_run_config, run_job

    out = Path(out)
    resolved = resolve_run_config(Path(config_file) if config_file else None, dict(settings or {}), out)
    console = Console(quiet=quiet)
    return run_job(console, out, clients, {**resolved, "pipeline": "full"})


def __getattr__(name: str) -> Any:
    if name == "RunConfig":
        from fedsynth.common.config.run import RunConfig

        return RunConfig
    raise AttributeError(f"module 'fedsynth' has no attribute {name!r}")
