"""One training loop for masked pre-training, supervised fine-tuning and distillation.

The loop knows nothing about the task: it receives ``loss_fn(model, batch) -> (loss, metrics)``
and an optional ``evaluate_fn(model) -> metrics``. Everything else (optimizer groups, schedule,
accumulation, clipping, mixed precision, EMA, DDP/FSDP, checkpoints, logging) lives here so the
three recipes cannot drift apart.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, IterableDataset

from ..seeding import capture_rng_state, mix_seed, restore_rng_state, seed_everything
from .checkpoint import cleanup_partial, list_checkpoints, load_latest_train_state, load_train_state, save_checkpoint
from .distributed import (
    ResumableDistributedSampler,
    all_gather_objects,
    all_reduce_mean,
    barrier,
    broadcast_object,
    default_device,
    grad_sync,
    init_distributed,
    is_dist,
    steps_per_epoch,
    world_info,
    wrap_model,
)
from .ema import ModelEma
from .meters import PLOT_FILE, MeterGroup, MetricsWriter, Timer, format_seconds, plot_curves, progress_line
from .optim import WarmupCosineSchedule, build_optimizer, flagged_no_decay
from .train_config import TrainConfig

LossOutput = torch.Tensor | tuple[torch.Tensor, Mapping[str, Any]]
LossFn = Callable[[nn.Module, Any], LossOutput]
EvalFn = Callable[[nn.Module], Mapping[str, Any]]

STATE_FORMAT = 1

log = logging.getLogger(__name__)


class NonFiniteLossError(FloatingPointError):
    """Raised when the loss (or, without a GradScaler, the gradient norm) is NaN/Inf.

    Training stops before the bad update is applied and before any checkpoint is written, so
    the newest checkpoint on disk is still a healthy one to resume or debug from.
    """

    def __init__(self, step: int, value: float, what: str = "loss", detail: str = "") -> None:
        self.step = step
        self.value = value
        msg = f"non-finite {what} ({value}) at global step {step}"
        if detail:
            msg += f" ({detail})"
        super().__init__(msg + "; stopping without writing a checkpoint")


def move_to_device(batch: Any, device: torch.device, non_blocking: bool = False) -> Any:
    """Recursively move tensors in dicts / lists / tuples to ``device``."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=non_blocking)
    if isinstance(batch, Mapping):
        return type(batch)({k: move_to_device(v, device, non_blocking) for k, v in batch.items()})
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):  # namedtuple
        return type(batch)(*(move_to_device(v, device, non_blocking) for v in batch))
    if isinstance(batch, (list, tuple)):
        return type(batch)(move_to_device(v, device, non_blocking) for v in batch)
    return batch


def resolve_amp(amp: str, device: torch.device) -> tuple[torch.dtype | None, bool]:
    """Map ``amp`` to ``(autocast dtype or None, use GradScaler)`` for ``device``.

    bf16 works on CPU and on CUDA GPUs that support it; fp16 needs CUDA (and a GradScaler,
    because its narrow exponent range underflows gradients). Other combinations warn and fall
    back to full fp32 rather than failing a long job at start-up.
    """
    if amp == "none":
        return None, False
    if amp == "bf16":
        if device.type == "cpu" or (device.type == "cuda" and torch.cuda.is_bf16_supported()):
            return torch.bfloat16, False
        warnings.warn(f"bf16 autocast is not supported on {device}; training in fp32", stacklevel=2)
        return None, False
    if amp == "fp16":
        if device.type == "cuda":
            return torch.float16, True
        warnings.warn(f"fp16 autocast needs CUDA (device is {device}); training in fp32", stacklevel=2)
        return None, False
    raise ValueError(f"unknown amp mode {amp!r}")


def autocast(dtype: torch.dtype | None, device: torch.device) -> contextlib.AbstractContextManager[Any]:
    """``torch.autocast`` for a dtype from :func:`resolve_amp`; a no-op for ``None`` (fp32)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def _to_cpu(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_to_cpu(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_to_cpu(v) for v in obj)
    return obj


def _split_loss_output(out: LossOutput) -> tuple[torch.Tensor, dict[str, float]]:
    if isinstance(out, torch.Tensor):
        loss, metrics = out, {}
    else:
        loss, metrics = out
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        raise ValueError("loss_fn must return a scalar loss tensor (optionally with a metrics dict)")
    return loss.reshape(()), {k: float(v) for k, v in dict(metrics).items()}


class Trainer:
    """Runs ``loss_fn`` over ``dataset`` for ``config.epochs`` epochs and keeps everything resumable.

    Args:
        model: the plain module; it is moved to the device and wrapped (DDP / FSDP) here.
        loss_fn: ``loss_fn(model, batch) -> loss`` or ``(loss, {name: float})``. It receives the
            *wrapped* model and should call it (``model(x)``) so DDP can synchronise gradients.
        dataset: a map-style dataset. If it has ``set_epoch(epoch)`` that is called every epoch;
            per-sample randomness should derive from ``(seed, epoch, index)`` so a resumed run
            sees the same samples.
        config: :class:`TrainConfig`.
        collate_fn: optional ``DataLoader`` collate function.
        evaluate_fn: optional ``evaluate_fn(model) -> {name: float}``, run under ``no_grad`` and
            the training autocast every ``eval_every_epochs`` epochs and at the end, on every
            rank (use :class:`~videomap.engine.distributed.ShardedEvalSampler` and
            :func:`~videomap.engine.distributed.all_reduce_sum`). With EMA it also runs on the
            EMA weights, reported with an ``ema_`` prefix. Its RNG use does not perturb training.
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: LossFn,
        dataset: Dataset,
        config: TrainConfig,
        *,
        collate_fn: Callable[[list[Any]], Any] | None = None,
        evaluate_fn: EvalFn | None = None,
    ) -> None:
        cfg = config
        cfg.validate()
        if isinstance(dataset, IterableDataset):
            raise TypeError("Trainer needs a map-style dataset: resumption skips samples by index")
        self.config = cfg
        self.loss_fn = loss_fn
        self.evaluate_fn = evaluate_fn
        self.dataset = dataset
        self.mode = init_distributed(cfg.distributed)
        info = world_info()
        self.rank = info.rank if self.mode != "none" else 0
        self.world_size = info.world_size if self.mode != "none" else 1
        self.is_main = info.rank == 0
        self.device = default_device() if cfg.device == "auto" else torch.device(cfg.device)
        if self.mode == "fsdp" and cfg.ema_decay is not None:
            raise ValueError("ema_decay is not supported with distributed='fsdp'")
        seed_everything(cfg.seed, self.rank)
        self.output_dir = Path(cfg.output_dir)

        model.to(self.device)
        self.unwrapped_model = model
        # FSDP2's replacement parameters do not carry the flags
        flagged = set() if cfg.decay_ssm_params else flagged_no_decay(model)
        self.model = wrap_model(model, self.mode, self.device, cfg.find_unused_parameters)
        # Built after wrapping: FSDP2 replaces the parameters with sharded ones.
        self.optimizer = build_optimizer(
            model, cfg.lr, cfg.weight_decay, cfg.betas, cfg.eps, cfg.layer_decay, extra_no_decay=flagged,
            layer_decay_mode=cfg.layer_decay_mode, decay_flagged=cfg.decay_ssm_params,
        )
        self.amp_dtype, use_scaler = resolve_amp(cfg.amp, self.device)
        self.scaler = torch.amp.GradScaler(self.device.type) if use_scaler else None
        self.ema = ModelEma(model, cfg.ema_decay) if cfg.ema_decay is not None else None

        self.sampler = ResumableDistributedSampler(
            dataset, num_replicas=self.world_size, rank=self.rank, shuffle=True, seed=cfg.seed, drop_last=True
        )
        # A dedicated generator keeps DataLoader from drawing worker seeds from the global RNG,
        # which would make the dropout stream depend on where an epoch was (re)started.
        self._loader_generator = torch.Generator()
        self.loader = DataLoader(
            dataset,
            batch_size=cfg.batch_size,
            sampler=self.sampler,
            num_workers=cfg.num_workers,
            collate_fn=collate_fn,
            drop_last=True,
            pin_memory=self.device.type == "cuda",
            generator=self._loader_generator,
        )
        self.steps_per_epoch = steps_per_epoch(self.sampler.num_samples, cfg.batch_size, cfg.accum_steps)
        if self.steps_per_epoch < 1:
            raise ValueError(
                f"dataset of {len(dataset)} samples gives no full optimizer step with batch_size="  # type: ignore[arg-type]
                f"{cfg.batch_size}, accum_steps={cfg.accum_steps}, world_size={self.world_size}"
            )
        full = cfg.epochs * self.steps_per_epoch
        self.total_steps = min(full, cfg.max_steps) if cfg.max_steps is not None else full
        warmup = cfg.warmup_steps
        if warmup is None:
            warmup = round(cfg.warmup_epochs * self.steps_per_epoch)
        self.warmup_steps = min(int(warmup), self.total_steps)
        min_factor = cfg.min_lr / cfg.lr if cfg.lr > 0 else 0.0
        self.scheduler = WarmupCosineSchedule(self.optimizer, self.total_steps, self.warmup_steps, min_factor)
        self.global_batch = cfg.batch_size * cfg.accum_steps * self.world_size

        self.global_step = 0
        self.epoch = 0
        self.step_in_epoch = 0
        self.resumed_from: Path | None = None
        self.last_checkpoint: Path | None = None
        self.last_eval: dict[str, float] = {}
        self.last_train: dict[str, float] = {}
        self.writer: MetricsWriter | None = None
        self._last_saved_step = -1
        self._last_eval_step = -1
        self._bad_reported = 0

    # ------------------------------------------------------------------ public entry points

    def fit(self, resume: bool | None = None) -> dict[str, Any]:
        """Train to ``total_steps``; with ``resume`` (default: ``config.resume``) continue from the
        newest complete checkpoint in ``output_dir``. Returns a summary dict."""
        resume = self.config.resume if resume is None else resume
        if self.is_main:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            cleanup_partial(self.output_dir)
        barrier()
        if resume:
            self.resume_latest()
        else:
            existing = list_checkpoints(self.output_dir) if self.is_main else []
            newest = broadcast_object(existing[-1].name if existing else None)
            if newest is not None:
                # Mixing two runs' checkpoints would let pruning delete the new ones and a later
                # resume pick up the old run; refuse instead of guessing.
                raise FileExistsError(
                    f"{self.output_dir} already holds checkpoints (newest {newest}); pass resume=True "
                    "to continue that run or use a fresh output_dir"
                )
        if self.is_main:
            self.writer = MetricsWriter(
                self.output_dir,
                resume_step=self.global_step if self.resumed_from is not None else None,
                tensorboard=self.config.tensorboard,
            )
        try:
            self._print_header()
            self._run()
        finally:
            if self.writer is not None:
                self.writer.close()
        return {
            "global_step": self.global_step,
            "epoch": self.epoch,
            "train": dict(self.last_train),
            "eval": dict(self.last_eval),
            "checkpoint": str(self.last_checkpoint) if self.last_checkpoint else None,
            "resumed_from": str(self.resumed_from) if self.resumed_from else None,
        }

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Run ``evaluate_fn`` on the model (and EMA) in eval mode without disturbing training RNG."""
        if self.evaluate_fn is None:
            return {}
        rng = capture_rng_state()
        target = self.model if self.mode == "fsdp" else self.unwrapped_model
        was_training = target.training
        results: dict[str, float] = {}
        try:
            target.eval()
            with self._autocast():
                results.update({k: float(v) for k, v in self.evaluate_fn(target).items()})
                if self.ema is not None:
                    ema_res = self.evaluate_fn(self.ema.module)
                    results.update({f"ema_{k}": float(v) for k, v in ema_res.items()})
        finally:
            target.train(was_training)
            restore_rng_state(rng)
        self.last_eval = results
        self._last_eval_step = self.global_step
        if self.is_main:
            vals = "  ".join(f"{k} {v:.4f}" for k, v in results.items())
            log.info("[eval] epoch %d step %d  %s", self.epoch, self.global_step, vals)
            if self.writer is not None:
                self.writer.write({"split": "eval", "step": self.global_step, "epoch": self.epoch, **results})
        return results

    def save(self) -> Path | None:
        """Write a checkpoint of the current state (collective: call on every rank)."""
        model_state = self._model_state_dict()
        optim_state = self._optimizer_state_dict()
        rng_states = all_gather_objects(capture_rng_state())
        path = None
        if self.is_main:
            train_state = {
                "format": STATE_FORMAT,
                "global_step": self.global_step,
                "epoch": self.epoch,
                "step_in_epoch": self.step_in_epoch,
                "steps_per_epoch": self.steps_per_epoch,
                "world_size": self.world_size,
                "batch_size": self.config.batch_size,
                "accum_steps": self.config.accum_steps,
                "optimizer": optim_state,
                "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler is not None else None,
                "ema": self.ema.state_dict() if self.ema is not None else None,
                "rng": rng_states,
                "config": self.config.to_dict(),
                "time": time.time(),
            }
            path = save_checkpoint(
                self.output_dir, self.global_step, model_state, train_state, keep_last=self.config.keep_last
            )
        barrier()
        self._last_saved_step = self.global_step
        self.last_checkpoint = self.output_dir / f"checkpoint-{self.global_step}"
        return path

    def resume_latest(self) -> Path | None:
        """Load the newest complete, readable checkpoint in ``output_dir`` (rank 0 picks, all load)."""
        found = load_latest_train_state(self.output_dir) if self.is_main else None
        path = broadcast_object(str(found[0]) if found is not None else None)
        if path is None:
            if self.is_main:
                log.info("no checkpoint in %s; starting from scratch", self.output_dir)
            return None
        if found is not None:
            _, model_state, train_state = found
        else:
            model_state, train_state = load_train_state(path)
        self.load_state(model_state, train_state)
        self.resumed_from = self.last_checkpoint = Path(path)
        return self.resumed_from

    def load_state(self, model_state: dict[str, torch.Tensor], train_state: dict[str, Any]) -> None:
        """Restore weights, optimizer moments, schedule, scaler, EMA, RNG and data position."""
        self._load_model_state_dict(model_state)
        self._load_optimizer_state_dict(train_state["optimizer"])
        self.scheduler.load_state_dict(train_state["scheduler"])
        if self.scaler is not None and train_state.get("scaler"):
            self.scaler.load_state_dict(train_state["scaler"])
        if self.ema is not None:
            if train_state.get("ema") is not None:
                self.ema.load_state_dict(train_state["ema"])
            else:
                warnings.warn("checkpoint has no EMA weights; EMA restarts from the model", stacklevel=2)
                self.ema = ModelEma(self.unwrapped_model, self.ema.decay)
        self.global_step = int(train_state["global_step"])
        self.epoch = int(train_state["epoch"])
        self.step_in_epoch = int(train_state["step_in_epoch"])
        same_layout = (
            train_state.get("world_size") == self.world_size
            and train_state.get("batch_size") == self.config.batch_size
            and train_state.get("accum_steps") == self.config.accum_steps
        )
        if not same_layout:
            warnings.warn(
                "world size / batch size / accumulation changed since the checkpoint; training "
                "continues but the data order differs from an uninterrupted run",
                stacklevel=2,
            )
        if self.step_in_epoch >= self.steps_per_epoch:
            self.epoch += 1
            self.step_in_epoch = 0
        rng = train_state.get("rng") or []
        if len(rng) == self.world_size:
            restore_rng_state(rng[self.rank])
        else:
            seed_everything(mix_seed(self.config.seed, self.global_step), self.rank)
        self._last_saved_step = self.global_step

    # ------------------------------------------------------------------ loop

    def _print_header(self) -> None:
        if not self.is_main:
            return
        cfg = self.config
        log.info("%d steps (%d epochs x %d steps), global batch %d (%d x accum %d x %d procs), mode %s, "
                 "amp %s, device %s", self.total_steps, cfg.epochs, self.steps_per_epoch, self.global_batch,
                 cfg.batch_size, cfg.accum_steps, self.world_size, self.mode, self._amp_name(), self.device)
        if self.resumed_from is not None:
            log.info("resumed from %s at step %d (epoch %d, step %d of the epoch)", self.resumed_from,
                     self.global_step, self.epoch, self.step_in_epoch)

    def _amp_name(self) -> str:
        return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(self.amp_dtype, "fp32")  # type: ignore[arg-type]

    def _save_due(self) -> bool:
        every = self.config.save_every_steps
        if every is None or self._last_saved_step == self.global_step:
            return False
        return self.global_step % every == 0

    def _eval_due(self) -> bool:
        return self.evaluate_fn is not None and self.epoch % self.config.eval_every_epochs == 0

    def _start_epoch(self) -> None:
        cfg = self.config
        self.sampler.set_epoch(self.epoch)
        self.sampler.skip = self.step_in_epoch * cfg.accum_steps * cfg.batch_size
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(self.epoch)
        self._loader_generator.manual_seed(mix_seed(cfg.seed, self.epoch, self.rank))

    def _run(self) -> None:
        cfg = self.config
        meters = MeterGroup()
        run_timer = Timer()
        steps_this_run = 0
        window_t0 = time.perf_counter()
        window_steps = 0
        while self.global_step < self.total_steps and self.epoch < cfg.epochs:
            self._start_epoch()
            self.model.train()
            batches = iter(self.loader)
            while self.step_in_epoch < self.steps_per_epoch and self.global_step < self.total_steps:
                metrics = self._train_step(batches)
                meters.update(metrics)
                self.global_step += 1
                self.step_in_epoch += 1
                steps_this_run += 1
                window_steps += 1
                if self.global_step % cfg.log_every == 0 or self.global_step == self.total_steps:
                    now = time.perf_counter()
                    self._log_train(meters, window_steps / max(now - window_t0, 1e-9),
                                    run_timer.elapsed() / steps_this_run)
                    meters.reset()
                    window_t0, window_steps = now, 0
                if self.step_in_epoch < self.steps_per_epoch and self._save_due():
                    self.save()
            del batches  # shuts down loader workers before evaluation / saving
            self._report_bad_samples()
            if self.step_in_epoch < self.steps_per_epoch:
                break  # stopped by max_steps in the middle of an epoch
            self.epoch += 1
            self.step_in_epoch = 0
            if self._eval_due():
                self.evaluate()
            if self._save_due():
                self.save()
        if self.evaluate_fn is not None and self._last_eval_step != self.global_step:
            self.evaluate()
        if self._last_saved_step != self.global_step:
            self.save()
        if self.is_main and self.writer is not None:
            if cfg.plot:
                peak = max(g["base_lr"] for g in self.optimizer.param_groups)
                schedule = [peak * self.scheduler.factor(s) for s in range(self.total_steps)]
                plot_curves(self.writer.records, self.output_dir / PLOT_FILE, lr_schedule=schedule)
            log.info("done: step %d, %s this run, checkpoint %s", self.global_step,
                     format_seconds(run_timer.elapsed()), self.last_checkpoint)

    def _report_bad_samples(self) -> None:
        """End-of-epoch summary of unreadable samples, for datasets that track them (``bad_samples()``)."""
        if not self.is_main or not hasattr(self.dataset, "bad_samples"):
            return
        bad = self.dataset.bad_samples()
        if len(bad) > self._bad_reported:
            self._bad_reported = len(bad)
            summary = getattr(self.dataset, "bad_sample_summary", lambda: f"{len(bad)} unreadable samples")()
            log.warning("[data] epoch %d: %s", self.epoch, summary)

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        return autocast(self.amp_dtype, self.device)

    def _checked_loss_value(self, loss: torch.Tensor, micro: int) -> float:
        value = loss.detach().float().clone()
        if is_dist():
            all_reduce_mean(value)  # every rank sees a NaN from any rank and stops together
        v = value.item()
        if not math.isfinite(v):
            raise NonFiniteLossError(
                self.global_step + 1, v, "loss",
                f"epoch {self.epoch}, step {self.step_in_epoch} of the epoch, micro-batch {micro}",
            )
        return v

    def _train_step(self, batches: Any) -> dict[str, float]:
        cfg = self.config
        accum = cfg.accum_steps
        self.scheduler.apply(self.global_step)
        loss_sum = 0.0
        metric_sums: dict[str, float] = {}
        for micro in range(accum):
            batch = move_to_device(next(batches), self.device, non_blocking=True)
            sync = micro == accum - 1 or self.world_size == 1
            with grad_sync(self.model, sync):
                with self._autocast():
                    loss, metrics = _split_loss_output(self.loss_fn(self.model, batch))
                loss_sum += self._checked_loss_value(loss, micro)
                scaled = loss.float() / accum
                if self.scaler is not None:
                    scaled = self.scaler.scale(scaled)
                scaled.backward()
            for k, v in metrics.items():
                metric_sums[k] = metric_sums.get(k, 0.0) + v
        out = {"loss": loss_sum / accum, **{k: v / accum for k, v in metric_sums.items()}}
        if cfg.clip_grad is not None:
            if self.scaler is not None:
                self.scaler.unscale_(self.optimizer)
            norm = torch.nn.utils.clip_grad_norm_(self.unwrapped_model.parameters(), cfg.clip_grad)
            if hasattr(norm, "full_tensor"):  # DTensor under FSDP2
                norm = norm.full_tensor()
            norm_value = float(norm)
            if self.scaler is None and not math.isfinite(norm_value):
                self.optimizer.zero_grad(set_to_none=True)
                raise NonFiniteLossError(self.global_step + 1, norm_value, "gradient norm")
            out["grad_norm"] = norm_value
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
            out["loss_scale"] = float(self.scaler.get_scale())
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        if self.ema is not None:
            self.ema.update(self.unwrapped_model)
        return out

    def _log_train(self, meters: MeterGroup, steps_per_s: float, sec_per_step: float) -> None:
        avgs = meters.averages()
        if is_dist() and avgs:
            keys = sorted(avgs)
            t = torch.tensor([avgs[k] for k in keys], dtype=torch.float64)
            all_reduce_mean(t)
            avgs = dict(zip(keys, t.tolist()))
        self.last_train = avgs
        if not self.is_main:
            return
        lr = max(g["lr"] for g in self.optimizer.param_groups)
        clips_per_s = steps_per_s * self.global_batch
        eta = (self.total_steps - self.global_step) * sec_per_step
        epoch_f = self.epoch + self.step_in_epoch / self.steps_per_epoch
        log.info("%s", progress_line(self.global_step, self.total_steps, self.epoch, self.config.epochs, avgs,
                                     lr, clips_per_s, eta))
        if self.writer is not None:
            self.writer.write({"split": "train", "step": self.global_step, "epoch": round(epoch_f, 4),
                               **avgs, "lr": lr, "clips_per_s": clips_per_s})

    # ------------------------------------------------------------------ state dict plumbing

    def _frozen_names(self) -> set[str]:
        """Names (every alias of a shared tensor) of the parameters that do not require gradients."""
        return {n for n, p in self.unwrapped_model.named_parameters(remove_duplicate=False) if not p.requires_grad}

    def _model_state_dict(self) -> dict[str, torch.Tensor]:
        trainable_only = self.config.save_trainable_only
        if self.mode == "fsdp":
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

            return get_model_state_dict(
                self.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True,
                                                     ignore_frozen_params=trainable_only)
            )
        if not self.is_main:
            return {}
        state = self.unwrapped_model.state_dict()
        if trainable_only:
            frozen = self._frozen_names()
            state = {k: v for k, v in state.items() if k not in frozen}
        return state

    def _optimizer_state_dict(self) -> dict[str, Any]:
        if self.mode == "fsdp":
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

            return get_optimizer_state_dict(
                self.model, self.optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
            )
        return _to_cpu(self.optimizer.state_dict()) if self.is_main else {}

    def _load_model_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        strict = not self.config.save_trainable_only
        if not strict:
            # the frozen parameters stay as built; everything else must be in the checkpoint
            expected = set(self.unwrapped_model.state_dict()) - self._frozen_names()
            missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
            if missing or unexpected:
                raise ValueError(
                    "the checkpoint (save_trainable_only) does not match the model's trainable tensors: "
                    f"missing {missing[:5]}{' ...' if len(missing) > 5 else ''}, unexpected "
                    f"{unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}; resume with the same "
                    "trainable parameters (stage / LoRA / frozen modules) the run was saved with")
        if self.mode == "fsdp":
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

            set_model_state_dict(self.model, state, options=StateDictOptions(full_state_dict=True, strict=strict))
            return
        self.unwrapped_model.load_state_dict(state, strict=strict)

    def _load_optimizer_state_dict(self, state: dict[str, Any]) -> None:
        # Hyper-parameters come from the current config; only the moments and counters are restored.
        fresh = [{k: v for k, v in g.items() if k != "params"} for g in self.optimizer.param_groups]
        if self.mode == "fsdp":
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

            set_optimizer_state_dict(
                self.model, self.optimizer, state, options=StateDictOptions(full_state_dict=True)
            )
        else:
            self.optimizer.load_state_dict(state)
        for group, hp in zip(self.optimizer.param_groups, fresh):
            group.update(hp)
