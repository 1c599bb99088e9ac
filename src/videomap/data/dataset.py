"""Video classification dataset with deterministic augmentation and bad-input tolerance.

Determinism
    Every random choice of sample ``i`` (frame indices, crop, flip, RandAugment, erasing) comes
    from a generator seeded with ``(seed, epoch, i)``. The epoch lives in a one-element
    shared-memory tensor, so :meth:`VideoClsDataset.set_epoch` called in the main process is seen
    by DataLoader workers, including persistent ones. A resumed run therefore reproduces exactly the
    same clips, independent of ``num_workers`` and of which worker loads which sample.

Bad inputs
    Missing, zero-byte, truncated, non-video or too-short files never stop an epoch: the sample is
    replaced by the next readable index (wrapping around), which is deterministic. Each worker
    process holds its own copy of the dataset, so bad samples are recorded in a small **file-based
    registry** (a temporary directory created by the main process and inherited by every worker):
    one file per bad index, created atomically, so each bad sample is counted and logged (warning
    on the ``videomap.data.dataset`` logger) exactly once across all workers and epochs, and
    :meth:`VideoClsDataset.bad_samples` in the main process sees what every worker found. When
    more than ``max_bad_fraction`` of the list is bad the loader raises :class:`BadDataError` naming
    the list file, the count and the threshold. For several ranks, pass the same
    ``bad_sample_dir`` (on a shared filesystem) to pool their records, or gather the per-rank lists.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import Dataset

from ..seeding import sample_seed
from .annotations import AnnotationEntry, read_annotations
from .decode import VideoDecodeError, open_video
from .mixup import RandomErasing
from .rand_augment import RandAugment
from .sampling import sample_clip_indices
from .transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    center_crop,
    normalize,
    random_hflip,
    random_resized_crop,
    resize_short_side,
    spatial_crops,
)

__all__ = [
    "BadDataError",
    "BadSample",
    "BadSampleRegistry",
    "VideoClsDataset",
    "format_bad_samples",
]

logger = logging.getLogger(__name__)


class BadDataError(RuntimeError):
    """Too many unreadable samples: the list or the data root is probably wrong."""


@dataclass(frozen=True)
class BadSample:
    """One unreadable list entry: its index, path, reason, and the epoch it was found in."""

    index: int
    path: str
    reason: str
    epoch: int


def _cleanup_dir(directory: str, owner_pid: int) -> None:
    if os.getpid() == owner_pid:  # never from a forked worker
        shutil.rmtree(directory, ignore_errors=True)


class BadSampleRegistry:
    """Cross-process record of bad samples: one JSON file per bad index in ``directory``.

    Files are published with an atomic hard link (falling back to exclusive create), so
    concurrent workers agree on who found a sample first and readers never see half a record.
    A directory created here is removed when the registry is garbage-collected in its creating
    process; a caller-supplied directory is left alone.
    """

    def __init__(self, directory: str | os.PathLike | None = None) -> None:
        if directory is None:
            self.directory = tempfile.mkdtemp(prefix="videomap-bad-samples-")
            self._finalizer = weakref.finalize(self, _cleanup_dir, self.directory, os.getpid())
        else:
            self.directory = os.fspath(directory)
            os.makedirs(self.directory, exist_ok=True)
            self._finalizer = None

    def __getstate__(self) -> dict:
        return {"directory": self.directory}  # workers must not own (or delete) the directory

    def __setstate__(self, state: dict) -> None:
        self.directory = state["directory"]
        self._finalizer = None

    def _file(self, index: int) -> str:
        return os.path.join(self.directory, f"{index:010d}.json")

    def contains(self, index: int) -> bool:
        return os.path.exists(self._file(index))

    def _publish(self, final: str, payload: str) -> bool:
        tmp = os.path.join(self.directory, f".tmp-{os.getpid()}-{os.path.basename(final)}")
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(payload)
        try:
            os.link(tmp, final)
            return True
        except FileExistsError:
            return False
        except OSError:  # filesystem without hard links
            try:
                fd = os.open(final, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                return False
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(payload)
            return True
        finally:
            os.unlink(tmp)

    def record(self, sample: BadSample) -> bool:
        """Store ``sample``; True only for the first process to record this index."""
        fields = {"index": sample.index, "path": sample.path, "reason": sample.reason, "epoch": sample.epoch}
        payload = json.dumps(fields)
        return self._publish(self._file(sample.index), payload)

    def count(self) -> int:
        return sum(1 for name in os.listdir(self.directory) if name.endswith(".json"))

    def samples(self) -> list[BadSample]:
        out = []
        for name in sorted(os.listdir(self.directory)):
            if not name.endswith(".json"):
                continue
            try:
                with open(os.path.join(self.directory, name), encoding="utf-8") as fh:
                    data = json.load(fh)
            except (OSError, ValueError):
                continue
            out.append(BadSample(int(data["index"]), data["path"], data["reason"], int(data["epoch"])))
        return out

    def clear(self) -> None:
        for name in os.listdir(self.directory):
            if name.endswith(".json"):
                os.unlink(os.path.join(self.directory, name))


def format_bad_samples(samples: Sequence[BadSample], limit: int | None = 20) -> str:
    """Human-readable table of bad samples (``limit`` rows, then a count of the rest)."""
    if not samples:
        return "no unreadable samples"
    rows = [f"{len(samples)} unreadable sample(s):"]
    shown = samples if limit is None else samples[:limit]
    rows += [f"  [{s.index}] {s.path}: {s.reason}" for s in shown]
    if len(shown) < len(samples):
        rows.append(f"  ... and {len(samples) - len(shown)} more")
    return "\n".join(rows)


class BadSampleBookkeeping:
    """What every dataset here shares: the epoch (seen by DataLoader workers already running) and
    the rule for unusable samples -- warned once, recorded for all processes in a
    :class:`BadSampleRegistry`, replaced by the next usable one, and a :class:`BadDataError` once
    more than ``max_bad_fraction`` of the file is bad, so a wrong root fails fast instead of
    training on a fraction of the data.
    """

    bad_word = "unreadable"  # how errors and warnings call a bad sample

    def _init_bookkeeping(self, source: str, root: str, max_bad_fraction: float,
                          bad_sample_dir: str | os.PathLike | None) -> None:
        self._bad_source, self._bad_root = source, root
        self.max_bad_fraction = float(max_bad_fraction)
        self.registry = BadSampleRegistry(bad_sample_dir)
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()
        self._local_bad: set[int] = set()

    @property
    def epoch(self) -> int:
        return int(self._epoch)

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation stream; visible to already-running DataLoader workers."""
        self._epoch.fill_(int(epoch))

    def bad_samples(self) -> list[BadSample]:
        """Every bad sample found so far by any process, sorted by index."""
        return self.registry.samples()

    def bad_sample_summary(self, limit: int | None = 20) -> str:
        """Text summary of :meth:`bad_samples`, e.g. for the end-of-epoch log."""
        return format_bad_samples(self.bad_samples(), limit)

    def check_bad_fraction(self) -> None:
        """Raise :class:`BadDataError` if more than ``max_bad_fraction`` of the file is bad."""
        count = self.registry.count()
        limit = self.max_bad_fraction * len(self)
        if count > limit:
            raise BadDataError(
                f"{self._bad_source}: {count} of {len(self)} samples are {self.bad_word} ({count / len(self):.1%}), "
                f"more than max_bad_fraction={self.max_bad_fraction:g} (at most {int(limit)} allowed); check the "
                f"file and the media root {self._bad_root!r}.\n{format_bad_samples(self.bad_samples(), limit=5)}"
            )

    def _record_bad(self, index: int, path: str, reason: str) -> None:
        self._local_bad.add(index)
        if self.registry.record(BadSample(index, path, reason, self.epoch)):
            word = self.bad_word
            logger.warning("%s sample %d (%s): %s; substituting the next usable sample", word, index, path, reason)
        self.check_bad_fraction()

    def _known_bad(self, index: int) -> bool:
        return index in self._local_bad or self.registry.contains(index)

    def _report_bad(self, index: int, err: Exception) -> None:  # pragma: no cover - per dataset
        raise NotImplementedError

    def _load_usable(self, index: int, load: Callable[[int, torch.Generator], Any],
                     bad: tuple[type[Exception], ...] = (VideoDecodeError,)) -> tuple[int, Any]:
        """``(i, load(i, generator))`` for entry ``index``, or for the next usable entry when it is bad
        (``bad`` errors go to :meth:`_report_bad`). The generator is seeded from ``(seed, epoch,
        index)``, plus the replacement's index, so a replacement is as reproducible as the original."""
        n = len(self)
        index = int(index) % n
        epoch = self.epoch
        current = index
        for _ in range(n):
            if not self._known_bad(current):
                extra = () if current == index else (current,)
                g = torch.Generator()
                g.manual_seed(sample_seed(self.seed, epoch, index, *extra))
                try:
                    return current, load(current, g)
                except bad as err:
                    self._report_bad(current, err)
            current = (current + 1) % n
        self.check_bad_fraction()
        raise BadDataError(f"{self._bad_source}: no usable sample in the whole file")


def collate_repeated(batch: Sequence[tuple[torch.Tensor, int, int]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Collate ``(clips (S, 3, T, H, W), label, index)`` items of a repeated-augmentation dataset
    into ``(B * S, 3, T, H, W)`` clips with labels and indices repeated per clip, video-major (the
    authors' ``multiple_samples_collate(fold=False)``, ``video_sm/run_class_finetuning.py``)."""
    if not batch:
        raise ValueError("collate_repeated: empty batch")
    clips = [item[0] for item in batch]
    if any(c.ndim != 5 for c in clips):
        raise ValueError(f"collate_repeated: expected clips (num_sample, 3, T, H, W), got "
                         f"{[tuple(c.shape) for c in clips][:3]}")
    repeats = torch.tensor([c.shape[0] for c in clips])
    labels = torch.as_tensor([item[1] for item in batch])
    indices = torch.as_tensor([item[2] for item in batch])
    return (torch.cat(clips), labels.repeat_interleave(repeats, dim=0), indices.repeat_interleave(repeats))


class VideoClsDataset(BadSampleBookkeeping, Dataset):
    """Video classification samples from an annotation list.

    Returns ``(clip, label, index)``: ``clip`` is float32 ``(3, T, H, W)``, normalised; in
    ``mode="test"`` it is ``(V, 3, T, H, W)`` with ``V = test_clips * test_crops`` views, ordered
    clip-major (view ``k * test_crops + c``), also when ``V == 1``. ``index`` is the list entry that
    was actually loaded (the replacement when entry ``i`` was unreadable).

    Modes: "train" = random clip, random resized crop, optional flip / RandAugment / erasing;
    "val" = one centre clip, short-side resize and centre crop; "test" = ``test_clips`` temporal
    clips, each short-side resized and cut into ``test_crops`` crops along the long side.

    ``sampling="segment"`` uses ``num_frames`` segments (SSv2 style); ``"dense"`` takes
    ``num_frames`` frames ``frame_stride`` apart (Kinetics style). Videos with fewer than
    ``min_frames`` frames (default ``max(1, num_frames // 2)``) are treated as bad; shorter-than-
    needed videos above that repeat frames.

    ``num_sample`` (repeated augmentation, the authors' ``--num_sample``; ``video_sm/datasets/
    kinetics.py``): in ``mode="train"`` the frames are decoded once and augmented ``num_sample``
    times independently, and the clip is ``(num_sample, 3, T, H, W)``; :func:`collate_repeated`
    flattens a batch of such items, so a batch of ``b`` videos trains on ``b * num_sample`` clips
    while an epoch keeps ``len(dataset) / b`` steps.
    """

    def __init__(
        self,
        list_file: str | os.PathLike,
        root: str | os.PathLike = "",
        num_frames: int = 8,
        sampling: str = "segment",
        frame_stride: int = 4,
        mode: str = "train",
        input_size: int = 224,
        short_side: int | None = None,
        test_clips: int = 1,
        test_crops: int = 1,
        flip: bool = True,
        randaug: str | RandAugment | None = None,
        erase_prob: float = 0.0,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        delimiter: str | None = None,
        list_format: str = "auto",
        max_bad_fraction: float = 0.1,
        seed: int = 0,
        crop_scale: tuple[float, float] = (0.08, 1.0),
        crop_ratio: tuple[float, float] = (3 / 4, 4 / 3),
        min_frames: int | None = None,
        backend: str = "pyav",
        bad_sample_dir: str | os.PathLike | None = None,
        num_sample: int = 1,
    ) -> None:
        if isinstance(num_sample, bool) or not isinstance(num_sample, int) or num_sample < 1:
            raise ValueError(f"num_sample: expected an integer >= 1 (augmented clips per video), got {num_sample!r}")
        if mode not in ("train", "val", "test"):
            raise ValueError(f"mode must be 'train', 'val' or 'test', got {mode!r}")
        if sampling not in ("segment", "dense"):
            raise ValueError(f"sampling must be 'segment' or 'dense', got {sampling!r}")
        if num_frames < 1 or frame_stride < 1 or test_clips < 1 or test_crops < 1:
            raise ValueError("num_frames, frame_stride, test_clips and test_crops must be >= 1")
        self.list_file = os.fspath(list_file)
        self.root = os.fspath(root)
        self.entries: list[AnnotationEntry] = read_annotations(self.list_file, root, delimiter, list_format)
        self.num_frames = int(num_frames)
        self.sampling = sampling
        self.frame_stride = int(frame_stride)
        self.mode = mode
        self.input_size = int(input_size)
        self.short_side = int(short_side) if short_side is not None else self.input_size
        if self.short_side < self.input_size:
            raise ValueError(f"short_side ({self.short_side}) must be >= input_size ({self.input_size})")
        self.test_clips = int(test_clips)
        self.test_crops = int(test_crops)
        self.flip = bool(flip)
        self.randaug = RandAugment.from_string(randaug) if isinstance(randaug, str) else randaug
        self.eraser = RandomErasing(prob=erase_prob) if erase_prob > 0 else None
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.seed = int(seed)
        self.crop_scale = crop_scale
        self.crop_ratio = crop_ratio
        self.min_frames = int(min_frames) if min_frames is not None else max(1, self.num_frames // 2)
        self.backend = backend
        self.num_sample = int(num_sample) if mode == "train" else 1
        self._init_bookkeeping(self.list_file, self.root, max_bad_fraction, bad_sample_dir)

    # -- bookkeeping --------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.entries)

    @property
    def num_classes(self) -> int:
        return max(e.label for e in self.entries) + 1

    @property
    def labels(self) -> list[int]:
        return [e.label for e in self.entries]

    def _report_bad(self, index: int, err: VideoDecodeError) -> None:
        path = self.entries[index].path
        self._record_bad(index, path, err.reason if err.path == path else f"{err.path}: {err.reason}")

    # -- loading ------------------------------------------------------------------------------
    def _clip_indices(
        self, n: int, clip_idx: int, num_clips: int, generator: torch.Generator | None
    ) -> list[int]:
        return sample_clip_indices(
            n,
            self.num_frames,
            self.sampling,
            self.frame_stride,
            self.mode == "train",
            clip_idx,
            num_clips,
            generator,
        )

    def _decode(self, entry: AnnotationEntry, generator: torch.Generator) -> torch.Tensor:
        """uint8 frames ``(K * T, H, W, 3)`` for the K temporal clips of this mode."""
        reader = open_video(entry.path, self.backend)
        try:
            n = reader.num_frames
            if n < self.min_frames:
                raise VideoDecodeError(
                    entry.path, f"too short: {n} frame(s), need at least {self.min_frames}"
                )
            clips = self.test_clips if self.mode == "test" else 1
            indices: list[int] = []
            for k in range(clips):
                indices += self._clip_indices(n, k, clips, generator)
            return reader.get_frames(indices)
        finally:
            reader.close()

    def _transform_train(self, clip: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        clip = random_resized_crop(clip, self.input_size, self.crop_scale, self.crop_ratio, g)
        if self.flip:
            clip = random_hflip(clip, 0.5, g)
        if self.randaug is not None:
            clip = self.randaug(clip, g)
        clip = normalize(clip, self.mean, self.std)
        if self.eraser is not None:
            clip = self.eraser(clip, g)
        return clip

    def load(self, index: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Decode and transform entry ``index`` without bad-sample handling (raises VideoDecodeError)."""
        entry = self.entries[index]
        g = generator
        if g is None:
            g = torch.Generator()
            g.manual_seed(sample_seed(self.seed, self.epoch, index))
        frames = self._decode(entry, g)  # (K*T, H, W, 3)
        clip = frames.permute(3, 0, 1, 2)  # (3, K*T, H, W)
        if self.mode == "train":
            if self.num_sample > 1:
                return torch.stack([self._transform_train(clip, g) for _ in range(self.num_sample)])
            return self._transform_train(clip, g)
        clip = resize_short_side(clip, self.short_side)
        if self.mode == "val":
            return normalize(center_crop(clip, self.input_size), self.mean, self.std)
        views = []
        for part in clip.split(self.num_frames, dim=1):
            for view in spatial_crops(part, self.input_size, self.test_crops):
                views.append(normalize(view, self.mean, self.std))
        return torch.stack(views)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int]:
        current, clip = self._load_usable(index, self.load)
        return clip, self.entries[current].label, current

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(list_file={self.list_file!r}, samples={len(self)}, mode={self.mode!r}, "
            f"num_frames={self.num_frames}, sampling={self.sampling!r}, input_size={self.input_size})"
        )
