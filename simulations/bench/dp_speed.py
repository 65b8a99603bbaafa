"""Seconds per local epoch, DP-SGD vs non-private, for the Mult-VAE and the GAN.

    python -m simulations.bench.dp_speed [--repeats 3] [--shapes 100k,20m] [--batches 64,256] [--device cuda]

DP-SGD here is the project's: Poisson sampling, one-backward per-user clipping
(common/privacy/linear_clipping.py), Opacus' noising optimizer and RDP accountant.

Shapes: MovieLens-100K (943 users × 1,682 items) and a MovieLens-20M-like catalogue
(2,000 users × 20,000 items, ~0.5% dense). Data are generated (no files needed). One GAN
"epoch" is ceil(n / batch) discriminator steps, each with one generator step. ``--device``
trains where the clients would (``fedsynth run --device``); the first line names the device.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import numpy as np
import scipy.sparse as sp
import torch

from client.training import plan_privacy, train_gan_round, train_vae_round
from common.device import check_device_available, device_description, parse_device
from common.models.gan import Discriminator, GANConfig, Generator
from common.models.vae import MultVAE, MultVAEConfig
from common.privacy.dp import PrivacyConfig, steps_per_epoch
from common.run_config import LocalTrainingConfig


def random_rows(users: int, items: int, density: float, seed: int) -> sp.csr_matrix:
    rng = np.random.default_rng(seed)
    nnz = int(users * items * density)
    rows, cols = rng.integers(0, users, nnz), rng.integers(0, items, nnz)
    matrix = sp.csr_matrix((np.ones(nnz, dtype=np.float32), (rows, cols)), shape=(users, items))
    matrix.data[:] = 1.0
    return matrix


def time_epoch(
    data: sp.csr_matrix, private: bool, model: str, repeats: int, batch: int = 64, device: str = "cpu"
) -> float:
    vae = MultVAEConfig(hidden_dims=(600,), latent_dim=200, batch_size=batch)
    gan = GANConfig(batch_size=batch)
    local = LocalTrainingConfig(vae, gan, 1, steps_per_epoch(data.shape[0], batch))
    privacy = PrivacyConfig(target_epsilon=8.0 if private else math.inf)
    plan = plan_privacy(privacy, data.shape[0], local, rounds=10)
    times = []
    for repeat in range(repeats):
        if model == "vae":
            network = MultVAE.from_config(data.shape[1], vae).to(device)
            start = time.perf_counter()
            train_vae_round(network, data, plan, privacy, vae, 0, repeat)
        else:
            generator, discriminator = Generator(data.shape[1]).to(device), Discriminator(data.shape[1]).to(device)
            start = time.perf_counter()
            train_gan_round(generator, discriminator, data, plan, privacy, gan, repeat)
        if device != "cpu":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--shapes", default="100k,20m", help="comma-separated: 100k, 20m")
    parser.add_argument("--batches", default="64", help="comma-separated expected batch sizes (users per step)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    args = parser.parse_args()
    check_device_available(args.device)
    shapes = {"100k": (943, 1682, 0.063), "20m": (2000, 20_000, 0.005)}
    print(f"torch {torch.__version__} on {device_description(parse_device(args.device))}; median of {args.repeats}")
    print(f"{'shape':<22}{'model':<6}{'batch':>6}{'non-private s':>14}{'DP s':>10}{'ratio':>8}")
    for name in args.shapes.split(","):
        users, items, density = shapes[name]
        data = random_rows(users, items, density, seed=0)
        for batch in (int(b) for b in args.batches.split(",")):
            for model in ("vae", "gan"):
                plain = time_epoch(data, False, model, args.repeats, batch, args.device)
                private = time_epoch(data, True, model, args.repeats, batch, args.device)
                shape, ratio = f"{users}x{items}", private / plain
                print(f"{shape:<22}{model:<6}{batch:>6}{plain:>14.2f}{private:>10.2f}{ratio:>8.2f}", flush=True)


if __name__ == "__main__":
    main()
