"""Frame-accurate, selective video decoding.

Every reader returns uint8 frames as a ``(T, H, W, 3)`` RGB tensor for a list of frame indices and
decodes only as far as the largest requested index (seeking past long gaps), because a training
clip needs 8-16 frames out of a few hundred and full decodes dominate data-loading time.

Sources:

* video files through PyAV (default) or decord (``backend="decord"``, only when installed);
* folders of per-frame images (SSv2 "rawframes": ``img_00001.jpg`` ...), read with Pillow when it
  is importable and with PyAV's image demuxer otherwise.

Any unreadable input raises :class:`VideoDecodeError` carrying the path and a one-line reason, so
that the dataset can skip and report it instead of crashing a long training run.
"""

from __future__ import annotations

import contextlib
import gc
import importlib.util
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import av
import numpy as np
import torch
from av.video.reformatter import VideoReformatter

try:  # Pillow is optional; PyAV can decode still images too.
    from PIL import Image as _PILImage
except ImportError:  # pragma: no cover - depends on the environment
    _PILImage = None

__all__ = [
    "IMAGE_EXTENSIONS",
    "VideoSource",
    "VideoDecodeError",
    "VideoInfo",
    "PyAVVideoReader",
    "DecordVideoReader",
    "FrameFolderReader",
    "open_video",
    "decode_frames",
    "count_frames",
    "probe_video",
]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")

# FFmpeg objects (converters, demuxers, decoders) own worker threads. A DataLoader worker is a fork
# of the main process and inherits those objects but not their threads, so freeing one there waits
# forever for threads that do not exist. Two ways in, both closed: the child's garbage collector
# finding a reader the parent left in a reference cycle (a forked child freezes everything it
# inherits, so its collector never visits the parent's objects), and a reader opened by the parent
# being closed in the child (its container is parked in _INHERITED instead of freed).
os.register_at_fork(after_in_child=gc.freeze)
_INHERITED: list[object] = []
_REFORMATTERS: dict[int, VideoReformatter] = {}


def _reformatter() -> VideoReformatter:
    """This process's RGB converter (reused: a per-frame converter setup is ~10x slower)."""
    pid = os.getpid()
    if pid not in _REFORMATTERS:
        _REFORMATTERS[pid] = VideoReformatter()
    return _REFORMATTERS[pid]


# Errors PyAV / FFmpeg raise for damaged or foreign input (InvalidDataError is a ValueError).
_AV_ERRORS: tuple[type[BaseException], ...] = (av.error.FFmpegError, OSError, ValueError, EOFError)


class VideoDecodeError(RuntimeError):
    """A video (or frame folder) cannot provide the requested frames.

    ``path`` and ``reason`` are kept separately so callers can report bad inputs in a table.
    """

    def __init__(self, path: str | os.PathLike, reason: str) -> None:
        self.path = os.fspath(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")

    def __reduce__(self):  # keep (path, reason) when raised inside a DataLoader worker
        return (type(self), (self.path, self.reason))


@dataclass(frozen=True)
class VideoInfo:
    """Cheap metadata of a video source.

    ``count_source`` says how ``num_frames`` was obtained ("header", "duration", "demux" or
    "listing"); anything but "header"/"listing" is an estimate.
    """

    num_frames: int
    fps: float | None
    height: int
    width: int
    count_source: str


class VideoSource(Protocol):
    """What every reader offers: a frame count, metadata and selective decoding."""

    path: str
    num_frames: int

    @property
    def info(self) -> VideoInfo: ...

    def get_frames(self, indices: Sequence[int]) -> torch.Tensor: ...

    def close(self) -> None: ...


def check_media_file(path: str, kind: str = "video") -> None:
    """A clear ``VideoDecodeError`` for a missing, directory or empty path before any decoder sees it."""
    if not os.path.exists(path):
        raise VideoDecodeError(path, "file not found")
    if os.path.isdir(path):
        raise VideoDecodeError(path, f"is a directory, expected {'an' if kind[0] in 'aeiou' else 'a'} {kind} file")
    if os.path.getsize(path) == 0:
        raise VideoDecodeError(path, "zero-byte file")


def _clamp(indices: Sequence[int], n: int) -> list[int]:
    if len(indices) == 0:
        raise ValueError("at least one frame index is required")
    return [min(max(int(i), 0), n - 1) for i in indices]


class PyAVVideoReader:
    """Decode selected frames of a video file with PyAV.

    Frames are numbered in presentation order from 0. When the stream has a frame rate and its
    header frame count agrees with duration x rate, index ``i`` is the frame whose ``pts`` falls
    on slot ``i`` of the constant-rate grid (identical to counting for constant-frame-rate video;
    for variable-frame-rate video, the first frame shown at or after time ``i / fps``). This makes
    seeking exact: when the next wanted index is more than ``seek_gap`` frames ahead, the reader
    seeks to the preceding key frame instead of decoding everything in between. Without a usable
    grid (no rate, no timestamps, inconsistent header, or a seek that fails or overshoots) frames
    are counted while decoding sequentially from the start.

    ``truncation_tolerance``: when the stream ends early (header frame count too large), missing
    trailing indices are filled with the last decoded frame if at least ``1 - tolerance`` of the
    advertised frames were decodable; beyond that the file is reported as truncated.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        seek_gap: int = 64,
        truncation_tolerance: float = 0.1,
        thread_type: str | None = None,
    ) -> None:
        self.path = os.fspath(path)
        self.seek_gap = max(1, int(seek_gap))
        self.truncation_tolerance = float(truncation_tolerance)
        self._thread_type = thread_type
        self._pid = os.getpid()
        self.frames_decoded = 0  # diagnostics: frames pulled from the decoder so far
        check_media_file(self.path)
        self._container, self._pid = None, os.getpid()
        self._open()
        stream = self._stream
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        self.fps: float | None = float(rate) if rate else None
        self.height = int(stream.codec_context.height)
        self.width = int(stream.codec_context.width)
        self._time_base = stream.time_base
        self._first_pts: int | None = None  # pts of frame 0, learnt from the first decoded frame
        self.num_frames, self.count_source = self._count_frames()
        # pts -> index on a constant-rate grid (enables seeking) only when the header frame count
        # agrees with duration x rate; otherwise frames are counted.
        self._seekable = bool(self.fps) and self._time_base is not None and self._grid_consistent()
        if self.num_frames <= 0:
            self.close()
            raise VideoDecodeError(self.path, "video stream has no frames")

    # -- container handling -------------------------------------------------------------------
    def _open(self) -> None:
        self.close()
        try:
            container = av.open(self.path)
        except _AV_ERRORS as exc:
            reason = f"cannot open as video ({_short(exc, self.path)})"
            if _looks_like_mp4(self.path):
                reason += "; it has an MP4 header, so it is probably truncated or damaged"
            raise VideoDecodeError(self.path, reason) from None
        if not container.streams.video:
            container.close()
            raise VideoDecodeError(self.path, "no video stream")
        self._container, self._pid = container, os.getpid()
        self._stream = container.streams.video[0]
        if self._thread_type is not None:
            self._stream.thread_type = self._thread_type
        self._fresh = True

    def close(self) -> None:
        """Release the file handle (also done by ``with`` and garbage collection)."""
        if self._container is not None:
            if os.getpid() == self._pid:
                self._container.close()
            else:  # opened by the parent of this forked worker: see _INHERITED
                _INHERITED.append((self._container, self._stream))
            self._container = self._stream = None

    def __enter__(self) -> PyAVVideoReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:  # pragma: no cover - best effort
        with contextlib.suppress(Exception):
            self.close()

    def _count_frames(self) -> tuple[int, str]:
        stream = self._stream
        if stream.frames and stream.frames > 0:
            return int(stream.frames), "header"
        if self.fps:
            if stream.duration and self._time_base is not None:
                return int(round(float(stream.duration * self._time_base) * self.fps)), "duration"
            if self._container.duration:
                return int(round(self._container.duration / av.time_base * self.fps)), "duration"
        # Last resort: demux (no decoding) and count the video packets, then rewind by reopening.
        count = 0
        try:
            for packet in self._container.demux(self._stream):
                if packet.size > 0:
                    count += 1
        except _AV_ERRORS:
            pass
        self._open()
        return count, "demux"

    def _grid_consistent(self) -> bool:
        stream = self._stream
        if self.count_source != "header" or not stream.duration:
            return self.count_source == "duration"
        expected = float(stream.duration * self._time_base) * self.fps
        return abs(expected - self.num_frames) <= 1.0 + 0.01 * self.num_frames

    @property
    def info(self) -> VideoInfo:
        return VideoInfo(self.num_frames, self.fps, self.height, self.width, self.count_source)

    # -- decoding -----------------------------------------------------------------------------
    def _pts_to_index(self, pts: int) -> int:
        return int(round(float((pts - self._first_pts) * self._time_base) * self.fps))

    def _run(self, seek_target: int | None):
        """Yield ``(index, frame)`` from the start (``None``) or from the key frame before a target."""
        if seek_target is None and not self._fresh:
            self._open()  # rewinding by reopening is reliable for every container format
        self._fresh = False
        container, stream = self._container, self._stream
        if seek_target is not None:
            offset = self._first_pts + int(seek_target / self.fps / self._time_base)
            self._seek_pts = offset
            try:
                container.seek(offset, stream=stream, backward=True, any_frame=False)
            except _AV_ERRORS as exc:
                self._last_error = f"seek failed ({_short(exc)})"
                return
        counter = 0
        decoder = container.decode(stream)
        while True:
            try:
                frame = next(decoder)
            except StopIteration:
                return
            except _AV_ERRORS as exc:  # damaged data: treat as end of stream, judged by the caller
                self._last_error = _short(exc)
                return
            if seek_target is None:
                if counter == 0 and self._first_pts is None:
                    self._first_pts = frame.pts  # stream.start_time is not reliable for this (AVI)
                if self._seekable and (frame.pts is None or self._first_pts is None):
                    self._seekable = False  # no timestamps: count frames, never seek
                idx = self._pts_to_index(frame.pts) if self._seekable else counter
            else:
                if frame.pts is None:
                    self._last_error = "frame without timestamp after seek"
                    return
                idx = self._pts_to_index(frame.pts)
            counter += 1
            self.frames_decoded += 1
            yield idx, frame

    def _rgb(self, frame: av.VideoFrame) -> np.ndarray:
        return _reformatter().reformat(frame, format="rgb24").to_ndarray()

    def get_frames(self, indices: Sequence[int]) -> torch.Tensor:
        """Return frames ``indices`` (clamped to the valid range) as uint8 ``(T, H, W, 3)``."""
        if self._container is None:
            self._open()
        idx = _clamp(indices, self.num_frames)
        wanted = sorted(set(idx))
        self._last_error = ""
        arrays: dict[int, np.ndarray] = {}
        j = 0
        last_idx, last_frame = -1, None
        run = None
        while j < len(wanted):
            target = wanted[j]
            if run is None or (self._seekable and target - last_idx > self.seek_gap):
                seeking = self._seekable and target > self.seek_gap
                if seeking and self._first_pts is None:
                    next(self._run(None), None)  # decode frame 0 once to anchor the pts grid
                    seeking = self._seekable
                run = self._run(target if seeking else None)
                run_target, first = target, True
            exhausted = True
            for i, frame in run:
                if first and seeking and frame.pts > self._seek_pts:
                    break  # landed after the requested time: fall through to the sequential restart
                first = False
                last_idx, last_frame = i, frame
                while j < len(wanted) and wanted[j] <= i:
                    # wanted[j] < i only where pts skip a grid slot (VFR, dropped frame): take the next one.
                    arrays[wanted[j]] = self._rgb(frame)
                    j += 1
                if j >= len(wanted):
                    exhausted = False
                    break
                if i >= run_target and self._seekable and wanted[j] - i > self.seek_gap:
                    exhausted = False
                    break
            if exhausted and seeking and first:
                # A seek that failed, overshot or produced nothing: decode sequentially instead.
                self._seekable = False
                run = None
                continue
            if exhausted:
                break
        if j < len(wanted):
            decoded = last_idx + 1
            if last_frame is None:
                why = f" ({self._last_error})" if self._last_error else ""
                raise VideoDecodeError(self.path, f"no decodable frames{why}")
            if decoded < math.ceil(self.num_frames * (1.0 - self.truncation_tolerance)):
                why = f"; {self._last_error}" if self._last_error else ""
                raise VideoDecodeError(
                    self.path,
                    f"truncated: stream ended after {decoded} of {self.num_frames} frames{why}",
                )
            tail = self._rgb(last_frame)
            for w in wanted[j:]:
                arrays[w] = tail
        return torch.from_numpy(np.stack([arrays[i] for i in idx]))


class DecordVideoReader:
    """Optional decord backend (only when ``decord`` is importable); same interface as PyAV's."""

    def __init__(self, path: str | os.PathLike, num_threads: int = 1) -> None:
        import decord  # optional dependency, imported only when asked for

        self.path = os.fspath(path)
        check_media_file(self.path)
        try:
            self._vr = decord.VideoReader(self.path, num_threads=num_threads, ctx=decord.cpu(0))
        except Exception as exc:  # decord raises its own DECORDError / RuntimeError
            raise VideoDecodeError(self.path, f"cannot open as video ({_short(exc)})") from None
        self.num_frames = len(self._vr)
        if self.num_frames <= 0:
            raise VideoDecodeError(self.path, "video stream has no frames")
        self.fps = float(self._vr.get_avg_fps()) or None
        first = self._vr[0].shape
        self.height, self.width = int(first[0]), int(first[1])
        self.count_source = "header"

    @property
    def info(self) -> VideoInfo:
        return VideoInfo(self.num_frames, self.fps, self.height, self.width, self.count_source)

    def get_frames(self, indices: Sequence[int]) -> torch.Tensor:
        idx = _clamp(indices, self.num_frames)
        try:
            batch = self._vr.get_batch(idx).asnumpy()
        except Exception as exc:
            raise VideoDecodeError(self.path, f"decode failed ({_short(exc)})") from None
        return torch.from_numpy(np.ascontiguousarray(batch))

    def close(self) -> None:
        self._vr = None

    def __enter__(self) -> DecordVideoReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _natural_key(name: str) -> list:
    return [int(tok) if tok.isdigit() else tok.lower() for tok in re.split(r"(\d+)", name)]


class FrameFolderReader:
    """Frames stored as one image per file in a folder (SSv2 / "rawframes" layout).

    Files with an image extension are ordered by natural sort, so ``img_2`` precedes ``img_10``
    whether or not the numbers are zero-padded; the file count is the frame count.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = os.fspath(path)
        if not os.path.exists(self.path):
            raise VideoDecodeError(self.path, "frame folder not found")
        if not os.path.isdir(self.path):
            raise VideoDecodeError(self.path, "expected a folder of frame images")
        try:
            names = os.listdir(self.path)
        except OSError as exc:
            raise VideoDecodeError(self.path, f"cannot list folder ({_short(exc)})") from None
        self.files = sorted((n for n in names if n.lower().endswith(IMAGE_EXTENSIONS)), key=_natural_key)
        self.num_frames = len(self.files)
        if self.num_frames == 0:
            raise VideoDecodeError(self.path, "frame folder contains no images")
        self.fps = None
        self.count_source = "listing"
        first = self._read(0)
        self.height, self.width = int(first.shape[0]), int(first.shape[1])
        self._cache = {0: first}

    @property
    def info(self) -> VideoInfo:
        return VideoInfo(self.num_frames, self.fps, self.height, self.width, self.count_source)

    def _read(self, i: int) -> np.ndarray:
        file = os.path.join(self.path, self.files[i])
        try:
            if _PILImage is not None:
                with _PILImage.open(file) as img:
                    return np.asarray(img.convert("RGB"))
            with av.open(file) as container:
                frame = next(container.decode(video=0))
                return frame.to_ndarray(format="rgb24")
        except (*_AV_ERRORS, StopIteration) as exc:
            raise VideoDecodeError(file, f"cannot decode frame image ({_short(exc)})") from None

    def get_frames(self, indices: Sequence[int]) -> torch.Tensor:
        idx = _clamp(indices, self.num_frames)
        arrays = {i: self._cache[i] if i in self._cache else self._read(i) for i in sorted(set(idx))}
        shapes = {a.shape for a in arrays.values()}
        if len(shapes) > 1:
            raise VideoDecodeError(self.path, f"frame images differ in size: {sorted(shapes)}")
        return torch.from_numpy(np.stack([arrays[i] for i in idx]))

    def close(self) -> None:
        self._cache = {}

    def __enter__(self) -> FrameFolderReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_video(path: str | os.PathLike, backend: str = "pyav", **kwargs) -> VideoSource:
    """Open a video file or frame folder; ``backend`` is "pyav", "decord" or "auto".

    "auto" picks decord when it is importable and PyAV otherwise; folders always use
    :class:`FrameFolderReader`. All readers share ``num_frames``, ``info``, ``get_frames`` and
    ``close``.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        return FrameFolderReader(path)
    if backend == "auto":
        backend = "decord" if importlib.util.find_spec("decord") is not None else "pyav"
    if backend == "decord":
        return DecordVideoReader(path, **kwargs)
    if backend != "pyav":
        raise ValueError(f"unknown decode backend {backend!r}; expected 'pyav', 'decord' or 'auto'")
    return PyAVVideoReader(path, **kwargs)


def decode_frames(path: str | os.PathLike, indices: Sequence[int], backend: str = "pyav") -> torch.Tensor:
    """Decode frames ``indices`` of ``path`` into a uint8 ``(T, H, W, 3)`` tensor."""
    reader = open_video(path, backend)
    try:
        return reader.get_frames(indices)
    finally:
        reader.close()


def probe_video(path: str | os.PathLike, backend: str = "pyav") -> VideoInfo:
    """Frame count, rate and size without decoding the whole stream."""
    reader = open_video(path, backend)
    try:
        return reader.info
    finally:
        reader.close()


def count_frames(path: str | os.PathLike, backend: str = "pyav") -> int:
    """Number of frames (header count, else duration x rate, else a demux count)."""
    return probe_video(path, backend).num_frames


def _looks_like_mp4(path: str) -> bool:
    try:
        with open(path, "rb") as fh:
            head = fh.read(12)
    except OSError:
        return False
    return head[4:8] == b"ftyp"


def _short(exc: BaseException, path: str | None = None) -> str:
    """One-line description of an exception, without repeating the file path."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    if path:
        text = text.replace(f": '{path}'", "").replace(path, "<file>")
    name = type(exc).__name__
    return f"{name}: {text}" if text else name
