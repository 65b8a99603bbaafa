"""Per-user gradient clipping in one backward pass, for models whose parameters are all in nn.Linear layers.

For a Linear layer y = a Wᵀ + b on a batch (a: (B, d_in), y: (B, d_out)), user i's gradient of
its own loss ℓ_i is the outer product g_i a_iᵀ for W and g_i for b, where g_i = ∂ℓ_i/∂y_i is
row i of G = ∂(Σ_j ℓ_j)/∂y (users' rows never interact in these models). Hence, exactly,

    ‖∇_W ℓ_i‖² = ‖g_i‖² · ‖a_i‖²,    ‖∇_b ℓ_i‖² = ‖g_i‖²,

summed over layers for user i's whole-model norm, and the clipped sum Σ_i c_i ∇ℓ_i with
c_i = min(1, C / ‖∇ℓ_i‖) is (c ⊙ G)ᵀ A for W and Σ_i c_i g_i for b: one matrix product per
layer, the one plain backpropagation computes anyway.

Opacus' ghost clipping (``grad_sample_mode="ghost"``) computes the same norms and then runs a
second backward pass on Σ_i c_i ℓ_i. Here one pass asks autograd for ∂/∂y of every layer's
output only (no weight gradients), and the clipped weight gradients are formed directly: the
"book-keeping" variant of ghost clipping (Bu, Wang, Zha, Karypis 2023). Poisson sampling and
accounting stay Opacus' own (see :mod:`fedsynth.common.privacy.dpsgd.training`); the result is tested against
per-user gradients computed one user at a time and against Opacus' ghost clipping.

Given DP-SGD's ``noise`` (:class:`~fedsynth.common.privacy.dpsgd.noise.NoisedClippedSum`), each weight's product
is added straight into that step's pre-drawn noise, (σC·z + (c ⊙ G)ᵀ A) / B in one ``addmm_``;
without it ``.grad`` is the plain clipped sum (FedSGD's secure release adds its noise elsewhere).

Assumptions, checked at every step (a :class:`~fedsynth.common.errors.ConfigError` otherwise): every
trainable parameter is the weight or bias of an ``nn.Linear``; each Linear runs exactly once per
forward pass, on 2-D input (B, d_in); row i of every layer belongs to user i (no BatchNorm or
other cross-row layer: Opacus' ``ModuleValidator`` is run on the model too).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from fedsynth.common.errors import ConfigError

if TYPE_CHECKING:
    from fedsynth.common.privacy.dpsgd.noise import NoisedClippedSum


@dataclass
class _Record:
    layer: nn.Linear
    inputs: torch.Tensor  # (B, d_in)
    outputs: torch.Tensor  # (B, d_out), part of the autograd graph


class LinearClipper:
    """Records each nn.Linear's input and output in the forward pass; :meth:`backward` clips per user.

    ``max_grad_norm`` is C. After :meth:`backward`, every parameter's ``.grad`` holds the sum
    over users of their gradients, each scaled to norm ≤ C; with ``noise``, that sum plus this
    step's Gaussian noise, divided by the expected batch size (DP-SGD's noised gradient).
    """

    def __init__(self, model: nn.Module, max_grad_norm: float, noise: NoisedClippedSum | None = None):
        if not max_grad_norm > 0:
            raise ConfigError(f"the clipping bound must be positive, got {max_grad_norm}.")
        self.max_grad_norm = max_grad_norm
        self.noise = noise
        self.layers = [m for m in model.modules() if isinstance(m, nn.Linear)]
        covered = {id(p) for layer in self.layers for p in layer.parameters()}
        unsupported = [name for name, p in model.named_parameters() if p.requires_grad and id(p) not in covered]
        if unsupported:
            raise ConfigError(
                f"per-user clipping supports parameters of nn.Linear layers only; {', '.join(unsupported)} "
                "are not (freeze them or use Linear layers)."
            )
        self._expected = sorted(id(layer) for layer in self.layers if _trainable(layer))  # recorded once each per step
        self.records: list[_Record] = []
        self.recording = True
        self.last_norms: torch.Tensor | None = None  # (B,) per-user norms before clipping, for tests and logs
        self._hooks = [layer.register_forward_hook(self._record) for layer in self.layers]

    def _record(self, layer: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        if not self.recording or not torch.is_grad_enabled() or not output.requires_grad:
            return
        if inputs[0].dim() != 2:
            raise ConfigError(
                f"per-user clipping needs 2-D input (batch, features) to {layer}, got {inputs[0].dim()}-D."
            )
        assert isinstance(layer, nn.Linear)
        self.records.append(_Record(layer, inputs[0].detach(), output))

    @contextmanager
    def paused(self) -> Iterator[None]:
        """Forward passes inside are not recorded (e.g. the GAN's generator step through the critic)."""
        self.recording = False
        try:
            yield
        finally:
            self.recording = True

    def backward(self, per_user_losses: torch.Tensor) -> torch.Tensor:
        """Set ``p.grad`` = Σ_i clip_C(∇ℓ_i) for every parameter; returns the (B,) unclipped norms.

        ``per_user_losses``: (B,), row i depending on user i only (the same B rows every layer saw).
        """
        records, self.records = self.records, []
        seen = [id(r.layer) for r in records]
        if sorted(seen) != self._expected:
            raise ConfigError(
                "per-user clipping needs every trainable Linear layer to run exactly once per forward pass "
                f"(recorded {len(seen)} calls for {len(self.layers)} layers)."
            )
        batch = per_user_losses.shape[0]
        if any(r.inputs.shape[0] != batch for r in records):
            raise ConfigError("per-user clipping: a layer saw a different number of rows than there are losses.")
        output_grads = torch.autograd.grad(per_user_losses.sum(), [r.outputs for r in records], allow_unused=True)
        grads = [torch.zeros_like(r.outputs) if g is None else g for r, g in zip(records, output_grads, strict=True)]
        squared = torch.zeros(batch, dtype=per_user_losses.dtype, device=per_user_losses.device)
        for record, g in zip(records, grads, strict=True):
            input_norm = record.inputs.pow(2).sum(dim=1)
            if record.layer.bias is not None:
                input_norm = input_norm + 1.0
            squared += g.pow(2).sum(dim=1) * input_norm
        norms = squared.sqrt()
        scale = (self.max_grad_norm / (norms + 1e-6)).clamp(max=1.0)  # Opacus' clipping factor
        if self.noise is not None:
            self.noise.draw()
        for record, g in zip(records, grads, strict=True):
            scaled = g * scale.unsqueeze(1)
            weight, bias = record.layer.weight, record.layer.bias
            if self.noise is None:
                weight.grad = scaled.t().mm(record.inputs)
            else:
                weight.grad = self.noise.add_product(weight, scaled.t(), record.inputs)
            if bias is not None:
                bias.grad = scaled.sum(dim=0) if self.noise is None else self.noise.add_sum(bias, scaled.sum(dim=0))
        self.last_norms = norms.detach()
        return self.last_norms

    def remove(self) -> None:
        """Detach the forward hooks (the model is then a plain module again)."""
        for hook in self._hooks:
            hook.remove()
        self._hooks = []
        self.records = []


def _trainable(layer: nn.Linear) -> bool:
    return any(p.requires_grad for p in layer.parameters())
