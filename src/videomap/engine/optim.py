"""AdamW parameter groups (weight-decay exemptions, layer-wise lr decay) and the lr schedule."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any, Literal, get_args

import torch
from torch import nn

# How a model assigns its tensors to lr layers under layer-wise decay (the model implements it; the
# engine only passes the choice on): "released" is the grouping of the authors' released VideoMamba
# code, "per_block" the textbook one (every block one layer, in execution order). See
# docs/recipes.md, "Layer-wise lr decay".
LayerDecayMode = Literal["released", "per_block"]
LAYER_DECAY_MODES = get_args(LayerDecayMode)


def _matches(name: str, names: Iterable[str]) -> bool:
    """``name`` is one of ``names`` or a tensor inside a module named there."""
    return any(name == e or name.startswith(e + ".") for e in names)


def is_no_decay(name: str, param: torch.Tensor, skip: Iterable[str] = (), use_flags: bool = True) -> bool:
    """Whether ``param`` belongs to the zero-weight-decay group.

    The one rule: 1-D (and 0-D) tensors -- norms' scales and biases -- never decay; nor does a
    tensor flagged ``_no_weight_decay`` where it is created (e.g. the state-space parameters), nor
    one the model names in its ``no_weight_decay()`` (``skip``: embeddings, learned tokens).
    ``use_flags=False`` ignores the flags: the authors' released optimizers
    (``video_sm/optim_factory.py``, ``get_parameter_groups``; ``video_mm/utils/optimizer.py``,
    ``add_weight_decay``) exempt only 1-D tensors, biases and ``no_weight_decay()`` names, so the
    2-D flagged tensors (Mamba's state matrices) decay there while the 1-D ones do not.
    """
    flagged = use_flags and bool(getattr(param, "_no_weight_decay", False))
    return param.ndim <= 1 or flagged or _matches(name, skip)


def flagged_no_decay(model: nn.Module) -> set[str]:
    """Names of the parameters flagged ``_no_weight_decay``.

    Read before the model is wrapped: FSDP replaces parameters, and the new ones carry no flags.
    """
    return {n for n, p in model.named_parameters() if getattr(p, "_no_weight_decay", False)}


def param_groups(
    model: nn.Module,
    weight_decay: float,
    layer_decay: float | None = None,
    extra_no_decay: Iterable[str] = (),
    layer_decay_mode: LayerDecayMode = "released",
    decay_flagged: bool = False,
) -> list[dict[str, Any]]:
    """Split trainable parameters into groups keyed by (decay, layer).

    ``decay_flagged``: tensors flagged ``_no_weight_decay`` decay unless another rule exempts them
    (:func:`is_no_decay` with ``use_flags=False``, the released optimizers' rule).

    Each group carries ``lr_scale`` (``layer_decay ** (num_layers - 1 - layer_id)``, or 1) so the
    scheduler can set ``lr = base_lr * lr_scale * factor`` without forgetting the layer scaling.
    The layer of a tensor is the model's answer to ``lr_layer_id(name, layer_decay_mode)``; the
    engine itself knows no tensor names. Raises ``ValueError`` if layer decay is requested from a
    model that cannot say which layer a parameter belongs to, or for an unknown mode.
    """
    if layer_decay_mode not in LAYER_DECAY_MODES:
        raise ValueError(f"layer_decay_mode must be one of {LAYER_DECAY_MODES}, got {layer_decay_mode!r}")
    skip = set(extra_no_decay)
    if hasattr(model, "no_weight_decay"):
        skip |= set(model.no_weight_decay())
    use_layers = layer_decay is not None
    num_layers = 1
    if use_layers:
        if not (hasattr(model, "lr_layer_id") and hasattr(model, "num_lr_layers")):
            raise ValueError(
                f"layer_decay={layer_decay} needs the model to define lr_layer_id(name, mode) and "
                f"num_lr_layers(); {type(model).__name__} does not"
            )
        num_layers = int(model.num_lr_layers())
    groups: dict[tuple[bool, int], dict[str, Any]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        no_decay = is_no_decay(name, p, skip, use_flags=not decay_flagged)
        layer = 0
        scale = 1.0
        if use_layers:
            layer = int(model.lr_layer_id(name, layer_decay_mode))
            if not 0 <= layer < num_layers:
                raise ValueError(f"lr_layer_id({name!r}, {layer_decay_mode!r}) = {layer} is outside [0, {num_layers})")
            scale = float(layer_decay) ** (num_layers - 1 - layer)
        key = (no_decay, layer)
        if key not in groups:
            groups[key] = {
                "name": f"layer{layer}_{'no_decay' if no_decay else 'decay'}",
                "params": [],
                "param_names": [],
                "weight_decay": 0.0 if no_decay else weight_decay,
                "lr_scale": scale,
                "layer_id": layer,
            }
        groups[key]["params"].append(p)
        groups[key]["param_names"].append(name)
    return [groups[k] for k in sorted(groups, key=lambda k: (k[1], k[0]))]


def build_optimizer(
    model: nn.Module,
    lr: float,
    weight_decay: float = 0.05,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    layer_decay: float | None = None,
    extra_no_decay: Iterable[str] = (),
    layer_decay_mode: LayerDecayMode = "released",
    decay_flagged: bool = False,
) -> torch.optim.AdamW:
    """AdamW over :func:`param_groups`; every group records ``base_lr = lr * lr_scale``."""
    groups = param_groups(model, weight_decay, layer_decay, extra_no_decay, layer_decay_mode, decay_flagged)
    if not groups:
        raise ValueError("the model has no trainable parameters")
    for g in groups:
        g["base_lr"] = lr * g["lr_scale"]
        g["lr"] = g["base_lr"]
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)


def cosine_schedule(
    step: int,
    total_steps: int,
    warmup_steps: int = 0,
    min_factor: float = 0.0,
    start_factor: float = 0.0,
) -> float:
    """Multiplier of the base lr for optimizer step ``step`` (0-based).

    Linear warm-up from ``start_factor`` to 1 over ``warmup_steps`` steps, then a half cosine
    from 1 down to ``min_factor`` (= min_lr / lr) reached at ``step == total_steps``.
    """
    if step < warmup_steps:
        return start_factor + (1.0 - start_factor) * step / warmup_steps
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    return min_factor + (1.0 - min_factor) * 0.5 * (1.0 + math.cos(math.pi * progress))


class WarmupCosineSchedule:
    """Per-optimizer-step scheduler writing ``group['lr'] = group['base_lr'] * factor``.

    Stateless apart from the step counter, so resuming only needs ``{"step": n}``.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        total_steps: int,
        warmup_steps: int = 0,
        min_factor: float = 0.0,
        start_factor: float = 0.0,
    ) -> None:
        self.optimizer = optimizer
        self.total_steps = int(total_steps)
        self.warmup_steps = int(warmup_steps)
        self.min_factor = float(min_factor)
        self.start_factor = float(start_factor)
        self.step_count = 0
        for g in optimizer.param_groups:
            g.setdefault("lr_scale", 1.0)
            g.setdefault("base_lr", g["lr"])

    def factor(self, step: int) -> float:
        return cosine_schedule(step, self.total_steps, self.warmup_steps, self.min_factor, self.start_factor)

    def apply(self, step: int | None = None) -> float:
        """Set the lrs for optimizer step ``step`` (default: the next one) and return the factor."""
        step = self.step_count if step is None else step
        f = self.factor(step)
        for g in self.optimizer.param_groups:
            g["lr"] = g["base_lr"] * f
        return f

    def step(self) -> None:
        """Advance after an optimizer step."""
        self.step_count += 1

    def state_dict(self) -> dict[str, Any]:
        return {
            "step": self.step_count,
            "total_steps": self.total_steps,
            "warmup_steps": self.warmup_steps,
            "min_factor": self.min_factor,
            "start_factor": self.start_factor,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        # Only the position is restored: the shape of the schedule comes from the current config.
        self.step_count = int(state["step"])
