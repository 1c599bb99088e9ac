"""The selective scan split into its two halves, for callers that run their own autograd.

:func:`selective_scan` differentiates itself: the operator saves its inputs and chunk carries.
A caller that can rebuild the inputs cheaply in backward (the Mamba mixer recomputes its
convolutions and projections) should not keep them alive, so it calls
:func:`scan_forward_saving` without autograd, keeps only the carries, and later calls
:func:`scan_backward_saved` on the rebuilt inputs. Both go through the registered operators, so
the backend and the numbers are those of :func:`selective_scan`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import cuda_scan, scan_op  # noqa: F401  (scan_op registers torch.ops.videomap.*)
from ._checks import compute_dtype, no_autocast


def scan_arguments(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None, z: Tensor | None,
                   delta_bias: Tensor | None, save: bool) -> list[Tensor | None]:
    """The operator's eight tensor arguments: contiguous, in the compute dtype (fp32; float64 stays),
    except half-precision sequences that the backend reads as they are (bf16 u, delta, z on CPU
    without autograd; fp16/bf16 u, delta, B, C, z for mamba_ssm). Differentiable (plain casts)."""
    inputs = (u, delta, A, B, C, D, z, delta_bias)
    ct = compute_dtype(u)
    half = (u.dtype in (torch.float16, torch.bfloat16)
            and all(t.dtype == u.dtype for t in (delta, z) if t is not None))
    if u.device.type == "cuda" and cuda_scan.cuda_module() is not None:
        keep = (0, 1, 3, 4, 6) if half else ()
    elif u.device.type == "cpu" and not save and half and u.dtype == torch.bfloat16:
        keep = (0, 1, 6)
    else:
        keep = ()
    with no_autocast(u.device.type):
        return [None if t is None else t.to(u.dtype if i in keep else ct).contiguous() for i, t in enumerate(inputs)]


def scan_forward_saving(args: list[Tensor | None], softplus: bool) -> tuple[Tensor, Tensor]:
    """``(out, carries)`` for :func:`scan_arguments` ``(..., save=True)``; run it without autograd."""
    out, _last, carries = torch.ops.videomap.selective_scan_fwd(*[_plain(t) for t in args], softplus, True)
    return out, carries


def scan_backward_saved(args: list[Tensor | None], softplus: bool, carries: Tensor,
                        dout: Tensor) -> list[Tensor | None]:
    """Gradients of the eight arguments (None where an argument is None) from the carries that
    :func:`scan_forward_saving` returned for the same arguments."""
    grads = torch.ops.videomap.selective_scan_bwd(*[_plain(t) for t in args], softplus, carries,
                                                  dout.contiguous(), None)
    return [None if t is None else g for g, t in zip(grads, args, strict=True)]


def _plain(t: Tensor | None) -> Tensor | None:
    return None if t is None else t.detach()
