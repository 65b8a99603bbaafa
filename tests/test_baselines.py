"""The simple DP baselines (DP popularity, DP-EASE): clipping, noise, accounting and the subset EASE."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from fedsynth.common.errors import ConfigError
from fedsynth.common.privacy.accounting import calibrate_noise
from fedsynth.common.privacy.crosscheck import dp_accounting_epsilon
from fedsynth.common.privacy.releases.clipped_sums import clipped_counts, clipped_gram, symmetric_noise
from fedsynth.common.recommenders import EASE
from fedsynth.common.recommenders.dp_baselines import DPBaselineConfig, dp_gram, dp_popularity
from fedsynth.common.recommenders.ease import SubsetEASE
from fedsynth.common.recommenders.transfer import pack, unpack


def _rows(num_users: int, num_items: int, seed: int, density: float = 0.1) -> sp.csr_matrix:
    rng = np.random.default_rng(seed)
    dense = (rng.random((num_users, num_items)) < density).astype(np.float64)
    dense[:, 0] = 1.0  # item 0 is the most popular, every user has something
    dense[: num_users // 2, 1] = 1.0
    return sp.csr_matrix(dense)


def test_clipped_counts_bound_each_users_l2_norm_and_match_brute_force() -> None:
    rows = _rows(30, 40, 0, density=0.4)
    clip = 2.0

    counts = clipped_counts(rows, clip)

    dense = rows.toarray()
    per_user = [x * min(1.0, clip / np.linalg.norm(x)) for x in dense]
    assert max(np.linalg.norm(c) for c in per_user) <= clip + 1e-12
    np.testing.assert_allclose(counts, np.sum(per_user, axis=0))


def test_clipped_gram_bounds_each_users_frobenius_norm_and_matches_brute_force() -> None:
    rows = _rows(25, 30, 1, density=0.5)
    items = np.array([0, 2, 3, 5, 8, 13, 21])
    clip = 3.0

    gram = clipped_gram(rows, items, clip)

    contributions = []
    for x in rows.toarray()[:, items]:
        scale = min(1.0, np.sqrt(clip) / max(np.linalg.norm(x), 1e-12))
        contributions.append(np.outer(scale * x, scale * x))
    assert max(np.linalg.norm(c) for c in contributions) <= clip + 1e-9  # Frobenius: the sensitivity
    assert max(np.linalg.norm(c[np.triu_indices(len(items))]) for c in contributions) <= clip + 1e-9
    np.testing.assert_allclose(gram, np.sum(contributions, axis=0))


def test_symmetric_noise_is_symmetric_with_the_given_std_once_per_pair() -> None:
    noise = symmetric_noise(300, 2.5, np.random.default_rng(0))

    np.testing.assert_array_equal(noise, noise.T)
    upper = noise[np.triu_indices(300)]
    assert np.std(upper) == pytest.approx(2.5, rel=0.02)


def test_dp_popularity_spends_the_target_per_client_checked_by_dp_accounting() -> None:
    clients = [_rows(100, 50, seed) for seed in range(3)]
    deltas = [0.1 / 100] * 3

    release = dp_popularity(clients, 2.0, deltas, clip=4.0, seed=0)

    eps = release.epsilon_per_client()
    assert all(1.9 < e <= 2.0 + 1e-6 for e in eps)
    for events, delta in zip(release.events_per_client, release.delta_per_client, strict=True):
        assert dp_accounting_epsilon(list(events), delta, "pld") == pytest.approx(2.0, rel=0.002)
    sigma = release.events_per_client[0][0].noise_multiplier
    assert release.noise_std == pytest.approx(sigma * 4.0 * np.sqrt(3))  # each client adds its own noise
    exact = sum(clipped_counts(c, 4.0) for c in clients)
    residual = release.value - exact
    assert abs(np.mean(residual)) < 3 * release.noise_std / np.sqrt(50)
    assert np.argmax(release.value) == 0 or np.argsort(-release.value)[:3].tolist().count(0) == 1


def test_dp_ease_selects_items_by_a_second_release_and_composes_both() -> None:
    clients = [_rows(80, 60, seed) for seed in range(2)]
    config = DPBaselineConfig(ease_items=10, ease_clip=4.0)

    gram, counts = dp_gram(clients, 4.0, [1e-3, 1e-3], config, seed=0)

    assert counts is not None and gram.items is not None and len(gram.items) == 10
    assert all(event.steps == 2 for events in gram.events_per_client for event in events)  # counts + Gram at one σ
    assert all(3.8 < e <= 4.0 + 1e-6 for e in gram.epsilon_per_client())
    assert dp_accounting_epsilon(list(gram.events_per_client[0]), 1e-3, "pld") == pytest.approx(4.0, rel=0.002)
    np.testing.assert_array_equal(gram.value, gram.value.T)
    assert set(np.argsort(-counts)[:10]) == set(gram.items)


def test_dp_ease_without_selection_is_one_release_over_every_item() -> None:
    clients = [_rows(80, 12, 0)]

    gram, counts = dp_gram(clients, 1.0, [1e-3], DPBaselineConfig(ease_items=12), seed=0)

    assert counts is None and gram.items is not None and len(gram.items) == 12
    assert gram.events_per_client[0][0].steps == 1


def test_dp_ease_at_huge_epsilon_ranks_like_ease_on_the_same_clipped_data() -> None:
    rows = _rows(200, 30, 3, density=0.2)
    config = DPBaselineConfig(ease_items=30, ease_clip=20.0)  # no clipping in effect (histories of about 8 items)

    gram, _ = dp_gram([rows], 1e4, [1e-3], config, seed=0)
    assert gram.items is not None
    l2 = 50.0 + 2.0 * gram.noise_std * np.sqrt(30)  # the server's rule
    assert l2 < 65.0
    private = SubsetEASE.from_gram(gram.value, gram.items, l2, np.zeros(30))
    exact = EASE(50.0).fit(rows)

    fold_in = rows[:20]
    assert np.corrcoef(private.score(fold_in).ravel(), exact.score(fold_in).ravel())[0, 1] > 0.99


def test_subset_ease_ranks_outside_items_below_subset_items_by_the_fallback() -> None:
    rows = _rows(100, 20, 4, density=0.3)
    items = np.array([1, 4, 7, 9])
    gram = (rows[:, items].T @ rows[:, items]).toarray()
    fallback = np.arange(20, dtype=np.float64)  # item 19 most popular
    model = SubsetEASE.from_gram(gram, items, 10.0, fallback)

    scores = model.score(rows[:5])

    outside = np.setdiff1d(np.arange(20), items)
    assert (scores[:, items].min(axis=1) > scores[:, outside].max(axis=1)).all()
    assert (np.argsort(-scores[:, outside], axis=1)[:, 0] == np.where(outside == 19)[0][0]).all()
    kind, tensors, settings = pack(model)
    np.testing.assert_array_equal(unpack(kind, tensors, settings).score(rows[:5]), scores)
    with pytest.raises(ConfigError, match="from_gram"):
        model.fit(rows)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"ease_items": 20_000}, "dp-ease-items"), ({"ease_clip": 0.0}, "clipping"), ({"ease_l2": -1.0}, "dp-ease-l2")],
)
def test_baseline_config_rejects_bad_values(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        DPBaselineConfig(**kwargs)  # type: ignore[arg-type]


def test_secure_baselines_spend_the_target_and_carry_the_central_noise_only() -> None:
    from fedsynth.common.recommenders.dp_baselines_secure import secure_dp_gram, secure_dp_popularity

    clients = [_rows(80, 60, seed) for seed in range(5)]
    deltas = [1e-3] * 5
    secure = secure_dp_popularity(clients, 2.0, deltas, 4.0, threshold=3)
    local = dp_popularity(clients, 2.0, deltas, 4.0, seed=0)
    assert all(1.9 < e <= 2.0 + 1e-9 for e in secure.epsilon_per_client())
    assert all(e > 3.0 for e in secure.epsilon_own_noise_per_client())  # one node's share alone: weaker
    # √(5/3) vs √5 σC, at the σ of each accountant: the Skellam release is composed by RDP, the local one by PLD
    rdp_to_pld = calibrate_noise(2.0, 1e-3, 1.0, 1, accountant="rdp") / calibrate_noise(2.0, 1e-3, 1.0, 1)
    assert secure.noise_std == pytest.approx(local.noise_std * np.sqrt(1 / 3) * rdp_to_pld, rel=0.05)
    exact = sum(clipped_counts(rows, 4.0) for rows in clients)
    assert np.std(secure.value - exact) == pytest.approx(secure.noise_std, rel=0.35)

    config = DPBaselineConfig(ease_items=20)
    gram, counts = secure_dp_gram(clients, 2.0, deltas, config, threshold=3)
    assert counts is not None and gram.items is not None and len(gram.items) == 20
    np.testing.assert_array_equal(gram.value, gram.value.T)
    assert all(1.9 < e <= 2.0 + 1e-9 for e in gram.epsilon_per_client())
    truth = sum(clipped_gram(rows, gram.items, config.ease_clip) for rows in clients)
    upper = np.triu_indices(20)
    assert np.std((gram.value - truth)[upper]) == pytest.approx(gram.noise_std, rel=0.35)
