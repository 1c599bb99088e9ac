"""mamba_ssm's compiled CUDA scan (``selective_scan_cuda``) behind the registered operator.

The extension is imported, never built here: it exists only where mamba_ssm was installed with
its CUDA build. Its calling convention (checked against state-spaces/mamba, csrc/selective_scan):

* ``fwd(u, delta, A, B, C, D, z, delta_bias, softplus[, cu_seqlens])`` returns ``[out, x]`` plus
  ``out_z`` when ``z`` is given; ``out`` is the output *before* the silu(z) gate; ``x`` is fp32
  ``(batch, dim, n_chunks, 2 * d_state)`` with one chunk per 2048 steps and the state of the
  chunk's last step at the odd positions.
* ``bwd(u, delta, A, B, C, D, z, delta_bias, dout, x, out, dz, softplus, recompute_out_z
  [, cu_seqlens])`` returns ``[du, ddelta, dA, dB, dC, dD, ddelta_bias]`` plus ``dz`` (and
  ``out_z`` when recomputed) when ``z`` is given.
* Variable B/C are 4-D ``(batch, groups, d_state, seqlen)`` in the dtype of ``u``; A, D and
  delta_bias are fp32. Newer releases add the trailing ``cu_seqlens`` argument, older ones
  (VideoMamba's fork) do not; both are accepted.

What the operator saves for backward ("carries") is ``x`` flattened, followed by the pre-gate
``out`` (as fp32) when ``z`` is given, so one flat tensor still carries everything.
"""

from __future__ import annotations

import functools
import math
from types import ModuleType

import torch
from torch import Tensor

CHUNK = 2048  # steps per saved state in mamba_ssm's forward kernel


@functools.cache
def cuda_module() -> ModuleType | None:
    """The compiled extension, or None when it does not import (``import mamba_ssm`` alone
    succeeds on installs whose CUDA build failed, so the extension itself is what counts)."""
    try:
        import selective_scan_cuda
    except Exception:  # ImportError, or an OSError/RuntimeError from a broken CUDA build
        return None
    return selective_scan_cuda


def carries_numel(bsz: int, dim: int, seqlen: int, nstate: int, has_z: bool) -> int:
    return bsz * dim * math.ceil(seqlen / CHUNK) * 2 * nstate + (bsz * dim * seqlen if has_z else 0)


def _call(fn, *args):
    """Call an extension function with or without the trailing ``cu_seqlens`` (release-dependent)."""
    try:
        return fn(*args)
    except TypeError:  # pybind11: "incompatible function arguments" -- the newer signature
        return fn(*args, None)


def forward(mod: ModuleType, u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None,
            z: Tensor | None, delta_bias: Tensor | None, softplus: bool,
            save_carries: bool) -> tuple[Tensor, Tensor, Tensor]:
    low = u.dtype
    res = _call(mod.fwd, u, delta, A, B.to(low).unsqueeze(1), C.to(low).unsqueeze(1), D, z, delta_bias, softplus)
    out, x = res[0], res[1]
    last = x[:, :, -1, 1::2].float().contiguous()
    gated = res[2] if z is not None else out
    if not save_carries:
        return gated, last, u.new_empty(0, dtype=torch.float32)
    parts = [x.reshape(-1).float()] + ([out.reshape(-1).float()] if z is not None else [])
    return gated, last, torch.cat(parts)


def backward(mod: ModuleType, u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None,
             z: Tensor | None, delta_bias: Tensor | None, softplus: bool, carries: Tensor, dout: Tensor,
             dlast: Tensor | None) -> list[Tensor | None]:
    if dlast is not None and bool(dlast.ne(0).any()):
        raise NotImplementedError("selective_scan: mamba_ssm's CUDA backward has no gradient for last_state; "
                                  "use the PyTorch path (VIDEOMAP_DISABLE_KERNEL=1) to differentiate through it")
    bsz, dim, seqlen = u.shape
    nstate = A.shape[1]
    nx = bsz * dim * math.ceil(seqlen / CHUNK) * 2 * nstate
    x = carries[:nx].view(bsz, dim, -1, 2 * nstate)
    out = carries[nx:].view(bsz, dim, seqlen).to(u.dtype) if z is not None else None
    low = u.dtype
    grads = _call(mod.bwd, u, delta, A, B.to(low).unsqueeze(1), C.to(low).unsqueeze(1), D, z, delta_bias,
                  dout.to(low).contiguous(), x, out, None, softplus, False)
    du, ddelta, dA, dB, dC, dD, ddelta_bias = grads[:7]
    dz = grads[7] if z is not None else None
    return [du.to(u.dtype), ddelta.to(delta.dtype), dA.to(A.dtype), dB.squeeze(1).to(B.dtype),
            dC.squeeze(1).to(C.dtype), None if D is None else dD.to(D.dtype), None if z is None else dz.to(z.dtype),
            None if delta_bias is None else ddelta_bias.to(delta_bias.dtype)]
