"""norm-bound under secure aggregation: the silos bound their own updates, the server checks the unmasked sum.

An update attack (``scaled-update``, one silo of three, scale 1000) moves the secure FedAvg by orders of
magnitude without the defence; with it, the round is discarded and the model stays where it was. Honest
rounds pass, and from round 2 on every update obeys the bound the server sent.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord

from fedsynth.common.config.run import RunConfig
from fedsynth.common.errors import ConfigError
from fedsynth.common.federated.protocol import Identity
from fedsynth.common.secagg.updates import bounded_update, update_norm
from fedsynth.server.federation import round_transport
from fedsynth.server.round import RoundOutcome, play_round
from fedsynth.server.secure_round import SecureNormBound
from tests.test_secure_round import IDENTITY, SETTINGS, _setup

pytestmark = pytest.mark.usefixtures("flower_task_identity")
ATTACK = {"attack": "scaled-update", "attack-clients": 1, "attack-scale": 1000.0, "simulation-reference": True}


def two_rounds(tmp_path: Path, **extra: Any) -> tuple[ArrayRecord, list[RoundOutcome]]:
    config, grid, arrays = _setup(tmp_path, **extra)
    transport = round_transport(grid, config, arrays, IDENTITY)
    outcomes, current = [], arrays
    for server_round in (1, 2):
        outcome = play_round(transport, config, server_round, grid.get_node_ids(), current,
                             Identity.from_fields(IDENTITY))  # fmt: skip
        outcomes.append(outcome)
        current = outcome.arrays if outcome.arrays is not None else current
    return arrays, outcomes


def moved(before: ArrayRecord, after: ArrayRecord | None) -> float:
    assert after is not None
    start = before.to_torch_state_dict()
    return update_norm(after.to_torch_state_dict(), start)


def test_honest_rounds_pass_and_obey_the_bound(tmp_path: Path) -> None:
    _, (first, second) = two_rounds(tmp_path, **{"robust-aggregation": "norm-bound"})

    assert first.log.rejected is None and second.log.rejected is None
    # each silo's norm leaves it only under norm-bound: a function of the DP-SGD output the round's ε pays for
    reported = first.log.update_norm_by_node
    assert sorted(reported) == ["100", "101", "102"] and all(v > 0 for v in reported.values())
    assert first.arrays is not None
    assert moved(first.arrays, second.arrays) <= float(np.median(list(reported.values()))) * (1 + 1e-6)


def test_an_update_attack_moves_the_secure_sum_without_the_defence_and_is_discarded_with_it(tmp_path: Path) -> None:
    start, (attacked, _) = two_rounds(tmp_path / "none", **ATTACK)
    clean_start, (clean, _) = two_rounds(tmp_path / "clean")
    assert moved(start, attacked.arrays) > 100 * moved(clean_start, clean.arrays)  # the attack is real

    start, outcomes = two_rounds(tmp_path / "defended", **ATTACK, **{"robust-aggregation": "norm-bound"})

    for outcome in outcomes:
        assert outcome.arrays is None, "the round is discarded: the model stays"
        assert outcome.log.rejected is not None and "above the bound" in outcome.log.rejected
        assert sorted(outcome.log.trained) == [100, 101, 102]  # every silo answered (and paid)


def test_the_bound_keeps_an_update_within_it() -> None:
    start = {"w": torch.zeros(4), "steps": torch.tensor(3)}
    trained = {"w": torch.tensor([3.0, 4.0, 0.0, 0.0]), "steps": torch.tensor(4)}
    norm = update_norm(trained, start)
    bounded = bounded_update(trained, start, norm, 1.0)

    assert norm == pytest.approx(5.0) and update_norm(bounded, start) == pytest.approx(1.0)
    assert torch.equal(bounded["steps"], trained["steps"])  # integer entries are not an update
    assert (
        bounded_update(trained, start, norm, 10.0) is trained and bounded_update(trained, start, norm, None) is trained
    )


def test_the_server_check_uses_the_median_then_the_bound_it_sent() -> None:
    check = SecureNormBound()
    assert check.check(np.array([3.0, 4.0]), {"1": 4.0, "2": 6.0, "3": 1000.0}) is None  # 5 ≤ min(1000, 3·6)
    assert check.bound == 6.0
    assert "above the bound 18" in (SecureNormBound().check(np.array([0.0, 19.0]), {"1": 4.0, "2": 6.0, "3": 1e3})
                                    or "")  # fmt: skip
    nan = SecureNormBound()  # a report that is not a norm is left out
    assert nan.check(np.array([0.0, 1.0]), {"1": 1.0, "2": float("nan"), "3": 1.0}) is None and nan.bound == 1.0
    assert "no silo reported" in (SecureNormBound().check(np.zeros(2), {"1": float("nan")}) or "")
    assert "above the bound 6" in (check.check(np.array([0.0, 7.0]), {"1": 5.0, "2": 5.0}) or "")
    assert check.bound == 5.0


def test_only_norm_bound_goes_with_secure_aggregation_and_only_in_local_rounds() -> None:
    RunConfig.from_run_config({**SETTINGS, "robust-aggregation": "norm-bound"})
    with pytest.raises(ConfigError, match="robust-aggregation median reads each silo's update"):
        RunConfig.from_run_config({**SETTINGS, "robust-aggregation": "median"})
    with pytest.raises(ConfigError, match="robust-aggregation norm-bound reads each silo's update"):
        RunConfig.from_run_config({**SETTINGS, "robust-aggregation": "norm-bound", "round-mode": "fedsgd",
                                   "synthesizers": "vae"})  # fmt: skip
