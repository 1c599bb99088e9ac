"""A ``transformers`` video processor that prepares clips exactly as ``videomap evaluate`` does.

``pipeline("video-classification")`` hands its processor a file path; transformers' own video
decoding wants torchcodec or torchvision, so this processor decodes with our PyAV reader instead
and takes the single view of ``videomap evaluate`` with ``data.test_clips=1 data.test_crops=1``:
test clip 0 of 1 of ``sampling`` (``segment``: the middle frame of each of ``num_frames`` equal
segments; ``dense``: ``num_frames`` frames ``frame_stride`` apart, centred), a short-side resize
to ``short_side`` (default ``crop_size``), a centre ``crop_size`` crop and ImageNet
normalisation, all through :func:`videomap.data.media.load_video`.

Output: ``pixel_values`` ``(B, C, T, H, W)``, channels before time, the layout of our
backbones (VideoMAE's processors give ``(B, T, C, H, W)``).

This module imports ``transformers``; ``import videomap.data`` does not import it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from transformers.feature_extraction_utils import BatchFeature
from transformers.video_processing_utils import BaseVideoProcessor

from ..constants import IMAGENET_MEAN, IMAGENET_STD
from .media import load_video, transform_clip
from .sampling import SAMPLING_METHODS, sample_clip_indices

__all__ = ["VideoMAPVideoProcessor"]

_CALL_OPTIONS = ("num_frames", "do_sample_frames", "return_tensors")


class VideoMAPVideoProcessor(BaseVideoProcessor):
    """Video files or decoded frames -> ``pixel_values`` ``(B, 3, T, crop_size, crop_size)``.

    Inputs: a path (or a list of paths) of a video file or frame folder, or decoded frames: an
    array / tensor ``(T, H, W, 3)`` (or ``(T, 3, H, W)``), uint8 or float in 0..1, a list of such
    videos, or a ``(B, T, H, W, 3)`` batch. Call options: ``num_frames`` (default the processor's),
    ``do_sample_frames`` (False: decoded frames are used as given) and ``return_tensors``
    (``"pt"`` or None).
    """

    model_input_names = ["pixel_values"]

    def __init__(self, num_frames: int = 8, crop_size: int = 224, short_side: int | None = None,
                 sampling: str = "segment", frame_stride: int = 4,
                 image_mean: Sequence[float] = IMAGENET_MEAN, image_std: Sequence[float] = IMAGENET_STD,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if sampling not in SAMPLING_METHODS:
            raise ValueError(f"sampling: expected one of {SAMPLING_METHODS}, got {sampling!r}")
        if isinstance(crop_size, dict):  # a config written with transformers' {"height", "width"} form
            if crop_size.get("height") != crop_size.get("width"):
                raise ValueError(f"crop_size: expected a square crop, got {crop_size}")
            crop_size = crop_size["height"]
        if int(num_frames) < 1 or int(crop_size) < 1 or int(frame_stride) < 1:
            raise ValueError(f"num_frames, crop_size and frame_stride must be >= 1, got {num_frames}, {crop_size}, "
                             f"{frame_stride}")
        if short_side is not None and int(short_side) < int(crop_size):
            raise ValueError(f"short_side ({short_side}) must be >= crop_size ({crop_size})")
        if len(image_mean) != 3 or len(image_std) != 3:
            raise ValueError(f"image_mean / image_std: expected 3 values each, got {image_mean} / {image_std}")
        self.num_frames = int(num_frames)
        self.crop_size = int(crop_size)
        self.short_side = None if short_side is None else int(short_side)
        self.sampling = sampling
        self.frame_stride = int(frame_stride)
        self.image_mean = [float(m) for m in image_mean]
        self.image_std = [float(s) for s in image_std]

    def to_dict(self) -> dict[str, Any]:
        """Only the fields this processor uses (transformers' resize/crop defaults do not apply)."""
        out = {k: getattr(self, k) for k in ("num_frames", "crop_size", "short_side", "sampling", "frame_stride",
                                             "image_mean", "image_std")}
        out["video_processor_type"] = type(self).__name__
        if self.__dict__.get("auto_map"):  # read from an exported directory: kept when saved again
            out["auto_map"] = self.__dict__["auto_map"]
        return out

    def __call__(self, videos: Any, **kwargs: Any) -> BatchFeature:
        return self.preprocess(videos, **kwargs)

    def preprocess(self, videos: Any, **kwargs: Any) -> BatchFeature:
        unknown = sorted(set(kwargs) - set(_CALL_OPTIONS))
        if unknown:
            raise ValueError(f"{type(self).__name__}: unsupported option(s) {', '.join(unknown)}; "
                             f"expected {', '.join(_CALL_OPTIONS)}")
        num_frames = int(kwargs.get("num_frames") or self.num_frames)
        sample = kwargs.get("do_sample_frames")
        sample = True if sample is None else bool(sample)
        if kwargs.get("return_tensors") not in (None, "pt"):
            raise ValueError(f"return_tensors: expected 'pt' or None, got {kwargs['return_tensors']!r}")
        clips = [self._clip(v, num_frames, sample) for v in self._as_list(videos)]
        return BatchFeature(data={"pixel_values": torch.stack(clips)})

    @staticmethod
    def _as_list(videos: Any) -> list[Any]:
        """One entry per video."""
        if isinstance(videos, (str, os.PathLike)):
            return [videos]
        if isinstance(videos, (np.ndarray, torch.Tensor)):
            if videos.ndim == 4:
                return [videos]
            if videos.ndim == 5:
                return list(videos)
            raise ValueError(f"videos: expected frames (T, H, W, 3) or a batch (B, T, H, W, 3), got shape "
                             f"{tuple(videos.shape)}")
        if isinstance(videos, (list, tuple)) and videos:
            first = videos[0]
            if isinstance(first, (str, os.PathLike)) or (hasattr(first, "ndim") and first.ndim == 4):
                return list(videos)
            return [videos]  # the frames of one video (images or (H, W, 3) arrays)
        raise ValueError(f"videos: expected a video path, decoded frames or a list of them, got "
                         f"{type(videos).__name__}")

    def _clip(self, video: Any, num_frames: int, sample: bool) -> torch.Tensor:
        common = dict(short_side=self.short_side, mean=self.image_mean, std=self.image_std)
        if isinstance(video, (str, os.PathLike)):
            path = os.fspath(video)
            if path.startswith(("http://", "https://")):
                raise ValueError(f"videos: {path} is a URL; download the file and pass its path")
            if not sample:
                raise ValueError("do_sample_frames=False needs decoded frames, not a file path")
            return load_video(path, num_frames, self.crop_size, "test", sampling=self.sampling,
                              frame_stride=self.frame_stride, **common)
        frames = torch.as_tensor(np.stack([np.asarray(f) for f in video]) if isinstance(video, (list, tuple))
                                 else np.asarray(video))
        if frames.ndim != 4:
            raise ValueError(f"videos: expected decoded frames (T, H, W, 3), got shape {tuple(frames.shape)}")
        if frames.shape[-1] != 3 and frames.shape[1] == 3:
            frames = frames.permute(0, 2, 3, 1)  # (T, 3, H, W) -> (T, H, W, 3)
        if frames.shape[-1] != 3:
            raise ValueError(f"videos: expected 3 colour channels in (T, H, W, 3), got shape {tuple(frames.shape)}")
        if sample:
            frames = frames[sample_clip_indices(len(frames), num_frames, self.sampling, self.frame_stride,
                                                train=False)]
        return transform_clip(frames.permute(3, 0, 1, 2), self.crop_size, "test", **common)
