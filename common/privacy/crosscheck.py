"""Accountant cross-check: the same ledger events through independent implementations.

The product's ε (:func:`fedsynth.common.privacy.accounting.epsilon`) is dp-accounting's PLD for histories of
Gaussian events, and Opacus' RDP for histories holding Skellam (secure-aggregation) events. This
recomputes the RDP composition with Google's dp-accounting, so a report can show Opacus' RDP and
dp-accounting's side by side next to the ε reported; :func:`dp_accounting_epsilon` with
``accountant="pld"`` composes the events with dp-accounting's own ``PLDAccountant`` (the tests check
the product's cached PLD composition against it).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Literal

from fedsynth.common.privacy.accounting import DPEvent, accountant_name, epsilon, epsilon_rdp, event_from_plain


def dp_accounting_epsilon(events: list[DPEvent], delta: float, accountant: Literal["rdp", "pld"] = "rdp") -> float:
    """ε at ``delta`` of Poisson-subsampled Gaussian ``events`` composed by dp-accounting's RDP accountant, or
    (``accountant="pld"``) its ``PLDAccountant`` at the product's discretization interval."""
    import dp_accounting

    from fedsynth.common.privacy.accounting import PLD_INTERVAL

    history = [e for e in events if e.steps > 0]
    if not history:
        return 0.0
    if any(e.noise_multiplier == 0 for e in history):
        return math.inf
    composer: Any = (
        dp_accounting.pld.PLDAccountant(value_discretization_interval=PLD_INTERVAL)
        if accountant == "pld"
        else dp_accounting.rdp.RdpAccountant()
    )
    for e in history:
        step = dp_accounting.PoissonSampledDpEvent(e.sample_rate, dp_accounting.GaussianDpEvent(e.noise_multiplier))
        composer.compose(dp_accounting.SelfComposedDpEvent(step, e.steps))
    return float(composer.get_epsilon(delta))


def crosscheck_ledgers(ledger_dir: Path) -> list[dict[str, Any]]:
    """For each ledger file in ``ledger_dir``: its events' ε as reported (and by which accountant), and their
    RDP composition by Opacus and by dp-accounting, at its δ."""
    rows = []
    for path in sorted(ledger_dir.glob("ledger-*.json")):
        payload = json.loads(path.read_text())
        events = [event_from_plain(event) for event in payload["events"]]
        gaussian = [e for e in events if isinstance(e, DPEvent)]
        skellam = len(events) - len(gaussian)  # dp-accounting has no Skellam event: those are not cross-checked here
        delta = float(payload["delta"])
        opacus_eps = epsilon_rdp(events, delta)
        google_eps = dp_accounting_epsilon(gaussian, delta) if not skellam else math.nan
        finite = math.isfinite(opacus_eps) and math.isfinite(google_eps) and google_eps > 0
        rows.append(
            {
                "ledger": path.name,
                "delta": delta,
                "steps": sum(e.steps for e in events),
                "epsilon": epsilon(events, delta),  # as the ledger reports it
                "accountant": accountant_name(events),
                "epsilon_opacus": opacus_eps,  # RDP, Opacus
                "epsilon_dp_accounting": google_eps,  # RDP, dp-accounting
                "relative_difference": abs(opacus_eps - google_eps) / google_eps if finite else 0.0,
                "skellam_events": skellam,  # their RDP bound is checked against exact PMFs in tests/test_skellam.py
            }
        )
    return rows
