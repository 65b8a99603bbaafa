"""Seconds per local epoch, DP-SGD vs non-private, for the Mult-VAE and the GAN.

    python -m fedsynth.simulations.bench.dp_speed [--repeats 3] [--shapes 100k,20m] [--batches 64,256] [--device cuda]

DP-SGD here is the project's: Poisson sampling, one-backward per-user clipping
(common/privacy/dpsgd/linear_clipping.py), Opacus' noising optimizer and RDP accountant.

Shapes: MovieLens-100K (943 users × 1,682 items) and a MovieLens-20M-like catalogue
(2,000 users × 20,000 items, ~0.5% dense). Data are generated (no files needed). One GAN
"epoch" is ceil(n / batch) discriminator steps, each with one generator step. ``--device``
trains where the clients would (``fedsynth run --device``); the first line names the device.
It runs with OpenMP's idle spin shortened as fedsynth's own processes do (:mod:`fedsynth.common.runtime.openmp`;
``--openmp-default-spin`` to compare). Each ratio is the median over pairs timed alternately.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch

from fedsynth.client.training import train_gan_round, train_vae_round
from fedsynth.common.config.run import LocalTrainingConfig
from fedsynth.common.models.gan import Discriminator, GANConfig, Generator
from fedsynth.common.models.vae import MultVAE, MultVAEConfig
from fedsynth.common.privacy.dpsgd.training import PrivacyConfig, steps_per_epoch
from fedsynth.common.privacy.plan import plan_privacy
from fedsynth.common.runtime.device import check_device_available, device_description, parse_device
from fedsynth.common.runtime.openmp import with_short_openmp_spin


def random_rows(users: int, items: int, density: float, seed: int) -> sp.csr_matrix:
    rng = np.random.default_rng(seed)
    nnz = int(users * items * density)
    rows, cols = rng.integers(0, users, nnz), rng.integers(0, items, nnz)
    matrix = sp.csr_matrix((np.ones(nnz, dtype=np.float32), (rows, cols)), shape=(users, items))
    matrix.data[:] = 1.0
    return matrix


@dataclass(frozen=True)
class Setting:
    """One benchmark cell: the model's shape, the expected batch, the epochs timed, the device."""

    hidden: int = 600
    latent: int = 200
    batch: int = 64
    epochs: int = 1
    device: str = "cpu"


def time_epoch(data: sp.csr_matrix, private: bool, model: str, repeat: int, setting: Setting) -> float:
    """Seconds per epoch of ``model`` (vae | gan) over ``data``, DP-SGD at ε = 8 or non-private."""
    vae = MultVAEConfig(hidden_dims=(setting.hidden,), latent_dim=setting.latent, batch_size=setting.batch)
    gan = GANConfig(batch_size=setting.batch)
    steps = steps_per_epoch(data.shape[0], setting.batch)
    local = LocalTrainingConfig(vae, gan, setting.epochs, steps * setting.epochs)
    privacy = PrivacyConfig(target_epsilon=8.0 if private else math.inf)
    plan = plan_privacy(privacy, data.shape[0], local, rounds=10)
    if model == "vae":
        network = MultVAE.from_config(data.shape[1], vae).to(setting.device)
        start = time.perf_counter()
        train_vae_round(network, data, plan, privacy, vae, 0, repeat)
    else:
        generator = Generator(data.shape[1]).to(setting.device)
        discriminator = Discriminator(data.shape[1]).to(setting.device)
        start = time.perf_counter()
        train_gan_round(generator, discriminator, data, plan, privacy, gan, repeat)
    if setting.device != "cpu":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / setting.epochs


def time_pairs(data: sp.csr_matrix, model: str, repeats: int, setting: Setting) -> tuple[float, float, float]:
    """Median non-private and DP seconds per epoch, and the median of the paired ratios (timed alternately)."""
    plain, private = [], []
    for repeat in range(repeats):
        plain.append(time_epoch(data, False, model, repeat, setting))
        private.append(time_epoch(data, True, model, repeat, setting))
    ratios = [b / a for a, b in zip(plain, private, strict=True)]
    return statistics.median(plain), statistics.median(private), statistics.median(ratios)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--shapes", default="100k,20m", help="comma-separated: 100k, 20m")
    parser.add_argument("--batches", default="64", help="comma-separated expected batch sizes (users per step)")
    parser.add_argument("--vae", default="600,200", help="Mult-VAE hidden,latent units (the run default: 200,64)")
    parser.add_argument("--epochs", default="5,1", help="epochs timed per measurement, per shape")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--openmp-default-spin", action="store_true", help="keep libgomp's default idle spin")
    args = parser.parse_args()
    env = with_short_openmp_spin(os.environ)
    if env != dict(os.environ) and not args.openmp_default_spin:  # as fedsynth's processes run (runtime/openmp.py)
        os.execve(sys.executable, [sys.executable, "-m", "fedsynth.simulations.bench.dp_speed", *sys.argv[1:]], env)
    check_device_available(args.device)
    hidden, latent = (int(v) for v in args.vae.split(","))
    shapes = {"100k": (943, 1682, 0.063), "20m": (2000, 20_000, 0.005)}
    epochs = dict(zip(shapes, (int(e) for e in args.epochs.split(",")), strict=False))
    device = device_description(parse_device(args.device))
    spin = os.environ.get("GOMP_SPINCOUNT", "libgomp's default")
    print(
        f"torch {torch.__version__} on {device}; GOMP_SPINCOUNT {spin}; "
        f"Mult-VAE {hidden}-{latent}; {args.repeats} pairs"
    )
    print(f"{'shape':<14}{'model':<6}{'batch':>6}{'non-private s':>14}{'DP s':>8}{'ratio':>7}  (seconds per epoch)")
    for name in args.shapes.split(","):
        users, items, density = shapes[name]
        data = random_rows(users, items, density, seed=0)
        for batch in (int(b) for b in args.batches.split(",")):
            setting = Setting(hidden, latent, batch, epochs.get(name, 1), args.device)
            for model in ("vae", "gan"):
                plain, private, ratio = time_pairs(data, model, args.repeats, setting)
                shape = f"{users}x{items}"
                print(f"{shape:<14}{model:<6}{batch:>6}{plain:>14.3f}{private:>8.3f}{ratio:>7.2f}", flush=True)


if __name__ == "__main__":
    main()
