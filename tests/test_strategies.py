"""FedAdam (server) vs Flower's own FedAdam; FedProx's proximal gradient (client) vs autograd; settings; resume."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from flwr.app import ArrayRecord
from torch.utils.data import DataLoader

from fedsynth.client.training import train_vae_round
from fedsynth.common.config.run import LocalTrainingConfig, RunConfig
from fedsynth.common.errors import ConfigError
from fedsynth.common.federated.round_log import RoundLog
from fedsynth.common.federated.strategies import FedAdam, ProximalTerm, StrategyConfig
from fedsynth.common.models.vae import MultVAE, MultVAEConfig, vae_loss
from fedsynth.common.privacy.dpsgd.training import CSRRows, PrivacyConfig, local_sgd, make_private
from fedsynth.common.privacy.plan import plan_privacy
from fedsynth.server.federation import resume_point, save_checkpoint


def arrays(seed: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {"vae.w": torch.randn(3, 4, generator=generator), "gan.b": torch.randn(5, generator=generator)}


def test_fedadam_matches_flowers_fedadam_over_three_rounds(monkeypatch: pytest.MonkeyPatch) -> None:
    """Flower's FedAdam applied on top of the same users-weighted mean gives the same global weights."""
    from flwr.serverapp.strategy import FedAdam as FlowerFedAdam
    from flwr.serverapp.strategy import FedAvg

    config = StrategyConfig("fedadam", server_learning_rate=0.05, tau=1e-3)
    ours, flower = FedAdam(config), FlowerFedAdam(eta=0.05, beta_1=0.9, beta_2=0.99, tau=1e-3)
    current = arrays(0)
    for server_round in (1, 2, 3):
        replies, weights = [arrays(10 * server_round + k) for k in range(2)], [300, 100]
        mean = {k: sum(w * r[k] for w, r in zip(weights, replies, strict=True)) / 400 for k in current}
        monkeypatch.setattr(FedAvg, "aggregate_train", lambda self, rnd, msgs, m=mean: (ArrayRecord(m), None))

        flower.current_arrays = {k: v.numpy() for k, v in current.items()}
        expected, _ = flower.aggregate_train(server_round, [])
        current = ours.step(server_round, current, mean)

        assert expected is not None
        for name, value in expected.to_torch_state_dict().items():
            torch.testing.assert_close(current[name], value.float(), rtol=1e-5, atol=1e-6, msg=name)


def test_proximal_gradient_is_the_gradient_of_the_proximal_term() -> None:
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    proximal = ProximalTerm(list(model.parameters()), mu=0.3)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))  # moved away from the anchor
    x = torch.randn(5, 4)

    model(x).pow(2).sum().backward()
    proximal.add_gradient()
    ours = [p.grad.clone() for p in model.parameters()]

    model.zero_grad()
    anchored = sum(((p - a) ** 2).sum() for p, a in proximal.pairs)
    (model(x).pow(2).sum() + 0.3 / 2 * anchored).backward()
    for got, p in zip(ours, model.parameters(), strict=True):
        torch.testing.assert_close(got, p.grad)


def users(n: int = 60, items: int = 30) -> sp.csr_matrix:
    dense = (np.random.default_rng(0).random((n, items)) < 0.2).astype(np.float32)
    dense[:, 0] = 1
    return sp.csr_matrix(dense)


def distance_travelled(mu: float, epsilon: float) -> float:
    torch.manual_seed(0)
    model, config = (
        MultVAE(30, (16,), 4),
        MultVAEConfig(hidden_dims=(16,), latent_dim=4, batch_size=20, learning_rate=0.05),
    )
    start = [p.detach().clone() for p in model.parameters()]
    privacy = PrivacyConfig(target_epsilon=epsilon)
    local = LocalTrainingConfig(config, local_epochs=5, train_gan=False, proximal_mu=mu)
    plan = plan_privacy(privacy, 60, local, rounds=1)
    result = train_vae_round(model, users(), plan, privacy, config, 0, seed=1, proximal_mu=mu)
    if privacy.private:
        assert result.events == plan.round_events()  # FedProx spends exactly the planned events
    return float(sum(((p.detach() - s) ** 2).sum() for p, s in zip(model.parameters(), start, strict=True)).sqrt())


@pytest.mark.parametrize("epsilon", [float("inf"), 4.0])
def test_fedprox_keeps_local_models_closer_to_the_global_one(epsilon: float) -> None:
    assert distance_travelled(10.0, epsilon) < 0.5 * distance_travelled(0.0, epsilon)


def test_fedprox_with_zero_noise_under_dp_equals_plain_fedprox() -> None:
    """The proximal gradient joins after Opacus' noise and scaling, exactly as without DP."""
    data = users(n=20)
    results = []
    for private in (False, True):
        torch.manual_seed(0)
        model = MultVAE(30, (16,), 4, dropout=0.0)
        loader = DataLoader(CSRRows(data), batch_size=20, shuffle=False)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        if private:  # fixed batches to compare step for step (the real path samples Poisson batches)
            sgd = make_private(model, optimizer, loader, 0.0, 1e6, 0, poisson_sampling=False)
            sgd.proximal = ProximalTerm(list(model.parameters()), 2.0)
        else:
            sgd = local_sgd(False, model, optimizer, loader, 0.0, 1e6, 0, proximal_mu=2.0)
        for step in range(3):
            for x in sgd.batches:
                torch.manual_seed(step)
                logits, mu, logvar = model(x)
                sgd.backward(vae_loss(logits, x, mu, logvar, 0.1, "none"))
                sgd.step()
        results.append([p.detach().clone() for p in model.parameters()])
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_strategy_settings_are_validated_and_reach_the_clients() -> None:
    with pytest.raises(ConfigError, match="fedavg, fedprox, fedadam"):
        RunConfig.from_run_config({"strategy": "fedyogi"})
    with pytest.raises(ConfigError, match="proximal-mu"):
        RunConfig.from_run_config({"strategy": "fedprox", "proximal-mu": -1.0})
    with pytest.raises(ConfigError, match="server-learning-rate"):
        RunConfig.from_run_config({"strategy": "fedadam", "server-learning-rate": 0.0})
    assert RunConfig.from_run_config({"strategy": "fedprox", "proximal-mu": 0.5}).local().proximal_mu == 0.5
    assert RunConfig.from_run_config({"strategy": "fedadam", "proximal-mu": 0.5}).local().proximal_mu == 0.0
    assert RunConfig().local().proximal_mu == 0.0


def test_fedadam_moments_are_checkpointed_and_resumed(tmp_path: Path) -> None:
    config = RunConfig.from_run_config({"strategy": "fedadam"})
    optimizer = FedAdam(config.federated_strategy())
    state = optimizer.step(1, arrays(0), arrays(1))
    save_checkpoint(
        tmp_path / "checkpoints" / "round-1.pt", ArrayRecord(state), config, RoundLog(1), optimizer.state_dict()
    )

    point = resume_point(tmp_path, config)
    resumed = FedAdam(config.federated_strategy())
    assert point.server_optimizer is not None and point.state is not None
    resumed.load_state_dict(point.server_optimizer)

    nxt, again = optimizer.step(2, state, arrays(2)), resumed.step(2, point.state, arrays(2))
    for name in nxt:
        torch.testing.assert_close(nxt[name], again[name])
