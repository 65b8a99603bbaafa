"""The privacy ledger: a silo's durable record of every DP event spent on its records, and its cap.

One JSON file per dataset fingerprint in a ledger directory on the silo's own disk. The file,
not the process, is the truth: a restarted client, or a later run on the same data, continues
from the budget already spent.

**Who sets the cap.** The lifetime cap ``max_epsilon`` (at the ledger's δ) is fixed when the
ledger is created, from the node's own side: its node config ``max-epsilon`` in a deployment;
in a simulation, which has no node config, the first run's ε. Afterwards nothing a server sends
can raise it: a run's ε is only what that run asks to spend, and a run whose planned events,
composed with everything already spent, would pass the cap is refused. A lower node-config cap
tightens the ledger's; raising a cap is an operator's act on the node's disk
(:meth:`PrivacyLedger.set_cap`, ``fedsynth ledger set-cap``), recorded in the history.

**What a ledger is keyed by.** A deployed node's ledger belongs to the node: its key is the
node's identity (:func:`node_key`: its ``ledger-id``, or its data source, the resolved
``data-path``), never the data's exact bytes nor anything the server sends (the run's ``seed``
decides nothing on a node: its train/held-out split is the node's own). Every user in the node's
data is charged everything the node has spent. Editing or growing the data file continues the
same ledger (the new data fingerprint is recorded in the history); starting a new ledger is an
operator's act on the node (:func:`start_anew`, ``fedsynth ledger new``), recorded in an archive.
A simulated silo has no identity of its own (its users are chosen by the run config), so its
ledger is keyed by the :func:`fingerprint` of its training rows: a shared ledger directory
composes runs over the same simulated silo (same data, split, partition and seed) and nothing else.

Every history entry carries the run (Flower run id and the run key the server sends, stable
across resumes of one run directory), the requester the server named, UTC time, what was
released and the composed ε after it. Written atomically (temp file, fsync, rename).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from fedsynth.common.errors import ConfigError, FedsynthError
from fedsynth.common.privacy.accounting import Event, accountant_name, epsilon, epsilon_by_model, event_from_plain
from fedsynth.common.privacy.releases.statistics import STATISTICS
from fedsynth.common.runtime.files import write_json_atomic

LEDGER_VERSION = 2
# Calibration bisects σ to 1e-4, so a plan may land a hair above target; this much is tolerated.
EPSILON_TOLERANCE = 1e-3


class PrivacyBudgetExceeded(FedsynthError):
    """A release would spend more than the silo's remaining budget."""


def fingerprint(matrix: sp.csr_matrix) -> str:
    """sha256 of a CSR matrix's shape and sparsity pattern: the identity of a client's dataset."""
    matrix = matrix.tocsr()
    matrix.sort_indices()
    digest = hashlib.sha256()
    digest.update(np.asarray(matrix.shape, dtype=np.int64).tobytes())
    digest.update(np.asarray(matrix.indptr, dtype=np.int64).tobytes())
    digest.update(np.asarray(matrix.indices, dtype=np.int64).tobytes())
    return digest.hexdigest()


def node_key(identity: str) -> str:
    """sha256 of a node's identity (``ledger-id:…`` or ``data-path:/resolved/path``): its ledger's key."""
    return "node-" + hashlib.sha256(identity.encode()).hexdigest()


def utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class RunIdentity:
    """Which run asks: Flower's run id (from the node's SuperLink), the server's run key and requester.

    ``run_key`` is chosen by the server once per run directory and kept across resumes, so the
    ledger can tell a resumed run's earlier releases from another run's. ``requester`` is what
    the server says about itself (host and output directory): informative, not authenticated.
    """

    run_id: int = 0
    run_key: str = ""
    requester: str = ""


@dataclass
class PrivacyLedger:
    """Events spent on one dataset, with the δ they are accounted at and the silo's lifetime cap."""

    path: Path
    fingerprint: str
    delta: float
    max_epsilon: float
    cap_source: str
    events: list[Event] = field(default_factory=list)
    history: list[dict[str, Any]] = field(default_factory=list)
    # The same releases as the server would see them if secure aggregation were broken (or the
    # server colluded with every other silo): each secure sum carrying only this silo's own noise.
    # Identical to ``events`` for releases sent without secure aggregation.
    own_noise_events: list[Event] = field(default_factory=list)
    # a node-owned ledger (key from :func:`node_key`): the fingerprint of the data it last saw
    data_fingerprint: str = ""

    @staticmethod
    def path_for(directory: Path, data_fingerprint: str) -> Path:
        return directory / f"ledger-{data_fingerprint[:32]}.json"

    @classmethod
    def open(
        cls, directory: Path, data_fingerprint: str, delta: float, node_cap: float | None, first_request: float
    ) -> PrivacyLedger:
        """Load the ledger for ``data_fingerprint`` from ``directory``, or create it with its cap.

        ``node_cap``: the node's own ``max-epsilon`` (None where the node has none, i.e. in a
        simulation); ``first_request``: the run's ε, the cap of a ledger created without a node cap.
        A ledger already holding events keeps its δ: opening it with another δ is an error,
        because ε values at different δ cannot be compared or added. A stored cap is never raised
        here; a lower ``node_cap`` tightens it (and says so in the history).
        """
        path = cls.path_for(directory, data_fingerprint)
        if not path.is_file():
            if node_cap is not None:
                return cls(path, data_fingerprint, delta, node_cap, "node config max-epsilon")
            return cls(path, data_fingerprint, delta, first_request, "the first run's epsilon (no node cap)")
        ledger = cls.load(path)
        if ledger.fingerprint != data_fingerprint:
            raise FedsynthError(f"{path}: the ledger belongs to other data (fingerprint mismatch).")
        if ledger.data_fingerprint:  # node-owned: its δ stays (the plan is calibrated at it, :meth:`node_delta`)
            delta = ledger.delta
        if ledger.events and not np.isclose(ledger.delta, delta, rtol=1e-9, atol=0):
            raise ConfigError(
                f"{path}: this data's ledger accounts at delta={ledger.delta:g}, but delta={delta:g} was "
                "configured. Use the same delta for the same data."
            )
        if node_cap is not None and node_cap < ledger.max_epsilon:
            ledger.change_cap(node_cap, "node config max-epsilon (lowered)")
        return ledger

    @classmethod
    def open_node(
        cls, directory: Path, identity: str, data_fingerprint: str, delta: float, node_cap: float | None
    ) -> PrivacyLedger:
        """The node-owned ledger of ``identity`` (see the module docstring), created on first use.

        A new one adopts every event of the version-2 ledgers already in ``directory`` (keyed by a
        training split's fingerprint, as before node-owned ledgers): they were spent on this node's
        users, and adopting them is the conservative reading. Data that changed since the last
        open continues the ledger, and the change is recorded.
        """
        key = node_key(identity)
        path = cls.path_for(directory, key)
        if not path.is_file():
            cap = node_cap if node_cap is not None else math.inf
            ledger = cls(path, key, delta, cap, "node config max-epsilon", data_fingerprint=data_fingerprint)
            ledger.history.append({"time": utc_now(), "created": identity, "data_fingerprint": data_fingerprint})
            archives = sorted((directory / ARCHIVE).glob("*/reason.json"))
            if archives:  # an operator started this ledger anew: say so, and where the old one is
                ledger.history.append({"time": utc_now(), "after_archive": str(archives[-1].parent)})
            with locked(path):  # another process may be creating it, or adopting the same files
                if not path.is_file():
                    adopted = ledger.adopt_legacy(directory)
                    if adopted:  # saved first, then the adopted files archived: a crash between over-charges
                        ledger.save()
                        archive_files(directory, adopted, "adopted")
                    return ledger  # else written at its first release: opening alone leaves no file
        ledger = cls.open(directory, key, delta, node_cap, node_cap or math.inf)
        if ledger.data_fingerprint != data_fingerprint:
            with locked(path):
                ledger.note_data_change(data_fingerprint)
        return ledger

    def note_data_change(self, data_fingerprint: str) -> None:
        """Record (under the ledger's lock) that the node's data changed; the ledger continues."""
        self.catch_up([])
        self.history.append(
            {
                "time": utc_now(),
                "data_changed": {"from": self.data_fingerprint, "to": data_fingerprint},
                "by": "the node's data changed; the ledger continues: every user is charged what was spent",
            }
        )
        self.data_fingerprint = data_fingerprint
        self.save()

    @staticmethod
    def node_delta(directory: Path, identity: str) -> float | None:
        """The δ a node's existing ledger accounts at (None: no ledger yet), which its runs keep."""
        path = PrivacyLedger.path_for(directory, node_key(identity))
        return PrivacyLedger.load(path).delta if path.is_file() else None

    def adopt_legacy(self, directory: Path) -> list[Path]:
        """Compose the events of every other ledger in ``directory`` into this one (recorded); returns their files.

        They are split-keyed ledgers from before node-owned ledgers, or the node ledger of an earlier
        identity (a moved data file, a new ``ledger-id``): either way spent on this node's users, so
        adopting them is the conservative reading; the caller saves this ledger, then archives them, so
        that a directory keeps one live ledger per node (nodes must not share a ``ledger-dir``).
        """
        adopted = [p for p in sorted(directory.glob("ledger-*.json")) if p != self.path]
        for legacy in adopted:
            old = PrivacyLedger.load(legacy)
            self.events.extend(old.events)
            self.own_noise_events.extend(old.own_noise_events)
            spent = old.spent()["total"] if old.events else 0.0
            self.history.append({"time": utc_now(), "adopted": legacy.name, "epsilon_of_adopted": spent})
        return adopted

    @classmethod
    def load(cls, path: Path) -> PrivacyLedger:
        """Read one ledger file (version 1 files: their last ``target_epsilon`` becomes the cap)."""
        try:
            payload = json.loads(path.read_text())
            events = [event_from_plain(event) for event in payload["events"]]
            own = [event_from_plain(event) for event in payload.get("own_noise_events", payload["events"])]
            delta = float(payload["delta"])
            cap = float(payload["max_epsilon"] if "max_epsilon" in payload else payload["target_epsilon"])
            history = list(payload.get("history", payload.get("rounds", [])))
            source = str(payload.get("cap_source", "version-1 ledger: its last target epsilon"))
            data = str(payload.get("data_fingerprint", ""))
            return cls(path, str(payload["fingerprint"]), delta, cap, source, events, history, own, data)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise FedsynthError(
                f"{path}: the privacy ledger is unreadable ({exc}). Do not delete it: it records the budget "
                "already spent on this data; restore it from a backup."
            ) from exc

    def spent(self) -> dict[str, float]:
        """ε spent so far, per release/model and ``total`` (all events composed)."""
        return epsilon_by_model(self.events, self.delta)

    def spent_own_noise(self) -> float:
        """Total ε against a server that sees each secure sum with only this silo's noise in it."""
        return epsilon(self.own_noise_events, self.delta)

    def remaining(self) -> float:
        """``max_epsilon − spent``: a guide for operators. The check itself composes the events."""
        return max(0.0, self.max_epsilon - self.spent()["total"])

    def epsilon_after(self, planned: Sequence[Event]) -> float:
        """Total ε if ``planned`` were spent on top of the history."""
        return epsilon([*self.events, *planned], self.delta)

    def check(self, planned: Sequence[Event], what: str = "this round") -> float:
        """Raise PrivacyBudgetExceeded if ``planned`` does not fit the cap; else the ε after it."""
        after = self.epsilon_after(planned)
        if after > self.max_epsilon + EPSILON_TOLERANCE:
            raise PrivacyBudgetExceeded(
                f"{what} would bring epsilon to {after:.3f}, above this silo's cap {self.max_epsilon:g} "
                f"(spent so far {self.spent()['total']:.3f} at delta={self.delta:g}; the cap is set on the node: "
                f"{self.cap_source}; see `fedsynth ledger show`)"
            )
        return after

    def charged(self, run_key: str) -> list[dict[str, Any]]:
        """History entries of releases made for ``run_key`` (earlier attempts of a resumed run)."""
        return [e for e in self.history if run_key and e.get("run_key") == run_key and "release" in e]

    def charged_rounds(self, run_key: str) -> set[int]:
        """The rounds already charged to ``run_key``."""
        return {int(e["round"]) for e in self.charged(run_key) if e["release"] == "round"}

    def release_charged(self, run_key: str, release: str = STATISTICS) -> bool:
        """Whether ``run_key`` already paid for the one-off ``release`` (the DP statistics by default)."""
        return self.times_charged(run_key, release) > 0

    def times_charged(self, run_key: str, release: str) -> int:
        """How many ``release`` s ``run_key`` has paid for (e.g. its DP evaluations)."""
        return sum(1 for e in self.charged(run_key) if e["release"] == release)

    def record(
        self,
        spent: Sequence[Event],
        release: str,
        run: RunIdentity,
        own_noise: Sequence[Event] | None = None,
        **details: Any,
    ) -> None:
        """Append the events actually spent, with who asked and when, and save the ledger atomically.

        ``own_noise``: the same release accounted with this silo's noise share alone (secure
        aggregation); None when the release carried the silo's full noise (then it is ``spent``).
        """
        with locked(self.path):
            self.catch_up(spent)
            self.events.extend(spent)
            self.own_noise_events.extend(spent if own_noise is None else own_noise)
            entry = {"time": utc_now(), "release": release, **asdict(run), **details}
            totals = {"epsilon_total": self.spent()["total"], "epsilon_total_own_noise": self.spent_own_noise()}
            self.history.append({**entry, **totals})
            self.save()

    def catch_up(self, spent: Sequence[Event]) -> None:
        """Under the ledger's lock: if another process recorded since this ledger was read (two runs on one
        node at once), take the file's history and check ``spent`` against it again (refused: nothing is
        recorded, and the caller's release never leaves)."""
        if not self.path.is_file():
            return
        disk = PrivacyLedger.load(self.path)
        if disk.history == self.history:
            return
        self.events, self.own_noise_events, self.history = disk.events, disk.own_noise_events, disk.history
        self.max_epsilon, self.cap_source = disk.max_epsilon, disk.cap_source
        self.check(spent, what="this release (another run recorded on this node meanwhile)")

    def change_cap(self, max_epsilon: float, why: str) -> None:
        """Set the cap (an act on the node's side only) and record the change in the history."""
        if not max_epsilon > 0 or math.isnan(max_epsilon):
            raise ConfigError(f"max-epsilon must be positive, got {max_epsilon}.")
        with locked(self.path):
            self.catch_up([])
            self.history.append({"time": utc_now(), "cap": max_epsilon, "previous_cap": self.max_epsilon, "by": why})
            self.max_epsilon, self.cap_source = max_epsilon, why
            self.save()

    def save(self) -> None:
        write_json_atomic(
            self.path,
            {
                "version": LEDGER_VERSION,
                "fingerprint": self.fingerprint,
                **({"owner": "node", "data_fingerprint": self.data_fingerprint} if self.data_fingerprint else {}),
                "delta": self.delta,
                "max_epsilon": self.max_epsilon,
                "cap_source": self.cap_source,
                "accountant": accountant_name(self.events),
                "events": [asdict(e) for e in self.events],
                "own_noise_events": [asdict(e) for e in self.own_noise_events],
                "history": self.history,
            },
        )


def ledgers_in(directory: Path) -> list[PrivacyLedger]:
    """Every ledger file in ``directory`` (an error naming the folder if there is none)."""
    paths = sorted(directory.glob("ledger-*.json"))
    if not paths:
        raise ConfigError(f"--ledger-dir {directory}: no ledger-*.json there (is it the node's ledger-dir?).")
    return [PrivacyLedger.load(p) for p in paths]


ARCHIVE = "archive"


def start_anew(directory: Path, reason: str) -> list[Path]:
    """Archive every ledger in ``directory`` (an operator's act on the node): the next run opens a new one.

    The files move to ``directory/archive/<UTC time>/`` with a ``reason.json`` (who, why, the ε each
    had spent); nothing is deleted, and a new node ledger records the archive in its history.
    """
    if not reason.strip():
        raise ConfigError("--reason is required: say why this node starts a new privacy ledger.")
    ledgers = sorted(directory.glob("ledger-*.json"))
    if not ledgers:
        raise ConfigError(f"--ledger-dir {directory}: no ledger-*.json there (is it the node's ledger-dir?).")
    spent = {p.name: PrivacyLedger.load(p).spent()["total"] for p in ledgers}
    target = directory / ARCHIVE / utc_now().replace(":", "")
    target.mkdir(parents=True, exist_ok=False)
    write_json_atomic(target / "reason.json", {"time": utc_now(), "reason": reason, "epsilon_spent": spent})
    return archive_files(directory, [*ledgers, *directory.glob("replay-*.pt")], "", target)


def archive_files(directory: Path, paths: Sequence[Path], label: str, target: Path | None = None) -> list[Path]:
    """Move ``paths`` to ``target`` (default ``directory/archive/<UTC time>-<label>``); returns the new paths."""
    target = target or directory / ARCHIVE / f"{utc_now().replace(':', '')}-{label}"
    target.mkdir(parents=True, exist_ok=True)
    return [path.rename(target / path.name) for path in paths]


@contextmanager
def locked(path: Path) -> Iterator[None]:
    """An exclusive lock on ``path``'s ledger (``flock`` on a ``.lock`` file beside it) for a read-check-write;
    re-entrant within a process (a record that changes the cap holds it once)."""
    import fcntl

    if path in _HELD:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        _HELD.add(path)
        try:
            yield
        finally:
            _HELD.discard(path)
            fcntl.flock(handle, fcntl.LOCK_UN)


_HELD: set[Path] = set()  # ledger paths whose lock this process holds
