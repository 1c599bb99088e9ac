"""Public selective-scan entry point and backend dispatch.

Backends, picked per call from the input tensors:

* ``"cuda-mamba_ssm"``: CUDA tensors when mamba_ssm's compiled extension imports (fp16/bf16
  sequences are passed to it as they are, for training too, as mamba_ssm itself does).
* ``"cpu-kernel"``: CPU tensors (fp32/fp16/bf16, computed in fp32) through the C kernel
  compiled on first use.
* ``"torch"``: everything else -- float64 on CPU, CUDA without mamba_ssm, other devices,
  ``VIDEOMAP_DISABLE_KERNEL=1``, or when no C compiler is available.

All three run through the registered operator of :mod:`.scan_op`, so ``torch.compile`` and
``torch.export`` keep the scan as one node whichever backend runs it.
"""

from __future__ import annotations

import logging

import torch

from . import cuda_scan, scan_op  # noqa: F401  (scan_op registers torch.ops.videomap.*)
from ._checks import check_inputs, compute_dtype, no_autocast
from .scan_op import choose_backend
from .scan_saved import scan_arguments

logger = logging.getLogger(__name__)

_logged: set[str] = set()


def _resolve(device_or_tensor) -> tuple[torch.device, torch.dtype | None]:
    """Device and the dtype the operator will be given (:func:`selective_scan` computes fp16 /
    bf16 sequences in fp32 unless it passes them through)."""
    if device_or_tensor is None:
        return torch.device("cpu"), None
    if isinstance(device_or_tensor, torch.Tensor):
        return device_or_tensor.device, compute_dtype(device_or_tensor)
    return torch.device(device_or_tensor), None


def _log_once(backend: str, reason: str) -> None:
    if backend not in _logged:
        _logged.add(backend)
        logger.info("selective_scan backend: %s -- %s", backend, reason)


def selective_scan_backend(device_or_tensor: torch.device | str | torch.Tensor | None = None) -> str:
    """Which implementation :func:`selective_scan` uses for this device (or tensor: its dtype
    matters on CPU, where float64 takes the PyTorch path).  Builds the CPU kernel if needed.

    Returns one of ``"cuda-mamba_ssm"``, ``"cpu-kernel"``, ``"torch"`` and logs the choice
    (logger ``videomap.ops``) the first time each backend is seen, so a run's log shows
    whether the fast path is active.
    """
    backend, reason = choose_backend(*_resolve(device_or_tensor))
    _log_once(backend, reason)
    return backend


def selective_scan(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Mamba-1 (S6) selective scan, same signature/returns as mamba_ssm's ``selective_scan_fn``.

    Shapes: u, delta, z (batch, dim, L); A (dim, N) real; B, C (batch, N, L); D, delta_bias (dim,).
    Computes h_l = exp(Δ_l A) h_{l-1} + Δ_l B_l u_l and y_l = C_l·h_l + D u_l (gated by
    silu(z)), with Δ = softplus(delta + delta_bias) when ``delta_softplus``.

    The scan always runs in fp32 (float64 stays float64) with autocast disabled, because
    half-precision scans overflow; the output has u's dtype.  Returns ``out`` or
    ``(out, last_state)`` with last_state (batch, dim, N).  Memory under autograd stays
    O(inputs): states are recomputed in backward instead of stored.
    """
    check_inputs(u, delta, A, B, C, D, z, delta_bias)
    in_dtype = u.dtype
    inputs = (u, delta, A, B, C, D, z, delta_bias)
    save = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in inputs)
    args = scan_arguments(*inputs, save=save)
    if not torch.compiler.is_compiling():  # a traced graph holds the operator, nothing else
        _log_once(*choose_backend(u.device, args[0].dtype, A.shape[1]))
    with no_autocast(u.device.type):
        out, last, _ = torch.ops.videomap.selective_scan_fwd(*args, bool(delta_softplus), save)
    out = out.to(in_dtype)
    return (out, last.to(in_dtype)) if return_last_state else out
