"""Training engine shared by pre-training, fine-tuning, distillation and the Video-LLM / video-text
jobs (the CPU thread policy is :mod:`videomap.threads`, outside this package because it must not
import torch).

``Trainer(model, loss_fn, dataset, TrainConfig(...)).fit()`` runs the loop with AdamW
(no-decay groups, optional layer-wise lr decay), warm-up + cosine schedule, gradient
accumulation and clipping, autocast, EMA, DDP/FSDP under torchrun, crash-safe checkpoints with
exact resumption, and metrics files / plots. The engine names no model tensor: which tensors
skip weight decay and which layer a tensor belongs to are answered by the model.
"""

from ..seeding import capture_rng_state, restore_rng_state, seed_everything
from .checkpoint import (
    find_latest_checkpoint,
    is_complete_checkpoint,
    list_checkpoints,
    load_latest_train_state,
    load_train_state,
    save_checkpoint,
)
from .distributed import (
    ResumableDistributedSampler,
    ShardedEvalSampler,
    WorldInfo,
    all_reduce_sum,
    barrier,
    build_eval_loader,
    cleanup_distributed,
    default_device,
    init_distributed,
    is_main_process,
    world_info,
    wrap_model,
)
from .ema import ModelEma
from .meters import MetricsWriter, plot_curves, read_metrics
from .optim import WarmupCosineSchedule, build_optimizer, cosine_schedule, is_no_decay, param_groups
from .train_config import TrainConfig, scale_lr
from .trainer import NonFiniteLossError, Trainer, autocast, move_to_device, resolve_amp

__all__ = [
    "ModelEma",
    "MetricsWriter",
    "NonFiniteLossError",
    "ResumableDistributedSampler",
    "ShardedEvalSampler",
    "TrainConfig",
    "Trainer",
    "WarmupCosineSchedule",
    "WorldInfo",
    "all_reduce_sum",
    "autocast",
    "barrier",
    "build_eval_loader",
    "build_optimizer",
    "capture_rng_state",
    "cleanup_distributed",
    "cosine_schedule",
    "default_device",
    "find_latest_checkpoint",
    "init_distributed",
    "is_complete_checkpoint",
    "is_main_process",
    "is_no_decay",
    "list_checkpoints",
    "load_latest_train_state",
    "load_train_state",
    "move_to_device",
    "param_groups",
    "plot_curves",
    "read_metrics",
    "resolve_amp",
    "restore_rng_state",
    "save_checkpoint",
    "scale_lr",
    "seed_everything",
    "world_info",
    "wrap_model",
]
