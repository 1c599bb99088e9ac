"""``videomap extract``: per-video features, sliding a clip-sized window over long videos."""

from __future__ import annotations

import logging
import os

import numpy as np
import torch

from ..config import JobConfig
from ..data import VideoDecodeError, center_crop, count_frames, decode_frames, normalize, resize_short_side
from ..engine.distributed import default_device
from .common import build_model

log = logging.getLogger("videomap")


def window_starts(num_sampled: int, window: int, stride: int) -> list[int]:
    """Window start positions covering ``num_sampled`` frames; the last window ends at the end."""
    if num_sampled <= window:
        return [0]
    starts = list(range(0, num_sampled - window + 1, stride))
    if starts[-1] != num_sampled - window:
        starts.append(num_sampled - window)
    return starts


@torch.no_grad()
def video_features(model, path: str, cfg: JobConfig, device: torch.device) -> torch.Tensor:
    """(num_windows, d) features of one video."""
    t, size, e = cfg.model.num_frames, cfg.model.img_size, cfg.extract
    n = count_frames(path)
    frame_ids = list(range(0, n, e.frame_stride)) or [0]
    stride = e.window_stride or t
    feats = []
    for s in window_starts(len(frame_ids), t, stride):
        ids = frame_ids[s:s + t]
        ids = ids + [ids[-1]] * (t - len(ids))  # a video shorter than one window repeats its last frame
        clip = decode_frames(path, ids).permute(3, 0, 1, 2)  # (C, T, H, W) uint8
        clip = normalize(center_crop(resize_short_side(clip, size), size))
        tokens = model.forward_features(clip[None].to(device))
        feats.append(tokens[0, 0] if e.pool == "cls" else tokens[0, 1:].mean(0))
    return torch.stack(feats).float().cpu()


def video_paths(list_file: str, root: str = "", delimiter: str | None = None) -> list[str]:
    """Paths from a list of ``path`` or ``path<delim>label...`` lines (extra fields ignored)."""
    if not os.path.isfile(list_file):
        raise FileNotFoundError(f"extract.list: no such file {list_file}")
    paths = []
    with open(list_file, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            sep = delimiter or ("," if "," in line else None)
            path = line.split(sep)[0].strip() if (sep or len(line.split()) > 1) else line
            paths.append(os.path.join(root, path) if root else path)
    return paths


def run_extract(cfg: JobConfig, checkpoint: str | None = None) -> dict:
    e = cfg.extract
    if not e.list:
        raise ValueError("extract.list is not set: give a list of videos (path or path,label lines)")
    if e.format not in ("safetensors", "npy"):
        raise ValueError(f"extract.format: expected 'safetensors' or 'npy', got {e.format!r}")
    if e.pool not in ("cls", "mean"):
        raise ValueError(f"extract.pool: expected 'cls' or 'mean', got {e.pool!r}")
    paths = video_paths(e.list, cfg.data.root, cfg.data.delimiter)
    model = build_model(cfg, num_classes=0, pretrained=checkpoint or cfg.model.pretrained or "")
    device = default_device()
    model.to(device).eval()
    os.makedirs(e.output_dir, exist_ok=True)
    written, failed = 0, []
    for path in paths:
        stem = os.path.splitext(os.path.basename(path.rstrip("/")))[0]
        out = os.path.join(e.output_dir, f"{stem}.{e.format}")
        if os.path.exists(out):  # resumable: finished videos are kept
            written += 1
            continue
        try:
            feats = video_features(model, path, cfg, device)
        except VideoDecodeError as err:
            log.warning("skipping %s: %s", path, err)
            failed.append(path)
            continue
        tmp = out + ".tmp"
        if e.format == "npy":
            with open(tmp, "wb") as f:
                np.save(f, feats.numpy())
        else:
            from safetensors.torch import save_file

            save_file({"features": feats}, tmp)
        os.replace(tmp, out)
        written += 1
    log.info("features for %d videos in %s (%d unreadable)", written, e.output_dir, len(failed))
    return {"written": written, "failed": failed, "output_dir": e.output_dir}
