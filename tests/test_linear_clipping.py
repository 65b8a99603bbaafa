"""One-backward per-user clipping vs per-user gradients computed one user at a time, and vs Opacus' ghost clipping."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fedsynth.common.errors import ConfigError
from fedsynth.common.models.gan import Discriminator, discriminator_loss
from fedsynth.common.models.vae import MultVAE, vae_loss
from fedsynth.common.privacy.dpsgd.linear_clipping import LinearClipper
from fedsynth.common.privacy.dpsgd.noise import ParallelNoiseDPOptimizer
from fedsynth.common.privacy.dpsgd.training import make_private


def batch(users: int = 12, items: int = 20, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    x = (torch.rand(users, items, generator=generator) < 0.3).float()
    x[:, 0] = 1.0
    return x


def vae_losses(model: nn.Module, x: torch.Tensor, rows: slice = slice(None)) -> torch.Tensor:
    logits, mu, logvar = model(x)
    return vae_loss(logits, x, mu, logvar, beta=0.2, reduction="none")


def critic_losses(model: nn.Module, x: torch.Tensor, rows: slice = slice(None)) -> torch.Tensor:
    labels = (torch.arange(64) % 2).float()[rows][: x.shape[0]]  # alternately "real" and "fake" rows
    return discriminator_loss(model(x / x.sum(1, keepdim=True)), labels, reduction="none")


def one_user_at_a_time(model: nn.Module, x: torch.Tensor, losses_of, bound: float):  # type: ignore[no-untyped-def]
    """Σ_i clip(∇ℓ_i) and the norms ‖∇ℓ_i‖, by a separate backward pass per user (the brute force)."""
    params = [p for p in model.parameters() if p.requires_grad]
    total = [torch.zeros_like(p) for p in params]
    norms = []
    for i in range(x.shape[0]):
        grads = torch.autograd.grad(losses_of(model, x[i : i + 1], slice(i, i + 1)).sum(), params)
        norm = torch.sqrt(sum((g**2).sum() for g in grads))
        norms.append(float(norm))
        scale = min(1.0, bound / (float(norm) + 1e-6))
        for acc, g in zip(total, grads, strict=True):
            acc += scale * g
    return total, torch.tensor(norms)


CASES = [
    ("Mult-VAE", lambda: MultVAE(20, (16,), 4, dropout=0.0).eval(), vae_losses),
    ("discriminator", lambda: Discriminator(20, 8), critic_losses),
]


@pytest.mark.parametrize("bound", [0.05, 1e6])
@pytest.mark.parametrize(("name", "build", "losses_of"), CASES, ids=[c[0] for c in CASES])
def test_clipped_sum_equals_per_user_gradients_clipped_one_at_a_time(name, build, losses_of, bound) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    model, x = build(), batch()
    expected, expected_norms = one_user_at_a_time(model, x, losses_of, bound)

    clipper = LinearClipper(model, bound)
    norms = clipper.backward(losses_of(model, x))

    torch.testing.assert_close(norms, expected_norms, rtol=1e-4, atol=1e-6)
    for p, e in zip(model.parameters(), expected, strict=True):
        torch.testing.assert_close(p.grad, e, rtol=1e-4, atol=1e-6)
    if bound < 1:
        assert (expected_norms > bound).any(), "the small bound must actually clip"


def test_per_user_contributions_never_exceed_the_bound() -> None:
    torch.manual_seed(1)
    model, x, bound = MultVAE(20, (16,), 4, dropout=0.0).eval(), batch(users=1), 1e-3
    clipper = LinearClipper(model, bound)
    clipper.backward(vae_losses(model, x))
    norm = torch.sqrt(sum((p.grad**2).sum() for p in model.parameters()))
    assert float(norm) == pytest.approx(bound, rel=1e-3)


def test_one_step_equals_opacus_ghost_clipping() -> None:
    """Same data, bound and zero noise: the project's DP step and Opacus' ghost-clipping step agree."""
    from opacus import PrivacyEngine

    torch.manual_seed(2)
    ours = Discriminator(20, 8)
    theirs = copy.deepcopy(ours)
    x = batch(users=16)
    data = DataLoader(TensorDataset(x), batch_size=16, collate_fn=lambda rows: torch.stack([r[0] for r in rows]))

    sgd = make_private(ours, torch.optim.SGD(ours.parameters(), lr=0.5), data, 0.0, 0.1, seed=0, poisson_sampling=False)
    for rows in sgd.batches:
        sgd.backward(critic_losses(ours, rows))
        sgd.step()

    class Criterion(nn.Module):
        reduction = "mean"

        def forward(self, scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
            return discriminator_loss(scores, labels, self.reduction)

    engine = PrivacyEngine(accountant="rdp")
    module, optimizer, criterion, loader = engine.make_private(
        module=theirs,
        optimizer=torch.optim.SGD(theirs.parameters(), lr=0.5),
        criterion=Criterion(),
        data_loader=data,
        noise_multiplier=0.0,
        max_grad_norm=0.1,
        poisson_sampling=False,
        grad_sample_mode="ghost",
    )
    for rows in loader:
        labels = (torch.arange(rows.shape[0]) % 2).float()
        criterion(module(rows / rows.sum(1, keepdim=True)), labels).backward()
        optimizer.step()

    for a, b in zip(ours.parameters(), theirs.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_models_outside_the_assumptions_are_refused() -> None:
    with pytest.raises(ConfigError, match="Linear layers only"):
        LinearClipper(nn.Sequential(nn.Embedding(5, 3), nn.Linear(3, 1)), 1.0)
    with pytest.raises(ConfigError, match="positive"):
        LinearClipper(nn.Linear(3, 1), 0.0)

    shared = nn.Linear(4, 4)
    clipper = LinearClipper(shared, 1.0)
    with pytest.raises(ConfigError, match="exactly once"):
        clipper.backward(shared(shared(torch.ones(2, 4))).sum(dim=1))  # one layer used twice

    clipper = LinearClipper(nn.Linear(4, 1), 1.0)
    with pytest.raises(ConfigError, match="2-D input"):
        clipper.layers[0](torch.ones(2, 3, 4))


def test_paused_forward_passes_are_not_recorded_and_remove_detaches() -> None:
    model = Discriminator(20, 8)
    clipper = LinearClipper(model, 1.0)
    with clipper.paused():
        model(batch())
    assert clipper.records == []
    clipper.remove()
    model(batch())
    assert clipper.records == []


def noised_optimizer(weight: nn.Parameter, workers: int = 2, seed: int = 3) -> ParallelNoiseDPOptimizer:
    return ParallelNoiseDPOptimizer(
        torch.optim.SGD([weight], lr=0.0), seed=seed, workers=workers, noise_multiplier=1.5, max_grad_norm=2.0,
        expected_batch_size=10, loss_reduction="mean",
    )  # fmt: skip


def test_parallel_noise_has_the_configured_std_and_independent_slices() -> None:
    weight = nn.Parameter(torch.zeros(400, 500))
    optimizer = noised_optimizer(weight)
    optimizer.noise.draw()  # a clipped sum of zero: what remains is the noise / B
    weight.grad = optimizer.noise.add_sum(weight, torch.zeros_like(weight))
    optimizer.step()
    noise = weight.grad.flatten() * 10
    optimizer.close()

    assert float(noise.mean()) == pytest.approx(0.0, abs=0.02)
    assert float(noise.std()) == pytest.approx(1.5 * 2.0, rel=0.01)
    first, second = noise[:100_000], noise[100_000:]  # the two workers' slices
    assert abs(float(torch.corrcoef(torch.stack([first, second]))[0, 1])) < 0.02
    with pytest.raises(RuntimeError, match="accumulation"):
        weight.summed_grad = torch.zeros_like(weight)
        optimizer.accumulate()


def test_the_noised_product_is_the_clipped_sum_plus_the_noise_over_b() -> None:
    """addmm_ into the drawn noise equals Opacus' order: sum, then + σC·z, then / B (same draws)."""
    weight = nn.Parameter(torch.zeros(30, 20))
    left, right = torch.randn(30, 7), torch.randn(7, 20)
    noise = noised_optimizer(weight).noise
    noise.draw()
    drawn = noise.buffers[id(weight)].clone()  # N(0, (σC/B)²)
    fused = noise.add_product(weight, left, right)

    torch.testing.assert_close(fused, (left @ right + drawn * 10) / 10)
    assert float((drawn * 10).std()) == pytest.approx(3.0, rel=0.1)


def test_a_step_whose_gradient_is_not_the_noised_sum_is_refused() -> None:
    weight = nn.Parameter(torch.zeros(8, 4))
    optimizer = noised_optimizer(weight, workers=1)
    weight.grad = torch.ones_like(weight)  # a gradient formed without the noise
    with pytest.raises(RuntimeError, match="not this step's noised clipped sum"):
        optimizer.step()

    optimizer.zero_grad()
    optimizer.noise.draw()
    weight.grad = optimizer.noise.add_sum(weight, torch.ones_like(weight))
    optimizer.step()  # the noised sum goes through, once
    with pytest.raises(RuntimeError, match="added twice, or before this step's draw"):
        optimizer.noise.add_sum(weight, torch.ones_like(weight))
    optimizer.zero_grad()
    weight.grad = optimizer.noise.buffers[id(weight)]  # last step's buffer again, no new draw
    with pytest.raises(RuntimeError, match="not this step's noised clipped sum"):
        optimizer.step()


def test_the_same_seed_and_workers_draw_the_same_noise() -> None:
    draws = []
    for workers in (1, 2, 2):
        weight = nn.Parameter(torch.zeros(1000))
        noise = noised_optimizer(weight, workers=workers).noise
        noise.draw()
        draws.append(noise.buffers[id(weight)].clone())
    assert torch.equal(draws[1], draws[2])  # deterministic for a seed and a worker count
    assert not torch.equal(draws[1][:500], draws[1][500:])  # the two workers' generators differ
