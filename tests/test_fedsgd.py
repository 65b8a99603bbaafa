"""round-mode fedsgd: secure-aggregated DP-SGD steps, the subsampled Skellam accounting, the node and server sides."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from flwr.app import ArrayRecord
from scipy import special, stats

import fedsynth.client.secure
from fedsynth.common.config.run import RunConfig
from fedsynth.common.errors import ConfigError
from fedsynth.common.federated import wire
from fedsynth.common.models.bundle import ModelBundle
from fedsynth.common.models.vae import MultVAE, MultVAEConfig
from fedsynth.common.privacy.accounting import DPEvent, epsilon
from fedsynth.common.privacy.dpsgd.fedsgd import apply_gradient, clipped_gradient_sum, gradient_quantizer, trainable
from fedsynth.common.privacy.ledger import ledgers_in
from fedsynth.common.privacy.plan import plan_privacy
from fedsynth.common.privacy.subsampling import poisson_subsampled_rdp
from fedsynth.common.secagg.skellam import SkellamEvent, SumRoundingQuantizer, rounded_l1_bound, skellam_rdp
from fedsynth.server.admission import RunFailed
from fedsynth.server.fedsgd import fedsgd_optimizer, fedsgd_round
from fedsynth.server.secure_release import secure_sum
from tests.test_secure_release import ALLOWED_METRICS, InProcessGrid

pytestmark = pytest.mark.usefixtures("flower_task_identity")

SETTINGS: dict[str, Any] = {
    "gen-users": 400,
    "gen-items": 300,
    "vae-hidden": 16,
    "vae-latent": 8,
    "epsilon": 4.0,
    "num-server-rounds": 4,
    "secure-aggregation": True,
    "round-mode": "fedsgd",
    "fedsgd-sample-rate": 0.2,
    "synthesizers": "vae",
}
IDENTITY = {wire.RUN_KEY: "f" * 32, wire.REQUESTER: "test"}


def _mixture_renyi(order: int, variance: float, shift: int, rate: float) -> float:
    """max of D_α(P‖Q), D_α(Q‖P) for P = (1−q) Sk(V) + q Sk(V)+shift, Q = Sk(V): the exact 1-D divergence."""
    support = np.arange(-int(40 * math.sqrt(variance)) - shift, int(40 * math.sqrt(variance)) + shift + 1)
    q_pmf = stats.skellam.pmf(support, variance / 2, variance / 2)
    p_pmf = (1 - rate) * q_pmf + rate * stats.skellam.pmf(support - shift, variance / 2, variance / 2)
    keep = (p_pmf > 0) & (q_pmf > 0)
    p, q = p_pmf[keep], q_pmf[keep]
    forward = special.logsumexp(order * np.log(p) + (1 - order) * np.log(q)) / (order - 1)
    backward = special.logsumexp(order * np.log(q) + (1 - order) * np.log(p)) / (order - 1)
    return float(max(forward, backward))


@pytest.mark.parametrize("order", [2, 3, 5, 8, 16])
def test_the_subsampled_skellam_bound_holds_against_the_exact_divergence(order: int) -> None:
    variance, shift, rate = 60.0, 4, 0.1
    bound = skellam_rdp(order, variance, shift, shift, sample_rate=rate)  # 1-D: Δ₁ = Δ₂ = the shift
    exact = _mixture_renyi(order, variance, shift, rate)
    assert exact <= bound
    assert bound <= skellam_rdp(order, variance, shift, shift)  # subsampling never costs more


def test_the_subsampling_bound_is_the_mechanism_itself_at_rate_one_and_looser_than_the_exact_gaussian() -> None:
    def gaussian(sigma: float) -> Any:
        return lambda alpha: alpha / (2 * sigma**2)

    assert poisson_subsampled_rdp(7, 1.0, gaussian(1.3)) == pytest.approx(7 / (2 * 1.3**2))
    from opacus.accountants.analysis.rdp import compute_rdp

    for sigma, rate in [(1.0, 0.01), (1.5, 0.1), (0.8, 0.05)]:
        orders = [2, 4, 8, 16, 32]
        tight = compute_rdp(q=rate, noise_multiplier=sigma, steps=1, orders=orders)
        general = [poisson_subsampled_rdp(a, rate, gaussian(sigma)) for a in orders]
        assert all(t <= g * (1 + 1e-9) for t, g in zip(tight, general, strict=True))  # the general bound is valid


def test_a_subsampled_skellam_event_is_close_to_the_gaussian_it_replaces_and_never_below_it() -> None:
    """At fedsynth's grid (√D ≪ s·C) Skellam ≈ Gaussian; the general subsampling bound costs 10–45% in ε."""
    l2 = 84_500.0 + 845.0
    l1 = rounded_l1_bound(l2, 714_000)
    for sigma, rate, steps in [(1.0, 0.01, 1000), (1.2, 0.1, 100)]:
        skellam = epsilon([SkellamEvent("vae", (sigma * l2) ** 2, l2, l1, steps, rate)], 1e-5)
        gaussian = epsilon([DPEvent("vae", sigma, rate, steps)], 1e-5, accountant="rdp")  # like for like: RDP
        assert gaussian <= skellam <= 1.45 * gaussian
        assert epsilon([DPEvent("vae", sigma, rate, steps)], 1e-5) < gaussian  # PLD, reported for Gaussian events


def test_older_ledger_events_without_a_rate_are_one_off_releases() -> None:
    assert SkellamEvent("statistics", 10.0, 3.0, 3.0).sample_rate == 1.0


def test_sum_rounding_moves_by_at_most_its_sensitivity() -> None:
    rng = np.random.default_rng(0)
    quantizer = SumRoundingQuantizer.for_sum(1.0, 500)
    assert quantizer.l2 / (quantizer.scale * quantizer.clip) <= 1.01
    for _ in range(200):
        total = rng.normal(size=500) * 3
        user = rng.normal(size=500)
        user *= rng.random() / np.linalg.norm(user)  # ‖u‖ ≤ C = 1
        moved = quantizer.round_sum(total + user) - quantizer.round_sum(total)
        assert np.linalg.norm(moved) <= quantizer.l2 and np.abs(moved).sum() <= quantizer.l1


def _deterministic_vae(num_items: int) -> tuple[MultVAE, MultVAEConfig]:
    config = MultVAEConfig(hidden_dims=(8,), latent_dim=4, dropout=0.0, anneal_steps=0)
    torch.manual_seed(0)
    return MultVAE.from_config(num_items, config), config


def test_the_clipped_gradient_sum_is_the_sum_of_each_users_clipped_gradient(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch, "randn_like", torch.zeros_like)  # no reparameterisation draw: deterministic
    rows = sp.random(12, 30, density=0.2, format="csr", random_state=1, data_rvs=lambda n: np.ones(n))
    model, config = _deterministic_vae(30)
    together = clipped_gradient_sum(model, rows, 0.5, config, server_round=1)
    alone = [clipped_gradient_sum(model, rows[[i]], 0.5, config, server_round=1) for i in range(12)]
    assert all(np.linalg.norm(a) <= 0.5 * (1 + 1e-5) for a in alone)
    np.testing.assert_allclose(together, np.sum(alone, axis=0), rtol=1e-4, atol=1e-6)
    assert not clipped_gradient_sum(model, rows[:0], 0.5, config, 1).any()  # an empty sample: zeros


def test_the_server_step_uses_the_mean_over_the_expected_batch() -> None:
    model, _ = _deterministic_vae(30)
    before = [p.detach().clone() for p in trainable(model)]
    gradient = np.ones(sum(p.numel() for p in before))
    apply_gradient(model, torch.optim.SGD(trainable(model), lr=1.0), gradient * 4, expected_batch=4.0)
    for old, new in zip(before, trainable(model), strict=True):
        torch.testing.assert_close(new.detach(), old - 1.0)
    with pytest.raises(ValueError, match="entries"):
        apply_gradient(model, torch.optim.SGD(trainable(model), lr=1.0), gradient[:-1], 1.0)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"secure-aggregation": False}, "secure-aggregation = true"),
        ({"synthesizers": "vae,gan"}, 'synthesizers = "vae"'),
        ({"strategy": "fedadam"}, 'strategy = "fedavg"'),
        ({"fraction-train": 0.5}, "fraction-train = 1"),
        ({"round-mode": "steps"}, "round-mode must be"),
        ({"fedsgd-sample-rate": 0.0}, "fedsgd-sample-rate must be"),
    ],
)
def test_fedsgd_settings_that_cannot_work_are_refused(change: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        RunConfig.from_run_config({**SETTINGS, **change})


def _grid(tmp_path: Path, nodes: int = 3) -> tuple[RunConfig, InProcessGrid, ModelBundle]:
    config = RunConfig.from_run_config(SETTINGS)
    grid = InProcessGrid(SETTINGS, nodes, tmp_path)
    from fedsynth.common.data.prepare import prepare

    num_items = prepare(config.data()).interactions.num_items
    return config, grid, ModelBundle.create(num_items, config.local(), seed=0)


def test_a_secure_step_sums_every_silos_clipped_gradients_with_the_central_noise_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config, grid, bundle = _grid(tmp_path)
    sums: list[np.ndarray] = []

    def recorded(*args: Any, **kwargs: Any) -> np.ndarray:
        sums.append(clipped_gradient_sum(*args, **kwargs))
        return sums[-1]

    monkeypatch.setattr(fedsynth.client.secure, "clipped_gradient_sum", recorded)
    quantizer = gradient_quantizer(bundle.vae.num_items, config.local().vae, config.max_grad_norm)
    arrays = ArrayRecord(bundle.vae.state_dict())
    total, noise_std, log = secure_sum(
        grid, grid.get_node_ids(), config, wire.FEDSGD, quantizer, IDENTITY, {wire.SERVER_ROUND: 1}, arrays, 1
    )
    assert len(sums) == 3 and log.round == 1 and log.trained == [100, 101, 102]
    error = total - np.sum(sums, axis=0)
    assert abs(error.std() / noise_std - 1) < 0.1  # Σ_k Sk(V/t), nothing more, nothing less
    assert log.users == sum(ledger_users(tmp_path, k, config) for k in range(3))  # N of the expected batch q·N
    for reply in grid.replies[-6:-3]:  # the masked stage's replies: residues mod 2^b and aggregate metrics only
        assert set(reply.content.array_records[wire.ARRAYS]) == {wire.MASKED}
        assert reply.content.array_records[wire.ARRAYS][wire.MASKED].numpy().dtype == np.uint64
        assert set(reply.content.metric_records[wire.METRICS]) <= ALLOWED_METRICS
    for k in range(3):
        (ledger,) = ledgers_in(tmp_path / f"node-{k}")
        (event,) = ledger.events
        assert isinstance(event, SkellamEvent) and event.model == "vae" and event.sample_rate == 0.2
        assert ledger.history[-1]["round"] == 1 and ledger.history[-1]["mode"] == "fedsgd"
        assert ledger.spent_own_noise() > ledger.spent()["total"] > 0
        assert ledger.charged_rounds(IDENTITY[wire.RUN_KEY]) == {1}
    with pytest.raises(RunFailed, match="already charged"):  # a step is never charged twice
        secure_sum(grid, grid.get_node_ids(), config, wire.FEDSGD, quantizer, IDENTITY,
                   {wire.SERVER_ROUND: 1}, arrays, 1)  # fmt: skip


def test_fedsgd_rounds_move_the_global_model_and_spend_no_more_than_the_plan(tmp_path: Path) -> None:
    config, grid, bundle = _grid(tmp_path)
    optimizer = fedsgd_optimizer(bundle, config, None)
    before = torch.cat([p.detach().reshape(-1) for p in trainable(bundle.vae)]).clone()
    variances = []
    for server_round in (1, 2):
        log = fedsgd_round(grid, config, server_round, grid.get_node_ids(), bundle, optimizer, IDENTITY)
        assert log.trained == [100, 101, 102]
        variances.append(grid.contexts[100].state.config_records["fedsgd-step-variance"]["secagg-variance"])
    after = torch.cat([p.detach().reshape(-1) for p in trainable(bundle.vae)])
    assert not torch.equal(before, after)
    assert variances[0] == variances[1]  # every step of a run carries the same noise
    for k in range(3):
        (ledger,) = ledgers_in(tmp_path / f"node-{k}")
        assert len(ledger.events) == 2
        # the whole run's steps as Skellam events spend no more than the planned Gaussian steps
        (event, _) = ledger.events
        whole = SkellamEvent("vae", event.variance, event.l2_sensitivity, event.l1_sensitivity, 4, 0.2)
        planned = plan_privacy(config.privacy(), ledger_users(tmp_path, k, config), config.local(), 4)
        # like for like: Skellam events are composed by RDP, and so is a secure run's plan calibrated
        planned_rdp = epsilon(planned.run_events(False, 4), ledger.delta, accountant="rdp")
        assert epsilon([whole], ledger.delta) <= planned_rdp * (1 + 1e-6)


def ledger_users(tmp_path: Path, k: int, config: RunConfig) -> int:
    from fedsynth.client.data import node_data

    return node_data({"partition-id": k, "num-partitions": 3}, config).train.shape[0]


def test_a_node_not_in_fedsgd_mode_refuses_a_step_and_spends_nothing(tmp_path: Path) -> None:
    local = {**SETTINGS, "round-mode": "local"}
    config = RunConfig.from_run_config(local)
    grid = InProcessGrid(local, 3, tmp_path)
    quantizer = gradient_quantizer(300, config.local().vae, config.max_grad_norm)
    with pytest.raises(RunFailed, match="not in round-mode fedsgd"):
        secure_sum(grid, grid.get_node_ids(), config, wire.FEDSGD, quantizer, IDENTITY, {wire.SERVER_ROUND: 1})
    assert all(not ledgers_in(tmp_path / f"node-{k}")[0].events for k in range(3) if (tmp_path / f"node-{k}").exists()
               and list((tmp_path / f"node-{k}").glob("ledger-*.json")))  # fmt: skip
