"""Exponential moving average of model weights."""

from __future__ import annotations

import copy

import torch
from torch import nn


class ModelEma:
    """A frozen copy of the model whose weights track ``decay * ema + (1 - decay) * model``.

    Updated after every optimizer step. Floating-point buffers (e.g. BatchNorm statistics) are
    averaged as well; integer buffers are copied. The copy lives on the model's device so the
    update is a cheap in-place lerp; use ``.module`` for evaluation.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = float(decay)
        self.module = copy.deepcopy(model)
        self.module.eval()
        for p in self.module.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        # parameters()/buffers() skip duplicates, so tied weights are averaged once.
        pairs = list(zip(self.module.parameters(), model.parameters())) + list(
            zip(self.module.buffers(), model.buffers())
        )
        for ema_t, cur in pairs:
            cur = cur.detach()
            if ema_t.is_floating_point():
                ema_t.lerp_(cur.to(ema_t.dtype), 1.0 - self.decay)
            else:
                ema_t.copy_(cur)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu().clone() for k, v in self.module.state_dict().items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.module.load_state_dict(state)
