"""The model bundle that crosses the wire: Mult-VAE (encoder + decoder) and GAN (generator + discriminator).

One ArrayRecord holds all four with prefixed keys (``vae.encoder.*``, ``vae.decoder.*``,
``gan.generator.*``, ``gan.discriminator.*``), so one FedAvg aggregates them together.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fedsynth.common.config.run import LocalTrainingConfig
from fedsynth.common.models.gan import Discriminator, Generator
from fedsynth.common.models.vae import MultVAE


@dataclass
class ModelBundle:
    vae: MultVAE
    generator: Generator
    discriminator: Discriminator

    @classmethod
    def create(cls, num_items: int, config: LocalTrainingConfig, seed: int) -> ModelBundle:
        torch.manual_seed(seed)
        return cls(
            MultVAE.from_config(num_items, config.vae),
            Generator(num_items, config.gan.noise_dim, config.gan.generator_hidden),
            Discriminator(num_items, config.gan.discriminator_hidden),
        )

    def set_prior(self, logits: torch.Tensor) -> None:
        """Use ``logits`` (n_items,) as the fixed output prior of the VAE decoder and the generator."""
        self.vae.prior.copy_(logits)
        self.generator.prior.copy_(logits)

    def to(self, device: torch.device | str) -> ModelBundle:
        """Move all three models to ``device`` in place (their optimisers must be made afterwards)."""
        for _, module in self._parts():
            module.to(device)
        return self

    def state_dict(self) -> dict[str, torch.Tensor]:
        """All parameters with prefixed keys (detached CPU tensors)."""
        out: dict[str, torch.Tensor] = {}
        for prefix, module in self._parts():
            out.update({prefix + k: v.detach().cpu() for k, v in module.state_dict().items()})
        return out

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Load a prefixed state dict; every key must belong to one of the models."""
        for prefix, module in self._parts():
            part = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
            module.load_state_dict(part, strict=True)

    def _parts(self) -> list[tuple[str, torch.nn.Module]]:
        return [("vae.", self.vae), ("gan.generator.", self.generator), ("gan.discriminator.", self.discriminator)]
