"""`--device`: parsed and refused before anything starts where torch cannot see it; a node without the
GPU trains on the CPU; the clients' DP round runs on the device it is given (CUDA tests skip without one)."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from fedsynth.client.training import RoundSeeds, train_local_round
from fedsynth.common.config.run import LocalTrainingConfig
from fedsynth.common.errors import ConfigError
from fedsynth.common.models.bundle import ModelBundle
from fedsynth.common.models.gan import GANConfig
from fedsynth.common.models.vae import MultVAEConfig
from fedsynth.common.privacy.dpsgd.training import PrivacyConfig
from fedsynth.common.privacy.plan import plan_privacy
from fedsynth.common.runtime.device import check_device_available, device_description, parse_device, training_device
from fedsynth.simulations.cli import main

CUDA = torch.cuda.is_available()


@pytest.fixture
def no_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@pytest.mark.parametrize("name", ["gpu", "cuda:", "cuda:x", "CPU", ""])
def test_a_device_name_that_is_not_cpu_or_cuda_is_named(name: str) -> None:
    with pytest.raises(ConfigError, match=f"device must be cpu, cuda or cuda:N, got {name!r}"):
        parse_device(name)


def test_cpu_is_always_available_and_described() -> None:
    check_device_available("cpu")
    assert training_device("cpu") == torch.device("cpu")
    assert device_description(torch.device("cpu")).startswith("cpu (")


@pytest.mark.usefixtures("no_cuda")
def test_cuda_without_a_gpu_is_refused_with_what_to_do() -> None:
    with pytest.raises(ConfigError, match=r"--device cuda: torch .* sees no CUDA device\. Use --device cpu"):
        check_device_available("cuda")


@pytest.mark.usefixtures("no_cuda")
def test_fedsynth_run_refuses_cuda_without_a_gpu_before_flower_starts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["run", "--device", "cuda", "--out", str(tmp_path / "run")])

    assert exit_info.value.code == 2
    assert "--device cuda: torch" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


@pytest.mark.usefixtures("no_cuda")
def test_a_node_without_the_gpu_trains_on_the_cpu_and_says_so(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="fedsynth.common.runtime.device"):
        assert training_device("cuda:1") == torch.device("cpu")
    assert "the run asks for device cuda:1" in caplog.text and "trains on the CPU" in caplog.text


def small_round(device: torch.device | None, epsilon: float = 8.0) -> tuple[ModelBundle, list, dict]:
    rng = np.random.default_rng(0)
    rows = sp.csr_matrix((rng.random((60, 40)) < 0.2).astype(np.float32))
    local = LocalTrainingConfig(MultVAEConfig(hidden_dims=(16,), latent_dim=4, batch_size=16), GANConfig(batch_size=16))
    privacy = PrivacyConfig(target_epsilon=epsilon)
    plan = plan_privacy(privacy, rows.shape[0], local, rounds=2)
    bundle = ModelBundle.create(rows.shape[1], local, seed=0)
    vae, gan = train_local_round(
        bundle, rows, plan, privacy, local, server_round=1, seeds=RoundSeeds(3, 4), device=device
    )
    return bundle, vae.events + gan.events, {**vae.losses, **gan.losses}


def test_a_round_given_the_cpu_device_trains_and_leaves_the_bundle_on_the_cpu() -> None:
    bundle, events, losses = small_round(torch.device("cpu"))
    _, events_default, _ = small_round(None)

    assert all(v.device.type == "cpu" for v in bundle.state_dict().values())
    assert events == events_default and events  # the same steps counted, wherever it trained
    assert all(math.isfinite(v) for v in losses.values())


@pytest.mark.skipif(not CUDA, reason="no CUDA device")
def test_a_dp_round_on_cuda_counts_the_same_steps_and_returns_cpu_weights() -> None:
    _, cpu_events, _ = small_round(torch.device("cpu"))
    bundle, events, losses = small_round(torch.device("cuda"))

    assert events == cpu_events  # the accountant sees the same σ, q and steps
    assert all(v.device.type == "cpu" for v in bundle.state_dict().values())
    assert all(math.isfinite(v) for v in losses.values())
    before = ModelBundle.create(40, LocalTrainingConfig(MultVAEConfig(hidden_dims=(16,), latent_dim=4)), seed=0)
    # trained (with other noise draws than the CPU's)
    assert any(not torch.equal(v, before.state_dict()[k]) for k, v in bundle.state_dict().items())


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not CUDA, reason="no CUDA"))])
def test_the_noise_has_the_planned_standard_deviation_on_the_parameters_device(device: str) -> None:
    from fedsynth.common.privacy.dpsgd.noise import ParallelNoiseDPOptimizer

    param = torch.nn.Parameter(torch.zeros(1_000_000, device=device))
    optimizer = ParallelNoiseDPOptimizer(
        torch.optim.SGD([param], lr=1.0), seed=0, workers=2, noise_multiplier=2.0, max_grad_norm=0.5,
        expected_batch_size=1,
    )  # fmt: skip
    assert all(g.device.type == device for g in optimizer.noise.generators)
    assert optimizer.noise.workers == (2 if device == "cpu" else 1)
    optimizer.noise.draw()
    param.grad = optimizer.noise.add_sum(param, torch.zeros_like(param))
    optimizer.step()
    assert float(param.grad.std()) == pytest.approx(1.0, rel=0.01)  # σ·C = 2 · 0.5, B = 1


def test_the_short_openmp_spin_is_added_unless_the_user_chose_how_threads_wait() -> None:
    from fedsynth.common.runtime.openmp import with_short_openmp_spin

    assert with_short_openmp_spin({"A": "1"}) == {"A": "1", "GOMP_SPINCOUNT": "10000"}
    assert with_short_openmp_spin({"GOMP_SPINCOUNT": "5"})["GOMP_SPINCOUNT"] == "5"
    assert "GOMP_SPINCOUNT" not in with_short_openmp_spin({"OMP_WAIT_POLICY": "PASSIVE"})


def test_flower_processes_inherit_the_short_spin(tmp_path, monkeypatch) -> None:
    from fedsynth.simulations.runner import flower_environment

    monkeypatch.delenv("GOMP_SPINCOUNT", raising=False)
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    assert flower_environment(tmp_path)["GOMP_SPINCOUNT"] == "10000"
