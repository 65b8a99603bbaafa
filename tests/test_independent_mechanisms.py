"""Every DP mechanism draws its own randomness: the ledger composes them as independent, so they must be.

Checked statistically on what the real code paths draw (a spy on the noise buffers and on the
rows each Poisson batch reads), against what independence predicts:

* noise: two independent N(0, 1) streams of length L have sample correlation ~ N(0, 1/L), so
  |corr| < 6/√L except with probability ~2e-9; shared streams give corr = 1;
* Poisson sampling: two independent samples at rate q overlap in a fraction ≈ q of either; shared
  samplers overlap in all of it.

Before the fix the VAE and the discriminator of one round shared both (one seed for the round).
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from flwr.app import ArrayRecord, ConfigRecord, RecordDict

from fedsynth.client.budget import NodeBudget
from fedsynth.client.handlers import handle_cooccurrence, handle_statistics, privacy_plan
from fedsynth.client.round import local_training
from fedsynth.client.training import RoundSeeds
from fedsynth.common.config.run import RunConfig
from fedsynth.common.federated import wire
from fedsynth.common.federated.protocol import TrainRequest
from fedsynth.common.models.bundle import ModelBundle
from fedsynth.common.privacy.dpsgd import noise
from fedsynth.common.privacy.dpsgd.training import CSRRows
from fedsynth.common.privacy.ledger import RunIdentity
from fedsynth.common.privacy.releases.clipped_sums import clipped_counts
from fedsynth.common.runtime.seeding import mechanism_seed

SMALL = {
    "gen-users": 300,
    "gen-items": 400,
    "vae-batch-size": 32,  # the same batch size for both models: the same sample rate, the old failure mode
    "gan-batch-size": 32,
    "discriminator-steps": 8,  # at least the VAE's ⌈200/32⌉ = 7 steps: the overlap is compared step by step
    "vae-hidden": 32,
    "vae-latent": 8,
    "num-server-rounds": 2,
    "epsilon": 4.0,
}


class Spy:
    """Records each noise generator's first draw and each dataset's batches (row indices), in order."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.noise: list[torch.Tensor] = []
        self.batches: dict[int, list[set[int]]] = defaultdict(list)  # by dataset, in order of creation
        draw, getitems, init = noise.NoisedClippedSum.draw, CSRRows.__getitems__, CSRRows.__init__
        spy, created = self, iter(range(10**6))

        def spy_init(self: Any, matrix: sp.csr_matrix) -> None:
            init(self, matrix)
            self.serial = next(created)

        def spy_draw(self: Any) -> None:
            draw(self)
            if not getattr(self, "spied", False):  # the first draw of each mechanism (ids may be reused)
                self.spied = True
                spy.noise.append(torch.cat([b.detach().reshape(-1).clone() for b in self.buffers.values()]))

        def spy_getitems(self: Any, indices: list[int]) -> list[torch.Tensor]:
            spy.batches[self.serial].append(set(int(i) for i in indices))
            return getitems(self, indices)

        monkeypatch.setattr(noise.NoisedClippedSum, "draw", spy_draw)
        monkeypatch.setattr(CSRRows, "__getitems__", spy_getitems)
        monkeypatch.setattr(CSRRows, "__init__", spy_init)
        monkeypatch.setattr(noise, "default_workers", lambda: 1)  # one stream per mechanism: the clearest case

    def datasets(self) -> list[list[set[int]]]:
        return [self.batches[k] for k in sorted(self.batches)]


def rows(n_users: int = 200, n_items: int = 50) -> sp.csr_matrix:
    dense = (np.random.default_rng(0).random((n_users, n_items)) < 0.2).astype(np.float32)
    dense[:, 0] = 1
    return sp.csr_matrix(dense)


def train_request(config: RunConfig, num_items: int, server_round: int) -> RecordDict:
    bundle = ModelBundle.create(num_items, config.local(), seed=0)
    request = ConfigRecord({wire.SERVER_ROUND: server_round, wire.PLANNED_ROUNDS: config.num_server_rounds})
    return RecordDict({wire.ARRAYS: ArrayRecord(bundle.state_dict()), wire.CONFIG: request})


def correlation(a: torch.Tensor, b: torch.Tensor) -> tuple[float, int]:
    """Sample correlation of the first L = min(len) draws of two noise streams, and L."""
    length = min(a.numel(), b.numel())
    x, y = a[:length].double().numpy(), b[:length].double().numpy()
    return float(np.corrcoef(x, y)[0, 1]), length


def overlap(first: list[set[int]], second: list[set[int]]) -> tuple[float, int]:
    """Σ_t |A_t ∩ B_t| / Σ_t |A_t| over the steps both ran, and Σ_t |A_t|."""
    steps = min(len(first), len(second))
    shared = sum(len(a & b) for a, b in zip(first[:steps], second[:steps], strict=True))
    total = sum(len(a) for a in first[:steps])
    return shared / max(total, 1), total


def assert_independent_noise(a: torch.Tensor, b: torch.Tensor) -> None:
    corr, length = correlation(a, b)
    assert length > 1000
    assert abs(corr) < 6 / np.sqrt(length), f"noise streams correlate: {corr:.3f} over {length} draws"


@pytest.mark.parametrize("reproducible", [False, True])
def test_independent_mechanisms_vae_and_discriminator_of_one_round(
    monkeypatch: pytest.MonkeyPatch, reproducible: bool
) -> None:
    config = RunConfig.from_run_config({**SMALL, "reproducible-noise": reproducible})
    data = rows()
    plan = privacy_plan(RecordDict(), config, data.shape[0], config.num_server_rounds)
    spy = Spy(monkeypatch)

    local_training(TrainRequest.from_record(train_request(config, 50, 1)), data, config, plan)

    vae_noise, gan_noise = spy.noise
    assert_independent_noise(vae_noise, gan_noise)
    vae_batches, gan_batches = spy.datasets()
    shared, total = overlap(vae_batches, gan_batches)
    rate = 32 / 200
    assert total > 120  # 7 steps of expected batch 32
    assert shared < rate + 6 * np.sqrt(rate * (1 - rate) / total), f"Poisson batches overlap in {shared:.2f}"


@pytest.mark.parametrize("reproducible", [False, True])
def test_independent_mechanisms_across_two_rounds(monkeypatch: pytest.MonkeyPatch, reproducible: bool) -> None:
    config = RunConfig.from_run_config({**SMALL, "reproducible-noise": reproducible})
    data = rows()
    plan = privacy_plan(RecordDict(), config, data.shape[0], config.num_server_rounds)
    spy = Spy(monkeypatch)

    local_training(TrainRequest.from_record(train_request(config, 50, 1)), data, config, plan)
    local_training(TrainRequest.from_record(train_request(config, 50, 2)), data, config, plan)

    round_1_vae, _, round_2_vae, _ = spy.noise
    assert_independent_noise(round_1_vae, round_2_vae)
    first, _, second, _ = spy.datasets()
    shared, _ = overlap(first, second)
    assert shared < 32 / 200 + 0.15


@pytest.mark.parametrize("reproducible", [False, True])
def test_independent_mechanisms_statistics_and_second_release(tmp_path: Path, reproducible: bool) -> None:
    """The statistics and the co-occurrence's budget spent on the first order again: two releases of the same
    counts, whose noises (release − exact clipped counts) must be independent."""
    config = RunConfig.from_run_config(
        {**SMALL, "reproducible-noise": reproducible, "marginal-items": 20, "cooccurrence-share": 0.3}
    )
    data = rows(200, 2000)  # 2,000 noise draws per release
    state, budget = RecordDict(), NodeBudget(tmp_path)
    planned = ConfigRecord({wire.PLANNED_ROUNDS: 2})
    again = ConfigRecord({wire.PLANNED_ROUNDS: 2, wire.FIRST_ORDER_INSTEAD: 1})

    first = handle_statistics(RecordDict({wire.CONFIG: planned}), data, config, state, budget, RunIdentity())
    second = handle_cooccurrence(RecordDict({wire.CONFIG: again}), data, config, state, budget, RunIdentity())

    exact = clipped_counts(data, config.privacy().statistics_clip)
    noises = [
        torch.from_numpy(r[wire.ARRAYS].to_torch_state_dict()[wire.ITEM_COUNTS].numpy() - exact)  # type: ignore[union-attr]
        for r in (first, second)
    ]
    assert_independent_noise(*noises)


def test_round_seeds_differ_per_model_and_round() -> None:
    fresh = [RoundSeeds.for_round(1), RoundSeeds.for_round(1)]
    derived = [RoundSeeds.for_round(r, reproducible_from=0) for r in (1, 2)]

    assert fresh[0] != fresh[1]  # OS entropy: a new pair every call
    assert len({fresh[0].vae, fresh[0].gan, fresh[1].vae, fresh[1].gan}) == 4
    assert len({derived[0].vae, derived[0].gan, derived[1].vae, derived[1].gan}) == 4
    assert RoundSeeds.for_round(1, reproducible_from=0) == derived[0]  # reproducible: the same stream again
    with pytest.raises(ValueError, match="must not share a seed"):
        RoundSeeds(5, 5)


def test_baselines_noise_is_fresh_unless_reproducible() -> None:
    assert mechanism_seed("dp-baselines") != mechanism_seed("dp-baselines")
    assert mechanism_seed("dp-baselines", 3) == mechanism_seed("dp-baselines", 3)
    assert mechanism_seed("dp-baselines", 3) != mechanism_seed("dp-popularity", 3)
