"""Tiny model, dataset and loss used by the engine tests (in-process and in launched scripts)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from videomap.engine import ShardedEvalSampler, TrainConfig, all_reduce_sum

DIM = 8
CLASSES = 3


class NoisyDataset(Dataset):
    """Fixed points plus noise drawn from (seed, epoch, index): resumable per-sample randomness."""

    def __init__(self, n: int = 48, seed: int = 0, noise: float = 0.1) -> None:
        g = torch.Generator().manual_seed(1234)
        self.x = torch.randn(n, DIM, generator=g)
        self.y = (self.x @ torch.randn(DIM, CLASSES, generator=g)).argmax(1)
        self.seed = seed
        self.noise = noise
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        g = torch.Generator().manual_seed((self.seed * 1_000_003 + self.epoch) * 10_007 + i)
        return self.x[i] + self.noise * torch.randn(DIM, generator=g), self.y[i]


class IndexDataset(Dataset):
    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        return i


class ToyMLP(nn.Module):
    def __init__(self, dropout: float = 0.0, hidden: int = 32) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([nn.Linear(DIM, hidden), nn.Linear(hidden, hidden)])
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(hidden, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for blk in self.blocks:
            x = self.drop(F.gelu(blk(x)))
        return self.head(x)


def make_model(dropout: float = 0.0, init_seed: int = 7) -> ToyMLP:
    torch.manual_seed(init_seed)
    return ToyMLP(dropout)


def loss_fn(model: nn.Module, batch):
    x, y = batch
    logits = model(x)
    loss = F.cross_entropy(logits, y)
    return loss, {"acc": (logits.argmax(1) == y).float().mean().item()}


def make_eval_fn(eval_size: int = 11):
    """Counts how often each eval index is seen across ranks (must be exactly once each)."""

    def evaluate(model: nn.Module) -> dict[str, float]:
        torch.rand(3)  # consumes RNG on purpose: training must not be affected
        loader = DataLoader(IndexDataset(eval_size), batch_size=4, sampler=ShardedEvalSampler(eval_size))
        seen = torch.zeros(eval_size, dtype=torch.float64)
        for idx in loader:
            seen[idx] += 1
        all_reduce_sum(seen)
        return {"seen_min": seen.min().item(), "seen_max": seen.max().item(), "seen_sum": seen.sum().item()}

    return evaluate


def make_config(out: str, mode: str = "none", epochs: int = 3, batch: int = 4, accum: int = 2,
                save_every: int = 4, ema: float = 0.9, clip: float = 1.0) -> TrainConfig:
    """The recipe shared by the launched runs and their in-process references."""
    return TrainConfig(
        epochs=epochs, batch_size=batch, accum_steps=accum, lr=5e-3, min_lr=1e-4,
        warmup_steps=3, weight_decay=0.05, clip_grad=clip or None, ema_decay=ema or None,
        save_every_steps=save_every, keep_last=2, output_dir=out, seed=3, log_every=5,
        distributed=mode, plot=False, tensorboard=False,
    )
