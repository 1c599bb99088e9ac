"""A persistent, incremental embedding index over video files, for text search.

Layout of an index directory::

    index.json                     format version, model identity, embedding size, generation,
                                   one record per file (path, size, mtime_ns, row) and the files
                                   that could not be read (so they are retried only once changed)
    embeddings-<generation>.safetensors   "embeddings": float32 (N, D), L2-normalised rows
    .lock                          taken by writers (see below)
    model.json                     the model directory that built the index (written by ``videomap
                                   search``, read with :func:`read_index_model`)

Why this shape: indexing a folder is slow (every video is decoded and encoded), so a second run must
embed only files that are new or changed since (size or modification time differ), and an
interrupted run must keep what it finished. Every save writes a new embeddings file under a new
generation name and then replaces ``index.json`` atomically (temporary file + ``os.replace``); the
old embeddings file is deleted only afterwards. A crash at any point leaves either the old or the
new index, both complete. Writers take an exclusive lock on ``.lock`` (POSIX) and re-read the index
under it, so two processes adding to one index do not lose each other's work.

Embeddings from different models live in different spaces, so the index stores the identity of
the model that made it (any string; :func:`model_identity` derives one from a model directory and
the encoding settings) and refuses to mix in another model's vectors.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from ..data.annotations import VIDEO_EXTENSIONS
from ..data.decode import IMAGE_EXTENSIONS, VideoDecodeError
from ..data.media import load_image, load_video
from ..engine.distributed import module_device, module_dtype
from ..io import load_safetensors, read_saved_json, save_safetensors, write_json
from .losses import video_embedding

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

__all__ = [
    "AddReport",
    "INDEX_FILE",
    "MODEL_FILE",
    "ModelMismatchError",
    "VideoIndex",
    "VideoIndexError",
    "find_videos",
    "model_identity",
    "read_index_model",
    "video_encoder_fn",
    "write_index_model",
]

logger = logging.getLogger(__name__)

INDEX_FILE = "index.json"
MODEL_FILE = "model.json"  # which model directory built the index, so later searches need not name it
FORMAT = "videomap-video-index"
VERSION = 1
EncodeFn = Callable[[list[str]], torch.Tensor]


class VideoIndexError(RuntimeError):
    """The index directory is missing, damaged or cannot be used as asked."""


class ModelMismatchError(VideoIndexError):
    """The index was built with another model: its embeddings cannot be compared with this one's."""


@dataclass
class AddReport:
    """What :meth:`VideoIndex.add_videos` did: files embedded for the first time, re-embedded because
    they changed, left alone, and unreadable (path, reason)."""

    added: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)

    @property
    def embedded(self) -> int:
        return len(self.added) + len(self.updated)


def find_videos(paths: Iterable[str | os.PathLike], extensions: Sequence[str] = VIDEO_EXTENSIONS) -> list[str]:
    """Absolute paths of the given files and of the video files under the given folders (recursive,
    sorted, hidden entries skipped); given files are kept whatever their extension."""
    out: list[str] = []
    seen: set[str] = set()
    exts = tuple(e.lower() for e in extensions)
    for path in paths:
        path = os.path.abspath(os.fspath(path))
        if os.path.isdir(path):
            found = []
            for root, dirs, files in os.walk(path):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                found += [os.path.join(root, f) for f in files if not f.startswith(".") and f.lower().endswith(exts)]
            candidates = sorted(found)
        else:
            candidates = [path]
        for p in candidates:
            if p not in seen:
                seen.add(p)
                out.append(p)
    return out


def model_identity(model_dir: str | os.PathLike, **settings: Any) -> str:
    """``"<folder name>@<digest>"``: a digest of every file in ``model_dir`` (names and contents) and of
    ``settings`` (e.g. ``num_frames``, ``img_size``: they change the embeddings too)."""
    model_dir = os.fspath(model_dir)
    if not os.path.isdir(model_dir):
        raise FileNotFoundError(f"model directory {model_dir} not found")
    digest = hashlib.sha256()
    for root, dirs, files in os.walk(model_dir):
        dirs.sort()
        for name in sorted(files):
            path = os.path.join(root, name)
            digest.update(os.path.relpath(path, model_dir).encode() + b"\0")
            with open(path, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(block)
    digest.update(json.dumps(settings, sort_keys=True, default=str).encode())
    return f"{os.path.basename(os.path.normpath(model_dir))}@{digest.hexdigest()[:16]}"


def video_encoder_fn(model: Any, num_frames: int = 8, img_size: int = 224, *, device: str | torch.device | None = None,
                     backend: str = "pyav") -> EncodeFn:
    """An ``encode_fn`` for :meth:`VideoIndex.add_videos`: decodes the files (test-mode geometry, images as
    one-frame videos) and returns ``model.encode_video``'s embeddings. A file that cannot be read raises
    ``VideoDecodeError`` (the index then retries the batch file by file)."""
    dev = torch.device(device) if device is not None else module_device(model)
    dtype = module_dtype(model)

    def encode(paths: list[str]) -> torch.Tensor:
        clips = [load_image(p, img_size, "test").unsqueeze(1) if p.lower().endswith(IMAGE_EXTENSIONS)
                 else load_video(p, num_frames, img_size, "test", min_frames=max(1, num_frames // 2), backend=backend)
                 for p in paths]
        if len({tuple(c.shape) for c in clips}) > 1:  # images and videos in one batch: encode apart
            return torch.cat([encode([p]) for p in paths])
        with torch.no_grad():
            _, embed = model.encode_video(torch.stack(clips).to(dev, dtype))
        return video_embedding(embed.detach().float()).cpu()

    return encode


def read_index_model(directory: str | os.PathLike) -> dict[str, Any] | None:
    """The model record of the index in ``directory`` (``{"checkpoint": model directory, "model_id",
    ...}``, see :func:`write_index_model`); ``None`` when there is none. A damaged record is a
    :class:`VideoIndexError`: guessing the model would mix embedding spaces."""
    path = os.path.join(os.fspath(directory), MODEL_FILE)
    if not os.path.isfile(path):
        return None
    try:
        data = read_saved_json(directory, MODEL_FILE, "`videomap search`", required=())
    except ValueError as e:
        raise VideoIndexError(str(e)) from None
    if not isinstance(data.get("checkpoint"), str):
        raise VideoIndexError(f"{path} does not name the model directory (expected a \"checkpoint\" string)")
    return data


def write_index_model(directory: str | os.PathLike, checkpoint: str, **details: Any) -> None:
    """Record beside the index which model directory (``checkpoint``) built it, with ``details``
    such as the model identity and clip size; written atomically."""
    write_json(os.path.join(os.fspath(directory), MODEL_FILE), {"checkpoint": checkpoint, **details})


def _stat(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


class VideoIndex:
    """Embeddings of video files, kept on disk in ``directory`` (see module docstring).

    ``model_id`` identifies the model the embeddings come from: opening an existing index with a
    different one raises :class:`ModelMismatchError` (use another directory, or ``rebuild=True`` to
    start it over for the new model); ``None`` adopts the stored one (enough for searching).
    ``create=False`` requires the index to exist already.
    """

    def __init__(self, directory: str | os.PathLike, model_id: str | None = None, create: bool = True,
                 rebuild: bool = False) -> None:
        self.directory = os.path.abspath(os.fspath(directory))
        self.index_file = os.path.join(self.directory, INDEX_FILE)
        self.model_id: str | None = model_id
        self.generation = 0
        self.entries: dict[str, dict[str, int]] = {}  # path -> {"size", "mtime_ns", "row"}
        self.failed: dict[str, dict[str, Any]] = {}  # path -> {"size", "mtime_ns", "reason"}
        self.embeddings = torch.zeros(0, 0)
        self._stored_model: str | None = None
        self._holding_lock = False
        if rebuild:
            if model_id is None:
                raise ValueError(f"rebuilding the video index in {self.directory} needs the new model_id")
            with self._locked(reload=False):
                self.generation = self._stored_generation()
                self._save()
            return
        if os.path.exists(self.index_file):
            self._load()
        elif not create:
            raise VideoIndexError(f"no video index in {self.directory} (expected {INDEX_FILE}); build one first")
        elif os.path.isdir(self.directory) and any(n.startswith("embeddings-") for n in os.listdir(self.directory)):
            raise VideoIndexError(f"{self.directory} holds embeddings files but no {INDEX_FILE}: the index is "
                                  "damaged; delete the directory and index the videos again")

    # -- reading ------------------------------------------------------------------------------
    def _stored_generation(self) -> int:
        try:
            with open(self.index_file, encoding="utf-8") as fh:
                return int(json.load(fh).get("generation", 0))
        except (OSError, ValueError, AttributeError, TypeError):
            return 0

    def _load(self) -> None:
        """Read the index from disk (replacing the state in memory) and check the model identity."""
        for attempt in range(3):  # a writer may replace the embeddings file between our two reads
            try:
                with open(self.index_file, encoding="utf-8") as fh:
                    meta = json.load(fh)
            except (OSError, ValueError) as exc:
                raise VideoIndexError(f"cannot read {self.index_file}: {exc}; the index in {self.directory} is "
                                      "damaged, delete it and index the videos again") from None
            try:
                self._apply(meta)
                break
            except FileNotFoundError:
                if attempt == 2:
                    raise VideoIndexError(
                        f"the video index in {self.directory} is damaged: {INDEX_FILE} names the embeddings file "
                        f"{meta.get('embeddings')!r}, which is missing; delete the directory and index again"
                    ) from None
        if self.model_id is not None and self._stored_model is not None and self._stored_model != self.model_id:
            raise ModelMismatchError(
                f"the video index in {self.directory} was built with model {self._stored_model!r}, not "
                f"{self.model_id!r}: its embeddings cannot be mixed or compared with this model's; use another "
                "index directory or rebuild it"
            )
        if self.model_id is None:
            self.model_id = self._stored_model

    def _apply(self, meta: Any) -> None:
        where = f"video index {self.directory}"
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise VideoIndexError(f"{self.index_file} is not a videomap video index (expected format {FORMAT!r})")
        if meta.get("version") != VERSION:
            raise VideoIndexError(f"{where}: format version {meta.get('version')!r}, this videomap reads {VERSION}")
        entries, failed = meta.get("entries"), meta.get("failed", {})
        if not isinstance(entries, dict) or not isinstance(failed, dict):
            raise VideoIndexError(f"{where}: {INDEX_FILE} has no valid 'entries' / 'failed' tables")
        embeddings = torch.zeros(0, int(meta.get("embed_dim") or 0))
        if meta.get("embeddings"):
            path = os.path.join(self.directory, os.path.basename(meta["embeddings"]))
            if not os.path.exists(path):
                raise FileNotFoundError(path)
            try:
                embeddings = load_safetensors(path)["embeddings"].float()
            except Exception as exc:  # truncated or foreign file
                raise VideoIndexError(f"{where}: cannot read {path} ({type(exc).__name__}: {exc}); delete the "
                                      "directory and index again") from None
        try:
            rows = sorted(int(e["row"]) for e in entries.values())
        except (KeyError, TypeError, ValueError):
            raise VideoIndexError(f"{where}: {INDEX_FILE} has malformed file records") from None
        if rows != list(range(embeddings.shape[0])):
            raise VideoIndexError(f"{where}: {INDEX_FILE} lists {len(entries)} files but the embeddings file has "
                                  f"{embeddings.shape[0]} rows; delete the directory and index again")
        self._stored_model = meta.get("model_id")
        self.generation = int(meta.get("generation", 0))
        self.entries = {p: {k: int(e[k]) for k in ("size", "mtime_ns", "row")} for p, e in entries.items()}
        self.failed = dict(failed)
        self.embeddings = embeddings

    def __len__(self) -> int:
        return len(self.entries)

    def __contains__(self, path: str | os.PathLike) -> bool:
        return os.path.abspath(os.fspath(path)) in self.entries

    @property
    def paths(self) -> list[str]:
        """Indexed files in row order."""
        return [p for p, _ in sorted(self.entries.items(), key=lambda kv: kv[1]["row"])]

    @property
    def embed_dim(self) -> int:
        return int(self.embeddings.shape[1])

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({self.directory!r}, files={len(self)}, model_id={self.model_id!r}, "
                f"embed_dim={self.embed_dim})")

    # -- writing ------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _locked(self, reload: bool = True) -> Iterator[None]:
        """Hold the directory's write lock; with ``reload``, first re-read what other writers saved."""
        if self._holding_lock:
            yield
            return
        os.makedirs(self.directory, exist_ok=True)
        with open(os.path.join(self.directory, ".lock"), "a+") as fh:
            if fcntl is not None:
                fcntl.flock(fh, fcntl.LOCK_EX)
            self._holding_lock = True
            try:
                if reload and os.path.exists(self.index_file):
                    self._load()
                yield
            finally:
                self._holding_lock = False
                if fcntl is not None:
                    fcntl.flock(fh, fcntl.LOCK_UN)

    def _save(self) -> None:
        """Write a new embeddings generation, then ``index.json`` (atomically), then drop the old files."""
        self.generation += 1
        name = f"embeddings-{self.generation:08d}.safetensors" if len(self.entries) else None
        if name is not None:
            save_safetensors({"embeddings": self.embeddings.contiguous()}, os.path.join(self.directory, name),
                             metadata={"model_id": str(self.model_id)})
        write_json(self.index_file, {
            "format": FORMAT,
            "version": VERSION,
            "model_id": self.model_id,
            "embed_dim": self.embed_dim,
            "generation": self.generation,
            "embeddings": name,
            "entries": dict(sorted(self.entries.items(), key=lambda kv: kv[1]["row"])),
            "failed": self.failed,
        })
        self._stored_model = self.model_id
        for stale in os.listdir(self.directory):  # older generations and leftovers of interrupted writers
            old_generation = stale.startswith("embeddings-") and stale != name
            if old_generation or (stale.startswith((".embeddings-", f".{INDEX_FILE}.")) and stale.endswith(".tmp")):
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(self.directory, stale))

    def save(self) -> None:
        """Write the index atomically (see module docstring); :meth:`add_videos` does this itself."""
        with self._locked(reload=False):
            self._save()

    def _store(self, path: str, stat: tuple[int, int], vector: torch.Tensor) -> bool:
        """Put ``vector`` in ``path``'s row (appending a row for a new file); True when the file is new."""
        vector = F.normalize(vector.float().reshape(1, -1), dim=-1)
        if self.embeddings.shape[0] == 0 and self.embed_dim != vector.shape[1]:
            self.embeddings = torch.zeros(0, vector.shape[1])
        if vector.shape[1] != self.embed_dim:
            raise VideoIndexError(f"the video index in {self.directory} holds {self.embed_dim}-d embeddings, the "
                                  f"encoder returned {vector.shape[1]}-d ones")
        self.failed.pop(path, None)
        record = {"size": stat[0], "mtime_ns": stat[1]}
        if path in self.entries:
            row = self.entries[path]["row"]
            self.embeddings[row] = vector[0]
            self.entries[path] = {**record, "row": row}
            return False
        self.entries[path] = {**record, "row": self.embeddings.shape[0]}
        self.embeddings = torch.cat([self.embeddings, vector])
        return True

    def _drop(self, paths: set[str]) -> None:
        """Remove the rows of ``paths`` (those indexed) and renumber the rest in order."""
        if not any(p in self.entries for p in paths):
            return
        keep = [p for p in self.paths if p not in paths]
        rows = torch.tensor([self.entries[p]["row"] for p in keep], dtype=torch.long)
        self.embeddings = self.embeddings[rows] if keep else torch.zeros(0, self.embed_dim)
        self.entries = {p: {**self.entries[p], "row": i} for i, p in enumerate(keep)}

    def _encode(self, paths: list[str], encode_fn: EncodeFn) -> list[torch.Tensor | str]:
        """One embedding per path, or why it could not be read (a failing batch is retried file by file)."""
        try:
            out = torch.as_tensor(encode_fn(list(paths)))
        except VideoDecodeError as err:
            if len(paths) == 1:
                return [err.reason if err.path == paths[0] else f"{err.path}: {err.reason}"]
            return [r for p in paths for r in self._encode([p], encode_fn)]
        if out.dim() != 2 or out.shape[0] != len(paths):
            raise VideoIndexError(f"encode_fn returned shape {tuple(out.shape)} for {len(paths)} files, expected "
                                  f"({len(paths)}, embed_dim)")
        if not torch.isfinite(out).all():
            raise VideoIndexError(f"encode_fn returned non-finite embeddings for a batch starting with {paths[0]}")
        return list(out.detach().cpu())

    def add_videos(self, paths: Iterable[str | os.PathLike], encode_fn: EncodeFn, batch_size: int = 8,
                   save_every: int = 256) -> AddReport:
        """Embed the files (folders are searched for videos, see :func:`find_videos`) that are not indexed
        yet or changed since (size or mtime); others are left alone. ``encode_fn(paths) -> (n, D)`` is
        called ``batch_size`` files at a time. Unreadable files (``VideoDecodeError``) are reported, logged
        and remembered, so they are retried only once they change. Progress is saved every
        ``save_every`` embedded files and at the end, also when ``encode_fn`` fails otherwise."""
        if batch_size < 1 or save_every < 1:
            raise ValueError(f"batch_size and save_every must be >= 1, got {batch_size} and {save_every}")
        if self.model_id is None:
            raise VideoIndexError(f"the video index in {self.directory} has no model identity yet: open it with "
                                  "VideoIndex(directory, model_id=...) before adding videos")
        report = AddReport()
        files = find_videos(paths)
        with self._locked():
            since_save = 0
            try:
                todo = []
                for path in files:
                    stat = _stat(path)
                    if stat is None:
                        report.failed.append((path, "file not found"))
                        continue
                    known = self.entries.get(path) or self.failed.get(path)
                    if known is not None and (known["size"], known["mtime_ns"]) == stat:
                        if path in self.entries:
                            report.unchanged.append(path)
                        else:
                            report.failed.append((path, f"unreadable (unchanged since): {known['reason']}"))
                        continue
                    todo.append((path, stat))
                for start in range(0, len(todo), batch_size):
                    chunk = todo[start:start + batch_size]
                    for (path, stat), result in zip(chunk, self._encode([p for p, _ in chunk], encode_fn)):
                        if isinstance(result, str):
                            logger.warning("cannot index %s: %s", path, result)
                            self._drop({path})  # a changed file that broke: its old embedding is stale
                            self.failed[path] = {"size": stat[0], "mtime_ns": stat[1], "reason": result}
                            report.failed.append((path, result))
                        elif self._store(path, stat, result):
                            report.added.append(path)
                        else:
                            report.updated.append(path)
                        since_save += 1
                    if since_save >= save_every:
                        self._save()
                        since_save = 0
            finally:
                if since_save:
                    self._save()
        logger.info("video index %s: %d added, %d re-embedded, %d unchanged, %d unreadable (%d files in total)",
                    self.directory, len(report.added), len(report.updated), len(report.unchanged),
                    len(report.failed), len(self))
        return report

    def remove_missing(self) -> list[str]:
        """Drop the files that no longer exist (their rows are removed) and save; return their paths."""
        with self._locked():
            gone = {p for p in self.entries if not os.path.exists(p)}
            gone_failed = [p for p in self.failed if not os.path.exists(p)]
            for p in gone_failed:
                del self.failed[p]
            self._drop(gone)
            if gone or gone_failed:
                self._save()
        if gone:
            logger.info("video index %s: removed %d missing file(s)", self.directory, len(gone))
        return sorted(gone)

    # -- searching ----------------------------------------------------------------------------
    def search(self, text_embedding: torch.Tensor, k: int = 10, skip_missing: bool = True) -> list[tuple[str, float]]:
        """The ``k`` files whose embeddings are most similar (cosine) to ``text_embedding`` ``(D,)`` or
        ``(1, D)``, best first, as ``(path, score)``; files deleted since indexing are skipped unless
        ``skip_missing=False``. Equal scores keep index order."""
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        if not len(self):
            raise VideoIndexError(f"the video index in {self.directory} is empty: add videos first")
        query = torch.as_tensor(text_embedding).detach().float().cpu().reshape(-1)
        if query.numel() != self.embed_dim:
            raise ValueError(f"text embedding has {query.numel()} values but the video index in {self.directory} "
                             f"holds {self.embed_dim}-d embeddings (model {self.model_id!r})")
        scores = self.embeddings @ F.normalize(query, dim=0)
        order = torch.sort(scores, descending=True, stable=True).indices.tolist()
        paths = self.paths
        hits: list[tuple[str, float]] = []
        for row in order:
            if skip_missing and not os.path.exists(paths[row]):
                continue
            hits.append((paths[row], float(scores[row])))
            if len(hits) == k:
                break
        return hits
