"""Shape validation and small helpers shared by the selective-scan implementations."""

from __future__ import annotations

import contextlib

import torch


def check_inputs(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None,
    z: torch.Tensor | None,
    delta_bias: torch.Tensor | None,
) -> None:
    """Raise ValueError naming the offending argument when a shape/dtype/device is wrong.

    Catching these up front gives a readable message instead of a broadcasting error deep
    inside a kernel (or, worse, a silently broadcast wrong result).
    """
    if not isinstance(u, torch.Tensor) or u.dim() != 3:
        got = tuple(u.shape) if isinstance(u, torch.Tensor) else type(u).__name__
        raise ValueError(f"selective_scan: u must have shape (batch, dim, seqlen), got {got}")
    bsz, dim, seqlen = u.shape
    if not isinstance(A, torch.Tensor) or A.dim() != 2 or A.shape[0] != dim:
        got = tuple(A.shape) if isinstance(A, torch.Tensor) else type(A).__name__
        raise ValueError(f"selective_scan: A must have shape (dim, d_state) = ({dim}, N), got {got}")
    if A.is_complex():
        raise ValueError("selective_scan: A must be real (complex A is not supported)")
    nstate = A.shape[1]
    expected = {
        "delta": (bsz, dim, seqlen),
        "B": (bsz, nstate, seqlen),
        "C": (bsz, nstate, seqlen),
        "D": (dim,),
        "z": (bsz, dim, seqlen),
        "delta_bias": (dim,),
    }
    layout = {
        "delta": "(batch, dim, seqlen)",
        "B": "(batch, d_state, seqlen)",
        "C": "(batch, d_state, seqlen)",
        "D": "(dim,)",
        "z": "(batch, dim, seqlen)",
        "delta_bias": "(dim,)",
    }
    values = {"delta": delta, "B": B, "C": C, "D": D, "z": z, "delta_bias": delta_bias}
    for name, t in values.items():
        if t is None:
            if name in ("delta", "B", "C"):
                raise ValueError(f"selective_scan: {name} is required")
            continue
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"selective_scan: {name} must be a tensor, got {type(t).__name__}")
        if tuple(t.shape) != expected[name]:
            raise ValueError(
                f"selective_scan: {name} must have shape {layout[name]} = {expected[name]}, "
                f"got {tuple(t.shape)}"
            )
    for name, t in {"u": u, "A": A, **values}.items():
        if t is None:
            continue
        if t.is_complex() or not t.is_floating_point():
            raise ValueError(f"selective_scan: {name} must be a real floating-point tensor, got {t.dtype}")
        if t.device != u.device:
            raise ValueError(f"selective_scan: {name} is on {t.device} but u is on {u.device}")


def compute_dtype(u: torch.Tensor) -> torch.dtype:
    """float64 stays float64; everything else (fp16, bf16, fp32) is computed in fp32."""
    return torch.float64 if u.dtype == torch.float64 else torch.float32


def no_autocast(device_type: str) -> contextlib.AbstractContextManager:
    """Disable autocast so the scan runs in the dtype we chose (bf16 scans go NaN)."""
    try:
        return torch.autocast(device_type=device_type, enabled=False)
    except (RuntimeError, ValueError):  # a device type without autocast support
        return contextlib.nullcontext()
