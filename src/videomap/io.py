"""Crash-safe file output: every file the library writes goes through here.

A reader (or a resumed job) must only ever see a complete old file or a complete new one, never a
half-written one, so writers fill a private temporary name next to the target, flush it to disk
and then rename it over the target (an atomic operation on POSIX filesystems).

The JSON readers at the end give every annotation and saved-model file the same errors: the file,
and what was expected of it.
"""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO, Any

import torch

ALIAS_KEY = "videomap.aliases"  # safetensors metadata: tied names stored once


def _tmp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")


def fsync_dir(path: str | os.PathLike) -> None:
    """Make a rename inside ``path`` durable (silently skipped where directories cannot be fsynced)."""
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


def fsync_file(path: str | os.PathLike) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Atomically move a finished file or directory ``src`` onto ``dst`` and make it durable."""
    os.replace(src, dst)
    fsync_dir(Path(dst).parent)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path to write ``path``'s content to; published only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(path)
    try:
        yield tmp
        if tmp.exists():
            fsync_file(tmp)
            replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w", **open_kwargs: Any) -> Iterator[IO]:
    """``with atomic_write(p) as f: f.write(...)`` -- readers see the old or the new file, never a mix."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_write: mode must be 'w' or 'wb', got {mode!r}")
    with atomic_path(path) as tmp, open(tmp, mode, **open_kwargs) as f:
        yield f
        f.flush()


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_write(path) as f:
        f.write(text)


def write_json(path: str | os.PathLike, obj: Any, indent: int | None = 1) -> str:
    """Write ``obj`` as JSON atomically; returns the path."""
    with atomic_write(path) as f:
        json.dump(obj, f, indent=indent)
    return os.fspath(path)


def read_json_list(path: str | os.PathLike, what: str) -> list:
    """A non-empty list from a JSON file or a JSON Lines file (one value a line), as annotation
    files come in both. ``what`` names the items in errors (e.g. "samples")."""
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except OSError as exc:
        raise FileNotFoundError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as first:
        data = []  # JSON Lines?
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                data.append(json.loads(line))
            except json.JSONDecodeError:
                raise ValueError(f"{path}: not valid JSON or JSON Lines ({first.msg} at line {first.lineno}; "
                                 f"line {n} is not a JSON value either)") from None
    if isinstance(data, Mapping):
        raise ValueError(f"{path}: expected a JSON list of {what}, got an object with keys {sorted(data)[:5]}")
    if not isinstance(data, list) or not data:
        raise ValueError(f"{path}: expected a non-empty list of {what}")
    return data


def read_saved_json(directory: str | os.PathLike, name: str, writer: str,
                    required: tuple[str, ...] = ("config",)) -> dict[str, Any]:
    """The JSON object ``name`` of a directory written by ``writer`` (named in errors), holding a
    mapping under each of ``required``."""
    directory = os.fspath(directory)
    path = os.path.join(directory, name)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{directory}: no {name} (expected a directory written by {writer})")
    with open(path, encoding="utf-8") as f:
        try:
            saved = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(saved, dict) or not all(isinstance(saved.get(k), dict) for k in required):
        raise ValueError(f"{path}: expected a JSON object with {', '.join(repr(k) for k in required)} "
                         f"(written by {writer})")
    return saved


def save_safetensors(state_dict: Mapping[str, torch.Tensor], path: str | os.PathLike,
                     metadata: Mapping[str, str] | None = None) -> None:
    """Write tensors as safetensors, atomically, tolerating tied and non-contiguous tensors.

    safetensors refuses tensors that share memory: exact aliases (tied weights) are stored once
    and recorded in the metadata so :func:`load_safetensors` restores every name; any other
    overlap is broken with a copy. Tensors are moved to the CPU and detached.
    """
    from safetensors.torch import save_file

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
        tensors[name] = t.contiguous()
    # A view into a larger storage still shares memory with it: copy such views.
    for name, t in tensors.items():
        nbytes = t.numel() * t.element_size()
        if t.numel() and (t.storage_offset() != 0 or t.untyped_storage().nbytes() != nbytes):
            tensors[name] = t.clone()
    meta = dict(metadata or {})
    if aliases:
        meta[ALIAS_KEY] = json.dumps(aliases, sort_keys=True)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta or None)


def load_safetensors(path: str | os.PathLike, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Inverse of :func:`save_safetensors`: aliased names point to the same tensor again."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    tensors = load_file(str(path), device=str(device))
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    for name, target in json.loads(meta.get(ALIAS_KEY, "{}")).items():
        tensors[name] = tensors[target]
    return tensors

