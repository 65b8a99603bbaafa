"""This node's side of the privacy budget: where its ledgers live, its own cap, and replays.

The cap comes from the node only: ``max-epsilon`` in its node config (required in a deployment,
where a node has a ``data-path``), never from the run config a server sends. A simulated node
has no node config, so its ledger's cap is the first run's ε and stays (see
:mod:`fedsynth.common.privacy.ledger`); ``fedsynth ledger set-cap`` changes it on the node's disk.

**Replays.** A round's reply is saved beside the ledger before the round's events are recorded.
If the same run (same run key) asks for a round already charged — a resumed run whose server
lost its checkpoint — the saved reply is sent again: the same release, so no new ε. Only the
latest round of each run is kept.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import scipy.sparse as sp
import torch

from fedsynth.common.errors import ConfigError
from fedsynth.common.privacy.ledger import PrivacyLedger, RunIdentity, fingerprint, node_key
from fedsynth.common.runtime.files import write_atomic


def default_ledger_dir() -> Path:
    """``$FEDSYNTH_LEDGER_DIR`` or ``$XDG_STATE_HOME/fedsynth/ledgers``: never inside a run directory."""
    if os.environ.get("FEDSYNTH_LEDGER_DIR"):
        return Path(os.environ["FEDSYNTH_LEDGER_DIR"])
    return Path(os.environ.get("XDG_STATE_HOME", Path.home() / ".local" / "state")) / "fedsynth" / "ledgers"


@dataclass(frozen=True)
class NodeBudget:
    """Where this node keeps its ledgers and the cap it sets itself (None: simulation, first cap stays)."""

    ledger_dir: Path
    max_epsilon: float | None = None
    cap_required: bool = False  # deployment: the node must state its own cap
    identity: str | None = None  # deployment: the node's identity, which keys its ledger (None: simulation)
    delta: float | None = None  # deployment: the node config's δ for a new ledger (None: 0.1 / n)

    @classmethod
    def from_node_config(cls, node_config: dict[str, Any], fallback_dir: Path) -> NodeBudget:
        """``ledger-dir`` and ``max-epsilon`` of the node config; a node with ``data-path`` needs a cap."""
        directory = Path(str(node_config["ledger-dir"])) if "ledger-dir" in node_config else fallback_dir
        cap = None
        if "max-epsilon" in node_config:
            try:
                cap = float(node_config["max-epsilon"])
            except (TypeError, ValueError):
                cap = math.nan
            if not cap > 0:
                raise ConfigError(
                    f"node config max-epsilon={node_config['max-epsilon']!r}: give this silo's lifetime epsilon "
                    'budget as a positive number, e.g. --node-config "... max-epsilon=8".'
                )
        delta = node_delta(node_config)
        return cls(directory, cap, "data-path" in node_config, node_identity(node_config), delta)

    def open(self, rows: sp.csr_matrix, delta: float, requested: float) -> PrivacyLedger:
        """This node's ledger (deployment: keyed by its identity; simulation: by ``rows``' fingerprint).

        A deployed node without a cap of its own is refused (nothing is spent).
        """
        print_ = fingerprint(rows)
        key = print_ if self.identity is None else node_key(self.identity)
        has_ledger = PrivacyLedger.path_for(self.ledger_dir, key).is_file()
        if self.cap_required and self.max_epsilon is None and not has_ledger:
            raise ConfigError(
                "this node has no max-epsilon in its node config: add its lifetime epsilon budget, e.g. "
                "--node-config \"data-path='…' catalogue-path='…' max-epsilon=8\" (the server cannot set it)."
            )
        if self.identity is not None:
            ledger = PrivacyLedger.open_node(self.ledger_dir, self.identity, print_, delta, self.max_epsilon)
            if ledger.delta >= 1.0 / rows.shape[0]:
                raise ConfigError(
                    f"this node's ledger accounts at delta={ledger.delta:g}, not below 1/n = {1.0 / rows.shape[0]:g} "
                    f"for its {rows.shape[0]} users now; after reviewing what was spent, start a new ledger on the "
                    f"node: fedsynth ledger new --ledger-dir {self.ledger_dir} --reason '…'"
                )
            return ledger
        return PrivacyLedger.open(self.ledger_dir, print_, delta, self.max_epsilon, requested)

    def fixed_delta(self, num_users: int) -> float | None:
        """The δ of this node's existing ledger, which its runs keep (None: simulation, or no ledger yet).

        A node's data may grow; its ledger's δ (its node config ``delta``, else 0.1/n of its first run)
        stays, as long as it is below 1/n for the data it holds now.
        """
        if self.identity is None:
            return None
        delta = PrivacyLedger.node_delta(self.ledger_dir, self.identity)
        if delta is None:  # a new ledger: the node's δ, never the run config's (the server's)
            return self.delta if self.delta is not None else 0.1 / num_users
        return delta if delta < 1.0 / num_users else None  # too large: refused at open


def node_delta(node_config: dict[str, Any]) -> float | None:
    """A deployed node's own ``delta`` (node config), checked to lie in (0, 1); None when not given."""
    if "delta" not in node_config:
        return None
    try:
        value = float(node_config["delta"])
    except (TypeError, ValueError):
        value = math.nan
    if not 0 < value < 1:
        raise ConfigError(f"node config delta={node_config['delta']!r}: give a number in (0, 1) below 1/n.")
    return value


def node_identity(node_config: dict[str, Any]) -> str | None:
    """A deployed node's identity (``ledger-id``, else its resolved ``data-path``); None in simulation."""
    if "ledger-id" in node_config:
        return f"ledger-id:{node_config['ledger-id']}"
    if "data-path" in node_config:
        return f"data-path:{Path(str(node_config['data-path'])).resolve()}"
    return None


@dataclass(frozen=True)
class Replay:
    """A round's reply kept on the node: the trained bundle and its mean losses."""

    server_round: int
    arrays: dict[str, torch.Tensor]
    losses: dict[str, float]


def _replay_path(ledger: PrivacyLedger, run: RunIdentity) -> Path:
    return ledger.path.with_name(f"replay-{ledger.fingerprint[:16]}-{run.run_key[:32]}.pt")


def save_replay(ledger: PrivacyLedger, run: RunIdentity, replay: Replay) -> None:
    """Keep this run's latest round reply so that a resumed run can get it again at no cost (atomic)."""
    if not run.run_key:
        return
    saved = {"round": replay.server_round, "arrays": replay.arrays, "losses": replay.losses}
    write_atomic(_replay_path(ledger, run), lambda tmp: torch.save(saved, tmp))


def load_replay(ledger: PrivacyLedger, run: RunIdentity, server_round: int) -> Replay | None:
    """The saved reply of ``server_round`` of this run; None if it is not the one kept."""
    path = _replay_path(ledger, run)
    if not run.run_key or not path.is_file():
        return None
    saved = torch.load(path, weights_only=False)
    if int(saved["round"]) != server_round:
        return None
    return Replay(server_round, saved["arrays"], dict(saved["losses"]))
