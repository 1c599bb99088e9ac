"""Deterministic seeding shared by every entry point."""

from __future__ import annotations

import random

import numpy as np
import torch


def seed_everything(seed: int, rank: int = 0) -> int:
    """Seed Python, NumPy and torch (all devices) with ``seed + rank`` and return that value.

    The rank offset gives each process different dropout / augmentation streams while keeping
    the whole run reproducible from ``seed``. Data order does not depend on this: samplers use
    their own generators seeded from ``(seed, epoch)``.
    """
    value = int(seed) + int(rank)
    random.seed(value)
    np.random.seed(value % 2**32)
    torch.manual_seed(value)
    return value


def mix_seed(*parts: int) -> int:
    """Combine integers into one 63-bit seed (stable across processes and Python versions)."""
    h = 1469598103934665603
    for p in parts:
        h = (h * 1099511628211 + int(p) + 1) % (2**63 - 25)
    return h
