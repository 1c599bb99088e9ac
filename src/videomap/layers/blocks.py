"""Residual Mamba block with a fused add -> RMSNorm and an fp32 residual stream."""

from __future__ import annotations

import torch
from torch import nn
from torch.autograd.function import once_differentiable

from .drop_path import DropPath
from .mamba import BiMamba
from .norm import RMSNorm


class MambaBlock(nn.Module):
    """``residual += drop_path(previous output); out = mixer(RMSNorm(residual))``.

    The block receives the previous block's un-added output and the residual, so the add and the
    norm happen together (the layout of Mamba/VideoMamba). The residual is kept in fp32 because
    summing dozens of bf16 branch outputs loses precision.

    ``recompute`` (default True): in training, keep for backward only the residual, the merged
    mixer output (``out_proj``'s input) and the scans' chunk carries, and recompute the norm,
    ``in_proj``, the convolutions and the x/dt projections in backward (about 4 instead of about
    25 ``dim``-sized values per token, for roughly one extra forward of the cheap parts; the scan
    itself is not rerun). Gradients equal the plain autograd path's to rounding. ``False`` keeps
    the plain path, which ``torch.compile`` / ``torch.export`` and inference always take.
    """

    def __init__(self, dim: int, drop_path: float = 0.0, norm_eps: float = 1e-5,
                 residual_in_fp32: bool = True, recompute: bool = True, **mixer_kwargs) -> None:
        super().__init__()
        self.mixer = BiMamba(dim, **mixer_kwargs)
        self.norm = RMSNorm(dim, eps=norm_eps)
        self.drop_path = DropPath(drop_path)
        self.residual_in_fp32 = residual_in_fp32
        self.recompute = recompute

    def forward(self, hidden: torch.Tensor, residual: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        residual = hidden if residual is None else residual + self.drop_path(hidden)
        if self.residual_in_fp32:
            residual = residual.float()
        normed_in = residual.to(self.norm.weight.dtype)
        tracing = torch.compiler.is_compiling() or torch.jit.is_tracing()
        if self.recompute and torch.is_grad_enabled() and not tracing:
            params = self.recomputed_params()
            if normed_in.requires_grad or any(p.requires_grad for p in params):
                return self.mixer.out_projection(_MixerFromCarries.apply(self, normed_in, *params)), residual
        return self.mixer(self.norm(normed_in)), residual

    def _before_scans(self) -> list[nn.Parameter]:
        """Parameters before the directions split: the norm's and ``in_proj``'s."""
        bias = self.mixer.in_proj.bias
        return [self.norm.weight, self.mixer.in_proj.weight] + ([bias] if bias is not None else [])

    def recomputed_params(self) -> list[nn.Parameter]:
        """Parameters of the part recomputed in backward: the norm, ``in_proj`` and both directions."""
        m = self.mixer
        return self._before_scans() + [p for sfx, _ in m._directions() for p in m.direction_params(sfx)]


def _autocast_state(device_type: str) -> tuple[bool, torch.dtype]:
    return torch.is_autocast_enabled(device_type), torch.get_autocast_dtype(device_type)


class _MixerFromCarries(torch.autograd.Function):
    """RMSNorm + mixer up to ``out_proj`` saving only its input and the scans' chunk carries.

    Backward recomputes the norm and ``in_proj`` under the autocast state of the forward, then
    each direction's convolution and projections, runs the registered scan backward from the
    carries, and differentiates the recomputed parts with ``torch.autograd.grad``: the same
    operations as the plain path, so the same gradients up to summation order.
    """

    @staticmethod
    def forward(ctx, block: MambaBlock, normed_in: torch.Tensor, *params: torch.Tensor) -> torch.Tensor:
        ctx.block = block
        ctx.autocast = (normed_in.device.type, *_autocast_state(normed_in.device.type))
        y, carries = block.mixer.forward_saving_carries(block.norm(normed_in))
        ctx.save_for_backward(normed_in, *carries)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, dy: torch.Tensor):
        block: MambaBlock = ctx.block
        normed_in, *carries = ctx.saved_tensors
        params = block.recomputed_params()
        device_type, enabled, dtype = ctx.autocast
        with torch.enable_grad(), torch.autocast(device_type, dtype=dtype, enabled=enabled):
            res = normed_in.detach().requires_grad_(ctx.needs_input_grad[1])
            x, z = block.mixer.in_projection(block.norm(res))
            xl, zl = x.detach().requires_grad_(x.requires_grad), z.detach().requires_grad_(z.requires_grad)
            dx, dz, grads = block.mixer.backward_from_carries(xl, zl, carries, dy)
        shared = [t for t in (res, *block._before_scans()) if t.requires_grad]
        outs = [(t, g) for t, g in ((x, dx), (z, dz)) if g is not None]
        if shared and outs:
            got = torch.autograd.grad([t for t, _ in outs], shared, [g for _, g in outs], allow_unused=True)
            grads.update({id(t): g for t, g in zip(shared, got, strict=True) if g is not None})
        return None, grads.get(id(res)), *(grads.get(id(p)) for p in params)
