"""VideoMamba (pure bidirectional Mamba) and VideoHybrid (VideoMAP: one Transformer block after
every ``attn_every`` Mamba layers). The hybrid is VideoMamba with Transformer blocks interleaved,
so :class:`VideoHybrid` subclasses :class:`VideoMamba` and only requires ``attn_every >= 1``.

Mamba blocks are ``layers.N`` exactly as in VideoMamba checkpoints; Transformer blocks of the
hybrid are ``attn_layers.K`` so the Mamba part keeps VideoMamba's indices.
"""

from __future__ import annotations

import math
from collections.abc import Collection
from typing import Literal, get_args

import torch
from torch import nn

from ..layers import DropPath, MambaBlock, RMSNorm, TransformerBlock, drop_path_rates
from .base import VideoBackbone

AttnWiring = Literal["residual", "branch"]
ATTN_WIRINGS: tuple[str, ...] = get_args(AttnWiring)
InitScheme = Literal["videomamba", "map"]
INIT_SCHEMES: tuple[str, ...] = get_args(InitScheme)


class VideoMamba(VideoBackbone):
    """Bidirectional-Mamba video backbone, optionally hybrid.

    Args beyond :class:`VideoBackbone`:
        depth: number of Mamba layers.
        attn_every: insert a Transformer block after every ``attn_every`` Mamba layers (0 = none).
        attn_mlp_ratio / attn_head_dim: Transformer block shape (heads = dim / head_dim).
        merge: "sum" (VideoMamba) or "mean" of the two scan directions.
        drop_path_rate: stochastic depth, linear from 0 over all blocks in execution order.
        attn_wiring: where a Transformer block sits. ``residual`` (default): it runs on the
            residual stream (residual + last Mamba output) and its output restarts the stream,
            so attention sees everything the Mamba blocks wrote. ``branch``: MAP's released
            hybrid, ``h = attn(h) + h`` on the Mamba branch output only, the fp32 residual stream
            never passes through attention. Same parameters either way.
        keep_dt_bias_init: keep Mamba's dt-bias initialisation. VideoMamba's and MAP's released
            code re-initialise every Linear bias to zero, which also wipes it (initial
            delta = softplus(0)); the default False reproduces that.
        init: ``videomamba`` (default; VideoMamba's ``segm_init_weights`` + Mamba's
            ``_init_weights``): Linear trunc-normal(0.02), residual out-projections rescaled by
            1/sqrt(Mamba layers). ``map``: MAP's released order (yunzeliu/MAP ``models_mamba.py``,
            ``initialize_weights`` called last): every Linear xavier-uniform, which also undoes
            the 1/sqrt(depth) rescale. Biases are zeroed either way.
        mixer_recompute: in training, the Mamba blocks keep only their input, the merged mixer
            output and the scans' chunk carries for backward and recompute the rest (see
            :class:`~videomap.layers.MambaBlock`); False stores every intermediate as plain
            autograd does (same gradients to rounding, several times the memory).
    """

    final_norm_name = "norm_f"

    def __init__(self, depth: int = 24, embed_dim: int = 192, attn_every: int = 0,
                 attn_mlp_ratio: float = 2.0, attn_head_dim: int = 64, merge: str = "sum",
                 drop_path_rate: float = 0.0, d_state: int = 16, norm_eps: float = 1e-5,
                 attn_wiring: AttnWiring = "residual", keep_dt_bias_init: bool = False,
                 init: InitScheme = "videomamba", mixer_recompute: bool = True, **kwargs) -> None:
        super().__init__(embed_dim=embed_dim, **kwargs)
        if attn_wiring not in ATTN_WIRINGS:
            raise ValueError(f"attn_wiring: expected one of {ATTN_WIRINGS}, got {attn_wiring!r}")
        if init not in INIT_SCHEMES:
            raise ValueError(f"init: expected one of {INIT_SCHEMES}, got {init!r}")
        self.depth = depth
        self.attn_every = attn_every
        self.attn_wiring = attn_wiring
        plan: list[tuple[str, int]] = []
        for i in range(depth):
            plan.append(("m", i))
            if attn_every and (i + 1) % attn_every == 0:
                plan.append(("a", (i + 1) // attn_every - 1))
        self._plan = plan
        dpr = drop_path_rates(drop_path_rate, len(plan))

        # A Mamba block drops the *incoming* branch output (VideoMamba layout), i.e. the previous
        # block's output at that block's rate; the drop before an attention block / the final norm
        # is held by the model.
        in_rate = [0.0] * depth
        pre_attn_rate: list[float] = []
        for p, (kind, _) in enumerate(plan):
            if kind == "m" and p + 1 < len(plan) and plan[p + 1][0] == "m":
                in_rate[plan[p + 1][1]] = dpr[p]
            if kind == "a":
                pre_attn_rate.append(dpr[p - 1])
        self.layers = nn.ModuleList(
            MambaBlock(embed_dim, drop_path=in_rate[i], norm_eps=norm_eps, recompute=mixer_recompute,
                       d_state=d_state, merge=merge)
            for i in range(depth)
        )
        attn_pos = [p for p, (kind, _) in enumerate(plan) if kind == "a"]
        self.attn_layers = nn.ModuleList(
            TransformerBlock(embed_dim, max(1, embed_dim // attn_head_dim), mlp_ratio=attn_mlp_ratio,
                             drop_path=dpr[p])
            for p in attn_pos
        )
        self.pre_attn_drop = nn.ModuleList(DropPath(r) for r in pre_attn_rate)
        self.drop_path = DropPath(dpr[-1] if plan[-1][0] == "m" else 0.0)
        self.norm_f = RMSNorm(embed_dim, eps=norm_eps)
        self._init_weights(keep_dt_bias_init, init)

    def _init_weights(self, keep_dt_bias_init: bool, init: InitScheme = "videomamba") -> None:
        for m in self.modules():
            if isinstance(m, nn.Linear):
                if init == "map":
                    nn.init.xavier_uniform_(m.weight)
                else:
                    nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None and not (keep_dt_bias_init and getattr(m.bias, "_no_reinit", False)):
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if init == "map":  # MAP's xavier re-initialisation runs after, and replaces, the rescale
            return
        # GPT-2 style: scale residual-branch output projections by 1/sqrt(number of Mamba layers),
        # the count VideoMamba and MAP use (attention blocks do not add to it)
        n = self.depth
        for name, p in self.named_parameters():
            if name.endswith(("out_proj.weight", "fc2.weight")):
                nn.init.kaiming_uniform_(p, a=math.sqrt(5))
                with torch.no_grad():
                    p /= math.sqrt(n)

    def _stream_precision(self, stream: torch.Tensor) -> torch.Tensor:
        """Under autocast the stream stays fp32, like the residual it is built from (attention's
        Linear layers still run in bf16); a model cast to bf16 gets its own dtype."""
        if torch.is_autocast_enabled(stream.device.type):
            return stream.float()
        return stream.to(self.norm_f.weight.dtype)

    def block_names(self) -> list[str]:
        return [f"layers.{i}" if kind == "m" else f"attn_layers.{i}" for kind, i in self._plan]

    def run_blocks(self, x: torch.Tensor, take: Collection[int] = (),
                   stop: int | None = None) -> tuple[torch.Tensor, list[torch.Tensor]]:
        end = len(self._plan) - 1
        stop = end if stop is None else stop
        hidden, residual = x, None
        taken: list[torch.Tensor] = []
        for p, (kind, i) in enumerate(self._plan[: stop + 1]):
            if kind == "m":
                hidden, residual = self.run_block(p, self.layers[i], hidden, residual)
            elif self.attn_wiring == "branch":
                hidden = self.run_block(p, self.attn_layers[i], hidden) + hidden
            else:
                stream = hidden if residual is None else residual + self.pre_attn_drop[i](hidden)
                hidden, residual = self.run_block(p, self.attn_layers[i], self._stream_precision(stream)), None
            if p in take:
                taken.append(hidden if residual is None else residual + hidden)
        last_drop = self.drop_path if stop == end else nn.Identity()
        return (hidden if residual is None else residual + last_drop(hidden)), taken

    def final_norm(self, stream: torch.Tensor) -> torch.Tensor:
        return self.norm_f(stream.to(self.norm_f.weight.dtype))


class VideoHybrid(VideoMamba):
    """VideoMAP's hybrid backbone: a Transformer block after every ``attn_every`` (default 4)
    Mamba layers. Same layout and weights as :class:`VideoMamba` built with that ``attn_every``;
    the class exists so the registry, checks and logs name what is built."""

    def __init__(self, depth: int = 24, embed_dim: int = 192, attn_every: int = 4, **kwargs) -> None:
        if attn_every < 1:
            raise ValueError(f"attn_every: a VideoHybrid needs a Transformer block every n >= 1 Mamba layers, got "
                             f"{attn_every} (VideoMamba is the model without them)")
        super().__init__(depth=depth, embed_dim=embed_dim, attn_every=attn_every, **kwargs)
