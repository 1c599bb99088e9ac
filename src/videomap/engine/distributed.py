"""Process-group set-up, model wrapping (DDP / FSDP2) and samplers for torchrun launches.

Everything here degrades to a no-op in a single plain process, so the same training script
runs with ``python train.py`` and ``torchrun --nproc-per-node=N train.py``.

FSDP uses the per-module ``fully_shard`` API (FSDP2). It runs on CUDA with NCCL and, for
testing, on CPU with Gloo; the older ``FullyShardedDataParallel`` wrapper is not used because
its CPU/Gloo path is not reliable. EMA is not supported together with FSDP.
"""

from __future__ import annotations

import contextlib
import datetime
import itertools
import os
import warnings
from collections.abc import Iterator, Sized
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DistributedSampler, Sampler


@dataclass(frozen=True)
class WorldInfo:
    rank: int
    world_size: int
    local_rank: int

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return default if value in (None, "") else int(value)


def world_info() -> WorldInfo:
    """Rank, world size and local rank: from the process group if one exists, else from torchrun's env."""
    local = _env_int("LOCAL_RANK", 0)
    if dist.is_available() and dist.is_initialized():
        return WorldInfo(dist.get_rank(), dist.get_world_size(), local)
    return WorldInfo(_env_int("RANK", 0), _env_int("WORLD_SIZE", 1), local)


def is_dist() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def is_main_process() -> bool:
    """Only rank 0 prints, writes metrics and writes checkpoints."""
    return world_info().rank == 0


def default_device() -> torch.device:
    """``cuda:LOCAL_RANK`` when CUDA exists, else CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", world_info().local_rank % torch.cuda.device_count())
    return torch.device("cpu")


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """The device a command runs on: ``"auto"`` (or None) is :func:`default_device`, anything else
    is taken as a ``torch.device`` name, so every command reads a ``--device`` / ``train.device``
    the same way."""
    if device is None or device == "auto":
        return default_device()
    try:
        return torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"device: expected 'auto' or a torch device such as cpu / cuda:0, got {device!r}") from e


def module_device(model: Any) -> torch.device:
    """Where a model's weights live: its ``device`` attribute when it has one, else its first
    parameter's, else the CPU (a parameter-free callable); inputs are moved there."""
    device = getattr(model, "device", None)
    if isinstance(device, torch.device):
        return device
    try:
        return next(model.parameters()).device
    except (AttributeError, StopIteration, TypeError):
        return torch.device("cpu")


def module_dtype(model: Any) -> torch.dtype:
    """The dtype of a model's first floating-point parameter (float32 when it has none): the dtype
    its inputs are cast to outside autocast."""
    try:
        return next(p.dtype for p in model.parameters() if p.is_floating_point())
    except (AttributeError, StopIteration, TypeError):
        return torch.float32


def init_distributed(mode: str = "auto", timeout_s: float = 1800.0) -> str:
    """Create the process group when launched by torchrun and resolve ``mode``.

    Returns ``"none"``, ``"ddp"`` or ``"fsdp"``. The backend is NCCL when CUDA is available and
    Gloo otherwise. A ``ddp``/``fsdp`` request in a single process falls back to ``none`` with a
    warning, because there is nothing to synchronise with.
    """
    if mode not in ("auto", "ddp", "fsdp", "none"):
        raise ValueError(f"unknown distributed mode {mode!r}")
    info = world_info()
    if mode == "none":
        if info.world_size > 1 and not dist.is_initialized():
            warnings.warn(
                "distributed='none' under a multi-process launch: every rank trains its own copy",
                stacklevel=2,
            )
        return "none"
    if info.world_size > 1 and dist.is_available() and not dist.is_initialized():
        use_cuda = torch.cuda.is_available()
        if use_cuda:
            torch.cuda.set_device(info.local_rank % torch.cuda.device_count())
        dist.init_process_group(
            backend="nccl" if use_cuda else "gloo",
            timeout=datetime.timedelta(seconds=timeout_s),
        )
    if not is_dist():
        if mode in ("ddp", "fsdp"):
            warnings.warn(f"distributed={mode!r} requested in a single process; running without it",
                          stacklevel=2)
        return "none"
    return "ddp" if mode == "auto" else mode


def cleanup_distributed() -> None:
    """Destroy the process group (call once at the end of a torchrun script)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _uses_nccl() -> bool:
    return dist.is_initialized() and dist.get_backend() == "nccl"


def barrier() -> None:
    if is_dist():
        if _uses_nccl():
            dist.barrier(device_ids=[torch.cuda.current_device()])
        else:
            dist.barrier()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """In-place sum over ranks (identity in one process); CPU tensors are moved for NCCL."""
    if not is_dist():
        return tensor
    if _uses_nccl() and tensor.device.type != "cuda":
        tmp = tensor.to(torch.device("cuda", torch.cuda.current_device()))
        dist.all_reduce(tmp, op=dist.ReduceOp.SUM)
        tensor.copy_(tmp)
        return tensor
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    all_reduce_sum(tensor)
    if is_dist():
        tensor /= dist.get_world_size()
    return tensor


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Send a picklable object from ``src`` to every rank (used to agree on which checkpoint to load)."""
    if not is_dist():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_gather_objects(obj: Any) -> list[Any]:
    """Collect one picklable object per rank, ordered by rank."""
    if not is_dist():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


# --------------------------------------------------------------------------- model wrapping


def _fully_shard():
    try:
        from torch.distributed.fsdp import fully_shard
    except ImportError:
        try:
            from torch.distributed._composable.fsdp import fully_shard
        except ImportError as err:  # pragma: no cover - depends on the torch build
            raise RuntimeError("distributed='fsdp' needs FSDP2 (fully_shard, torch >= 2.4)") from err
    return fully_shard


def fsdp_units(model: nn.Module) -> list[nn.Module]:
    """Modules sharded individually before the root.

    A model can choose by defining ``fsdp_wrap_modules()``; otherwise every element of every
    ``nn.ModuleList`` (transformer / Mamba blocks in practice) becomes its own unit so that only
    one block's full weights are materialised at a time.
    """
    if hasattr(model, "fsdp_wrap_modules"):
        return list(model.fsdp_wrap_modules())
    units: list[nn.Module] = []
    for module in model.modules():
        if isinstance(module, nn.ModuleList):
            units.extend(module)
    return units


def wrap_model(
    model: nn.Module, mode: str, device: torch.device, find_unused_parameters: bool = False
) -> nn.Module:
    """Wrap an already-moved model for ``mode``; returns the object to call in the training loop.

    With FSDP2 the module is sharded in place and returned as is.
    """
    if mode == "none":
        return model
    if mode == "ddp":
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [device.index] if device.type == "cuda" else None
        return DDP(model, device_ids=ids, find_unused_parameters=find_unused_parameters)
    if mode == "fsdp":
        fully_shard = _fully_shard()
        for unit in fsdp_units(model):
            fully_shard(unit)
        fully_shard(model)
        return model
    raise ValueError(f"unknown mode {mode!r}")


def is_fsdp(model: nn.Module) -> bool:
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # pragma: no cover
        return False
    return isinstance(model, FSDPModule)


@contextlib.contextmanager
def grad_sync(model: nn.Module, enabled: bool) -> Iterator[None]:
    """Skip the gradient all-reduce on accumulation micro-steps that are not the last one."""
    if enabled:
        yield
        return
    if isinstance(model, nn.parallel.DistributedDataParallel):
        with model.no_sync():
            yield
        return
    if is_fsdp(model):
        model.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            model.set_requires_gradient_sync(True)
        return
    yield


# --------------------------------------------------------------------------- samplers


class ResumableDistributedSampler(DistributedSampler):
    """``DistributedSampler`` (seeded shuffle, drop_last) that can skip already-consumed samples.

    The order is a pure function of ``(seed, epoch)``, so after a restart setting ``skip`` to the
    number of samples this rank already used in the epoch reproduces the remaining batches
    without loading the skipped ones.
    """

    def __init__(
        self,
        dataset: Sized,
        num_replicas: int | None = None,
        rank: int | None = None,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = True,
    ) -> None:
        info = world_info()
        super().__init__(
            dataset,  # type: ignore[arg-type]
            num_replicas=info.world_size if num_replicas is None else num_replicas,
            rank=info.rank if rank is None else rank,
            shuffle=shuffle,
            seed=seed,
            drop_last=drop_last,
        )
        self.skip = 0

    def __iter__(self) -> Iterator[int]:
        return itertools.islice(super().__iter__(), self.skip, None)

    def __len__(self) -> int:
        return max(0, self.num_samples - self.skip)


class ShardedEvalSampler(Sampler[int]):
    """Contiguous, unpadded shards: every sample is evaluated exactly once across ranks.

    ``DistributedSampler`` pads the last shard with repeated samples, which biases accuracy
    when the dataset size is not divisible by the world size. Shards here differ in size by at
    most one; combine per-rank sums with :func:`all_reduce_sum`.
    """

    def __init__(
        self, dataset: Sized | int, num_replicas: int | None = None, rank: int | None = None
    ) -> None:
        info = world_info()
        self.total = dataset if isinstance(dataset, int) else len(dataset)
        self.num_replicas = info.world_size if num_replicas is None else num_replicas
        self.rank = info.rank if rank is None else rank
        if not 0 <= self.rank < self.num_replicas:
            raise ValueError(f"rank {self.rank} outside world of size {self.num_replicas}")
        self.start = self.total * self.rank // self.num_replicas
        self.end = self.total * (self.rank + 1) // self.num_replicas

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.start, self.end))

    def __len__(self) -> int:
        return self.end - self.start


def build_eval_loader(
    dataset: Any,
    batch_size: int,
    collate_fn: Any = None,
    num_workers: int = 0,
) -> torch.utils.data.DataLoader:
    """Evaluation loader over this rank's :class:`ShardedEvalSampler` shard (keeps the last partial batch)."""
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=ShardedEvalSampler(dataset),
        num_workers=num_workers,
        collate_fn=collate_fn,
        drop_last=False,
        pin_memory=torch.cuda.is_available(),
    )


def steps_per_epoch(num_samples_per_rank: int, batch_size: int, accum_steps: int) -> int:
    """Optimizer steps in one epoch; micro-batches that cannot fill a whole step are dropped."""
    return (num_samples_per_rank // batch_size) // accum_steps
