"""Mamba's causal depthwise convolution followed by SiLU, with a one-pass C kernel for inference.

``causal_conv1d_silu(x, w, b, reverse)`` is ``silu(conv(x))`` where the convolution only looks
left (``Conv1d(E, E, K, groups=E, padding=K-1)`` cut to the input length); ``reverse=True``
gives the same on the time-reversed sequence, in reversed order (``flip -> conv -> silu``), which
is what the backward direction of the bidirectional mixer needs. On CPU without autograd (and
outside ``torch.compile``) the C kernel does it in one pass, reading and writing bf16 as it is;
everything else uses the PyTorch version below, which autograd and tracing understand.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import cpu_build
from .cpu_scan import check_rc, ptr


def causal_depthwise_conv1d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``Conv1d(E, E, K, groups=E, padding=K-1)(x)[..., :L]`` as K fused multiply-adds.

    x: (B, E, L) contiguous, weight: (E, 1, K). On CPU the depthwise convolution kernel plus the
    layout copies around it cost about twice as much at long L.
    """
    k, length = weight.shape[-1], x.shape[-1]
    w = weight[:, 0, :, None].to(x.dtype)  # (E, K, 1); tap K-1 multiplies the current step
    if bias is None:
        out = x * w[:, k - 1]
    else:
        out = torch.addcmul(bias[:, None].to(x.dtype), x, w[:, k - 1])
    if torch.compiler.is_exporting():
        # the same sums out of place: an exported in-place update of a slice becomes a scatter with
        # a transpose on each side, the larger part of an onnxruntime forward outside the scan
        xp = F.pad(x, (k - 1, 0))
        for shift in range(1, min(k, length)):
            out = torch.addcmul(out, xp[..., k - 1 - shift: k - 1 - shift + length], w[:, k - 1 - shift])
        return out
    for shift in range(1, min(k, length)):
        out[..., shift:].addcmul_(x[..., : length - shift], w[:, k - 1 - shift])
    return out


def _kernel_applies(x: torch.Tensor, weight: torch.Tensor) -> bool:
    return (x.device.type == "cpu" and x.dtype in (torch.float32, torch.bfloat16) and x.dim() == 3
            and weight.shape[-1] <= 16 and not torch.is_grad_enabled() and not torch.compiler.is_compiling()
            and not cpu_build.kernel_disabled() and cpu_build.get_kernel() is not None)


def causal_conv1d_silu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                       reverse: bool = False, fused: bool = True) -> torch.Tensor:
    """``silu(causal depthwise conv(x))`` for x (B, E, L), weight (E, 1, K); see the module doc.

    ``fused=False`` always takes the PyTorch version: a forward without autograd whose result a
    later recomputation with autograd must reproduce bit for bit."""
    if not (fused and _kernel_applies(x, weight)):
        return F.silu(causal_depthwise_conv1d(x.flip(-1).contiguous() if reverse else x, weight, bias))
    x = x.contiguous()
    out = torch.empty_like(x)
    w = weight.detach().reshape(weight.shape[0], -1).float().contiguous()
    b = None if bias is None else bias.detach().float().contiguous()
    rc = cpu_build.get_kernel().lib.vm_conv_silu(
        ptr(x), ptr(w), ptr(b), x.shape[0], x.shape[1], x.shape[2], w.shape[1], ptr(out),
        int(x.dtype == torch.bfloat16), int(reverse), torch.get_num_threads())
    check_rc(rc, "causal_conv1d_silu")
    return out
