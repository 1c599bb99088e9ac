"""Seeds and random-number-generator state: the one place that decides how randomness is derived.

Every stream is a pure function of the run seed: processes (``seed + rank``), epochs and samples
(:func:`sample_seed`) and resumption points (:func:`mix_seed`), so a resumed or re-sharded run
draws the same numbers. Generator states are captured as plain tensors so that checkpoints can
be read back with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import random
import warnings
from typing import Any

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


def sample_seed(seed: int, epoch: int, index: int, *extra: int) -> int:
    """Well-mixed 63-bit seed for one sample, independent of worker assignment."""
    words = [int(seed) & 0xFFFFFFFFFFFFFFFF, int(epoch) & 0xFFFFFFFF, int(index) & 0xFFFFFFFFFFFFFFFF]
    words += [int(e) & 0xFFFFFFFFFFFFFFFF for e in extra]
    state = np.random.SeedSequence(words).generate_state(2, np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


def capture_rng_state() -> dict[str, Any]:
    """Python, NumPy, torch (and CUDA) generator states as tensors / plain containers.

    Stored this way because ``torch.load(weights_only=True)`` rejects NumPy arrays and arbitrary objects.
    """
    py_version, py_state, py_gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state(legacy=True)
    state: dict[str, Any] = {
        "python": [int(py_version), torch.tensor(py_state, dtype=torch.int64), py_gauss],
        "numpy": {
            "name": str(np_name),
            "keys": torch.from_numpy(np.asarray(np_keys, dtype=np.int64)),
            "pos": int(np_pos),
            "has_gauss": int(np_has_gauss),
            "cached_gaussian": float(np_gauss),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = list(torch.cuda.get_rng_state_all())
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    version, py_state, gauss = state["python"]
    random.setstate((int(version), tuple(int(x) for x in py_state.tolist()), gauss))
    n = state["numpy"]
    np.random.set_state(
        (n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = state["cuda"]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all([s.cpu() for s in cuda_states])
        else:
            warnings.warn("CUDA device count changed; CUDA RNG state not restored", stacklevel=2)
