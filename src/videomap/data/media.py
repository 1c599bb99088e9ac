"""Loading one video or still image into a normalised clip, outside any dataset.

Used wherever a single file is read on request (instruction data, captions, chat, search
indexing) rather than sampled from an annotation list as :class:`~videomap.data.VideoClsDataset`
does. Geometry: segment sampling of ``num_frames`` frames; ``mode="train"`` takes a random frame
per segment and one random resized crop for the whole clip, ``mode="test"`` the segment centres,
a short-side resize and a centre crop, the single view ``videomap evaluate`` takes with
``data.test_clips=1 data.test_crops=1`` (``test_geometry="center_crop"``), or the whole frame resized
to a square (``"full"``, the authors' retrieval evaluation); then ImageNet normalisation. Images are
read with Pillow when it is installed, PyAV otherwise. No flip by default: text about the clip may
say left/right.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Literal, get_args

import torch

from ..constants import IMAGENET_MEAN, IMAGENET_STD
from .decode import IMAGE_EXTENSIONS, VideoDecodeError, check_media_file, open_video
from .sampling import sample_clip_indices
from .transforms import center_crop, normalize, random_hflip, random_resized_crop, resize, resize_short_side

try:  # Pillow is optional; PyAV decodes still images too
    from PIL import Image as _PILImage
except ImportError:  # pragma: no cover - depends on the environment
    _PILImage = None

MODES = ("train", "test")
TestGeometry = Literal["center_crop", "full"]
TEST_GEOMETRIES: tuple[str, ...] = get_args(TestGeometry)

__all__ = ["MODES", "TEST_GEOMETRIES", "TestGeometry", "is_image_path", "load_image", "load_video", "transform_clip"]


def is_image_path(path: str | os.PathLike) -> bool:
    """True for still-image files (by extension); folders of frames count as videos."""
    return os.fspath(path).lower().endswith(IMAGE_EXTENSIONS)


def _check_mode(mode: str, test_geometry: str = "center_crop") -> None:
    if mode not in MODES:
        raise ValueError(f"mode must be 'train' or 'test', got {mode!r}")
    if test_geometry not in TEST_GEOMETRIES:
        raise ValueError(f"test_geometry: expected one of {', '.join(TEST_GEOMETRIES)}, got {test_geometry!r}")


def transform_clip(clip: torch.Tensor, img_size: int, mode: str = "test", generator: torch.Generator | None = None,
                   short_side: int | None = None, crop_scale: tuple[float, float] = (0.5, 1.0), flip: bool = False,
                   mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                   test_geometry: TestGeometry = "center_crop") -> torch.Tensor:
    """uint8 ``(3, T, H, W)`` (or float in 0..1) -> normalised float ``(3, T, img_size, img_size)``.

    ``mode="test"``: a short-side resize to ``short_side`` (default ``img_size``) and a centre crop
    (``test_geometry="center_crop"``, ``videomap evaluate``'s single view), or the whole frame
    resized bicubically to ``img_size`` square (``"full"``, the authors' retrieval evaluation)."""
    _check_mode(mode, test_geometry)
    if mode == "train":
        clip = random_resized_crop(clip, img_size, crop_scale, (3 / 4, 4 / 3), generator)
        if flip:
            clip = random_hflip(clip, 0.5, generator)
    elif test_geometry == "full":  # video_mm/dataset/__init__.py test_transform: Resize((res, res), BICUBIC)
        clip = resize(clip, img_size, "bicubic")
    else:
        clip = center_crop(resize_short_side(clip, short_side or img_size), img_size)
    return normalize(clip, mean, std)


def load_video(path: str | os.PathLike, num_frames: int = 8, img_size: int = 224, mode: str = "test", *,
               generator: torch.Generator | None = None, short_side: int | None = None,
               crop_scale: tuple[float, float] = (0.5, 1.0), flip: bool = False, min_frames: int = 1,
               backend: str = "pyav", mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
               sampling: str = "segment", frame_stride: int = 4,
               test_geometry: TestGeometry = "center_crop") -> torch.Tensor:
    """Decode ``num_frames`` frames of a video file or frame folder into a normalised float
    ``(3, T, img_size, img_size)`` clip; raises ``VideoDecodeError``.

    ``sampling`` / ``frame_stride``: as ``data.sampling`` / ``data.frame_stride`` (test clip 0 of 1 in
    ``mode="test"``); ``test_geometry``: as :func:`transform_clip`."""
    _check_mode(mode, test_geometry)
    path = os.fspath(path)
    reader = open_video(path, backend)
    try:
        n = reader.num_frames
        if n < min_frames:
            raise VideoDecodeError(path, f"too short: {n} frame(s), need at least {min_frames}")
        indices = sample_clip_indices(n, num_frames, sampling, frame_stride, train=mode == "train",
                                      generator=generator)
        frames = reader.get_frames(indices)  # (T, H, W, 3) uint8
    finally:
        reader.close()
    return transform_clip(frames.permute(3, 0, 1, 2), img_size, mode, generator, short_side, crop_scale, flip, mean,
                          std, test_geometry)


def _read_image(path: str) -> torch.Tensor:
    """uint8 ``(H, W, 3)`` RGB; any failure is a ``VideoDecodeError`` naming the file."""
    check_media_file(path, "image")
    try:
        if _PILImage is not None:
            import numpy as np

            with _PILImage.open(path) as img:
                array = np.asarray(img.convert("RGB")).copy()
            return torch.from_numpy(array)
        import av

        with av.open(path) as container:
            frame = next(container.decode(video=0))
            return torch.from_numpy(frame.to_ndarray(format="rgb24").copy())
    except VideoDecodeError:
        raise
    except Exception as exc:  # PIL.UnidentifiedImageError, truncated data, FFmpeg errors, StopIteration
        text = str(exc).strip().splitlines()[0].replace(path, "<file>") if str(exc).strip() else ""
        raise VideoDecodeError(path, f"cannot decode image ({type(exc).__name__}{': ' + text if text else ''})"
                               ) from None


def load_image(path: str | os.PathLike, img_size: int = 224, mode: str = "test", *,
               generator: torch.Generator | None = None, short_side: int | None = None,
               crop_scale: tuple[float, float] = (0.5, 1.0), flip: bool = False,
               mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
               test_geometry: TestGeometry = "center_crop") -> torch.Tensor:
    """Read a still image into a normalised float ``(3, img_size, img_size)`` tensor with the same
    geometry as :func:`load_video`; raises ``VideoDecodeError``."""
    _check_mode(mode, test_geometry)
    clip = _read_image(os.fspath(path)).permute(2, 0, 1).unsqueeze(1)  # (3, 1, H, W)
    return transform_clip(clip, img_size, mode, generator, short_side, crop_scale, flip, mean, std, test_geometry)[:, 0]
