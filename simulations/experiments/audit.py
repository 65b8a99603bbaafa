"""``fedsynth audit --run DIR``: membership-inference audit of a finished simulation run.

The auditor plays the data holder: it rebuilds the run's split from ``DIR/run_config.json``
(deterministic), takes the clients' training users as members and the reserved audit users
as non-members, and attacks what the run released: the synthetic data (``*.parquet``) and
the final global models (the last checkpoint). The validation and test users' histories are
the reference population of the density-ratio attack. Writes ``DIR/audit.json``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from fedsynth.common.config.run import RunConfig
from fedsynth.common.data.prepare import PreparedData, prepare
from fedsynth.common.errors import FedsynthError
from fedsynth.common.evaluation.fidelity import fidelity_report
from fedsynth.common.evaluation.membership_audit import AuditConfig, AuditInputs, run_audit
from fedsynth.common.models.bundle import ModelBundle
from fedsynth.common.runtime.files import write_json_atomic


def run_settings(run_dir: Path) -> RunConfig:
    """The run's validated config from ``DIR/run_config.json`` (as written by ``fedsynth run``)."""
    path = run_dir / "run_config.json"
    if not path.is_file():
        raise FedsynthError(f"{path} is missing: --run must be a directory written by `fedsynth run` or a sweep cell.")
    settings = {k: v for k, v in json.loads(path.read_text()).items() if k != "clients"}
    return RunConfig.from_run_config(settings)


def read_synthetic(path: Path, item_ids: np.ndarray, num_users: int | None = None) -> sp.csr_matrix:
    """A ``user``, ``item`` Parquet file → CSR (synthetic users × the run's catalogue).

    Raises if an item is not in the catalogue (the file belongs to other data).
    """
    frame = pd.read_parquet(path)
    column = {str(item): index for index, item in enumerate(item_ids)}
    items = frame["item"].astype(str).map(column)
    if items.isna().any():
        unknown = frame["item"][items.isna()].iloc[0]
        raise FedsynthError(f"{path}: item {unknown!r} is not in the run's catalogue; the file belongs to other data.")
    users = frame["user"].to_numpy(np.int64)
    rows = int(users.max()) + 1 if num_users is None and len(users) else (num_users or 0)
    data = np.ones(len(frame), dtype=np.float32)
    return sp.csr_matrix((data, (users, items.to_numpy(np.int64))), shape=(rows, len(item_ids)))


def synthetic_datasets(run_dir: Path, prepared: PreparedData) -> dict[str, sp.csr_matrix]:
    """Every synthetic dataset the run released, by label (``synthetic``, ``synthetic-gan``, …)."""
    meta_path = run_dir / "synthetic_meta.json"
    if not meta_path.is_file():
        raise FedsynthError(f"{meta_path} is missing: the run did not finish synthesis; finish it before auditing.")
    meta = json.loads(meta_path.read_text())
    users = meta.get("config", {}).get("synthetic_users")
    return {
        label: read_synthetic(run_dir / name, prepared.interactions.item_ids, users)
        for label, name in meta["files"].items()
    }


def final_bundle(run_dir: Path, config: RunConfig, num_items: int) -> ModelBundle:
    """The global models after the last round (``DIR/checkpoints/round-N.pt``)."""
    checkpoints = sorted((run_dir / "checkpoints").glob("round-*.pt"), key=lambda p: int(p.stem.split("-")[1]))
    if not checkpoints:
        raise FedsynthError(f"{run_dir / 'checkpoints'} holds no round-N.pt: nothing was trained in this run.")
    bundle = ModelBundle.create(num_items, config.local(), seed=config.seed)
    bundle.load_state_dict(torch.load(checkpoints[-1], weights_only=False)["state"])
    return bundle


def privacy_of(run_dir: Path, config: RunConfig) -> tuple[float, float]:
    """(ε, δ) the run spent: the largest over clients, from metrics.json (∞ without DP)."""
    privacy = json.loads((run_dir / "metrics.json").read_text())["privacy"]
    epsilon = privacy.get("epsilon_max")
    if not config.privacy().private or epsilon is None:
        epsilon = math.inf
    return float(epsilon), float(privacy.get("delta") or 0.0)


def audit_run(run_dir: Path, config: AuditConfig | None = None, with_fidelity: bool = False) -> dict[str, Any]:
    """Audit a complete run directory; writes and returns ``DIR/audit.json``.

    ``with_fidelity`` adds the fidelity report of each synthetic dataset (for runs whose
    server did not compute it, e.g. sweep cells run with ``simulation-reference=false``).
    """
    if not (run_dir / "metrics.json").is_file():
        raise FedsynthError(f"{run_dir} holds no metrics.json: only a complete run can be audited.")
    settings = run_settings(run_dir)
    config = config or AuditConfig(seed=settings.seed)
    prepared = prepare(settings.data())
    split = prepared.split
    if split.audit is None:
        raise FedsynthError(
            f"{run_dir} was run with audit-fraction 0: no users were reserved as non-members. "
            "Rerun with --audit-fraction 0.1 (the default)."
        )
    matrix = prepared.interactions.matrix
    reference = matrix[np.concatenate([split.validation.users, split.test.users])]
    synthetic = synthetic_datasets(run_dir, prepared)
    bundle = final_bundle(run_dir, settings, prepared.interactions.num_items)
    epsilon, delta = privacy_of(run_dir, settings)
    inputs = AuditInputs(split.train, split.audit, reference, synthetic, bundle.vae, bundle.discriminator)
    result = run_audit(inputs, epsilon, delta, config)
    result["attacked"] = {
        "synthetic data": sorted(synthetic),
        "models": "final global Mult-VAE and discriminator",
        "members": "the clients' training users",
        "non_members": "reserved audit users (never trained on)",
        "reference": "validation + test users (density-ratio attack)",
    }
    if with_fidelity:
        held_out = matrix[split.test.users]
        result["fidelity"] = {label: fidelity_report(split.train, m, held_out) for label, m in synthetic.items()}
    write_json_atomic(run_dir / "audit.json", result)
    return result
