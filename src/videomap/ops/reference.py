"""Sequential reference selective scan: the definition, one time step at a time."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ._checks import check_inputs, compute_dtype, no_autocast


def selective_scan_ref(
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
    """Plain sequential selective scan (loop over L, ordinary torch ops, autograd through it).

    Slow and memory-hungry under autograd (it keeps every step's state), but obviously
    correct and dtype-generic (float64 included), which is why tests and benchmarks use it
    as the ground truth and baseline.  Same signature and return convention as
    :func:`videomap.ops.selective_scan`.
    """
    check_inputs(u, delta, A, B, C, D, z, delta_bias)
    in_dtype = u.dtype
    ct = compute_dtype(u)
    bsz, dim, seqlen = u.shape
    with no_autocast(u.device.type):
        u_, delta_, A_, B_, C_ = (t.to(ct) for t in (u, delta, A, B, C))
        dt = delta_ if delta_bias is None else delta_ + delta_bias.to(ct)[:, None]
        if delta_softplus:
            dt = F.softplus(dt)  # torch's threshold: x for x > 20
        dtu = dt * u_
        h = u_.new_zeros(bsz, dim, A_.shape[1])
        ys = []
        # unbind (not dt[..., t]) so autograd's backward is one stack, not L full-size scatters.
        steps = zip(dt.unbind(-1), dtu.unbind(-1), B_.unbind(-1), C_.unbind(-1))
        for dt_t, dtu_t, b_t, c_t in steps:
            a_bar = torch.exp(dt_t[:, :, None] * A_)  # (B, E, N)
            h = a_bar * h + dtu_t[:, :, None] * b_t[:, None, :]
            ys.append((h * c_t[:, None, :]).sum(-1))
        y = torch.stack(ys, dim=-1) if ys else u_.new_zeros(bsz, dim, 0)
        if D is not None:
            y = y + D.to(ct)[:, None] * u_
        if z is not None:
            y = y * F.silu(z.to(ct))
    out = y.to(in_dtype)
    return (out, h.to(in_dtype)) if return_last_state else out
