"""The ``fedsynth`` command and what it runs (``fedsynth.simulations``).

Subpackages:

- ``deployment/``: real deployments (certificates, node keys, node data files, a local launcher);
- ``experiments/``: sweeps, membership and mechanism audits, the non-private upper bounds;
- ``bench/``: benchmarks that print numbers (docs/results.md, docs/scale.md).

Modules:

- ``cli``: the ``fedsynth`` command (click): run, train, sweep, audit, baseline, data, download, ledger, deploy;
- ``options``: command-line options made from the setting declarations, in one place;
- ``jobs``: ``fedsynth run`` / ``train``: settings (defaults ← TOML ← options), checks before Flower starts,
  progress;
- ``runner``: ``flwr run`` with a private Flower home and no run-time installs; the run's outcome from the
  SuperLink, never from ``flwr run``'s exit code;
- ``ledger_view``: ``fedsynth ledger show|set-cap|new``: a silo operator's view of its own ledgers;
- ``console``: tables and reports printed to the terminal;
- ``__main__``: ``python -m fedsynth.simulations`` runs the command.
"""
