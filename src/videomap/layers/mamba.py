"""Bidirectional Mamba mixer ("bimamba v2", the layout of VideoMamba checkpoints).

Parameter names and shapes follow the released VideoMamba weights so that their
``layers.N.mixer.*`` tensors load with ``strict=True``. The backward direction has its own
conv / projections / SSM parameters (``*_b``) and shares ``in_proj`` and ``out_proj``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .. import ops


def _inverse_softplus(x: torch.Tensor) -> torch.Tensor:
    return x + torch.log(-torch.expm1(-x))


def left_matmul(w: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``w @ x`` for w (out, in) and x (B, in, L) of any strides, produced as a contiguous
    (B, out, L) tensor (``torch.matmul`` computes it L-major and then copies it)."""
    return torch.bmm(w.to(x.dtype).expand(x.shape[0], *w.shape), x)


class BiMamba(nn.Module):
    """Mamba-1 mixer scanning the sequence forwards and backwards.

    ``merge="sum"`` adds the two directions as VideoMamba does; ``merge="mean"`` halves the sum
    (Vim / MAP) which keeps activations smaller under reduced precision.
    """

    def __init__(self, d_model: int, d_state: int = 16, d_conv: int = 4, expand: int = 2,
                 dt_rank: int | str = "auto", dt_min: float = 1e-3, dt_max: float = 0.1,
                 dt_init_floor: float = 1e-4, conv_bias: bool = True, bias: bool = False,
                 bidirectional: bool = True, merge: str = "sum") -> None:
        super().__init__()
        if merge not in ("sum", "mean"):
            raise ValueError(f"merge must be 'sum' or 'mean', got {merge!r}")
        self.d_model = d_model
        self.d_state = d_state
        self.d_conv = d_conv
        self.d_inner = expand * d_model
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else int(dt_rank)
        self.bidirectional = bidirectional
        self.merge = merge
        e = self.d_inner

        self.in_proj = nn.Linear(d_model, 2 * e, bias=bias)
        self.out_proj = nn.Linear(e, d_model, bias=bias)
        directions = ("", "_b") if bidirectional else ("",)
        for sfx in directions:
            conv = nn.Conv1d(e, e, kernel_size=d_conv, groups=e, padding=d_conv - 1, bias=conv_bias)
            x_proj = nn.Linear(e, self.dt_rank + 2 * d_state, bias=False)
            dt_proj = nn.Linear(self.dt_rank, e, bias=True)
            # dt initialisation of Mamba: weights ~ U(+-rank^-0.5), bias = softplus^-1(dt), dt log-uniform
            nn.init.uniform_(dt_proj.weight, -self.dt_rank**-0.5, self.dt_rank**-0.5)
            dt = torch.exp(torch.rand(e) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
            with torch.no_grad():
                dt_proj.bias.copy_(_inverse_softplus(dt.clamp(min=dt_init_floor)))
            dt_proj.bias._no_reinit = True  # kept by a model-level init only with keep_dt_bias_init
            a_log = nn.Parameter(torch.log(torch.arange(1, d_state + 1, dtype=torch.float32)).repeat(e, 1))
            d = nn.Parameter(torch.ones(e))
            a_log._no_weight_decay = True
            d._no_weight_decay = True
            setattr(self, f"conv1d{sfx}", conv)
            setattr(self, f"x_proj{sfx}", x_proj)
            setattr(self, f"dt_proj{sfx}", dt_proj)
            setattr(self, "A_log" if sfx == "" else "A_b_log", a_log)
            setattr(self, f"D{sfx}", d)

    def _directions(self) -> tuple[tuple[str, bool], ...]:
        """(parameter suffix, scans backwards in time) per direction."""
        return (("", False), ("_b", True)) if self.bidirectional else (("", False),)

    def direction_params(self, sfx: str) -> list[nn.Parameter]:
        """The parameters one direction owns (``in_proj`` and ``out_proj`` are shared)."""
        conv: nn.Conv1d = getattr(self, f"conv1d{sfx}")
        return [p for p in (conv.weight, conv.bias, getattr(self, f"x_proj{sfx}").weight,
                            getattr(self, f"dt_proj{sfx}").weight, getattr(self, f"dt_proj{sfx}").bias,
                            self.A_log if sfx == "" else self.A_b_log, getattr(self, f"D{sfx}")) if p is not None]

    def in_projection(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """hidden (B, L, d_model) -> x, z, each a contiguous (B, E, L)."""
        ht = hidden.transpose(1, 2)  # (B, d, L) view; the matmuls below read it without a copy
        w = self.in_proj.weight
        x, z = left_matmul(w[: self.d_inner], ht), left_matmul(w[self.d_inner:], ht)  # (B, E, L) each
        if self.in_proj.bias is not None:
            x = x + self.in_proj.bias[: self.d_inner, None].to(x.dtype)
            z = z + self.in_proj.bias[self.d_inner:, None].to(z.dtype)
        return x, z

    def _scan_args(self, x: torch.Tensor, z: torch.Tensor, sfx: str, reverse: bool,
                   fused: bool = True) -> tuple[torch.Tensor, ...]:
        """The selective-scan inputs ``(u, delta, A, B, C, D, z, delta_bias)`` of one direction.

        ``reverse``: scan backwards in time. x and z are given in forward order (the convolution
        reads x reversed, z is flipped here); the scan's output is then in reversed order.

        Projections multiply the weight from the left so that every (B, channels, L) tensor is
        produced contiguous: at long L, layout copies otherwise cost more than the scan itself.
        """
        conv: nn.Conv1d = getattr(self, f"conv1d{sfx}")
        x_proj: nn.Linear = getattr(self, f"x_proj{sfx}")
        dt_proj: nn.Linear = getattr(self, f"dt_proj{sfx}")
        a_log = self.A_log if sfx == "" else self.A_b_log
        d = getattr(self, f"D{sfx}")
        # causal: left context only
        u = ops.causal_conv1d_silu(x, conv.weight, conv.bias, reverse=reverse, fused=fused)
        x_dbl = left_matmul(x_proj.weight, u)  # (B, R + 2N, L)
        dt, b, c = torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=1)
        delta = left_matmul(dt_proj.weight, dt)  # (B, E, L); the bias goes into the scan
        a = -torch.exp(a_log.float())
        return u, delta, a, b, c, d.float(), z.flip(-1) if reverse else z, dt_proj.bias.float()

    def _merge(self, outs: list[torch.Tensor]) -> torch.Tensor:
        """Per-direction scan outputs (each in its own time order) -> the (B, E, L) sum or mean."""
        y = outs[0]
        if self.bidirectional:
            y = y + outs[1].flip(-1)
            if self.merge == "mean":
                y = y * 0.5
        return y

    def out_projection(self, y: torch.Tensor) -> torch.Tensor:
        """Merged output (B, E, L) -> (B, L, d_model)."""
        return self.out_proj(y.transpose(1, 2))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden: (B, L, d_model) -> (B, L, d_model)."""
        x, z = self.in_projection(hidden)
        outs = [ops.selective_scan(*self._scan_args(x, z, sfx, reverse), delta_softplus=True)
                for sfx, reverse in self._directions()]
        return self.out_projection(self._merge(outs))

    # ---------------------------------------------------------------- training with less saved
    def forward_saving_carries(self, hidden: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Without autograd: the merged output (B, E, L) before ``out_proj`` and, per direction, the
        scan's chunk carries, all that :meth:`backward_from_carries` needs besides ``hidden``.

        Runs exactly the operations of :meth:`forward` (the PyTorch convolution, not the fused
        inference kernel), so that the recomputation in backward reproduces them bit for bit."""
        x, z = self.in_projection(hidden)
        outs, carries = [], []
        for sfx, reverse in self._directions():
            inputs = self._scan_args(x, z, sfx, reverse, fused=False)
            out, carry = ops.scan_forward_saving(ops.scan_arguments(*inputs, save=True), True)
            outs.append(out.to(inputs[0].dtype))
            carries.append(carry)
        return self._merge(outs), carries

    def backward_from_carries(self, x: torch.Tensor, z: torch.Tensor, carries: list[torch.Tensor],
                              dy: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None,
                                                         dict[int, torch.Tensor]]:
        """Gradients of x, z (the in-projection's outputs, leaves that require grad) and of the
        direction parameters (keyed by ``id``), given the gradient ``dy`` of the merged output.

        Each direction's convolution and projections are recomputed from x, one direction at a
        time, and the scan's backward runs from the carries of :meth:`forward_saving_carries`."""
        if self.bidirectional and self.merge == "mean":
            dy = dy * 0.5
        dx = dz = None
        grads: dict[int, torch.Tensor] = {}
        for (sfx, reverse), carry in zip(self._directions(), carries, strict=True):
            params = [p for p in self.direction_params(sfx) if p.requires_grad]
            with torch.enable_grad():
                args = ops.scan_arguments(*self._scan_args(x, z, sfx, reverse, fused=False), save=True)
            dargs = ops.scan_backward_saved(args, True, carry, dy.flip(-1) if reverse else dy)
            outs = [(a, g) for a, g in zip(args, dargs, strict=True) if a is not None and a.requires_grad]
            wrt = [t for t in (x, z) if t.requires_grad] + params
            got = torch.autograd.grad([a for a, _ in outs], wrt, [g for _, g in outs], allow_unused=True)
            for t, g in zip(wrt, got, strict=True):
                if t is x:
                    dx = g if dx is None else (dx if g is None else dx + g)
                elif t is z:
                    dz = g if dz is None else (dz if g is None else dz + g)
                elif g is not None:
                    grads[id(t)] = g
        return dx, dz, grads
