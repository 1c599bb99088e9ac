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
import re
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch

from ..io import fsync_dir, fsync_file, load_safetensors, replace, save_safetensors, write_json, write_text

CHECKPOINT_PREFIX = "checkpoint-"
TMP_PREFIX = ".tmp-checkpoint-"
TRASH_PREFIX = ".trash-checkpoint-"
MODEL_FILE = "model.safetensors"
STATE_FILE = "state.pt"
MARKER_FILE = "COMPLETE.json"
LATEST_FILE = "latest.txt"
FORMAT_VERSION = 1
_DIR_RE = re.compile(rf"^{re.escape(CHECKPOINT_PREFIX)}(\d+)$")


# --------------------------------------------------------------------------- file helpers


def _remove_tree(path: Path) -> None:
    """Rename to a hidden trash name first so a half-deleted checkpoint never looks loadable."""
    if not path.exists():
        return
    trash = path.with_name(f"{TRASH_PREFIX}{path.name}-{os.getpid()}")
    replace(path, trash)
    shutil.rmtree(trash, ignore_errors=True)


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
        save_safetensors(model_state, tmp / MODEL_FILE, metadata={"step": str(step)})
        torch.save(train_state, tmp / STATE_FILE)
        fsync_file(tmp / STATE_FILE)
        marker = {
            "format": FORMAT_VERSION,
            "step": int(step),
            "files": {name: (tmp / name).stat().st_size for name in (MODEL_FILE, STATE_FILE)},
        }
        write_json(tmp / MARKER_FILE, marker, indent=None)
        fsync_dir(tmp)
        if final.exists():
            _remove_tree(final)
        replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    write_text(root / LATEST_FILE, final.name + "\n")
    prune_checkpoints(root, keep_last)
    return final


def load_train_state(
    path: str | os.PathLike, map_location: str | torch.device = "cpu"
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Return ``(model_state, train_state)``; ``state.pt`` is read with ``weights_only=True``."""
    path = Path(path)
    if not is_complete_checkpoint(path):
        raise FileNotFoundError(f"{path} is not a complete checkpoint")
    model_state = load_safetensors(path / MODEL_FILE)
    train_state = torch.load(path / STATE_FILE, map_location=map_location, weights_only=True)
    if not isinstance(train_state, dict):
        raise ValueError(f"{path / STATE_FILE} does not hold a dict")
    return model_state, train_state


def load_latest_train_state(
    output_dir: str | os.PathLike, map_location: str | torch.device = "cpu"
) -> tuple[Path, dict[str, torch.Tensor], dict[str, Any]] | None:
    """Load the newest checkpoint that is complete *and* readable, falling back to older ones."""
    for path in reversed(list_checkpoints(output_dir)):
        try:
            model_state, train_state = load_train_state(path, map_location)
        except Exception as err:  # corrupted bytes despite a valid marker
            warnings.warn(f"skipping unreadable checkpoint {path}: {type(err).__name__}: {err}", stacklevel=2)
            continue
        return path, model_state, train_state
    return None
