"""The selective scan as a registered PyTorch operator: ``torch.ops.videomap.selective_scan_fwd``
and ``..._bwd``, with fake (shape-only) implementations and autograd registered on the op.

Registering it is what lets ``torch.compile(fullgraph=True)`` and ``torch.export`` see the scan
as one opaque node instead of tracing into ctypes calls they cannot follow. The real
implementation picks its backend when it runs: mamba_ssm's compiled extension for CUDA tensors
when it imports (:mod:`.cuda_scan`), the C kernel for CPU tensors when it is built (fp32), else
the chunked PyTorch scan (float64, CUDA without mamba_ssm, other devices, no compiler). Inputs are
expected already prepared (contiguous; fp32 or fp64, except that u, delta and z may all be bf16
for CPU inference, and u, delta, z, B, C may be fp16/bf16 for mamba_ssm, which trains in them);
:func:`videomap.ops.selective_scan` does that.

The chunk states saved for backward travel as a flat tensor whose length depends on the backend
(one state per 64 steps in C, per 2048 steps plus the pre-gate output in mamba_ssm, one per
PyTorch chunk otherwise), so a traced graph is tied to the
backend it was traced for; the fake implementation asks the same question the real one does.
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import cpu_build, cuda_scan
from ._checks import no_autocast
from .cpu_scan import MAX_STATE, carries_numel, kernel_backward, kernel_forward
from .torch_scan import chunk_len, scan_backward, scan_forward


def choose_backend(device: torch.device, dtype: torch.dtype | None = None,
                   nstate: int | None = None) -> tuple[str, str]:
    """``(backend, reason)``: the one decision of which implementation scans inputs that reach
    the operator on ``device`` as ``dtype`` (None: fp32) with ``nstate`` states (None: within the
    C kernel's limit). ``backend`` is ``"cuda-mamba_ssm"``, ``"cpu-kernel"`` or ``"torch"``."""
    if device.type == "cuda":
        if cuda_scan.cuda_module() is not None:
            return "cuda-mamba_ssm", "mamba_ssm CUDA extension"
        return "torch", "CUDA tensors but mamba_ssm's selective_scan_cuda does not import"
    if device.type != "cpu":
        return "torch", f"no dedicated kernel for device {device.type}"
    if dtype not in (None, torch.float32, torch.bfloat16):
        return "torch", f"{dtype} inputs (the C kernel reads fp32, and bf16 for inference)"
    if nstate is not None and nstate > MAX_STATE:
        return "torch", f"d_state {nstate} > {MAX_STATE} (the C kernel's limit)"
    if cpu_build.kernel_disabled():
        return "torch", "VIDEOMAP_DISABLE_KERNEL is set"
    kern = cpu_build.get_kernel()
    if kern is None:
        return "torch", f"C kernel unavailable: {cpu_build.kernel_error()}"
    return "cpu-kernel", f"{kern.path} ({' '.join(f for f in kern.flags if f.startswith(('-march', '-fopenmp')))})"


def op_backend(u: Tensor, nstate: int) -> str:
    """``"cuda-mamba_ssm"``, ``"cpu-kernel"`` or ``"torch"``: what the operator runs for inputs like ``u``."""
    return choose_backend(u.device, u.dtype, nstate)[0]


def _carries_numel(backend: str, u: Tensor, nstate: int, has_z: bool) -> int:
    bsz, dim, seqlen = u.shape
    if backend == "cuda-mamba_ssm":
        return cuda_scan.carries_numel(bsz, dim, seqlen, nstate, has_z)
    if backend == "cpu-kernel":
        return carries_numel(cpu_build.get_kernel().chunk, bsz, dim, seqlen, nstate)
    k = chunk_len(bsz, dim, nstate, seqlen)
    return (-(-seqlen // k)) * bsz * dim * nstate


def _empty(like: Tensor) -> Tensor:
    return like.new_empty(0)


@torch.library.custom_op("videomap::selective_scan_fwd", mutates_args=())
def selective_scan_fwd(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None,
                       z: Tensor | None, delta_bias: Tensor | None, softplus: bool,
                       save_carries: bool) -> tuple[Tensor, Tensor, Tensor]:
    """(out, last_state, carries); carries is flat and empty unless ``save_carries``."""
    with no_autocast(u.device.type):
        return _forward(u, delta, A, B, C, D, z, delta_bias, softplus, save_carries)


def _forward(u, delta, A, B, C, D, z, delta_bias, softplus, save_carries):
    backend = op_backend(u, A.shape[1])
    if backend == "cuda-mamba_ssm":
        return cuda_scan.forward(cuda_scan.cuda_module(), u, delta, A, B, C, D, z, delta_bias, softplus, save_carries)
    low = u.dtype in (torch.bfloat16, torch.float16)  # half u/delta/z/out: inference only, fp32 inside
    if low and save_carries:
        raise ValueError("selective_scan_fwd: half-precision u/delta/z are for inference; pass fp32 to train")
    if backend == "cpu-kernel":
        return kernel_forward(cpu_build.get_kernel(), u, delta, A, B, C, D, z, delta_bias, softplus, save_carries)
    dtype = u.dtype
    if low:
        u, delta, z = u.float(), delta.float(), None if z is None else z.float()
    out, last, carries = scan_forward(u, delta, A, B, C, D, z, delta_bias, softplus, save_carries)
    return out.to(dtype), last, (carries.reshape(-1) if carries is not None else _empty(u))


@selective_scan_fwd.register_fake
def _(u, delta, A, B, C, D, z, delta_bias, softplus, save_carries):
    nstate = A.shape[1]
    backend = op_backend(u, nstate)
    n = _carries_numel(backend, u, nstate, z is not None) if save_carries else 0
    state_dtype = torch.float32 if u.dtype in (torch.bfloat16, torch.float16) else u.dtype
    return (torch.empty_like(u), u.new_empty(u.shape[0], u.shape[1], nstate, dtype=state_dtype),
            u.new_empty(n, dtype=state_dtype))


@torch.library.custom_op("videomap::selective_scan_bwd", mutates_args=())
def selective_scan_bwd(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None,
                       z: Tensor | None, delta_bias: Tensor | None, softplus: bool, carries: Tensor,
                       dout: Tensor, dlast: Tensor | None) -> list[Tensor]:
    """Gradients of (u, delta, A, B, C, D, z, delta_bias); an empty tensor where the input is None."""
    with no_autocast(u.device.type):
        return _backward_impl(u, delta, A, B, C, D, z, delta_bias, softplus, carries, dout, dlast)


def _backward_impl(u, delta, A, B, C, D, z, delta_bias, softplus, carries, dout, dlast):
    nstate = A.shape[1]
    backend = op_backend(u, nstate)
    if carries.numel() != _carries_numel(backend, u, nstate, z is not None):
        raise RuntimeError("selective_scan backward: the forward pass saved no chunk states "
                           "(it ran with gradients disabled)")
    if backend == "cuda-mamba_ssm":
        grads = cuda_scan.backward(cuda_scan.cuda_module(), u, delta, A, B, C, D, z, delta_bias, softplus,
                                   carries, dout, dlast)
    elif backend == "cpu-kernel":
        grads = kernel_backward(cpu_build.get_kernel(), u, delta, A, B, C, D, z, delta_bias, softplus,
                                carries, dout, dlast)
    else:
        bsz, dim, seqlen = u.shape
        k = chunk_len(bsz, dim, nstate, seqlen)
        states = carries.view(-(-seqlen // k), bsz, dim, nstate)
        grads = scan_backward(u, delta, A, B, C, D, z, delta_bias, softplus, states, dout.to(u.dtype),
                              None if dlast is None else dlast.to(u.dtype))
    return [g.contiguous() if g is not None else _empty(u) for g in grads]


@selective_scan_bwd.register_fake
def _(u, delta, A, B, C, D, z, delta_bias, softplus, carries, dout, dlast):
    def like(t: Tensor | None) -> Tensor:
        return _empty(u) if t is None else torch.empty_like(t)

    return [torch.empty_like(u), torch.empty_like(delta), torch.empty_like(A), torch.empty_like(B),
            torch.empty_like(C), like(D), like(z), like(delta_bias)]


def _setup_context(ctx, inputs, output) -> None:
    u, delta, A, B, C, D, z, delta_bias, softplus, _save = inputs
    ctx.softplus = softplus
    ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, output[2])


def _backward(ctx, dout, dlast, _dcarries):
    u, delta, A, B, C, D, z, delta_bias, carries = ctx.saved_tensors
    grads = torch.ops.videomap.selective_scan_bwd(u, delta, A, B, C, D, z, delta_bias, ctx.softplus,
                                                  carries, dout.contiguous(), dlast)
    present = (u, delta, A, B, C, D, z, delta_bias)
    return (*(g if t is not None else None for g, t in zip(grads, present, strict=True)), None, None)


selective_scan_fwd.register_autograd(_backward, setup_context=_setup_context)
