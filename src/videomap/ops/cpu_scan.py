"""Forward and backward of the selective scan in the compiled C kernel (fp32, CPU); the
registered operator in :mod:`.scan_op` wraps them with autograd."""

from __future__ import annotations

import ctypes

import torch
import torch.nn.functional as F

from ._checks import no_autocast
from .cpu_build import KernelLib

_LANES = 16  # the kernel's state vector width; N is zero-padded up to a multiple of it
MAX_STATE = 256  # NBMAX * VW in the C source; larger d_state goes to the PyTorch path


def ptr(t: torch.Tensor | None) -> ctypes.c_void_p | None:
    return None if t is None else ctypes.c_void_p(t.data_ptr())


def _padded(nstate: int) -> int:
    return -(-nstate // _LANES) * _LANES


def _time_major(x: torch.Tensor, np_: int) -> torch.Tensor:
    """(B, N, L) -> contiguous (B, L, NP), zero-padded in N, so one step's states are contiguous."""
    xt = x.transpose(1, 2)
    if np_ != x.shape[1]:
        xt = F.pad(xt, (0, np_ - x.shape[1]))
    return xt.contiguous()


def check_rc(rc: int, what: str) -> None:
    if rc == -1:
        raise MemoryError(f"videomap C kernel: out of memory in {what}")
    if rc != 0:
        raise RuntimeError(f"videomap C kernel: {what} failed with code {rc}")


def carries_numel(kern_chunk: int, bsz: int, dim: int, seqlen: int, nstate: int) -> int:
    """Size of the saved per-chunk states: one padded state per ``kern_chunk`` steps."""
    return bsz * dim * (-(-seqlen // kern_chunk)) * _padded(nstate)


def kernel_forward(kern: KernelLib, u, delta, A, B, C, D, z, delta_bias, softplus: bool, save_carries: bool):
    """Forward in C; returns (out, last_state, carries) with carries flat (empty unless asked for):
    one state per 64-step chunk (B·E·L/64·N floats, ~1.6% of a full state history), from which
    :func:`kernel_backward` recomputes the rest.

    Expects contiguous fp32 CPU tensors (the dispatcher prepares them); u, delta and z may
    instead all be bf16 (inference): they are then read, and ``out`` written, in bf16 without
    full-size fp32 copies, while the scan still runs in fp32.
    """
    bsz, dim, seqlen = u.shape
    nstate = A.shape[1]
    np_ = _padded(nstate)
    A_p = F.pad(A, (0, np_ - nstate)).contiguous() if np_ != nstate else A
    Bt, Ct = _time_major(B, np_), _time_major(C, np_)
    out = torch.empty_like(u)
    last = u.new_empty(bsz, dim, np_, dtype=torch.float32)
    carries = u.new_empty(carries_numel(kern.chunk, bsz, dim, seqlen, nstate) if save_carries else 0,
                          dtype=torch.float32)
    scan = kern.lib.vm_scan_fwd_bf16 if u.dtype == torch.bfloat16 else kern.lib.vm_scan_fwd
    rc = scan(
        ptr(u), ptr(delta), ptr(A_p), ptr(Bt), ptr(Ct), ptr(D), ptr(z), ptr(delta_bias),
        int(softplus), bsz, dim, seqlen, np_, ptr(out), ptr(last), ptr(carries) if save_carries else None,
        torch.get_num_threads(),
    )
    check_rc(rc, "selective_scan forward")
    if np_ != nstate:
        last = last[..., :nstate].contiguous()
    return out, last, carries


def kernel_backward(kern: KernelLib, u, delta, A, B, C, D, z, delta_bias, softplus: bool, carries, dout, dlast):
    """Gradients of (u, delta, A, B, C, D, z, delta_bias) in C; ``None`` where the input is None."""
    bsz, dim, seqlen = u.shape
    nstate = A.shape[1]
    np_ = _padded(nstate)
    with no_autocast("cpu"):
        A_p = F.pad(A, (0, np_ - nstate)).contiguous() if np_ != nstate else A
        Bt, Ct = _time_major(B, np_), _time_major(C, np_)
        dout = dout.to(torch.float32).contiguous()
        if dlast is not None:
            dlast = dlast.to(torch.float32)
            if np_ != nstate:
                dlast = F.pad(dlast, (0, np_ - nstate))
            dlast = dlast.contiguous()
        du, ddelta = torch.empty_like(u), torch.empty_like(u)
        dA = u.new_empty(dim, np_)
        dBt, dCt = u.new_empty(bsz, seqlen, np_), u.new_empty(bsz, seqlen, np_)
        dD, dbias = u.new_empty(dim), u.new_empty(dim)
        dz = torch.empty_like(u) if z is not None else None
        rc = kern.lib.vm_scan_bwd(
            ptr(u), ptr(delta), ptr(A_p), ptr(Bt), ptr(Ct), ptr(D), ptr(z), ptr(delta_bias),
            int(softplus), bsz, dim, seqlen, np_, ptr(carries), ptr(dout), ptr(dlast),
            ptr(du), ptr(ddelta), ptr(dA), ptr(dBt), ptr(dCt), ptr(dD), ptr(dz), ptr(dbias),
            torch.get_num_threads(),
        )
        check_rc(rc, "selective_scan backward")
    dB = dBt[..., :nstate].transpose(1, 2)
    dC = dCt[..., :nstate].transpose(1, 2)
    return (
        du,
        ddelta,
        dA[:, :nstate] if np_ != nstate else dA,
        dB,
        dC,
        dD if D is not None else None,
        dz,
        dbias if delta_bias is not None else None,
    )
