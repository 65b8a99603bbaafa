"""DP-SGD's Gaussian noise, drawn in place by parallel generators and summed inside the clipping's products.

For every trainable parameter p, one DP-SGD step releases (Opacus' definition, reduction "mean")

    ĝ_p = (Σ_i clip_C(∇ℓ_i)_p + σC · z_p) / B,    z_p ~ N(0, I) independent of everything,

B the expected batch size. Opacus forms the clipped sum, then allocates and adds the noise, then
divides by B: three passes over every parameter and a fresh noise tensor per step. On a CPU that
is most of DP-SGD's extra cost (a 24 M-parameter Mult-VAE at 20,000 items: ~50 ms of draws per
step on 2 cores, plus ~30 ms of allocation, page faults and passes).

:class:`NoisedClippedSum` keeps one persistent buffer per parameter and, each step,

1. :meth:`~NoisedClippedSum.draw`: fills buffer p with N(0, (σC/B)²) in place: the buffer is cut
   into ``workers`` contiguous slices, slice k drawn by generator k (its own seed ``seed_for(seed, "noise-worker-k")``)
   in its own thread (torch releases the GIL), so the draws use every core;
2. :meth:`~NoisedClippedSum.add_product` / :meth:`~NoisedClippedSum.add_sum`: adds the clipped
   sum / B into it, for a Linear weight inside the product itself (``addmm_``: buffer + (1/B)·GᵀA,
   see :mod:`fedsynth.common.privacy.dpsgd.linear_clipping`), so the sum is never a tensor of its own.

The buffer is then ``p.grad``. Every coordinate still gets exactly one N(0, (σC)²) draw, scaled
by 1/B with the sum, as Opacus' own; the result is deterministic for a seed. On a CUDA device
one generator fills each buffer in one kernel (``workers`` is 1).

:class:`ParallelNoiseDPOptimizer` is Opacus' ``DPOptimizerFastGradientClipping`` (the
accountant's step hook, skipped steps, the processed-gradient checks) whose ``add_noise`` and
``scale_grad`` only check that every parameter's gradient is this step's noised sum: a step
whose gradients were not formed by the clipper with this noise is refused, never sent un-noised.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch
from opacus.optimizers import DPOptimizerFastGradientClipping
from opacus.optimizers.optimizer import _check_processed_flag, _mark_as_processed

from fedsynth.common.runtime.seeding import seed_for


def default_workers() -> int:
    """One noise worker per core (at least 1)."""
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


class NoisedClippedSum:
    """Per-parameter buffers holding (Σ clipped gradients + σC·z) / B, z drawn by ``workers`` seeded generators.

    ``params``: the trainable parameters (all on one device); ``std`` = σC; ``expected_batch_size`` = B.
    """

    def __init__(
        self, params: list[torch.Tensor], std: float, expected_batch_size: float, seed: int, workers: int | None = None
    ):
        device = params[0].device if params else torch.device("cpu")
        self.std, self.scale = float(std), 1.0 / float(expected_batch_size)
        self.workers = 1 if device.type != "cpu" else workers or default_workers()
        # worker k's stream: its own hash of (seed, k), so mechanisms whose seeds differ by k never share one
        self.generators = [
            torch.Generator(device=device).manual_seed(seed_for(seed, f"noise-worker-{k}")) for k in range(self.workers)
        ]
        self._pool = ThreadPoolExecutor(self.workers) if self.workers > 1 else None
        self.buffers = {id(p): torch.empty_like(p, memory_format=torch.contiguous_format) for p in params}
        self._slices: list[list[torch.Tensor]] = [[] for _ in range(self.workers)]
        for buffer in self.buffers.values():
            flat = buffer.view(-1)
            bounds = [flat.numel() * k // self.workers for k in range(self.workers + 1)]
            for k in range(self.workers):
                if bounds[k + 1] > bounds[k]:
                    self._slices[k].append(flat[bounds[k] : bounds[k + 1]])
        self.drawn: set[int] = set()  # parameters whose noise is drawn and not yet summed into
        self.summed: set[int] = set()  # parameters holding this step's noised sum

    def draw(self) -> None:
        """This step's noise N(0, (σC/B)²) into every buffer (the previous step's sums are overwritten)."""
        std = self.std * self.scale
        if self._pool is None:
            _draw(self._slices[0], std, self.generators[0])
        else:
            done = [self._pool.submit(_draw, s, std, g) for s, g in zip(self._slices, self.generators, strict=True)]
            for future in done:
                future.result()
        for buffer in self.buffers.values():
            buffer.__dict__.pop("_processed", None)  # Opacus' used-once flag: this is a new step's gradient
        self.drawn, self.summed = set(self.buffers), set()

    def add_product(self, param: torch.Tensor, left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
        """``param``'s noised gradient: its noise + (1/B)·left @ right, formed in its buffer; returns the buffer."""
        return self._take(param).addmm_(left, right, alpha=self.scale)

    def add_sum(self, param: torch.Tensor, clipped_sum: torch.Tensor) -> torch.Tensor:
        """``param``'s noised gradient: its noise + (1/B)·``clipped_sum``; returns the buffer."""
        return self._take(param).add_(clipped_sum, alpha=self.scale)

    def _take(self, param: torch.Tensor) -> torch.Tensor:
        key = id(param)
        if key not in self.drawn:
            raise RuntimeError("DP noise: a parameter's clipped sum was added twice, or before this step's draw.")
        self.drawn.discard(key)
        self.summed.add(key)
        return self.buffers[key]

    def check_step(self, params: list[torch.Tensor]) -> None:
        """Every one of ``params`` holds this step's noised sum as its gradient, else RuntimeError."""
        for p in params:
            if id(p) not in self.summed or p.grad is None or p.grad.data_ptr() != self.buffers[id(p)].data_ptr():
                raise RuntimeError(
                    "DP-SGD step refused: a parameter's gradient is not this step's noised clipped sum "
                    "(call LinearClipper.backward with the optimizer's noise before every step)."
                )
        self.summed = set()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None


class ParallelNoiseDPOptimizer(DPOptimizerFastGradientClipping):
    """``DPOptimizerFastGradientClipping`` whose noise and 1/B are already in the gradients (:attr:`noise`).

    ``seed`` seeds the noise generators (``seed_for(seed, "noise-worker-k")`` for worker k). Give :attr:`noise` to the
    :class:`~fedsynth.common.privacy.dpsgd.linear_clipping.LinearClipper` that forms the gradients.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, *, seed: int, workers: int | None = None, **kwargs: Any):
        super().__init__(optimizer, **kwargs)
        std = self.noise_multiplier * self.max_grad_norm
        self.noise = NoisedClippedSum(self.params, std, self.expected_batch_size, seed, workers)

    def accumulate(self) -> None:
        """The noised sum of this step is the gradient itself (no accumulation under Poisson sampling)."""
        for p in self.params:
            if p.summed_grad is not None:
                raise RuntimeError("gradient accumulation is not supported with Poisson sampling; call zero_grad().")
            p.summed_grad = p.grad

    def add_noise(self) -> None:
        """Check that the noise is in (drawn with today's σ and C), and mark the gradients processed."""
        if self.noise.std != self.noise_multiplier * self.max_grad_norm:
            raise RuntimeError("DP noise: noise_multiplier or max_grad_norm changed after the noise was set up.")
        self.noise.check_step(self.params)
        for p in self.params:
            _check_processed_flag(p.summed_grad)
            _mark_as_processed(p.summed_grad)

    def scale_grad(self) -> None:
        """Nothing: 1/B is in the noised sum already (:meth:`NoisedClippedSum.add_product`)."""

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Gradients to None (never zeroed in place: the next step's noise overwrites the buffers)."""
        super().zero_grad(set_to_none=True)

    def close(self) -> None:
        self.noise.close()


def _draw(parts: list[torch.Tensor], std: float, generator: torch.Generator) -> None:
    """Fill every tensor of ``parts`` with N(0, std²) in place, drawing from ``generator``."""
    for part in parts:
        part.normal_(0.0, std, generator=generator)
