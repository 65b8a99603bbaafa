"""DP-ALS (the ``dp-als`` baseline row): sensitivity, accounting against dp-accounting, utility, wire format."""

from __future__ import annotations

import dp_accounting
import numpy as np
import pytest
import scipy.sparse as sp

from fedsynth.common.config.run import RunConfig
from fedsynth.common.errors import ConfigError
from fedsynth.common.privacy.releases.clipped_sums import clipped_counts
from fedsynth.common.recommenders import MostPopular
from fedsynth.common.recommenders.dp_als import (
    DPALSConfig,
    clip_rows,
    dp_als,
    item_statistics,
    solve_users,
    symmetric_noise_batch,
    trained_items,
)
from fedsynth.common.recommenders.transfer import pack, unpack


def clustered(users: int, items: int = 60, clusters: int = 3, seed: int = 0) -> sp.csr_matrix:
    """Users who each like 6–12 items of one taste cluster (items split into ``clusters`` blocks)."""
    rng = np.random.default_rng(seed)
    block = items // clusters
    rows = np.zeros((users, items))
    for user in range(users):
        start = rng.integers(clusters) * block
        rows[user, start + rng.choice(block, rng.integers(6, 13), replace=False)] = 1.0
    return sp.csr_matrix(rows)


def upper(matrix: np.ndarray) -> np.ndarray:
    return matrix[..., *np.triu_indices(matrix.shape[-1])]


def test_one_user_moves_each_release_by_at_most_one() -> None:
    rows = clustered(40)
    items = np.arange(rows.shape[1])
    factors = np.random.default_rng(1).normal(0, 3.0, (rows.shape[1], 5))  # large: the clip must act
    users = clip_rows(solve_users(rows, items, factors, DPALSConfig(rank=5)))
    assert np.linalg.norm(users, axis=1).max() <= 1 + 1e-9
    full = item_statistics(rows, items, users)
    for user in range(rows.shape[0]):
        keep = np.delete(np.arange(rows.shape[0]), user)
        others = clip_rows(solve_users(rows[keep], items, factors, DPALSConfig(rank=5)))
        assert np.allclose(others, users[keep])  # the others' factors do not depend on the user
        without = item_statistics(rows[keep], items, others)
        gram, lhs, rhs = (np.linalg.norm((a - b).ravel()) for a, b in zip(full, without, strict=True))
        assert np.linalg.norm(upper(full[0]) - upper(without[0])) <= gram <= 1 + 1e-9
        assert np.linalg.norm(upper(full[1]) - upper(without[1])) <= lhs <= 1 + 1e-9
        assert rhs <= 1 + 1e-9
        clip = DPALSConfig().counts_clip  # the counts that pick the trained items: noise σ·clip
        assert np.linalg.norm(clipped_counts(rows, clip) - clipped_counts(rows[keep], clip)) <= clip + 1e-9


@pytest.mark.parametrize("epsilon,iterations", [(1.0, 2), (8.0, 3)])
def test_each_client_spends_its_target_by_an_independent_accountant(epsilon: float, iterations: int) -> None:
    clients = [clustered(50, seed=k) for k in range(3)]
    deltas = [1e-3, 2e-3, 1e-3]
    config = DPALSConfig(rank=4, iterations=iterations, min_signal=0.0)  # every item trained
    _, release = dp_als(clients, epsilon, deltas, config, seed=0)
    for (event,), delta, reported in zip(release.events_per_client, deltas, release.epsilon_per_client(),
                                         strict=True):  # fmt: skip
        assert event.steps == 3 * iterations + 1 and event.sample_rate == 1.0
        accountant = dp_accounting.pld.PLDAccountant()
        accountant.compose(dp_accounting.GaussianDpEvent(event.noise_multiplier), 3 * iterations + 1)
        independent = accountant.get_epsilon(delta)
        assert independent == pytest.approx(reported, rel=1e-3)
        assert epsilon * 0.99 <= independent <= epsilon * 1.001


def test_without_noise_it_learns_the_tastes_and_with_little_budget_it_still_ranks_by_counts() -> None:
    clients = [clustered(200, seed=k) for k in range(3)]
    test = clustered(90, seed=9)
    fold_in, held = test.copy(), test.copy()
    for user in range(test.shape[0]):  # half of each test user's items folded in, half held out
        present = test.indices[test.indptr[user] : test.indptr[user + 1]]
        fold_in[user, present[len(present) // 2 :]] = 0
        held[user, present[: len(present) // 2]] = 0
    fold_in.eliminate_zeros()
    held.eliminate_zeros()

    def hits(model) -> float:
        top = model.recommend(fold_in, 5)
        return float(np.mean([held[u, top[u]].sum() / 5 for u in range(test.shape[0])]))

    exact, _ = dp_als(clients, 1e7, [1e-3] * 3, DPALSConfig(rank=3, iterations=4, min_signal=0.0), seed=0)
    popular = MostPopular().fit(sp.vstack(clients).tocsr())
    assert hits(exact) > 2 * hits(popular)
    noisy, release = dp_als(clients, 0.05, [1e-3] * 3, DPALSConfig(rank=3, iterations=2), seed=0)
    assert release.items is not None and len(release.items) == 0  # nothing clears the noise: ranked by counts
    assert [event.steps for (event,) in release.events_per_client] == [7, 7, 7]  # the whole plan still charged
    assert all(0.049 < e <= 0.05 for e in release.epsilon_per_client())
    assert np.isfinite(noisy.score(fold_in)).all()


def test_trained_items_are_those_above_the_noise_within_the_limits() -> None:
    counts = np.array([50.0, 3.0, 40.0, 1.0, 30.0, 2.0])
    assert trained_items(counts, 1.0, DPALSConfig(rank=2, min_signal=8.0)).tolist() == [0, 2, 4]
    assert trained_items(counts, 1.0, DPALSConfig(rank=2, min_signal=8.0, items=2)).tolist() == [0, 2]
    assert trained_items(counts, 6.0, DPALSConfig(rank=2, min_signal=8.0)).tolist() == []  # fewer than rank
    assert trained_items(counts, 1.0, DPALSConfig(rank=2, min_signal=0.0)).tolist() == list(range(6))


def test_the_automatic_rank_grows_with_the_trained_items_within_its_range() -> None:
    config = DPALSConfig()
    assert config.rank == 0
    assert [config.rank_for(m) for m in (0, 22, 340, 1400, 20000)] == [8, 8, 18, 32, 32]
    assert DPALSConfig(rank=5).rank_for(20000) == 5
    assert trained_items(np.array([9.0] * 7 + [0.0]), 1.0, config).tolist() == []  # 7 items < the least rank 8


def test_items_outside_the_trained_set_rank_after_every_trained_item() -> None:
    clients = [clustered(100, seed=k) for k in range(2)]
    model, _ = dp_als(clients, 4.0, [1e-3] * 2, DPALSConfig(rank=3, iterations=1, items=10, min_signal=0.0), seed=3)
    scores = model.score(clients[0][:20])
    outside = np.setdiff1d(np.arange(60), model.items)
    assert len(model.items) == 10
    assert (scores[:, model.items].min(axis=1) > scores[:, outside].max(axis=1)).all()


def test_symmetric_noise_is_symmetric_with_the_stated_std() -> None:
    noise = symmetric_noise_batch(400, 6, 2.0, np.random.default_rng(0))
    assert np.array_equal(noise, np.swapaxes(noise, 1, 2))
    assert upper(noise).std() == pytest.approx(2.0, rel=0.02)


def test_the_wire_format_scores_exactly_as_the_original() -> None:
    clients = [clustered(80, seed=k) for k in range(2)]
    model, _ = dp_als(clients, 8.0, [1e-3] * 2, DPALSConfig(rank=4, iterations=1, min_signal=1.0), seed=0)
    kind, tensors, settings = pack(model)
    again = unpack(kind, tensors, settings)
    batch = clustered(10, seed=5)
    assert np.array_equal(again.score(batch), model.score(batch))


def test_each_client_and_iteration_draws_from_its_own_stream(monkeypatch: pytest.MonkeyPatch) -> None:
    import fedsynth.common.privacy.releases.clipped_sums as clipped_sums
    import fedsynth.common.recommenders.dp_als as module

    purposes: list[tuple[int, str]] = []

    def recording(seed: int, purpose: str) -> np.random.Generator:
        purposes.append((seed, purpose))
        return np.random.default_rng(len(purposes))

    monkeypatch.setattr(module, "rng_for", recording)
    monkeypatch.setattr(clipped_sums, "rng_for", recording)
    clients = [clustered(80, seed=k) for k in range(3)]
    dp_als(clients, 8.0, [1e-3] * 3, DPALSConfig(rank=4, iterations=2, min_signal=0.0), seed=7)
    noise = [p for s, p in purposes if s == 7]
    assert len(noise) == len(set(noise)) == 3 + 2 * 3  # the counts per client, then per iteration and client
    assert [p for s, p in purposes if s != 7] == ["dp-als-init"]  # the starting factors: public, not the noise's


def test_only_the_noise_depends_on_the_noise_seed(monkeypatch: pytest.MonkeyPatch) -> None:
    import fedsynth.common.recommenders.dp_als as module

    clients = [clustered(80, seed=k) for k in range(2)]
    config = DPALSConfig(rank=4, iterations=1, min_signal=0.0)
    noisy, _ = dp_als(clients, 8.0, [1e-3] * 2, config, seed=1)
    monkeypatch.setattr(module, "calibrate_noise", lambda *args: 0.0)  # σ = 0: what is left is not noise
    first, _ = dp_als(clients, 8.0, [1e-3] * 2, config, seed=0)
    second, _ = dp_als(clients, 8.0, [1e-3] * 2, config, seed=1)
    assert np.array_equal(first.factors, second.factors)  # no noise: the same model whatever the seed
    assert not np.allclose(first.factors, noisy.factors)


@pytest.mark.parametrize(
    "key,value,message",
    [("dp-als-rank", -1, r"dp-als-rank must be 0 \(automatic\) or in"),
     ("dp-als-iterations", 0, "dp-als-iterations must be in"),
     ("dp-als-l2", 0.0, "dp-als-l2 must be positive"), ("dp-als-items", 1, "dp-als-items must be at least 2")],
)  # fmt: skip
def test_bad_settings_are_refused_before_anything_starts(key: str, value: float, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        RunConfig.from_run_config({key: value})


def test_the_bench_scores_every_baseline_on_validation_users() -> None:
    from fedsynth.simulations.bench.dp_baselines import score

    config = RunConfig.from_run_config({"epsilon": 8.0, "gen-users": 300, "gen-items": 300, "dp-als-min-signal": 2.0})
    scores = score(config, seed=0, clients=2, held_out="validation", non_private=True)
    assert {"dp-popularity", "dp-ease", "dp-als", "als (no noise)", "real/ease"} <= set(scores)
    assert all(0.0 <= scores[k] <= 1.0 for k in ("dp-popularity", "dp-ease", "dp-als", "als (no noise)"))
    assert scores["als (no noise)"] > scores["dp-als"]  # the noise costs something at 150 users per silo
