"""A GAN for implicit-feedback vectors: generator from noise to an item distribution, and a discriminator.

Representation. A real user's history x ∈ {0, 1}^n_items is shown to the discriminator as
the distribution x / |x|₁; the generator outputs a distribution softmax(logits) over items.
The discriminator's first layer therefore sees the average of item embeddings under either
distribution, so it can only tell real from fake by *what* is liked and *how concentrated*
it is; the generator learns peaked, co-occurring item sets. Synthesis then draws a user's
items from the generator's distribution (see the server's synthesis).

Privacy. Only the discriminator ever touches real records, and only it is trained with
DP-SGD (per-user clipping + Gaussian noise). The generator is updated only through the
discriminator's output on generated samples: it is a function of the private
discriminator's released parameters and of public noise, i.e. post-processing, which
costs no ε. Generator steps can therefore be as many as useful without extra privacy cost.

Losses (non-saturating, Goodfellow et al. 2014), used for training and evaluation alike:
discriminator per sample softplus(−D(real)) + softplus(D(fake)); generator softplus(−D(fake)).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from fedsynth.common.errors import ConfigError


@dataclass(frozen=True)
class GANConfig:
    """Sizes and optimisation of the GAN (small by default: DP noise grows with parameter count)."""

    noise_dim: int = 32
    generator_hidden: int = 256
    discriminator_hidden: int = 64
    learning_rate: float = 1e-3
    batch_size: int = 64  # expected real users per discriminator step
    generator_steps: int = 1  # generator steps per discriminator step (free in ε)

    def __post_init__(self) -> None:
        if min(self.noise_dim, self.generator_hidden, self.discriminator_hidden, self.batch_size) < 1:
            raise ConfigError("GAN sizes and batch size must be positive.")
        if self.learning_rate <= 0 or self.generator_steps < 1:
            raise ConfigError("GAN learning rate and generator steps must be positive.")


class Generator(nn.Module):
    """z (b, noise_dim) → item logits (b, n_items), the log-popularity prior included."""

    prior: torch.Tensor

    def __init__(self, num_items: int, noise_dim: int = 32, hidden: int = 256):
        super().__init__()
        self.noise_dim = noise_dim
        self.net = nn.Sequential(nn.Linear(noise_dim, hidden), nn.Tanh(), nn.Linear(hidden, num_items))
        self.register_buffer("prior", torch.zeros(num_items))  # log-popularity prior, as in the Mult-VAE

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z) + self.prior

    def sample(self, num: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Item distributions (num, n_items) for ``num`` fresh noise vectors."""
        z = torch.randn(num, self.noise_dim, generator=generator, device=next(self.parameters()).device)
        return F.softmax(self(z), dim=1)


class Discriminator(nn.Module):
    """Item distribution (b, n_items) → realness logit (b,). Plain Linear layers: Opacus-compatible."""

    def __init__(self, num_items: int, hidden: int = 64):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(num_items, hidden), nn.LeakyReLU(0.2), nn.Linear(hidden, 1))

    def forward(self, distribution: torch.Tensor) -> torch.Tensor:
        return self.net(distribution).squeeze(1)


def as_distribution(x: torch.Tensor) -> torch.Tensor:
    """Binary histories (b, n_items) → rows summing to 1 (empty rows stay 0)."""
    return x / x.sum(dim=1, keepdim=True).clamp(min=1.0)


def discriminator_loss(scores: torch.Tensor, is_real: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Per sample softplus(−s) for real, softplus(s) for fake; shapes (b,)."""
    per_sample = F.binary_cross_entropy_with_logits(scores, is_real, reduction="none")
    if reduction == "none":
        return per_sample
    return per_sample.sum() if reduction == "sum" else per_sample.mean()


def generator_loss(fake_scores: torch.Tensor) -> torch.Tensor:
    """Non-saturating generator loss, mean of softplus(−D(G(z)))."""
    return F.softplus(-fake_scores).mean()
