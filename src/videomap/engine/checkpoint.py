"""Crash-safe checkpoints: safetensors weights plus a ``weights_only``-loadable training state.

Layout inside ``output_dir``::

    checkpoint-<step>/model.safetensors   unwrapped model weights
    checkpoint-<step>/state.pt            optimizer, scheduler, scaler, EMA, RNG, position, config
    checkpoint-<step>/COMPLETE.json       completion marker with the byte size of both files
    latest.txt                            name of the newest checkpoint (convenience pointer)

A checkpoint is written into ``.tmp-checkpoint-<step>-<pid>/`` next to its target, fsynced,
marked complete and only then renamed into place, so a process killed mid-write leaves either
nothing or a hidden temporary directory. Discovery trusts the markers, not ``latest.txt``:
the newest directory whose marker exists and whose file sizes match is used, and if loading
it still fails (corrupted bytes) the next older one is tried.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

CHECKPOINT_PREFIX = "checkpoint-"
TMP_PREFIX = ".tmp-checkpoint-"
TRASH_PREFIX = ".trash-checkpoint-"
MODEL_FILE = "model.safetensors"
STATE_FILE = "state.pt"
MARKER_FILE = "COMPLETE.json"
LATEST_FILE = "latest.txt"
FORMAT_VERSION = 1
_ALIAS_KEY = "videomap.aliases"
_DIR_RE = re.compile(rf"^{re.escape(CHECKPOINT_PREFIX)}(\d+)$")


# --------------------------------------------------------------------------- file helpers


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    # Directory fsync makes renames durable; some filesystems do not support it.
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write a small text file so readers see either the old or the new content, never a mix."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _remove_tree(path: Path) -> None:
    """Rename to a hidden trash name first so a half-deleted checkpoint never looks loadable."""
    if not path.exists():
        return
    trash = path.with_name(f"{TRASH_PREFIX}{path.name}-{os.getpid()}")
    os.replace(path, trash)
    shutil.rmtree(trash, ignore_errors=True)


# --------------------------------------------------------------------------- safetensors weights


def save_weights(
    state_dict: dict[str, torch.Tensor], path: str | os.PathLike, metadata: dict[str, str] | None = None
) -> None:
    """Save a state dict as safetensors, tolerating tied and non-contiguous tensors.

    safetensors refuses tensors that share memory. Exact aliases (tied weights) are stored once and
    recorded in the metadata so :func:`load_weights` can restore every name; any other overlap is
    broken with a copy.
    """
    tensors: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    seen_views: dict[tuple[Any, ...], str] = {}
    seen_storages: set[int] = set()
    for name, t in state_dict.items():
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"state_dict entry {name!r} is a {type(t).__name__}, not a tensor")
        t = t.detach()
        if t.device.type != "cpu":
            t = t.cpu()
        ptr = t.untyped_storage().data_ptr() if t.numel() else None
        view = (ptr, t.storage_offset(), tuple(t.shape), tuple(t.stride()), t.dtype)
        if ptr is not None and view in seen_views:
            aliases[name] = seen_views[view]
            continue
        if ptr is not None:
            seen_views[view] = name
        if ptr is not None and ptr in seen_storages:
            t = t.clone()
        elif ptr is not None:
            seen_storages.add(ptr)
        if not t.is_contiguous():
            t = t.contiguous()
        tensors[name] = t
    # A tensor that is a view into a larger storage still shares memory with it; copy such views.
    for name, t in tensors.items():
        nbytes = t.numel() * t.element_size()
        if t.numel() and (t.storage_offset() != 0 or t.untyped_storage().nbytes() != nbytes):
            tensors[name] = t.clone()
    meta = dict(metadata or {})
    if aliases:
        meta[_ALIAS_KEY] = json.dumps(aliases, sort_keys=True)
    save_file(tensors, str(path), metadata=meta or None)


def load_weights(path: str | os.PathLike, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Inverse of :func:`save_weights`; aliased names point to the same tensor again."""
    tensors = load_file(str(path), device=str(device))
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    for name, target in json.loads(meta.get(_ALIAS_KEY, "{}")).items():
        tensors[name] = tensors[target]
    return tensors


# --------------------------------------------------------------------------- RNG state


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


# --------------------------------------------------------------------------- discovery


def checkpoint_step(path: str | os.PathLike) -> int | None:
    m = _DIR_RE.match(Path(path).name)
    return int(m.group(1)) if m else None


def is_complete_checkpoint(path: str | os.PathLike) -> bool:
    """Marker present and parseable, and both files exist with the recorded sizes."""
    path = Path(path)
    try:
        marker = json.loads((path / MARKER_FILE).read_text())
        files = marker["files"]
        for name in (MODEL_FILE, STATE_FILE):
            if (path / name).stat().st_size != int(files[name]):
                return False
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return True


def list_checkpoints(output_dir: str | os.PathLike, complete_only: bool = True) -> list[Path]:
    """Checkpoint directories sorted by step, oldest first (temporary and trash dirs never match)."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        step = checkpoint_step(child)
        if step is None or not child.is_dir():
            continue
        if complete_only and not is_complete_checkpoint(child):
            continue
        found.append((step, child))
    return [p for _, p in sorted(found)]


def find_latest_checkpoint(output_dir: str | os.PathLike) -> Path | None:
    """Newest complete checkpoint, or None."""
    ckpts = list_checkpoints(output_dir)
    return ckpts[-1] if ckpts else None


def read_latest_pointer(output_dir: str | os.PathLike) -> Path | None:
    """What ``latest.txt`` names, if it exists (may be stale after a crash; prefer find_latest_checkpoint)."""
    try:
        name = (Path(output_dir) / LATEST_FILE).read_text().strip()
    except OSError:
        return None
    return Path(output_dir) / name if name else None


def cleanup_partial(output_dir: str | os.PathLike) -> None:
    """Delete leftovers of interrupted saves/prunes (hidden temporary and trash directories)."""
    root = Path(output_dir)
    if not root.is_dir():
        return
    for child in root.iterdir():
        if child.name.startswith((TMP_PREFIX, TRASH_PREFIX)) and child.is_dir():
            shutil.rmtree(child, ignore_errors=True)


def prune_checkpoints(output_dir: str | os.PathLike, keep_last: int | None) -> None:
    """Keep the ``keep_last`` newest complete checkpoints."""
    if keep_last is None:
        return
    ckpts = list_checkpoints(output_dir)
    for old in ckpts[: max(0, len(ckpts) - keep_last)]:
        _remove_tree(old)


# --------------------------------------------------------------------------- save / load


def save_checkpoint(
    output_dir: str | os.PathLike,
    step: int,
    model_state: dict[str, torch.Tensor],
    train_state: dict[str, Any],
    keep_last: int | None = None,
) -> Path:
    """Atomically write ``checkpoint-<step>`` and point ``latest.txt`` at it. Call on one rank only."""
    root = Path(output_dir)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"{CHECKPOINT_PREFIX}{step}"
    tmp = root / f"{TMP_PREFIX}{step}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        save_weights(model_state, tmp / MODEL_FILE, metadata={"step": str(step)})
        torch.save(train_state, tmp / STATE_FILE)
        for name in (MODEL_FILE, STATE_FILE):
            _fsync_file(tmp / name)
        marker = {
            "format": FORMAT_VERSION,
            "step": int(step),
            "files": {name: (tmp / name).stat().st_size for name in (MODEL_FILE, STATE_FILE)},
        }
        with open(tmp / MARKER_FILE, "w") as f:
            json.dump(marker, f)
            f.flush()
            os.fsync(f.fileno())
        _fsync_dir(tmp)
        if final.exists():
            _remove_tree(final)
        os.replace(tmp, final)
        _fsync_dir(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    atomic_write_text(root / LATEST_FILE, final.name + "\n")
    prune_checkpoints(root, keep_last)
    return final


def load_checkpoint(
    path: str | os.PathLike, map_location: str | torch.device = "cpu"
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Return ``(model_state, train_state)``; ``state.pt`` is read with ``weights_only=True``."""
    path = Path(path)
    if not is_complete_checkpoint(path):
        raise FileNotFoundError(f"{path} is not a complete checkpoint")
    model_state = load_weights(path / MODEL_FILE, device="cpu")
    train_state = torch.load(path / STATE_FILE, map_location=map_location, weights_only=True)
    if not isinstance(train_state, dict):
        raise ValueError(f"{path / STATE_FILE} does not hold a dict")
    return model_state, train_state


def load_latest_checkpoint(
    output_dir: str | os.PathLike, map_location: str | torch.device = "cpu"
) -> tuple[Path, dict[str, torch.Tensor], dict[str, Any]] | None:
    """Load the newest checkpoint that is complete *and* readable, falling back to older ones."""
    for path in reversed(list_checkpoints(output_dir)):
        try:
            model_state, train_state = load_checkpoint(path, map_location)
        except Exception as err:  # corrupted bytes despite a valid marker
            warnings.warn(f"skipping unreadable checkpoint {path}: {type(err).__name__}: {err}", stacklevel=2)
            continue
        return path, model_state, train_state
    return None
