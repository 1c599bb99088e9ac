"""Pure-PyTorch selective scan: chunked, exact, memory-bounded; runs on any device.

The sequence is cut into chunks of K steps and processed in a time-major layout
(K, batch, dim, N), so each step's slice is contiguous.  Inside a chunk the linear
recurrence h_k = a_k * h_{k-1} + b_k (a_k = exp(Δ_k A) in (0, 1]) is solved by one of two
exact methods; both only multiply decay factors, never divide by a cumulative decay, so
nothing overflows for large Δ:

* ``"loop"``: one fused in-place ``addcmul`` per step.  Fewest flops; the default on CPU,
  where a per-op overhead of a few microseconds is cheap.
* ``"doubling"``: a log-depth (Hillis-Steele) scan of the pairs (a, b) with the composition
  (a2*a1, a2*b1 + b2), then the entering state added with the chunk's cumulative decay.
  K·log K work but only ~4·log K kernel launches per chunk; the default on GPUs.

Only chunk-sized temporaries exist at any time.  The forward keeps one state per chunk; the
backward recomputes each chunk and runs the adjoint recurrence
g_k = C_k dy_k + a_{k+1} g_{k+1}, which is the same kind of scan run backwards in time.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# Elements of one (K, B, E, N) chunk temporary; the chunk length is derived from it.
_CHUNK_ELEMS = 1 << 20
_MAX_CHUNK = 256
_MIN_CHUNK = 8


def chunk_len(bsz: int, dim: int, nstate: int, seqlen: int) -> int:
    """Chunk length K: large enough to amortise per-chunk overhead, small enough to bound memory."""
    k = _CHUNK_ELEMS // max(1, bsz * dim * nstate)
    k = max(_MIN_CHUNK, min(_MAX_CHUNK, k))
    return max(1, min(k, seqlen))


def default_method(device: torch.device) -> str:
    """``loop`` on CPU (least work), ``doubling`` elsewhere (fewest kernel launches)."""
    return "loop" if device.type == "cpu" else "doubling"


def linear_scan(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Inclusive scan of h_k = a_k h_{k-1} + b_k along dim 0 with h_{-1} = 0.

    Returns (cumulative product of a, h).  Log-depth doubling: after the step with offset s,
    element k holds the composition of the pairs k-2s+1..k.
    """
    n = a.shape[0]
    s = 1
    while s < n:
        b = torch.cat([b[:s], torch.addcmul(b[s:], a[s:], b[:-s])])
        a = torch.cat([a[:s], a[s:] * a[:-s]])
        s *= 2
    return a, b


def _states(a: torch.Tensor, b: torch.Tensor, h0: torch.Tensor, method: str) -> torch.Tensor:
    """h_k = a_k h_{k-1} + b_k for k = 0..K-1 (dim 0) from h_{-1} = h0.  May overwrite b."""
    if method == "loop":
        b[0].addcmul_(a[0], h0)
        for k in range(1, a.shape[0]):
            b[k].addcmul_(a[k], b[k - 1])
        return b
    acum, h = linear_scan(a, b)
    return torch.addcmul(h, acum, h0)


def _adjoint(a: torch.Tensor, beta: torch.Tensor, g_in: torch.Tensor, method: str) -> torch.Tensor:
    """g_k = beta_k + a_{k+1} g_{k+1} for k = K-1..0, with a_K g_K = g_in given.  May overwrite beta."""
    if method == "loop":
        beta[-1].add_(g_in)
        for k in range(a.shape[0] - 2, -1, -1):
            beta[k].addcmul_(a[k + 1], beta[k + 1])
        return beta
    alpha = torch.cat([a[1:], torch.ones_like(a[:1])]).flip(0)
    acum, g = linear_scan(alpha, beta.flip(0))
    return torch.addcmul(g, acum, g_in).flip(0)


def _time_major(x: torch.Tensor) -> torch.Tensor:
    """(B, X, L) -> contiguous (L, B, X)."""
    return x.permute(2, 0, 1).contiguous()


def _delta(delta: torch.Tensor, delta_bias: torch.Tensor | None, softplus: bool):
    raw = delta if delta_bias is None else delta + delta_bias[:, None]
    return raw, (F.softplus(raw) if softplus else raw)


def _chunk(dtT, dtuT, BT, A, h_in, l0, l1, method):
    """a_bar and states of steps l0..l1-1, time-major (K, B, E, N)."""
    a = torch.exp(dtT[l0:l1, :, :, None] * A)
    b = dtuT[l0:l1, :, :, None] * BT[l0:l1, :, None, :]
    return a, _states(a, b, h_in, method)


@torch.no_grad()
def scan_forward(u, delta, A, B, C, D, z, delta_bias, softplus: bool, save_carries: bool,
                 method: str | None = None):
    """Forward pass; returns (out, last_state, carries) where carries[c] is the state at the end
    of chunk c, shape (nchunks, B, E, N) (None unless asked for)."""
    method = method or default_method(u.device)
    bsz, dim, seqlen = u.shape
    nstate = A.shape[1]
    k = chunk_len(bsz, dim, nstate, seqlen)
    nch = (seqlen + k - 1) // k
    _, dt = _delta(delta, delta_bias, softplus)
    dtT, dtuT = _time_major(dt), _time_major(dt * u)
    BT, CT = _time_major(B), _time_major(C)
    yT = u.new_empty(seqlen, bsz, dim)
    h = u.new_zeros(bsz, dim, nstate)
    carries = u.new_empty(nch, bsz, dim, nstate) if save_carries else None
    for c in range(nch):
        l0, l1 = c * k, min(seqlen, (c + 1) * k)
        _, hs = _chunk(dtT, dtuT, BT, A, h, l0, l1, method)
        yT[l0:l1] = torch.einsum("kben,kbn->kbe", hs, CT[l0:l1])
        h = hs[-1].clone()
        if carries is not None:
            carries[c] = h
    out = yT.permute(1, 2, 0).contiguous()
    if D is not None:
        out.addcmul_(D[:, None].expand_as(u), u)
    if z is not None:
        out.mul_(F.silu(z))
    return out, h, carries


@torch.no_grad()
def scan_backward(u, delta, A, B, C, D, z, delta_bias, softplus: bool, carries, dout, dlast,
                  method: str | None = None):
    """Gradients of every input, recomputing each chunk from its saved entering state."""
    method = method or default_method(u.device)
    bsz, dim, seqlen = u.shape
    nstate = A.shape[1]
    k = chunk_len(bsz, dim, nstate, seqlen)
    nch = (seqlen + k - 1) // k
    # Big (B, E, L)-sized temporaries are freed as soon as possible: peak memory stays a small
    # multiple of the input size.
    _, dt = _delta(delta, delta_bias, softplus)
    dy = dout * F.silu(z) if z is not None else dout
    dtT, uT, dyT = _time_major(dt), _time_major(u), _time_major(dy)
    dtuT = dtT * uT
    del dt
    BT, CT = _time_major(B), _time_major(C)
    ddtT = u.new_empty(seqlen, bsz, dim)
    duT = u.new_empty(seqlen, bsz, dim)
    ypreT = u.new_empty(seqlen, bsz, dim) if z is not None else None
    dBT = u.new_empty(seqlen, bsz, nstate)
    dCT = u.new_empty(seqlen, bsz, nstate)
    dA = torch.zeros_like(A)
    # g_in = a_bar_{l+1} * g_{l+1}, flowing into the current chunk from the right.
    g_in = dlast.clone() if dlast is not None else u.new_zeros(bsz, dim, nstate)
    zeros = u.new_zeros(bsz, dim, nstate)
    for c in range(nch - 1, -1, -1):
        l0, l1 = c * k, min(seqlen, (c + 1) * k)
        h_in = carries[c - 1] if c > 0 else zeros
        a, hs = _chunk(dtT, dtuT, BT, A, h_in, l0, l1, method)
        dt_c, dy_c, B_c, C_c = dtT[l0:l1], dyT[l0:l1], BT[l0:l1], CT[l0:l1]
        if ypreT is not None:
            ypreT[l0:l1] = torch.einsum("kben,kbn->kbe", hs, C_c)
        g = _adjoint(a, dy_c[..., None] * C_c[:, :, None, :], g_in, method)
        g_in = a[0] * g[0]
        gB = torch.einsum("kben,kbn->kbe", g, B_c)
        dBT[l0:l1] = torch.einsum("kben,kbe->kbn", g, dtuT[l0:l1])
        dCT[l0:l1] = torch.einsum("kben,kbe->kbn", hs, dy_c)
        # dL/da_bar * a_bar = g * a_bar * h_prev, reusing a's storage
        dAh = a.mul_(g)
        dAh[1:].mul_(hs[:-1])
        dAh[0].mul_(h_in)
        dA.add_((dAh * dt_c[..., None]).sum((0, 1)))
        torch.addcmul((dAh * A).sum(-1), uT[l0:l1], gB, out=ddtT[l0:l1])
        torch.mul(dt_c, gB, out=duT[l0:l1])
    del dtT, dtuT, uT, dyT, BT, CT, a, hs, g, dAh
    du = duT.permute(1, 2, 0).contiguous()
    del duT
    dD = None
    if D is not None:
        du.addcmul_(D[:, None].expand_as(u), dy)
        dD = (dy * u).sum((0, 2))
    del dy
    dz = None
    if z is not None:
        dz = ypreT.permute(1, 2, 0).contiguous()
        del ypreT
        if D is not None:
            dz.addcmul_(D[:, None].expand_as(u), u)
        sz = torch.sigmoid(z)
        dz.mul_(dout).mul_(sz)  # d silu(z)/dz = sz * (1 + z * (1 - sz))
        dz.mul_(torch.rsub(sz, 1).mul_(z).add_(1))
        del sz
    ddt = ddtT.permute(1, 2, 0).contiguous()
    del ddtT
    if softplus:
        raw = delta if delta_bias is None else delta + delta_bias[:, None]
        ddt.mul_(torch.where(raw > 20, torch.ones_like(raw), torch.sigmoid(raw)))
        del raw
    dbias = ddt.sum((0, 2)) if delta_bias is not None else None
    dB, dC = dBT.permute(1, 2, 0).contiguous(), dCT.permute(1, 2, 0).contiguous()
    return du, ddt, dA, dB, dC, dD, dz, dbias
