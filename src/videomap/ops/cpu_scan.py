"""Autograd Function around the compiled C kernel (fp32, CPU)."""

from __future__ import annotations

import ctypes

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from ._checks import no_autocast
from .cpu_build import KernelLib

_LANES = 16  # the kernel's state vector width; N is zero-padded up to a multiple of it
MAX_STATE = 256  # NBMAX * VW in the C source; larger d_state goes to the PyTorch path


def _ptr(t: torch.Tensor | None) -> ctypes.c_void_p | None:
    return None if t is None else ctypes.c_void_p(t.data_ptr())


def _padded(nstate: int) -> int:
    return -(-nstate // _LANES) * _LANES


def _time_major(x: torch.Tensor, np_: int) -> torch.Tensor:
    """(B, N, L) -> contiguous (B, L, NP), zero-padded in N, so one step's states are contiguous."""
    xt = x.transpose(1, 2)
    if np_ != x.shape[1]:
        xt = F.pad(xt, (0, np_ - x.shape[1]))
    return xt.contiguous()


def _check(rc: int, what: str) -> None:
    if rc == -1:
        raise MemoryError(f"selective_scan kernel: out of memory in {what}")
    if rc != 0:
        raise RuntimeError(f"selective_scan kernel: {what} failed with code {rc}")


class KernelScanFn(torch.autograd.Function):
    """Forward/backward in C.  Saves the inputs plus one state per 64-step chunk
    (B·E·L/64·N floats, ~1.6% of a full state history) and recomputes the rest in backward.

    Expects contiguous fp32 CPU tensors (the dispatcher prepares them).
    """

    @staticmethod
    def forward(ctx, kern: KernelLib, u, delta, A, B, C, D, z, delta_bias, softplus):
        bsz, dim, seqlen = u.shape
        nstate = A.shape[1]
        np_ = _padded(nstate)
        nch = -(-seqlen // kern.chunk)
        A_p = F.pad(A, (0, np_ - nstate)).contiguous() if np_ != nstate else A
        Bt, Ct = _time_major(B, np_), _time_major(C, np_)
        out = torch.empty_like(u)
        last = u.new_empty(bsz, dim, np_)
        need_grad = any(ctx.needs_input_grad)
        carries = u.new_empty(bsz, dim, nch, np_) if need_grad else None
        rc = kern.lib.vm_scan_fwd(
            _ptr(u), _ptr(delta), _ptr(A_p), _ptr(Bt), _ptr(Ct), _ptr(D), _ptr(z), _ptr(delta_bias),
            int(softplus), bsz, dim, seqlen, np_, _ptr(out), _ptr(last), _ptr(carries),
            torch.get_num_threads(),
        )
        _check(rc, "forward")
        ctx.kern = kern
        ctx.softplus = softplus
        ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, carries)
        if np_ != nstate:
            last = last[..., :nstate].contiguous()
        return out, last

    @staticmethod
    @once_differentiable
    def backward(ctx, dout, dlast):
        u, delta, A, B, C, D, z, delta_bias, carries = ctx.saved_tensors
        kern: KernelLib = ctx.kern
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
                _ptr(u), _ptr(delta), _ptr(A_p), _ptr(Bt), _ptr(Ct), _ptr(D), _ptr(z), _ptr(delta_bias),
                int(ctx.softplus), bsz, dim, seqlen, np_, _ptr(carries), _ptr(dout), _ptr(dlast),
                _ptr(du), _ptr(ddelta), _ptr(dA), _ptr(dBt), _ptr(dCt), _ptr(dD), _ptr(dz), _ptr(dbias),
                torch.get_num_threads(),
            )
            _check(rc, "backward")
        dB = dBt[..., :nstate].transpose(1, 2)
        dC = dCt[..., :nstate].transpose(1, 2)
        return (
            None,
            du,
            ddelta,
            dA[:, :nstate] if np_ != nstate else dA,
            dB,
            dC,
            dD if D is not None else None,
            dz,
            dbias if delta_bias is not None else None,
            None,
        )
