"""Training engine shared by pre-training, fine-tuning and distillation.

``Trainer(model, loss_fn, dataset, TrainConfig(...)).fit()`` runs the loop with AdamW
(no-decay groups, optional layer-wise lr decay), warm-up + cosine schedule, gradient
accumulation and clipping, autocast, EMA, DDP/FSDP under torchrun, crash-safe checkpoints with
exact resumption, and metrics files / plots.
"""

from .checkpoint import (
    capture_rng_state,
    find_latest_checkpoint,
    is_complete_checkpoint,
    list_checkpoints,
    load_checkpoint,
    load_latest_checkpoint,
    load_weights,
    restore_rng_state,
    save_checkpoint,
    save_weights,
)
from .config import TrainConfig, scale_lr
from .distributed import (
    ResumableDistributedSampler,
    ShardedEvalSampler,
    WorldInfo,
    all_reduce_sum,
    barrier,
    build_eval_loader,
    cleanup_distributed,
    init_distributed,
    is_main_process,
    unwrap_model,
    world_info,
    wrap_model,
)
from .ema import ModelEma
from .meters import MetricsWriter, plot_curves
from .optim import WarmupCosineSchedule, build_optimizer, cosine_schedule, is_no_decay, param_groups
from .seed import seed_everything
from .trainer import NonFiniteLossError, Trainer, move_to_device, resolve_amp

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
    "barrier",
    "build_eval_loader",
    "build_optimizer",
    "capture_rng_state",
    "cleanup_distributed",
    "cosine_schedule",
    "find_latest_checkpoint",
    "init_distributed",
    "is_complete_checkpoint",
    "is_main_process",
    "is_no_decay",
    "list_checkpoints",
    "load_checkpoint",
    "load_latest_checkpoint",
    "load_weights",
    "move_to_device",
    "param_groups",
    "plot_curves",
    "resolve_amp",
    "restore_rng_state",
    "save_checkpoint",
    "save_weights",
    "scale_lr",
    "seed_everything",
    "unwrap_model",
    "world_info",
    "wrap_model",
]
