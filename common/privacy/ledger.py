"""The privacy ledger: a client's durable record of every DP event spent on its records.

One JSON file per dataset fingerprint in a ledger directory on the client's own disk. It is
read before every round, the round is refused if its planned events would push the
composed ε past the target, and it is written atomically (temp file, fsync, rename) right
after training. A restarted client, or a second run on the same data, continues from the
budget already spent: the file, not the process, is the truth.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from common.errors import ConfigError, FedsynthError
from common.io import write_json_atomic
from common.privacy.accounting import DPEvent, epsilon, epsilon_by_model

LEDGER_VERSION = 1
# Calibration bisects σ to 1e-4, so a plan may land a hair above target; this much is tolerated.
EPSILON_TOLERANCE = 1e-3


class PrivacyBudgetExceeded(FedsynthError):
    """A round would spend more than the client's remaining budget."""


def fingerprint(matrix: sp.csr_matrix) -> str:
    """sha256 of a CSR matrix's shape and sparsity pattern: the identity of a client's dataset."""
    matrix = matrix.tocsr()
    matrix.sort_indices()
    digest = hashlib.sha256()
    digest.update(np.asarray(matrix.shape, dtype=np.int64).tobytes())
    digest.update(np.asarray(matrix.indptr, dtype=np.int64).tobytes())
    digest.update(np.asarray(matrix.indices, dtype=np.int64).tobytes())
    return digest.hexdigest()


@dataclass
class PrivacyLedger:
    """Events spent on one dataset, with the δ and target ε they are accounted against."""

    path: Path
    fingerprint: str
    delta: float
    target_epsilon: float
    events: list[DPEvent] = field(default_factory=list)
    rounds: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def open(cls, directory: Path, data_fingerprint: str, delta: float, target_epsilon: float) -> PrivacyLedger:
        """Load the ledger for ``data_fingerprint`` from ``directory``, or start an empty one.

        A ledger already holding events keeps its δ: opening it with another δ is an error,
        because ε values at different δ cannot be compared or added.
        """
        path = directory / f"ledger-{data_fingerprint[:32]}.json"
        if not path.is_file():
            return cls(path, data_fingerprint, delta, target_epsilon)
        try:
            payload = json.loads(path.read_text())
            events = [DPEvent(**event) for event in payload["events"]]
            stored_delta = float(payload["delta"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise FedsynthError(
                f"{path}: the privacy ledger is unreadable ({exc}). Do not delete it: it records the budget "
                "already spent on this data; restore it from a backup."
            ) from exc
        if payload.get("fingerprint") != data_fingerprint:
            raise FedsynthError(f"{path}: the ledger belongs to other data (fingerprint mismatch).")
        if events and not np.isclose(stored_delta, delta, rtol=1e-9, atol=0):
            raise ConfigError(
                f"{path}: this data's ledger accounts at delta={stored_delta:g}, but delta={delta:g} was "
                "configured. Use the same delta for the same data."
            )
        return cls(path, data_fingerprint, stored_delta, target_epsilon, events, list(payload.get("rounds", [])))

    def spent(self) -> dict[str, float]:
        """ε spent so far, per model and ``total`` (all events composed)."""
        return epsilon_by_model(self.events, self.delta)

    def epsilon_after(self, planned: list[DPEvent]) -> float:
        """Total ε if ``planned`` were spent on top of the history."""
        return epsilon([*self.events, *planned], self.delta)

    def check(self, planned: list[DPEvent]) -> float:
        """Raise PrivacyBudgetExceeded if ``planned`` does not fit the target; else the ε after it."""
        after = self.epsilon_after(planned)
        if after > self.target_epsilon + EPSILON_TOLERANCE:
            raise PrivacyBudgetExceeded(
                f"this round would bring epsilon to {after:.3f}, above the target {self.target_epsilon:g} "
                f"(spent so far {self.spent()['total']:.3f} at delta={self.delta:g})"
            )
        return after

    def record(self, spent: list[DPEvent], round_info: dict[str, Any]) -> None:
        """Append the events actually spent and save the ledger atomically."""
        self.events.extend(spent)
        self.rounds.append({**round_info, "time": time.time(), "epsilon_total": self.spent()["total"]})
        self.save()

    def save(self) -> None:
        write_json_atomic(
            self.path,
            {
                "version": LEDGER_VERSION,
                "fingerprint": self.fingerprint,
                "delta": self.delta,
                "target_epsilon": self.target_epsilon,
                "accountant": "opacus rdp",
                "events": [asdict(e) for e in self.events],
                "rounds": self.rounds,
            },
        )
