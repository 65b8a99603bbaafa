"""Accountant cross-check: the same ledger events through Google's dp-accounting.

The product's ε comes from Opacus' RDP accountant (:mod:`common.privacy.accounting`); this
recomputes it with an independent implementation, so a report can show both side by side.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from common.privacy.accounting import DPEvent, epsilon, event_from_plain


def dp_accounting_epsilon(events: list[DPEvent], delta: float) -> float:
    """ε at ``delta`` of Poisson-subsampled Gaussian ``events`` composed by dp-accounting's RDP accountant."""
    import dp_accounting

    history = [e for e in events if e.steps > 0]
    if not history:
        return 0.0
    if any(e.noise_multiplier == 0 for e in history):
        return math.inf
    accountant = dp_accounting.rdp.RdpAccountant()
    for e in history:
        step = dp_accounting.PoissonSampledDpEvent(e.sample_rate, dp_accounting.GaussianDpEvent(e.noise_multiplier))
        accountant.compose(dp_accounting.SelfComposedDpEvent(step, e.steps))
    return float(accountant.get_epsilon(delta))


def crosscheck_ledgers(ledger_dir: Path) -> list[dict[str, Any]]:
    """For each ledger file in ``ledger_dir``: its events' ε by Opacus and by dp-accounting, at its δ."""
    rows = []
    for path in sorted(ledger_dir.glob("ledger-*.json")):
        payload = json.loads(path.read_text())
        events = [event_from_plain(event) for event in payload["events"]]
        gaussian = [e for e in events if isinstance(e, DPEvent)]
        skellam = len(events) - len(gaussian)  # dp-accounting has no Skellam event: those are not cross-checked here
        delta = float(payload["delta"])
        opacus_eps = epsilon(events, delta)
        google_eps = dp_accounting_epsilon(gaussian, delta) if not skellam else math.nan
        finite = math.isfinite(opacus_eps) and math.isfinite(google_eps) and google_eps > 0
        rows.append(
            {
                "ledger": path.name,
                "delta": delta,
                "steps": sum(e.steps for e in events),
                "epsilon_opacus": opacus_eps,
                "epsilon_dp_accounting": google_eps,
                "relative_difference": abs(opacus_eps - google_eps) / google_eps if finite else 0.0,
                "skellam_events": skellam,  # their RDP bound is checked against exact PMFs in tests/test_skellam.py
            }
        )
    return rows
