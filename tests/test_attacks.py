"""Simulated malicious silos: each attack does what it says, on tiny data; refusals name what to change."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from flwr.app import ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from fedsynth.client.attack import (
    MaliciousSilo,
    malicious_silo,
    silo_rows,
    tampered_statistics_reply,
    tampered_train_reply,
)
from fedsynth.common.config.run import RunConfig
from fedsynth.common.config.sections import EvalConfig
from fedsynth.common.errors import ConfigError
from fedsynth.common.evaluation.metrics import RankingMetrics
from fedsynth.common.evaluation.scoring import accumulate
from fedsynth.common.federated import wire
from fedsynth.common.robustness.attacks import (
    AttackConfig,
    inflate_counts,
    poison_rows,
    tampered_state,
    target_items,
    target_share,
)
from fedsynth.simulations.jobs import check_attack_setup


def popularity_matrix() -> sp.csr_matrix:
    """10 users × 8 items: users 0 … 7 − j hold item j, and user 9 holds items 0–2 (39 interactions)."""
    dense = np.zeros((10, 8))
    for item in range(8):
        dense[: 8 - item, item] = 1
    dense[9, 0:3] = 1  # user 9 holds items 0–2 only
    return sp.csr_matrix(dense)


def test_target_items_are_unpopular_held_items_and_the_same_for_a_seed() -> None:
    matrix = popularity_matrix()
    held = np.asarray(matrix.sum(axis=0)).ravel()  # [9, 8, 7, 5, 4, 3, 2, 1]: median 4.5

    targets = target_items(matrix, 3, seed=4)

    assert len(set(targets)) == 3 and np.array_equal(targets, np.sort(targets))
    assert all(0 < held[t] <= np.median(held[held > 0]) for t in targets)
    assert np.array_equal(targets, target_items(matrix, 3, seed=4))
    with pytest.raises(ConfigError, match="attack-targets 7: only"):
        target_items(matrix, 7, seed=4)


def test_poisoning_appends_fake_users_holding_every_target_and_median_history_fillers() -> None:
    rows = popularity_matrix()
    targets = np.array([5, 6])
    median_length = int(np.median(np.diff(rows.indptr)))

    poisoned = poison_rows(rows, targets, share=0.5, rng=np.random.default_rng(0))

    assert poisoned.shape == (15, 8)  # ⌈0.5 · 10⌉ fake users
    assert (poisoned[:10] != rows).nnz == 0  # the real users are untouched
    fake = poisoned[10:].toarray()
    assert (fake[:, targets] == 1).all()
    assert (fake.sum(axis=1) == len(targets) + median_length).all()
    assert set(np.flatnonzero(fake[:, [0, 1, 2, 3, 4, 7]].sum(axis=0))) <= {0, 1, 2, 3, 4}  # fillers: held items


def test_only_silos_below_attack_clients_cheat_and_only_target_items_poisons_data() -> None:
    rows, targets = popularity_matrix(), np.array([5, 6])
    attack = AttackConfig("target-items", clients=2, targets=2, fake_users=1.0)

    silos = [malicious_silo(attack, targets, k, seed=0) for k in range(4)]

    assert [s is not None for s in silos] == [True, True, False, False]
    assert silo_rows(rows, silos[0]).shape[0] == 20 and silo_rows(rows, silos[2]) is rows
    lying = malicious_silo(AttackConfig("inflated-counts", targets=2), targets, 0, seed=0)
    assert silo_rows(rows, lying) is rows  # a lie in the release, not in the data


def test_inflated_counts_add_the_silos_users_to_the_target_counts_only() -> None:
    counts = np.arange(6, dtype=np.float64)

    lied = inflate_counts(counts, np.array([1, 4]), num_users=100)

    assert np.array_equal(lied, [0, 101, 2, 3, 104, 5]) and counts[1] == 1


def test_the_statistics_reply_of_a_lying_silo_carries_the_inflated_counts() -> None:
    silo = MaliciousSilo(AttackConfig("inflated-counts", targets=1), np.array([2]), 0, 0)
    arrays = {wire.ITEM_COUNTS: torch.tensor([1.0, 2.0, 3.0]), wire.LENGTH_HISTOGRAM: torch.tensor([4.0])}
    reply = RecordDict({wire.ARRAYS: ArrayRecord(arrays), wire.METRICS: MetricRecord({wire.NUM_EXAMPLES: 50})})

    sent = tampered_statistics_reply(reply, RecordDict(), silo)
    honest = tampered_statistics_reply(reply, RecordDict(), None)

    assert sent[wire.ARRAYS].to_torch_state_dict()[wire.ITEM_COUNTS].tolist() == [1.0, 2.0, 53.0]
    assert honest is reply


def bundle_state(value: float) -> dict[str, torch.Tensor]:
    return {"w": torch.full((2, 3), value), "b": torch.full((4,), value), "steps": torch.tensor([7])}


def test_the_scaled_update_is_the_global_state_plus_s_times_the_update() -> None:
    current, trained = bundle_state(1.0), bundle_state(1.5)

    sent = tampered_state("scaled-update", current, trained, 10.0, np.random.default_rng(0))

    assert torch.allclose(sent["w"], torch.full((2, 3), 6.0)) and torch.allclose(sent["b"], torch.full((4,), 6.0))
    assert sent["steps"].tolist() == [7]  # integer buffers are sent as trained


def test_the_random_update_has_s_times_the_honest_norm_in_a_random_direction() -> None:
    current, trained = bundle_state(0.0), bundle_state(0.5)

    sent = tampered_state("random-update", current, trained, 3.0, np.random.default_rng(0))

    for name in ("w", "b"):
        honest = trained[name] - current[name]
        assert math.isclose(float(sent[name].norm()), 3.0 * float(honest.norm()), rel_tol=1e-5)
        cosine = float((sent[name] * honest).sum() / (sent[name].norm() * honest.norm()))
        assert cosine < 0.99  # not the honest direction


def test_a_cheating_silos_train_reply_is_tampered_and_an_honest_ones_is_not() -> None:
    request = RecordDict(
        {wire.ARRAYS: ArrayRecord(bundle_state(1.0)), wire.CONFIG: ConfigRecord({wire.SERVER_ROUND: 2})}
    )
    reply = RecordDict({wire.ARRAYS: ArrayRecord(bundle_state(2.0)), wire.METRICS: MetricRecord({"num-examples": 5})})
    silo = MaliciousSilo(AttackConfig("scaled-update", scale=4.0), np.array([0]), 0, 0)

    sent = tampered_train_reply(reply, request, silo)

    assert torch.allclose(sent[wire.ARRAYS].to_torch_state_dict()["w"], torch.full((2, 3), 5.0))
    assert tampered_train_reply(reply, request, None) is reply


def test_target_hit_rate_counts_users_with_a_target_in_their_top_k() -> None:
    scores = np.array([[0.9, 0.8, 0.1, 0.0], [0.1, 0.2, 0.9, 0.8], [0.9, 0.1, 0.8, 0.0]])
    fold_in = sp.csr_matrix(np.array([[0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 1, 0]]))  # user 2 holds the target
    target = sp.csr_matrix(np.ones((3, 4)))
    metrics = RankingMetrics((2,), 4, targets=(2,))

    metrics.add(scores, fold_in, target)
    merged = RankingMetrics.from_numbers(metrics.to_numbers(), (2,), 4, (2,))

    assert metrics.result()["target-hitrate@2"] == pytest.approx(1 / 3)  # user 1 only (item 2 is seen by user 2)
    assert merged.result()["target-hitrate@2"] == pytest.approx(1 / 3)
    assert "target-hitrate@2" not in RankingMetrics((2,), 4).result()


def test_target_share_is_the_targets_share_of_all_interactions() -> None:
    assert target_share(popularity_matrix(), np.array([0, 7])) == pytest.approx((9 + 1) / 39)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"attack": "shilling"}, "attack 'shilling': choose one of"),
        ({"attack": "target-items"}, "give attack-targets"),
        ({"attack": "scaled-update", "attack-scale": 0}, "attack-scale must be a positive"),
        ({"attack": "scaled-update", "attack-clients": 0}, "attack-clients must be at least 1"),
        ({"robust-aggregation": "mean"}, "robust-aggregation 'mean': choose one of"),
        ({"robust-aggregation": "median", "secure-aggregation": True}, "choose one of the two"),
        ({"attack": "inflated-counts", "attack-targets": 3, "secure-aggregation": True}, "turn off secure"),
        ({"attack-targets": 3, "simulation-reference": False}, "need simulation-reference"),
    ],
)
def test_bad_attack_and_defence_settings_are_refused_with_what_to_change(
    settings: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        RunConfig.from_run_config(settings)


def test_the_federation_must_be_large_enough_for_the_attack_and_the_rule() -> None:
    matrix = popularity_matrix()
    with pytest.raises(ConfigError, match="at least one of the 3 silos must be honest"):
        check_attack_setup(RunConfig(attack="scaled-update", attack_clients=3, num_server_rounds=3), matrix, clients=3)
    with pytest.raises(ConfigError, match="bulyan with robust-malicious 1 needs at least 7 silos; --clients has 5"):
        check_attack_setup(RunConfig(robust_aggregation="bulyan"), matrix, clients=5)
    with pytest.raises(ConfigError, match="attack-targets 9: only"):
        check_attack_setup(RunConfig(attack="target-items", attack_targets=9), matrix, clients=5)
    check_attack_setup(RunConfig(attack="target-items", attack_targets=2, robust_aggregation="krum"), matrix, 5)


def test_a_deployment_refuses_simulated_attacks_before_starting_anything(tmp_path: Path) -> None:
    from fedsynth.simulations.deployment.local import run_local_deployment

    with pytest.raises(ConfigError, match="simulate malicious silos in `fedsynth run` only"):
        run_local_deployment(None, tmp_path / "out", 2, {"attack": "scaled-update"})
    assert not (tmp_path / "out" / "deploy").exists()


def test_the_evaluation_request_carries_the_targets_to_the_clients() -> None:
    from fedsynth.client.evaluation import handle_evaluate
    from fedsynth.common.data.split import HeldOutUsers
    from fedsynth.common.recommenders import MostPopular
    from fedsynth.server.evaluation import evaluation_request, merge_evaluations

    config = EvalConfig(ks=(2,), targets=(0,))
    fold_in = sp.csr_matrix(np.array([[0, 0, 0, 1], [1, 0, 0, 0]], dtype=np.float32))
    target = sp.csr_matrix(np.array([[0, 1, 0, 0], [0, 1, 1, 0]], dtype=np.float32))
    held_out = HeldOutUsers(np.array([0, 1]), fold_in, target)
    recommender = MostPopular.from_counts(np.array([5.0, 4.0, 1.0, 0.0]))

    reply = handle_evaluate(evaluation_request(recommender, config), held_out)
    merged = merge_evaluations([reply], config, 4).result()

    assert merged["target-hitrate@2"] == pytest.approx(0.5)  # user 1 holds item 0 already
    assert merged == accumulate(recommender, held_out, config).result()


@pytest.mark.slow
def test_a_flower_run_with_a_lying_silo_shows_the_promotion_and_the_median_undoes_it(tmp_path: Path) -> None:
    """Through the real ServerApp and ClientApps: silo 0 of 3 inflates its target counts."""
    import json

    from click.testing import CliRunner

    from fedsynth.simulations.cli import cli

    config_file = tmp_path / "tiny.toml"
    config_file.write_text(
        'central-vae-epochs = 2\nvae-hidden = 32\nvae-latent = 8\nrecommenders = "popularity,ease"\n'
        "reproducible-noise = true\n"  # the noise from the seed: one fixed draw, not a new one per CI run
        "marginal-items = 0\n"  # first-order lies alone: fitted to the honest co-occurrence, the promotion fades
    )
    attack = {}
    for defence in ("none", "median"):
        out = tmp_path / defence
        args = ["run", "--config", str(config_file), "--clients", "3", "--rounds", "1", "--epsilon", "4",
                "--gen-users", "300", "--gen-items", "300", "--vae-batch-size", "32", "--synthesizers", "vae",
                "--synthetic-users", "200", "--attack", "inflated-counts", "--attack-targets", "3",
                "--robust-aggregation", defence, "--out", str(out)]  # fmt: skip

        result = CliRunner().invoke(cli, args)

        assert result.exit_code == 0, result.output
        metrics = json.loads((out / "metrics.json").read_text())
        attack[defence] = metrics["attack"]
        assert "target-hitrate@10" in metrics["recommenders"]["synthetic/ease"]
        assert "SIMULATED attack inflated-counts (1 silo(s))" in result.output
        assert "## SIMULATED malicious silos" in (out / "report.md").read_text()
    assert attack["none"]["kind"] == "inflated-counts" and attack["none"]["clients"] == 1
    assert (
        attack["none"]["target_items"] == attack["median"]["target_items"] and len(attack["none"]["target_items"]) == 3
    )
    real_share = attack["none"]["target_share_real_training"]
    assert attack["none"]["target_share_synthetic"] > 5 * real_share
    # With fresh noise, over 5 runs: none 0.039-0.045, median 0.003-0.017, real 0.004. The median
    # must take back most of the promotion above the real share.
    promotion = {defence: attack[defence]["target_share_synthetic"] - real_share for defence in attack}
    assert promotion["median"] < promotion["none"] / 2
