"""Video data pipeline: decoding, annotation lists, sampling, transforms, datasets and synthetic videos.

Clips use the (C, T, H, W) layout throughout; see :mod:`videomap.data.transforms` (geometry and
normalisation), :mod:`videomap.data.rand_augment` and :mod:`videomap.data.mixup` (Mixup / CutMix,
label smoothing, random erasing).
"""

from .annotations import AnnotationEntry, parse_annotation_line, read_annotations
from .dataset import (
    BadDataError,
    BadSample,
    BadSampleBookkeeping,
    BadSampleRegistry,
    VideoClsDataset,
    collate_repeated,
    format_bad_samples,
)
from .decode import (
    DecordVideoReader,
    FrameFolderReader,
    PyAVVideoReader,
    VideoDecodeError,
    VideoInfo,
    VideoSource,
    count_frames,
    decode_frames,
    open_video,
    probe_video,
)
from .mixup import Mixup, RandomErasing, smooth_one_hot
from .rand_augment import RandAugment
from .sampling import as_generator, dense_indices, sample_clip_indices, segment_indices
from .synthetic import (
    SYNTHETIC_CLASSES,
    make_broken_videos,
    make_synthetic_dataset,
    render_clip,
    write_video,
)
from .transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    center_crop,
    hflip,
    normalize,
    random_hflip,
    random_resized_crop,
    resize,
    resize_short_side,
    spatial_crops,
)

__all__ = [
    "AnnotationEntry",
    "BadDataError",
    "BadSample",
    "BadSampleBookkeeping",
    "BadSampleRegistry",
    "DecordVideoReader",
    "FrameFolderReader",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "Mixup",
    "PyAVVideoReader",
    "RandAugment",
    "RandomErasing",
    "SYNTHETIC_CLASSES",
    "VideoClsDataset",
    "VideoDecodeError",
    "VideoInfo",
    "VideoSource",
    "as_generator",
    "center_crop",
    "collate_repeated",
    "count_frames",
    "decode_frames",
    "dense_indices",
    "format_bad_samples",
    "hflip",
    "make_broken_videos",
    "make_synthetic_dataset",
    "normalize",
    "open_video",
    "parse_annotation_line",
    "probe_video",
    "random_hflip",
    "random_resized_crop",
    "read_annotations",
    "render_clip",
    "resize",
    "resize_short_side",
    "sample_clip_indices",
    "segment_indices",
    "smooth_one_hot",
    "spatial_crops",
    "write_video",
]
