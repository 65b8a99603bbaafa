"""Synthetic users from the global models: item distributions → item sets of DP-sampled lengths.

Two synthesizers share the sampling step:

* ``gan``: the generator maps noise z ~ N(0, I) to an item distribution softmax(G(z) + prior);
* ``vae``: the Mult-VAE decoder maps z ~ N(0, I) to softmax(decoder(z) + prior).

Each synthetic user gets a history length ℓ drawn from the DP length histogram (the only
length source: raw lengths never leave the clients) and ℓ distinct items drawn without
replacement from its distribution at ``temperature`` (Gumbel-top-ℓ sampling).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F

from fedsynth.common.errors import ConfigError
from fedsynth.common.models.bundle import ModelBundle
from fedsynth.common.privacy.releases.statistics import LengthSource
from fedsynth.common.runtime.seeding import rng_for, seed_for

SYNTHESIZERS = ("gan", "vae")


@dataclass(frozen=True)
class SynthesisConfig:
    """How many synthetic users, and how items are drawn."""

    num_users: int = 2000
    temperature: float = 1.0
    batch_size: int = 512

    def __post_init__(self) -> None:
        if self.num_users < 1 or self.batch_size < 1:
            raise ConfigError(f"synthetic-users must be at least 1, got {self.num_users}.")
        if not self.temperature > 0:
            raise ConfigError(f"synthesis-temperature must be positive, got {self.temperature}.")


@torch.no_grad()
def item_distributions(bundle: ModelBundle, synthesizer: str, count: int, seed: int) -> np.ndarray:
    """(count, n_items) item distributions from the ``gan`` generator or the ``vae`` decoder."""
    generator = torch.Generator().manual_seed(seed)
    if synthesizer == "gan":
        bundle.generator.eval()
        return bundle.generator.sample(count, generator).numpy()
    if synthesizer == "vae":
        bundle.vae.eval()
        z = torch.randn(count, bundle.vae.latent_dim, generator=generator)
        return F.softmax(bundle.vae.decode(z), dim=1).numpy()
    raise ConfigError(f"unknown synthesizer {synthesizer!r}; choose from {', '.join(SYNTHESIZERS)}.")


def draw_items(
    distributions: np.ndarray, lengths: np.ndarray, temperature: float, rng: np.random.Generator
) -> sp.csr_matrix:
    """Binary CSR (b, n_items): row u holds ``lengths[u]`` distinct items sampled without replacement.

    Gumbel-top-k: the ℓ largest of log p / T + Gumbel noise are a sample without replacement
    from softmax(log p / T).
    """
    n_items = distributions.shape[1]
    lengths = np.clip(lengths, 1, n_items)
    keys = np.log(np.maximum(distributions, 1e-30)) / temperature + rng.gumbel(size=distributions.shape)
    order = np.argsort(-keys, axis=1)
    rows = np.repeat(np.arange(len(lengths)), lengths)
    cols = np.concatenate([order[u, : lengths[u]] for u in range(len(lengths))])
    return sp.csr_matrix((np.ones(len(cols), dtype=np.float32), (rows, cols)), shape=distributions.shape)


def synthesize(
    bundle: ModelBundle, synthesizer: str, lengths: LengthSource, config: SynthesisConfig, seed: int
) -> sp.csr_matrix:
    """``config.num_users`` synthetic users (binary CSR, users × items) from the global ``bundle``."""
    rng = rng_for(seed, f"synthesis-{synthesizer}")
    blocks = []
    for start in range(0, config.num_users, config.batch_size):
        count = min(config.batch_size, config.num_users - start)
        distributions = item_distributions(bundle, synthesizer, count, seed_for(seed, f"synthesis-{start}"))
        blocks.append(draw_items(distributions, lengths.sample(count, rng), config.temperature, rng))
    return sp.vstack(blocks).tocsr()
