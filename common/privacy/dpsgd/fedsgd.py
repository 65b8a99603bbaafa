"""FedSGD under secure aggregation: one DP-SGD step of the Mult-VAE over the union of every silo's users.

Round r, global weights w (the server's), every silo k with users U_k:

    B_k ~ Poisson(q) over U_k                              (the same rate q in every silo)
    g_k = Σ_{i ∈ B_k} clip_C(∇_w ℓ_i(w))                   (D,) one-pass per-user clipping
    r_k = round(s · g_k) + Sk(V / t)                       integers, masked by SecAgg
    ĝ   = (Σ_k r_k) / s / (q · N),  N = Σ_k |U_k|          the server sees only the sum
    w  ← Adam(w, ĝ)

Σ_k g_k is exactly central DP-SGD's clipped sum over a Poisson sample of all N users, and the
unmasked sum carries at least Sk(V) (each of ≥ t survivors adds V/t): one step of central DP-SGD
with Skellam noise, accounted per silo as a Poisson-subsampled Skellam release at rate q
(:class:`fedsynth.common.secagg.skellam.SkellamEvent`). Dividing by the *expected* batch q·N (not the
sampled count, which would itself need privacy) keeps ĝ an unbiased estimate of the mean clipped
gradient. ℓ_i is the Mult-VAE's per-user negative ELBO with KL weight β(r − 1), dropout and the
reparameterisation draw included (per-user randomness, so rows stay independent).

Shapes: D = the Mult-VAE's trainable parameters, flattened in ``named_parameters`` order (the
prior buffer is not trained); rows are CSR (users × items).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import scipy.sparse as sp
import torch

from fedsynth.common.models.vae import MultVAE, MultVAEConfig, kl_beta, vae_loss
from fedsynth.common.privacy.dpsgd.linear_clipping import LinearClipper
from fedsynth.common.secagg.skellam import SumRoundingQuantizer

FEDSGD = "vae"  # the ledger's model name of a FedSGD step (it trains the Mult-VAE)


def trainable(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The parameters a FedSGD step moves, in a fixed order (both sides build the same model)."""
    return [p for _, p in model.named_parameters() if p.requires_grad]


def gradient_quantizer(num_items: int, config: MultVAEConfig, clip: float) -> SumRoundingQuantizer:
    """Rounding of a silo's clipped gradient sum of the Mult-VAE this run trains."""
    return SumRoundingQuantizer.for_sum(clip, parameter_count(num_items, config))


@lru_cache(maxsize=16)
def parameter_count(num_items: int, config: MultVAEConfig) -> int:
    """D, the Mult-VAE's trainable parameters (built once per shape: every stage and round asks)."""
    return sum(p.numel() for p in trainable(MultVAE.from_config(num_items, config)))


def poisson_sample(rows: sp.csr_matrix, rate: float, rng: np.random.Generator) -> sp.csr_matrix:
    """Each row independently with probability ``rate``."""
    return rows[np.flatnonzero(rng.random(rows.shape[0]) < rate)]


def clipped_gradient_sum(
    model: MultVAE, batch: sp.csr_matrix, clip: float, config: MultVAEConfig, server_round: int
) -> np.ndarray:
    """Σ_i clip_C(∇ℓ_i) over the rows of ``batch`` at the model's weights, flattened (D,) float64.

    An empty batch gives zeros (the node still sends its noise share). The model is left with
    those gradients in ``.grad``; its weights do not move. Computed on the model's device.
    """
    params = trainable(model)
    if batch.shape[0] == 0:
        return np.zeros(sum(p.numel() for p in params))
    clipper = LinearClipper(model, clip)
    try:
        model.train()
        x = torch.from_numpy(batch.astype(np.float32).toarray()).to(params[0].device)
        logits, mu, logvar = model(x)
        beta = kl_beta(server_round - 1, config.anneal_steps, config.beta_cap)
        clipper.backward(vae_loss(logits, x, mu, logvar, beta, "none"))
    finally:
        clipper.remove()
    return torch.cat([p.grad.reshape(-1) for p in params]).double().cpu().numpy()  # type: ignore[union-attr]


def apply_gradient(
    model: MultVAE, optimizer: torch.optim.Optimizer, gradient_sum: np.ndarray, expected_batch: float
) -> None:
    """One optimizer step with ĝ = ``gradient_sum`` / ``expected_batch`` (the noisy summed clipped gradients)."""
    mean = torch.from_numpy(np.asarray(gradient_sum, dtype=np.float64) / max(expected_batch, 1e-12))
    params = trainable(model)
    if sum(p.numel() for p in params) != mean.numel():
        raise ValueError(f"the gradient has {mean.numel()} entries, the model {sum(p.numel() for p in params)}")
    offset = 0
    for p in params:
        p.grad = mean[offset : offset + p.numel()].reshape(p.shape).to(p.dtype)
        offset += p.numel()
    optimizer.step()
    optimizer.zero_grad()
