"""DP-SGD: zero noise and no clipping equals plain training; clipping bounds per-user gradients;
the events Opacus counts are the planned ones; invalid privacy settings fail at start."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from torch.utils.data import DataLoader

from fedsynth.client.training import train_gan_round, train_vae_round
from fedsynth.common.config.run import LocalTrainingConfig
from fedsynth.common.errors import ConfigError
from fedsynth.common.models.gan import Discriminator, GANConfig, Generator
from fedsynth.common.models.vae import MultVAE, MultVAEConfig, vae_loss
from fedsynth.common.privacy.accounting import epsilon
from fedsynth.common.privacy.dpsgd.training import CSRRows, PrivacyConfig, make_private
from fedsynth.common.privacy.plan import plan_privacy


def data(n_users: int = 40, n_items: int = 30, seed: int = 0) -> sp.csr_matrix:
    rng = np.random.default_rng(seed)
    dense = (rng.random((n_users, n_items)) < 0.2).astype(np.float32)
    dense[:, 0] = 1.0  # no empty user
    return sp.csr_matrix(dense)


def vae_model(seed: int = 0) -> MultVAE:
    torch.manual_seed(seed)
    return MultVAE(30, (16,), 4, dropout=0.0)


def test_zero_noise_and_no_clipping_equals_plain_training() -> None:
    x = torch.from_numpy(data().toarray())
    plain, private = vae_model(), vae_model()
    plain_opt = torch.optim.SGD(plain.parameters(), lr=0.1)
    loader = DataLoader(CSRRows(data()), batch_size=40, shuffle=False)
    sgd = make_private(
        private,
        torch.optim.SGD(private.parameters(), lr=0.1),
        loader,
        noise_multiplier=0.0,
        max_grad_norm=1e6,
        seed=0,
        poisson_sampling=False,
    )

    for step in range(3):
        torch.manual_seed(step)  # the same z noise for both (dropout is 0)
        logits, mu, logvar = plain(x)
        loss = vae_loss(logits, x, mu, logvar, beta=0.1)
        plain_opt.zero_grad()
        loss.backward()
        plain_opt.step()
        for batch in sgd.batches:
            torch.manual_seed(step)
            out, mu_, logvar_ = private(batch)
            sgd.backward(vae_loss(out, batch, mu_, logvar_, beta=0.1, reduction="none"))
            sgd.step()

    for (name, a), b in zip(plain.state_dict().items(), private.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.parametrize("bound", [1e-3, 0.5])
def test_per_user_gradient_is_clipped_to_the_bound(bound: float) -> None:
    one_user = data(n_users=1)
    model = vae_model()
    loader = DataLoader(CSRRows(one_user), batch_size=1)
    reference = copy.deepcopy(model)
    x = torch.from_numpy(one_user.toarray())
    torch.manual_seed(0)
    logits, mu, logvar = reference(x)
    vae_loss(logits, x, mu, logvar, 0.1, "sum").backward()
    unclipped = torch.sqrt(sum((p.grad**2).sum() for p in reference.parameters()))
    sgd = make_private(
        model,
        torch.optim.SGD(model.parameters(), lr=0.1),
        loader,
        noise_multiplier=0.0,
        max_grad_norm=bound,
        seed=0,
        poisson_sampling=False,
    )

    for batch in sgd.batches:
        torch.manual_seed(0)
        out, mu_, logvar_ = model(batch)
        sgd.backward(vae_loss(out, batch, mu_, logvar_, beta=0.1, reduction="none"))
    norm = torch.sqrt(sum((p.grad**2).sum() for p in model.parameters()))

    assert float(norm) == pytest.approx(min(bound, float(unclipped)), rel=1e-3)


def test_a_round_spends_exactly_the_planned_events() -> None:
    train = data(n_users=60)
    local = LocalTrainingConfig(
        vae=MultVAEConfig(hidden_dims=(16,), latent_dim=4, batch_size=20),
        gan=GANConfig(batch_size=20, generator_hidden=16, discriminator_hidden=8),
        discriminator_steps=4,
    )
    privacy = PrivacyConfig(target_epsilon=4.0)
    plan = plan_privacy(privacy, 60, local, rounds=3)

    vae = train_vae_round(MultVAE(30, (16,), 4), train, plan, privacy, local.vae, first_step=0, seed=1)
    gan = train_gan_round(Generator(30, 32, 16), Discriminator(30, 8), train, plan, privacy, local.gan, seed=1)

    assert vae.events + gan.events == plan.round_events()
    everything = plan.statistics_events() + (vae.events + gan.events) * 3  # the release, then three rounds
    assert epsilon(everything, plan.delta) <= 4.0 + 1e-3
    assert epsilon(everything, plan.delta) > 3.5
    assert np.isfinite(vae.losses["vae-loss"]) and np.isfinite(gan.losses["gan-d-loss"])


def test_without_the_gan_nothing_is_spent_on_it_and_its_share_goes_to_the_vae() -> None:
    train = data(n_users=60)
    vae_config = MultVAEConfig(hidden_dims=(16,), latent_dim=4, batch_size=20)
    gan_config = GANConfig(batch_size=20, generator_hidden=16, discriminator_hidden=8)
    privacy = PrivacyConfig(target_epsilon=4.0)
    with_gan = plan_privacy(privacy, 60, LocalTrainingConfig(vae_config, gan_config, discriminator_steps=4), 3)
    local = LocalTrainingConfig(vae_config, gan_config, discriminator_steps=4, train_gan=False)

    plan = plan_privacy(privacy, 60, local, rounds=3)
    gan = train_gan_round(Generator(30, 32, 16), Discriminator(30, 8), train, plan, privacy, local.gan, seed=1)
    vae = train_vae_round(MultVAE(30, (16,), 4), train, plan, privacy, local.vae, first_step=0, seed=1)

    assert gan.events == [] and [e.model for e in plan.round_events()] == ["vae"]
    assert plan.vae_noise < with_gan.vae_noise  # the GAN's share went to the VAE
    everything = plan.statistics_events() + vae.events * 3
    assert 3.5 < epsilon(everything, plan.delta) <= 4.0 + 1e-3


def test_invalid_privacy_settings_fail_at_start() -> None:
    local = LocalTrainingConfig(vae=MultVAEConfig(batch_size=64))
    with pytest.raises(ConfigError, match="--epsilon must be positive"):
        PrivacyConfig(target_epsilon=0)
    with pytest.raises(ConfigError, match="--delta"):
        PrivacyConfig(delta=0)
    with pytest.raises(ConfigError, match="clipping bound"):
        PrivacyConfig(max_grad_norm=0)
    with pytest.raises(ConfigError, match="not below 1/n"):
        plan_privacy(PrivacyConfig(delta=0.01), 200, local, rounds=1)
    with pytest.raises(ConfigError, match="batch size 64 is larger than this client's 50 users"):
        plan_privacy(PrivacyConfig(), 50, local, rounds=1)
    assert PrivacyConfig().delta_for(200) < 1 / 200
