"""A small synthetic "Something-Something"-like dataset written as real MP4 files.

Six classes, in three pairs that differ only in the *direction of time*:

=====  ===========================  =========================================================
label  name                         what changes over the clip
=====  ===========================  =========================================================
0      moving_right                 the glyph translates right (wrapping around the frame)
1      moving_left                  the glyph translates left
2      rotating_clockwise           the glyph turns clockwise about its position
3      rotating_counterclockwise    the glyph turns counter-clockwise
4      approaching                  the glyph grows (it comes closer)
5      receding                     the glyph shrinks (it moves away)
=====  ===========================  =========================================================

Why no single frame reveals the label: every clip shows the same kind of glyph (a bar with a disc
at its tip) described by a position, an orientation and a size. In every class the state
variables are drawn uniformly on a periodic domain - position on the torus of the frame (drawing
wraps around the borders), orientation on the circle, log-size on a wrapped interval (a growing
glyph that reaches the maximum size restarts at the minimum) - and each class moves exactly one
of them at a constant random speed. A uniform variable moved on its periodic domain stays
uniform, so at *every* frame index the joint distribution of position, orientation, size, colour
(random per clip) and background (random colour plus noise) is the same for all six classes:
single-frame accuracy is at chance (1/6), and each pair (right/left, clockwise/counter-clockwise,
approaching/receding) is even identical under time reversal. Only the change between frames
carries the label. Horizontal flipping swaps labels 0/1 and 2/3, so train with ``flip=False``
(as for SSv2).

:func:`write_video` and :func:`make_broken_videos` are also used by the tests.
"""

from __future__ import annotations

import math
import os
from fractions import Fraction

import av
import numpy as np
from av.video.reformatter import VideoReformatter

__all__ = [
    "SYNTHETIC_CLASSES",
    "default_codec",
    "write_video",
    "render_clip",
    "make_synthetic_dataset",
    "make_broken_videos",
]

SYNTHETIC_CLASSES = (
    "moving_right",
    "moving_left",
    "rotating_clockwise",
    "rotating_counterclockwise",
    "approaching",
    "receding",
)

_MIN_LOG_SCALE, _MAX_LOG_SCALE = math.log(0.5), math.log(1.5)


def default_codec() -> str:
    """``"libx264"`` when this PyAV build can encode H.264, otherwise ``"mpeg4"``."""
    try:
        av.codec.Codec("libx264", "w")
        return "libx264"
    except Exception:
        return "mpeg4"


def write_video(
    path: str | os.PathLike,
    frames: np.ndarray,
    fps: int = 8,
    codec: str | None = None,
    gop_size: int | None = None,
    faststart: bool = False,
    quality: int = 18,
) -> str:
    """Encode uint8 RGB frames ``(T, H, W, 3)`` (even H and W) into an MP4 file.

    ``quality`` is the CRF for H.264 and the qscale (scaled down) for MPEG-4; ``gop_size`` sets
    the key-frame interval (useful to exercise seeking); ``faststart`` puts the index first.
    """
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"expected uint8 frames (T, H, W, 3), got {frames.dtype} {frames.shape}")
    t, h, w, _ = frames.shape
    if t < 1 or h % 2 or w % 2:
        raise ValueError(f"need at least one frame and even height/width, got {frames.shape}")
    codec = codec or default_codec()
    path = os.fspath(path)
    container_options = {"movflags": "faststart"} if faststart else {}
    with av.open(path, "w", format="mp4", container_options=container_options) as container:
        if codec == "libx264":
            options = {"crf": str(quality), "preset": "ultrafast"}
        else:
            options = {"qscale": str(max(1, quality // 6))}
        stream = container.add_stream(codec, rate=Fraction(fps), options=options)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        if gop_size is not None:
            stream.codec_context.gop_size = int(gop_size)
        to_yuv = VideoReformatter()  # one converter for all frames (per-frame setup is slow)
        for frame in frames:
            yuv = to_yuv.reformat(av.VideoFrame.from_ndarray(frame, format="rgb24"), format="yuv420p")
            for packet in stream.encode(yuv):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def render_clip(label: int, rng: np.random.Generator, num_frames: int = 16, size: int = 64) -> np.ndarray:
    """Render one clip of class ``label`` as uint8 ``(T, size, size, 3)`` (see module docstring)."""
    if not 0 <= label < len(SYNTHETIC_CLASSES):
        raise ValueError(f"label must be in [0, {len(SYNTHETIC_CLASSES)}), got {label}")
    t = np.arange(num_frames, dtype=np.float32)[:, None, None]
    # State drawn uniformly on periodic domains, identically for every class.
    cx0, cy = (float(v) for v in rng.uniform(0, size, 2))
    theta0 = float(rng.uniform(0, 2 * math.pi))
    u0 = float(rng.uniform(0, 1))  # position inside the wrapped log-size interval
    cx, theta, u = np.full_like(t, cx0), np.full_like(t, theta0), np.full_like(t, u0)
    pair, direction = divmod(label, 2)
    sign = 1.0 if direction == 0 else -1.0
    if pair == 0:  # translation: 2.5-4 px per frame at 64 px
        cx = cx0 + sign * float(rng.uniform(2.5, 4.0)) * size / 64 * t
    elif pair == 1:  # rotation: image y points down, so increasing theta turns clockwise on screen
        theta = theta0 + sign * math.radians(float(rng.uniform(12.0, 20.0))) * t
    else:  # scale: at most one wrap per 16-frame clip
        u = u0 + sign * float(rng.uniform(0.6, 0.9)) / max(num_frames - 1, 1) * t
    u = np.mod(u, 1.0)
    scale = np.exp(_MIN_LOG_SCALE + u * (_MAX_LOG_SCALE - _MIN_LOG_SCALE))

    coords = np.arange(size, dtype=np.float32) + 0.5
    dx = np.mod(coords[None, None, :] - cx + size / 2, size) - size / 2  # torus offsets (T, 1, W)
    dy = np.mod(coords[None, :, None] - cy + size / 2, size) - size / 2  # (1, H, 1)
    cos, sin = np.cos(theta), np.sin(theta)
    along = dx * cos + dy * sin  # coordinate along the bar
    across = -dx * sin + dy * cos
    length = 0.3 * size * scale
    half_width = np.maximum(0.06 * size * scale, 0.75)
    radius = 0.1 * size * scale
    bar = np.minimum(np.minimum(half_width - np.abs(across), along), length - along)
    tip = radius - np.sqrt((along - length) ** 2 + across**2)
    coverage = np.clip(np.maximum(bar, tip) + 0.5, 0.0, 1.0)  # anti-aliased edges, (T, H, W)

    background = rng.uniform(0, 90, 3).astype(np.float32)
    noise = rng.standard_normal((size, size, 3), dtype=np.float32) * 8.0  # static texture
    colour = rng.uniform(140, 255, 3).astype(np.float32)
    backdrop = np.clip(background + noise, 0, 255)
    frames = np.empty((num_frames, size, size, 3), dtype=np.uint8)
    for c in range(3):  # per channel: numpy broadcasting over a trailing axis of 3 is slow
        frames[..., c] = (backdrop[..., c] + 0.5) + (colour[c] - backdrop[..., c]) * coverage
    return frames


def make_synthetic_dataset(
    out_dir: str | os.PathLike,
    num_train: int = 192,
    num_val: int = 48,
    num_frames: int = 16,
    size: int = 64,
    fps: int = 8,
    seed: int = 0,
    codec: str | None = None,
) -> tuple[str, str]:
    """Write balanced train/val clips, ``train.csv``/``val.csv`` and ``classes.txt``; return the two lists.

    Lists are headerless ``path,label`` lines with absolute paths. Clip ``i`` of a split has label
    ``i % 6`` and is reproducible from ``(seed, split, i)``.
    """
    out_dir = os.path.abspath(os.fspath(out_dir))
    video_dir = os.path.join(out_dir, "videos")
    os.makedirs(video_dir, exist_ok=True)
    codec = codec or default_codec()
    lists = []
    for split_id, (split, count) in enumerate((("train", num_train), ("val", num_val))):
        lines = []
        for i in range(count):
            label = i % len(SYNTHETIC_CLASSES)
            rng = np.random.default_rng([seed, split_id, i])
            path = os.path.join(video_dir, f"{split}_{i:05d}.mp4")
            write_video(path, render_clip(label, rng, num_frames, size), fps=fps, codec=codec)
            lines.append(f"{path},{label}\n")
        list_path = os.path.join(out_dir, f"{split}.csv")
        with open(list_path, "w", encoding="utf-8") as fh:
            fh.writelines(lines)
        lists.append(list_path)
    with open(os.path.join(out_dir, "classes.txt"), "w", encoding="utf-8") as fh:
        fh.writelines(f"{name}\n" for name in SYNTHETIC_CLASSES)
    return lists[0], lists[1]


def make_broken_videos(
    out_dir: str | os.PathLike, num_frames: int = 16, size: int = 32, fps: int = 8
) -> dict[str, str]:
    """Write one deliberately unreadable input of every kind; return ``{kind: path}``.

    Kinds: ``missing`` (path not created), ``zero_byte``, ``truncated`` (MP4 cut in half, index
    lost), ``truncated_data`` (fast-start MP4 whose index survives but whose frames stop early),
    ``not_video`` (a text file named .mp4), ``too_short`` (a valid one-frame video).
    """
    out_dir = os.path.abspath(os.fspath(out_dir))
    os.makedirs(out_dir, exist_ok=True)
    rng = np.random.default_rng(1234)
    kinds = ("missing", "zero_byte", "truncated", "truncated_data", "not_video", "too_short")
    paths = {kind: os.path.join(out_dir, f"broken_{kind}.mp4") for kind in kinds}
    if os.path.exists(paths["missing"]):
        os.unlink(paths["missing"])
    open(paths["zero_byte"], "wb").close()
    for kind, faststart in (("truncated", False), ("truncated_data", True)):
        write_video(paths[kind], render_clip(0, rng, num_frames, size), fps=fps, faststart=faststart)
        with open(paths[kind], "r+b") as fh:
            fh.truncate(os.path.getsize(paths[kind]) // 2)
    with open(paths["not_video"], "w", encoding="utf-8") as fh:
        fh.write("this is not a video, just text with an .mp4 name\n" * 20)
    write_video(paths["too_short"], render_clip(0, rng, 1, size), fps=fps)
    return paths
