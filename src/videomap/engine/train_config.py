"""Training configuration shared by pre-training, fine-tuning and distillation."""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from .optim import LAYER_DECAY_MODES, LayerDecayMode

AmpMode = Literal["none", "bf16", "fp16"]
DistributedMode = Literal["auto", "ddp", "fsdp", "none"]
AMP_MODES = get_args(AmpMode)
DISTRIBUTED_MODES = get_args(DistributedMode)


def scale_lr(base_lr: float, global_batch: int, base: int = 256) -> float:
    """Linear scaling rule: papers quote ``base_lr`` for a batch of ``base`` clips.

    The engine only takes absolute learning rates, so recipes call this once with
    ``batch_size * accum_steps * world_size`` to get the value for ``TrainConfig.lr``.
    """
    if global_batch <= 0 or base <= 0:
        raise ValueError(f"global_batch and base must be positive, got {global_batch} and {base}")
    return base_lr * global_batch / base


@dataclass
class TrainConfig:
    """Everything the training loop needs besides the model, the loss and the data.

    ``batch_size`` is per process; the global batch is ``batch_size * accum_steps * world_size``.
    ``lr`` and ``min_lr`` are absolute (see :func:`scale_lr`). ``warmup_steps``, when set,
    overrides ``warmup_epochs``. ``max_steps`` caps the number of optimizer steps and the
    learning-rate schedule is compressed to fit inside the cap.

    ``layer_decay`` scales a tensor's lr by ``layer_decay ** (num_lr_layers - 1 - layer)``, the
    layer being the model's answer under ``layer_decay_mode``: "released" (the authors' released
    VideoMamba grouping) or "per_block" (one layer per block).

    ``decay_ssm_params``: weight decay also reaches the tensors a model flags ``_no_weight_decay``
    unless they are 1-D (Mamba's 2-D state matrices; its 1-D skip parameters stay exempt), as the
    authors' released optimizers do. The default False keeps them exempt (Mamba's own rule).

    ``amp`` is "none", "bf16" (CPU and CUDA) or "fp16" (CUDA only, with a GradScaler);
    unsupported combinations warn and train in fp32. ``distributed`` is "auto" (DDP when
    launched with more than one process), "ddp", "fsdp" or "none". Checkpoints are written every
    ``save_every_steps`` optimizer steps (None: only at the end), keeping the newest
    ``keep_last``. ``save_trainable_only`` stores only the parameters that require gradients
    (plus buffers) in checkpoints: a frozen 7B language model or vision encoder is rebuilt from
    its own weights before a resume instead of being rewritten into every checkpoint. ``extra``
    is free-form and is stored in checkpoints, so it must hold plain values (str, numbers,
    lists, dicts).
    """

    epochs: int = 1
    batch_size: int = 8
    lr: float = 1e-3
    min_lr: float = 0.0
    warmup_epochs: float = 0.0
    warmup_steps: int | None = None
    weight_decay: float = 0.05
    layer_decay: float | None = None
    layer_decay_mode: LayerDecayMode = "released"
    decay_ssm_params: bool = False
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    accum_steps: int = 1
    clip_grad: float | None = None
    amp: AmpMode = "none"
    ema_decay: float | None = None
    save_every_steps: int | None = None
    keep_last: int | None = 2
    output_dir: str = "runs/train"
    seed: int = 0
    log_every: int = 10
    num_workers: int = 0
    threads: int | None = None  # compute threads; None: available CPUs - workers (videomap/threads.py)
    max_steps: int | None = None
    eval_every_epochs: int = 1
    distributed: DistributedMode = "auto"
    resume: bool = False
    device: str = "auto"
    find_unused_parameters: bool = False
    save_trainable_only: bool = False
    tensorboard: bool = True
    plot: bool = True
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.betas = tuple(float(b) for b in self.betas)  # type: ignore[assignment]
        self.validate()

    def validate(self) -> None:
        """Fail early on values that would otherwise surface as obscure errors mid-run."""
        if self.amp not in AMP_MODES:
            raise ValueError(f"amp must be one of {AMP_MODES}, got {self.amp!r}")
        if self.distributed not in DISTRIBUTED_MODES:
            raise ValueError(f"distributed must be one of {DISTRIBUTED_MODES}, got {self.distributed!r}")
        for name in ("epochs", "batch_size", "accum_steps", "log_every", "eval_every_epochs"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.num_workers < 0:
            raise ValueError("num_workers must be >= 0")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be >= 1 or null (automatic), got {self.threads}")
        if self.lr < 0 or self.min_lr < 0:
            raise ValueError("lr and min_lr must be >= 0")
        if self.min_lr > self.lr:
            warnings.warn(f"min_lr ({self.min_lr}) > lr ({self.lr}); the schedule will rise", stacklevel=3)
        if self.warmup_epochs < 0 or (self.warmup_steps is not None and self.warmup_steps < 0):
            raise ValueError("warm-up length must be >= 0")
        if self.layer_decay_mode not in LAYER_DECAY_MODES:
            raise ValueError(f"layer_decay_mode must be one of {LAYER_DECAY_MODES}, got {self.layer_decay_mode!r}")
        if self.layer_decay is not None and not 0.0 < self.layer_decay <= 1.0:
            raise ValueError(f"layer_decay must be in (0, 1], got {self.layer_decay}")
        if self.ema_decay is not None and not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.clip_grad is not None and self.clip_grad <= 0:
            raise ValueError("clip_grad must be > 0 (use None to disable)")
        if self.save_every_steps is not None and self.save_every_steps < 1:
            raise ValueError("save_every_steps must be >= 1 (use None to save only at the end)")
        if self.keep_last is not None and self.keep_last < 1:
            raise ValueError("keep_last must be >= 1 (use None to keep every checkpoint)")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError("max_steps must be >= 1")
        if self.save_trainable_only and self.ema_decay is not None:
            raise ValueError("save_trainable_only does not cover EMA weights; set ema_decay to null or "
                             "save_trainable_only to false")
        if len(self.betas) != 2:
            raise ValueError("betas must have two values")

    def to_dict(self) -> dict[str, Any]:
        """Plain-container view, safe for ``torch.load(weights_only=True)`` and JSON."""
        out = dataclasses.asdict(self)
        out["betas"] = list(self.betas)
        return out
