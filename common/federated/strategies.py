"""Federated optimisation strategies: FedAvg, FedProx (client side) and FedAdam (server side).

- ``fedavg``: the global bundle becomes the users-weighted mean of the clients' bundles.
- ``fedprox`` (Li et al. 2020): as FedAvg on the server; each client adds the gradient of
  μ/2 ‖w − w_global‖² to every local step (:class:`ProximalTerm`), which keeps local models
  near the global one when silos differ.
- ``fedadam`` (Reddi et al. 2021): the users-weighted mean Δ = mean − global is treated as a
  pseudo-gradient, and the server takes an Adam step with it (:class:`FedAdam`), the same
  update as Flower's ``flwr.serverapp.strategy.FedAdam`` (tested against it).

Privacy: none of these touches a user's record. The proximal gradient is a function of the
current and global weights only and is added after the DP noise; the server's Adam step
post-processes the clients' released weights. Neither changes ε.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from fedsynth.common.errors import ConfigError

STRATEGIES = ("fedavg", "fedprox", "fedadam")


@dataclass(frozen=True)
class StrategyConfig:
    """Which strategy, and its settings (``proximal_mu`` for fedprox; the server Adam's for fedadam)."""

    name: str = "fedavg"
    proximal_mu: float = 0.01
    server_learning_rate: float = 0.03
    beta_1: float = 0.9
    beta_2: float = 0.99
    tau: float = 1e-3

    def __post_init__(self) -> None:
        if self.name not in STRATEGIES:
            raise ConfigError(f"strategy {self.name!r}: choose one of {', '.join(STRATEGIES)}.")
        if self.proximal_mu < 0:
            raise ConfigError(f"proximal-mu must be non-negative, got {self.proximal_mu}.")
        if not self.server_learning_rate > 0:
            raise ConfigError(f"server-learning-rate must be positive, got {self.server_learning_rate}.")
        if not (0 <= self.beta_1 < 1 and 0 <= self.beta_2 < 1):
            raise ConfigError(f"server Adam betas must be in [0, 1), got {self.beta_1}, {self.beta_2}.")
        if not self.tau > 0:
            raise ConfigError(f"server-tau must be positive, got {self.tau}.")

    def server_optimizer(self) -> FedAdam | None:
        """A fresh FedAdam for ``fedadam``; None when the global bundle is simply the users-weighted mean."""
        return FedAdam(self) if self.name == "fedadam" else None

    @property
    def client_proximal_mu(self) -> float:
        """μ the clients use: the configured one for fedprox, 0 otherwise."""
        return self.proximal_mu if self.name == "fedprox" else 0.0


class ProximalTerm:
    """Adds μ (w − w_global) to each parameter's gradient: the gradient of μ/2 ‖w − w_global‖².

    ``parameters`` are captured as the global weights when the term is made (round start).
    """

    def __init__(self, parameters: list[torch.nn.Parameter], mu: float):
        self.mu = mu
        self.pairs = [(p, p.detach().clone()) for p in parameters]

    @classmethod
    def optional(cls, model: torch.nn.Module, mu: float) -> ProximalTerm | None:
        """The term anchored at ``model``'s current weights, or None when μ = 0 (plain local SGD)."""
        return cls(list(model.parameters()), mu) if mu > 0 else None

    def add_gradient(self) -> None:
        for p, anchor in self.pairs:
            if p.grad is not None:
                p.grad.add_(p.detach() - anchor, alpha=self.mu)


@dataclass
class FedAdam:
    """Server-side Adam on the pseudo-gradient Δ_t = aggregated − global (Flower's FedAdam update).

    m ← β₁ m + (1−β₁) Δ;  v ← β₂ v + (1−β₂) Δ²;
    w ← w + η √(1−β₂^(t+1)) / (1−β₁^(t+1)) · m / (√v + τ), with t the server round.
    Its moments are part of each checkpoint, so a resumed run continues the same optimisation.
    """

    config: StrategyConfig
    first_moment: dict[str, torch.Tensor] = field(default_factory=dict)
    second_moment: dict[str, torch.Tensor] = field(default_factory=dict)

    def step(
        self, server_round: int, current: dict[str, torch.Tensor], aggregated: dict[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """The new global state from the current one and the users-weighted mean of the replies."""
        if set(current) != set(aggregated):
            raise ValueError("FedAdam: the aggregated bundle's keys differ from the global bundle's.")
        beta_1, beta_2 = self.config.beta_1, self.config.beta_2
        scale = (
            self.config.server_learning_rate
            * math.sqrt(1 - beta_2 ** (server_round + 1.0))
            / (1 - beta_1 ** (server_round + 1.0))
        )
        updated = {}
        for name, weights in current.items():
            if not torch.is_floating_point(weights):
                updated[name] = aggregated[name]
                continue
            delta = aggregated[name].to(weights.dtype) - weights
            m = self.first_moment.get(name, torch.zeros_like(delta)) * beta_1 + (1 - beta_1) * delta
            v = self.second_moment.get(name, torch.zeros_like(delta)) * beta_2 + (1 - beta_2) * delta**2
            self.first_moment[name], self.second_moment[name] = m, v
            updated[name] = weights + scale * m / (v.sqrt() + self.config.tau)
        return updated

    def state_dict(self) -> dict[str, dict[str, torch.Tensor]]:
        return {"first_moment": dict(self.first_moment), "second_moment": dict(self.second_moment)}

    def load_state_dict(self, state: dict[str, dict[str, torch.Tensor]]) -> None:
        self.first_moment = dict(state["first_moment"])
        self.second_moment = dict(state["second_moment"])
