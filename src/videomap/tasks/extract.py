"""``videomap extract``: per-video features, sliding a clip-sized window over long videos.

Each video's features go to ``extract.output_dir`` under the video's path relative to
``data.root`` (or to the list file's folder, or, for other absolute paths, the full path), with
the extension replaced: ``a/x.mp4`` -> ``features/a/x.safetensors``. Finished outputs are kept,
so an interrupted run continues where it stopped.

``extract.layer`` picks the block whose output is pooled (through
:meth:`~videomap.models.VideoBackbone.forward_intermediates`, blocks in execution order, so a
hybrid's Transformer blocks count); the default -1 with ``extract.norm`` is the model's final,
normalised output (:meth:`forward_features`). Middle layers often transfer better than the last.
"""

from __future__ import annotations

import logging
import os

import numpy as np
import torch
from torch import nn

from ..config import JobConfig
from ..data import VideoDecodeError, VideoSource, center_crop, normalize, open_video, resize_short_side
from ..data.annotations import read_video_paths
from ..engine import autocast, default_device, resolve_amp
from ..io import atomic_write, save_safetensors
from .common import build_model_from_checkpoint, resolve_checkpoint_model

log = logging.getLogger(__name__)


def window_starts(num_sampled: int, window: int, stride: int) -> list[int]:
    """Window start positions covering ``num_sampled`` frames; the last window ends at the end."""
    if num_sampled <= window:
        return [0]
    starts = list(range(0, num_sampled - window + 1, stride))
    if starts[-1] != num_sampled - window:
        starts.append(num_sampled - window)
    return starts


@torch.no_grad()
def video_features(model: nn.Module, reader: VideoSource, *, num_frames: int, img_size: int, frame_stride: int,
                   window_stride: int | None, pool: str, device: torch.device,
                   amp_dtype: torch.dtype | None = None, layer: int = -1, norm: bool = True) -> torch.Tensor:
    """(num_windows, d) float32 features of one opened video.

    Frames ``0, frame_stride, 2*frame_stride, ...`` are sampled; windows of ``num_frames`` sampled
    frames start every ``window_stride`` sampled frames (default ``num_frames``: no overlap) and
    the last one ends at the end. A video shorter than one window repeats its last frame. Each
    window is resized and centre-cropped to ``img_size``; ``pool`` is "cls" (the cls token) or
    "mean" (the mean of the patch tokens) of block ``layer``'s output, through the final norm
    when ``norm`` (-1 with ``norm``: the model's output). ``amp_dtype``: autocast dtype (None: fp32).
    """
    frame_ids = list(range(0, reader.info.num_frames, frame_stride)) or [0]
    feats = []
    for s in window_starts(len(frame_ids), num_frames, window_stride or num_frames):
        ids = frame_ids[s:s + num_frames]
        ids = ids + [ids[-1]] * (num_frames - len(ids))
        clip = reader.get_frames(ids).permute(3, 0, 1, 2)  # (C, T, H, W) uint8
        clip = normalize(center_crop(resize_short_side(clip, img_size), img_size))
        with autocast(amp_dtype, device):
            tokens = model.forward_intermediates(clip[None].to(device), [layer], norm=norm, stop_early=True,
                                                 intermediates_only=True)[0]
        feats.append(tokens[0, 0].float() if pool == "cls" else tokens[0, 1:].float().mean(0))
    return torch.stack(feats).cpu()


def _relative_name(path: str, root: str, list_dir: str) -> str:
    """``path`` relative to ``root`` when under it, else to ``list_dir``, else absolute without the leading '/'."""
    full = os.path.abspath(path)
    for base in (root, list_dir):
        if not base:
            continue
        base = os.path.abspath(base)
        if os.path.commonpath([full, base]) == base and full != base:
            return os.path.relpath(full, base)
    return os.path.splitdrive(full)[1].lstrip(os.sep + "/")


def feature_paths(videos: list[str], output_dir: str, fmt: str, root: str = "", list_file: str = "") -> list[str]:
    """One output file per input video, mirroring its path (see the module docstring).

    Two inputs that would share an output (``x.mp4`` and ``x.avi`` in one folder, or a video
    listed twice) are a ``ValueError`` naming both, raised before any work is done.
    """
    list_dir = os.path.dirname(os.path.abspath(list_file)) if list_file else ""
    outputs, owner = [], {}
    for video in videos:
        rel = os.path.splitext(_relative_name(video.rstrip("/"), root, list_dir))[0]
        out = os.path.join(output_dir, f"{rel}.{fmt}")
        if out in owner:
            raise ValueError(f"extract: {owner[out]} and {video} would both be written to {out}; "
                             "rename one or list each video once")
        owner[out] = video
        outputs.append(out)
    return outputs


def _write(out: str, feats: torch.Tensor, fmt: str) -> None:
    if fmt == "npy":
        with atomic_write(out, "wb") as f:
            np.save(f, feats.numpy())
    else:
        save_safetensors({"features": feats}, out)


def run_extract(cfg: JobConfig, checkpoint: str | None = None) -> dict:
    """Write features of every video in ``extract.list``; ``checkpoint`` defaults to ``model.pretrained``."""
    e = cfg.extract
    if not e.list:
        raise ValueError("extract.list is not set: give a list of videos (path or path,label lines)")
    if e.format not in ("safetensors", "npy"):
        raise ValueError(f"extract.format: expected 'safetensors' or 'npy', got {e.format!r}")
    if e.pool not in ("cls", "mean"):
        raise ValueError(f"extract.pool: expected 'cls' or 'mean', got {e.pool!r}")
    if e.frame_stride < 1 or (e.window_stride is not None and e.window_stride < 1):
        raise ValueError(f"extract.frame_stride / window_stride must be >= 1, got {e.frame_stride} / {e.window_stride}")
    weights = checkpoint or cfg.model.pretrained
    if not weights:
        raise ValueError("extract needs trained weights: pass --checkpoint or set model.pretrained")
    videos = read_video_paths(e.list, cfg.data.root, cfg.data.delimiter)
    outputs = feature_paths(videos, e.output_dir, e.format, root=cfg.data.root, list_file=e.list)
    cfg = resolve_checkpoint_model(cfg, weights)
    model = build_model_from_checkpoint(cfg, weights, num_classes=0)
    device = default_device()
    amp_dtype, _ = resolve_amp(cfg.train.amp, device)
    num_blocks = len(model.block_names())
    if not -num_blocks <= e.layer < num_blocks:
        raise ValueError(f"extract.layer: expected a block index in [-{num_blocks}, {num_blocks}) ({cfg.model.name} "
                         f"has {num_blocks} blocks), got {e.layer}")
    model.to(device).eval()
    written, existing, failed = 0, 0, []
    for video, out in zip(videos, outputs):
        if os.path.exists(out):  # resumable: finished videos are kept
            written += 1
            existing += 1
            continue
        try:
            reader = open_video(video)
            try:
                feats = video_features(model, reader, num_frames=cfg.model.num_frames, img_size=cfg.model.img_size,
                                       frame_stride=e.frame_stride, window_stride=e.window_stride, pool=e.pool,
                                       device=device, amp_dtype=amp_dtype, layer=e.layer, norm=e.norm)
            finally:
                reader.close()
        except VideoDecodeError as err:
            log.warning("skipping %s", err)
            failed.append(video)
            continue
        _write(out, feats, e.format)
        written += 1
    log.info("features for %d videos in %s (%d already there, %d unreadable)", written, e.output_dir, existing,
             len(failed))
    return {"written": written, "existing": existing, "failed": failed, "output_dir": e.output_dir,
            "feature_dim": getattr(model, "num_features", None)}
