"""Video-text data: caption files, the training dataset, batching and the retrieval evaluation set.

Caption file
    A JSON list (or JSON Lines, one object per line) in the layout of the UMT / VINDLU / VideoMamba
    ``video_mm`` annotation files::

        {"video": "video7020.mp4", "caption": "a woman is cooking"}                   # MSRVTT 1k test
        {"video": "v_x.mp4", "caption": ["a man walks in.", "he sits down."]}         # several captions /
                                                                                     # DiDeMo, ActivityNet
        {"image": "coco/1.jpg", "caption": "a dog on a sofa"}                         # image-text corpora
        {"video": ["a.webm", "b.webm"], "caption": "pushing something left"}         # one text, several
                                                                                     # ground-truth videos (SSv2)

    Media paths are relative to ``media_root`` (absolute paths pass through); other keys are ignored.
    Every entry is checked when the file is read, and errors name the file, the entry and what was
    expected, so a broken file fails at start-up.

Text
    Captions are cleaned as in the authors' code (lower case, ``, . ' ! ? " ( ) * # : ; ~`` removed,
    ``-`` and ``/`` read as spaces, runs of spaces collapsed; ``clean_text=False`` keeps them as
    written) and tokenized with the model's Hugging Face tokenizer, padded to ``max_text_len`` and
    truncated. With ``paragraph=True`` a video's captions are joined into one text (DiDeMo and
    ActivityNet paragraph-to-video retrieval).

Media
    Decoded by :func:`videomap.data.media.load_video` / :func:`~videomap.data.media.load_image` (segment
    sampling; random frame per segment and one random resized crop in ``mode="train"``, segment
    centres and a centre crop in ``mode="test"``). The retrieval set instead resizes the whole frame
    to ``img_size`` square by default, as the authors' evaluation (``video_mm/dataset/__init__.py``,
    ``test_transform``); ``test_geometry="center_crop"`` keeps the short-side resize and centre crop.
    An image is a one-frame video ``(3, 1, H, W)``; image and video samples cannot share a batch
    (``T`` differs): :class:`CaptionMix` joins several corpora and :class:`CaptionBatches` serves
    them as whole batches of one kind at a time.

Bad samples (training)
    As :class:`videomap.data.VideoClsDataset`: warned once, recorded in a cross-process
    :class:`~videomap.data.BadSampleRegistry`, replaced by the next readable sample (deterministic),
    and :class:`~videomap.data.BadDataError` once more than ``max_bad_fraction`` of the file is bad.
    The retrieval set cannot substitute (that would change the benchmark): an unreadable video is
    returned as ``valid=False`` and scored as a miss by :func:`videomap.vl.retrieval.evaluate_retrieval`.

Determinism
    Item ``i`` of epoch ``e`` draws its caption and its frames/crop from a generator seeded with
    ``(seed, e, i)``, independent of DataLoader workers; the epoch is shared with running workers
    (:meth:`VideoCaptionDataset.set_epoch`).
"""

from __future__ import annotations

import bisect
import logging
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import Dataset

from ..data.dataset import BadDataError, BadSampleBookkeeping
from ..data.decode import VideoDecodeError
from ..data.media import TEST_GEOMETRIES, TestGeometry, load_image, load_video
from ..io import read_json_list
from ..seeding import mix_seed, sample_seed

__all__ = [
    "CaptionBatches",
    "CaptionEntry",
    "CaptionMix",
    "MEDIA_TYPES",
    "RetrievalSet",
    "VideoCaptionDataset",
    "clean_caption",
    "collate_captions",
    "collate_retrieval_videos",
    "first_item",
    "read_caption_file",
    "tokenize_texts",
]

logger = logging.getLogger(__name__)

MODES = ("train", "test")
MEDIA_TYPES = ("auto", "video", "image")
_MEDIA_KEYS = ("video", "image")
_DROPPED = re.compile(r"[,.'!?\"()*#:;~]")
_SPACES = re.compile(r"\s{2,}")


# ---------------------------------------------------------------------------------------------
# captions and caption files
# ---------------------------------------------------------------------------------------------
def clean_caption(text: str) -> str:
    """Caption normalisation of the UMT / VideoMamba text pipeline, so a checkpoint trained there sees
    the text it was trained on: lower case, no punctuation, hyphen and slash as spaces."""
    text = _DROPPED.sub("", text.lower())
    text = text.replace("-", " ").replace("/", " ").replace("<person>", "person")
    return _SPACES.sub(" ", text).strip()


@dataclass(frozen=True)
class CaptionEntry:
    """One checked entry: its media files (``media_root`` applied), their kind and its captions."""

    media: tuple[str, ...]
    kind: str  # "video" or "image"
    captions: tuple[str, ...]
    index: int  # position in the file


def _read_json_list(json_file: str) -> list:
    return read_json_list(json_file, "{'video' | 'image', 'caption'} objects")


def _strings(value: Any, where: str, key: str) -> tuple[str, ...]:
    """A non-empty string or a non-empty list of non-empty strings, as a tuple."""
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items or not all(isinstance(s, str) and s.strip() for s in items):
        raise ValueError(f"{where}: expected '{key}' to be a non-empty string or a non-empty list of non-empty "
                         f"strings, got {value!r:.80}")
    return tuple(items)


def read_caption_file(json_file: str | os.PathLike, media_root: str | os.PathLike = "",
                      media_type: str = "auto") -> list[CaptionEntry]:
    """Entries of a caption file (see module docstring), each checked.

    ``media_type="auto"`` takes whichever of ``"video"`` / ``"image"`` an entry has (an entry with both
    is an error); ``"video"`` or ``"image"`` reads only that key, as the authors' loader does when a
    corpus is declared as one kind.
    """
    if media_type not in MEDIA_TYPES:
        raise ValueError(f"media_type must be one of {MEDIA_TYPES}, got {media_type!r}")
    json_file, media_root = os.fspath(json_file), os.fspath(media_root)
    entries = []
    for index, entry in enumerate(_read_json_list(json_file)):
        where = f"{json_file}: entry {index}"
        if not isinstance(entry, Mapping):
            raise ValueError(f"{where}: expected an object with 'video' or 'image' and 'caption', "
                             f"got {type(entry).__name__}")
        keys = [k for k in _MEDIA_KEYS if entry.get(k) is not None] if media_type == "auto" else [media_type]
        if not keys or entry.get(keys[0]) is None:
            wanted = "'video' or 'image'" if media_type == "auto" else repr(media_type)
            raise ValueError(f"{where}: missing {wanted} (expected a media path relative to the media root)")
        if len(keys) > 1:
            raise ValueError(f"{where}: has both 'video' and 'image'; pass media_type='video' or 'image' to say "
                             "which one to read")
        if "caption" not in entry:
            raise ValueError(f"{where}: missing 'caption' (expected a string or a list of strings)")
        kind = keys[0]
        media = tuple(os.path.join(media_root, p) for p in _strings(entry[kind], where, kind))
        entries.append(CaptionEntry(media, kind, _strings(entry["caption"], where, "caption"), index))
    return entries


def _texts(entry: CaptionEntry, paragraph: bool, clean: bool) -> list[str]:
    texts = [" ".join(entry.captions)] if paragraph else list(entry.captions)
    return [clean_caption(t) for t in texts] if clean else texts


def tokenize_texts(tokenizer: Any, texts: Sequence[str], max_text_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``input_ids`` and ``attention_mask`` ``(N, max_text_len)``: padded to the fixed length the
    authors use (so every batch and every evaluation chunk has one shape) and truncated."""
    if max_text_len < 2:
        raise ValueError(f"max_text_len must be >= 2 (room for [CLS] and [SEP]), got {max_text_len}")
    if getattr(tokenizer, "pad_token_id", None) is None:
        raise ValueError(f"tokenizer {type(tokenizer).__name__} has no pad token; captions are padded to "
                         f"max_text_len={max_text_len}")
    out = tokenizer(list(texts), padding="max_length", truncation=True, max_length=max_text_len,
                    return_tensors="pt")
    return out["input_ids"].long(), out["attention_mask"].long()


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"mode must be 'train' or 'test', got {mode!r}")


def _check_sizes(num_frames: int, img_size: int, max_text_len: int, max_bad_fraction: float) -> None:
    """The arguments the training dataset and the retrieval set share, checked one way."""
    if num_frames < 1 or img_size < 1:
        raise ValueError(f"num_frames and img_size must be >= 1, got {num_frames} and {img_size}")
    if max_text_len < 2:
        raise ValueError(f"max_text_len must be >= 2, got {max_text_len}")
    if not 0.0 <= max_bad_fraction <= 1.0:
        raise ValueError(f"max_bad_fraction must be in [0, 1], got {max_bad_fraction}")


def _load_media(path: str, kind: str, num_frames: int, img_size: int, mode: str, generator: torch.Generator | None,
                min_frames: int, backend: str, short_side: int | None, crop_scale: tuple[float, float],
                flip: bool, test_geometry: TestGeometry = "center_crop") -> torch.Tensor:
    """``(3, T, H, W)`` float clip; an image is a one-frame clip. Raises ``VideoDecodeError``."""
    common = dict(generator=generator, short_side=short_side, crop_scale=crop_scale, flip=flip,
                  test_geometry=test_geometry)
    if kind == "image":
        return load_image(path, img_size, mode, **common).unsqueeze(1)
    return load_video(path, num_frames, img_size, mode, min_frames=min_frames, backend=backend, **common)


# ---------------------------------------------------------------------------------------------
# training dataset
# ---------------------------------------------------------------------------------------------
class VideoCaptionDataset(BadSampleBookkeeping, Dataset):
    """Video (or image) + one tokenized caption per item (see module docstring).

    One item per media file: an entry listing several videos gives one item each, with the entry's
    captions. In ``mode="train"`` each item draws one of its captions per epoch (from ``(seed, epoch,
    index)``); in ``mode="test"`` it takes the first. Items are dicts with ``"video"`` ``(3, T, H, W)``,
    ``"input_ids"`` / ``"attention_mask"`` ``(max_text_len,)``, ``"caption"`` (the cleaned text),
    ``"index"`` (the item actually loaded: the replacement when item ``i`` was unreadable) and
    ``"video_id"``: one id per distinct media file, so the contrastive loss can tell a second caption
    of the same video from a true negative (caption files repeat a video once per caption).
    """

    def __init__(
        self,
        json_file: str | os.PathLike,
        tokenizer: Any,
        media_root: str | os.PathLike = "",
        num_frames: int = 8,
        img_size: int = 224,
        mode: str = "train",
        max_text_len: int = 32,
        seed: int = 0,
        max_bad_fraction: float = 0.1,
        paragraph: bool = False,
        clean_text: bool = True,
        media_type: str = "auto",
        short_side: int | None = None,
        crop_scale: tuple[float, float] = (0.5, 1.0),
        flip: bool = False,
        min_frames: int | None = None,
        backend: str = "pyav",
        bad_sample_dir: str | os.PathLike | None = None,
    ) -> None:
        _check_mode(mode)
        _check_sizes(num_frames, img_size, max_text_len, max_bad_fraction)
        if short_side is not None and short_side < img_size:
            raise ValueError(f"short_side ({short_side}) must be >= img_size ({img_size})")
        self.json_file = os.fspath(json_file)
        self.media_root = os.fspath(media_root)
        self.entries = read_caption_file(self.json_file, self.media_root, media_type)
        self.tokenizer = tokenizer
        self.num_frames = int(num_frames)
        self.img_size = int(img_size)
        self.mode = mode
        self.max_text_len = int(max_text_len)
        self.seed = int(seed)
        self.paragraph = bool(paragraph)
        self.clean_text = bool(clean_text)
        self.short_side = short_side
        self.crop_scale = tuple(crop_scale)
        self.flip = bool(flip)
        self.min_frames = int(min_frames) if min_frames is not None else max(1, self.num_frames // 2)
        self.backend = backend
        # one sample per media file: (entry position, media path, video id)
        self.samples: list[tuple[int, str, int]] = []
        ids: dict[str, int] = {}
        for pos, entry in enumerate(self.entries):
            for path in entry.media:
                key = os.path.normpath(path)
                self.samples.append((pos, path, ids.setdefault(key, len(ids))))
        self.num_videos = len(ids)
        self._init_bookkeeping(self.json_file, self.media_root, max_bad_fraction, bad_sample_dir)

    # -- bookkeeping --------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.samples)

    def media_path(self, index: int) -> str:
        return self.samples[index][1]

    def texts(self, index: int) -> list[str]:
        """The candidate texts of item ``index`` (cleaned; one paragraph when ``paragraph=True``)."""
        return _texts(self.entries[self.samples[index][0]], self.paragraph, self.clean_text)

    def _report_bad(self, index: int, err: VideoDecodeError) -> None:
        path = self.media_path(index)
        self._record_bad(index, path, err.reason if err.path == path else f"{err.path}: {err.reason}")

    # -- loading ------------------------------------------------------------------------------
    def choose_text(self, index: int, generator: torch.Generator | None = None) -> str:
        """The text item ``index`` uses: a random one of its captions in training, the first in test."""
        texts = self.texts(index)
        if self.mode == "test" or len(texts) == 1:
            return texts[0]
        if generator is None:
            generator = torch.Generator()
            generator.manual_seed(sample_seed(self.seed, self.epoch, index))
        return texts[int(torch.randint(len(texts), (1,), generator=generator))]

    def load(self, index: int, generator: torch.Generator | None = None) -> dict:
        """Item ``index`` without bad-sample handling (raises ``VideoDecodeError``)."""
        if generator is None:
            generator = torch.Generator()
            generator.manual_seed(sample_seed(self.seed, self.epoch, index))
        pos, path, video_id = self.samples[index]
        text = self.choose_text(index, generator)  # drawn first: the caption does not depend on the decode
        video = _load_media(path, self.entries[pos].kind, self.num_frames, self.img_size, self.mode, generator,
                            self.min_frames, self.backend, self.short_side, self.crop_scale, self.flip)
        input_ids, attention_mask = tokenize_texts(self.tokenizer, [text], self.max_text_len)
        return {"video": video, "input_ids": input_ids[0], "attention_mask": attention_mask[0], "caption": text,
                "index": index, "video_id": video_id}

    def __getitem__(self, index: int) -> dict:
        return self._load_usable(index, self.load)[1]

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(json_file={self.json_file!r}, samples={len(self)}, mode={self.mode!r}, "
                f"num_frames={self.num_frames}, img_size={self.img_size}, max_text_len={self.max_text_len})")


def collate_captions(items: Sequence[Mapping]) -> dict:
    """Batch dataset items: ``videos`` ``(B, 3, T, H, W)``, ``input_ids`` / ``attention_mask`` ``(B, L)``,
    ``index`` and ``video_ids`` ``(B,)``."""
    if not items:
        raise ValueError("cannot collate an empty list of items")
    shapes = {tuple(item["video"].shape) for item in items}
    if len(shapes) > 1:
        raise ValueError(f"all videos of a batch must have one shape (images are 1-frame videos: keep image and "
                         f"video corpora in separate loaders), got {sorted(shapes)}")
    lengths = {len(item["input_ids"]) for item in items}
    if len(lengths) > 1:
        raise ValueError(f"all captions of a batch must be padded to one length, got lengths {sorted(lengths)}")
    return {
        "videos": torch.stack([item["video"] for item in items]),
        "input_ids": torch.stack([torch.as_tensor(item["input_ids"], dtype=torch.long) for item in items]),
        "attention_mask": torch.stack([torch.as_tensor(item["attention_mask"], dtype=torch.long) for item in items]),
        "index": torch.tensor([int(item["index"]) for item in items], dtype=torch.long),
        "video_ids": torch.tensor([int(item.get("video_id", item["index"])) for item in items], dtype=torch.long),
    }


# ---------------------------------------------------------------------------------------------
# retrieval evaluation set
# ---------------------------------------------------------------------------------------------
class RetrievalSet(Dataset):
    """The videos and texts of a retrieval benchmark and which match which.

    ``videos``: the distinct media files (an entry repeated once per caption, as some files do,
    is one video); ``texts``: every caption (cleaned), or with ``paragraph=True`` one text per entry,
    its captions joined; ``txt2vid[t]``: the ground-truth video indices of text ``t`` (one, or several
    for an entry listing several videos); ``vid2txt[v]``: the ground-truth text indices of video
    ``v``. ``group_texts=True`` also merges identical texts into one query whose ground truth is all
    their videos (label-style text such as SSv2 classes). ``test_geometry``: ``"full"`` resizes the
    whole frame to ``img_size`` square (the authors' evaluation), ``"center_crop"`` resizes the short
    side (to ``short_side``, default ``img_size``) and crops the centre.

    Indexing gives the test-mode clips: ``{"video": (3, T, H, W), "index": v, "valid": bool,
    "reason": str}``. An unreadable file gives zeros and ``valid=False`` (warned once): the benchmark
    keeps its size and the evaluation counts its queries as misses.
    """

    def __init__(
        self,
        json_file: str | os.PathLike,
        media_root: str | os.PathLike = "",
        num_frames: int = 8,
        img_size: int = 224,
        max_text_len: int = 32,
        paragraph: bool = False,
        clean_text: bool = True,
        group_texts: bool = False,
        media_type: str = "auto",
        short_side: int | None = None,
        min_frames: int | None = None,
        backend: str = "pyav",
        max_bad_fraction: float = 0.1,
        test_geometry: TestGeometry = "full",
    ) -> None:
        _check_sizes(num_frames, img_size, max_text_len, max_bad_fraction)
        if test_geometry not in TEST_GEOMETRIES:
            raise ValueError(f"test_geometry: expected one of {', '.join(TEST_GEOMETRIES)}, got {test_geometry!r}")
        self.json_file = os.fspath(json_file)
        self.media_root = os.fspath(media_root)
        self.entries = read_caption_file(self.json_file, self.media_root, media_type)
        self.num_frames = int(num_frames)
        self.img_size = int(img_size)
        self.max_text_len = int(max_text_len)
        self.paragraph = bool(paragraph)
        self.clean_text = bool(clean_text)
        self.short_side = short_side
        self.min_frames = int(min_frames) if min_frames is not None else max(1, self.num_frames // 2)
        self.backend = backend
        self.max_bad_fraction = float(max_bad_fraction)
        self.test_geometry = test_geometry

        self.videos: list[str] = []
        self.kinds: list[str] = []
        self.texts: list[str] = []
        video_ids: dict[str, int] = {}
        text_ids: dict[str, int] = {}
        txt2vid: list[list[int]] = []
        for entry in self.entries:
            vids = []
            for path in entry.media:
                key = os.path.normpath(path)
                if key not in video_ids:
                    video_ids[key] = len(self.videos)
                    self.videos.append(path)
                    self.kinds.append(entry.kind)
                vids.append(video_ids[key])
            for text in _texts(entry, self.paragraph, self.clean_text):
                if group_texts and text in text_ids:
                    t = text_ids[text]
                else:
                    t = text_ids[text] = len(self.texts)
                    self.texts.append(text)
                    txt2vid.append([])
                txt2vid[t] += [v for v in vids if v not in txt2vid[t]]
        self.txt2vid: list[list[int]] = txt2vid
        self.vid2txt: list[list[int]] = [[] for _ in self.videos]
        for t, vids in enumerate(txt2vid):
            for v in vids:
                self.vid2txt[v].append(t)
        self._warned: set[int] = set()

    def __len__(self) -> int:
        return len(self.videos)

    def tokenize(self, tokenizer: Any, max_text_len: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """All texts as ``input_ids`` / ``attention_mask`` ``(num_texts, max_text_len)``."""
        return tokenize_texts(tokenizer, self.texts, max_text_len or self.max_text_len)

    def load(self, index: int) -> torch.Tensor:
        """Clip ``index`` (test-mode geometry), raising ``VideoDecodeError``."""
        return _load_media(self.videos[index], self.kinds[index], self.num_frames, self.img_size, "test", None,
                           self.min_frames, self.backend, self.short_side, (1.0, 1.0), False, self.test_geometry)

    def __getitem__(self, index: int) -> dict:
        index = int(index)
        try:
            return {"video": self.load(index), "index": index, "valid": True, "reason": ""}
        except VideoDecodeError as err:
            reason = err.reason if err.path == self.videos[index] else f"{err.path}: {err.reason}"
            if index not in self._warned:
                self._warned.add(index)
                logger.warning("unreadable evaluation video %d (%s): %s; its queries count as misses", index,
                               self.videos[index], reason)
            frames = 1 if self.kinds[index] == "image" else self.num_frames
            video = torch.zeros(3, frames, self.img_size, self.img_size)
            return {"video": video, "index": index, "valid": False, "reason": reason}

    def check_bad_fraction(self, bad: Sequence[int]) -> None:
        """Raise :class:`BadDataError` when more than ``max_bad_fraction`` of the videos are unreadable."""
        limit = self.max_bad_fraction * len(self)
        if len(bad) > limit:
            shown = ", ".join(self.videos[i] for i in list(bad)[:5])
            raise BadDataError(
                f"{self.json_file}: {len(bad)} of {len(self)} evaluation videos are unreadable, more than "
                f"max_bad_fraction={self.max_bad_fraction:g}; check the file and the media root "
                f"{self.media_root!r} (e.g. {shown})"
            )

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(json_file={self.json_file!r}, videos={len(self.videos)}, "
                f"texts={len(self.texts)}, paragraph={self.paragraph}, num_frames={self.num_frames})")


def collate_retrieval_videos(items: Sequence[Mapping]) -> dict:
    """Batch :class:`RetrievalSet` items: ``videos`` ``(B, 3, T, H, W)``, ``index`` and ``valid`` ``(B,)``,
    ``reasons`` (list of str, empty for readable files)."""
    if not items:
        raise ValueError("cannot collate an empty list of items")
    shapes = {tuple(item["video"].shape) for item in items}
    if len(shapes) > 1:
        raise ValueError(f"all videos of a batch must have one shape, got {sorted(shapes)} (images and videos "
                         "cannot share a retrieval set batch)")
    return {
        "videos": torch.stack([item["video"] for item in items]),
        "index": torch.tensor([int(item["index"]) for item in items], dtype=torch.long),
        "valid": torch.tensor([bool(item["valid"]) for item in items], dtype=torch.bool),
        "reasons": [item.get("reason", "") for item in items],
    }


# ---------------------------------------------------------------------------------------------
# training mixes of several corpora
# ---------------------------------------------------------------------------------------------
class CaptionMix(Dataset):
    """Several :class:`VideoCaptionDataset` corpora as one dataset.

    Video ids are offset per corpus so that the contrastive loss never mistakes two corpora's
    videos for one; ``index`` is the position in the mix.
    """

    def __init__(self, datasets: Sequence[Any]) -> None:
        if not datasets:
            raise ValueError("CaptionMix needs at least one dataset")
        self.datasets = list(datasets)
        self.starts = [0]
        self.id_offsets = [0]
        for ds in self.datasets:
            self.starts.append(self.starts[-1] + len(ds))
            self.id_offsets.append(self.id_offsets[-1] + ds.num_videos)

    def __len__(self) -> int:
        return self.starts[-1]

    def locate(self, index: int) -> tuple[int, int]:
        """(corpus, index inside it) of mix item ``index``."""
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} outside the {len(self)} samples of the caption mix")
        d = bisect.bisect_right(self.starts, index) - 1
        return d, index - self.starts[d]

    def kind(self, index: int) -> str:
        """"video" or "image" (an image is a 1-frame clip)."""
        d, j = self.locate(index)
        ds = self.datasets[d]
        return ds.entries[ds.samples[j][0]].kind

    def __getitem__(self, index: int) -> dict:
        d, j = self.locate(int(index))
        item = dict(self.datasets[d][j])
        item["video_id"] = int(item["video_id"]) + self.id_offsets[d]
        item["index"] = int(item["index"]) + self.starts[d]
        return item

    def set_epoch(self, epoch: int) -> None:
        for ds in self.datasets:
            ds.set_epoch(epoch)

    def bad_samples(self) -> list:
        return [s for ds in self.datasets for s in ds.bad_samples()]

    def bad_sample_summary(self, limit: int | None = 20) -> str:
        parts = [f"{ds.json_file}: {ds.bad_sample_summary(limit)}" for ds in self.datasets if ds.bad_samples()]
        return "\n".join(parts) or "no unreadable samples"


def first_item(items: list) -> Any:
    """Collate of :class:`CaptionBatches`: each dataset item already is a batch."""
    return items[0]


class CaptionBatches(Dataset):
    """Mixed image and video corpora, one item per *batch* of a single kind.

    Why: images (1 frame) and videos cannot be stacked together, and UMT trains every step on one
    corpus kind (its ``MetaLoader``). Each epoch, every kind's samples are shuffled (from
    ``(seed, epoch, kind)``) and cut into whole batches of ``batch_size`` (the incomplete rest is
    dropped, as video-text matching needs at least two pairs); the engine's sampler then shuffles
    the batches of all kinds together, so the kinds come in proportion to their batch counts. The
    engine runs on these items with a batch size of 1: its step count, schedule and resumption
    are right, but its ``clips/s`` counts batches. Under several processes, different processes
    may draw different kinds in the same step (UMT's loader makes them agree); the gathered
    contrastive batch then holds both.
    """

    KINDS = ("video", "image")

    def __init__(self, mix: CaptionMix, batch_size: int, seed: int = 0) -> None:
        self.mix = mix
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self._collate = collate_captions
        kinds = [mix.kind(i) for i in range(len(mix))]
        self.groups = {k: torch.tensor([i for i, kk in enumerate(kinds) if kk == k], dtype=torch.long)
                       for k in self.KINDS}
        self.counts = {k: len(g) // self.batch_size for k, g in self.groups.items()}
        for k, g in self.groups.items():
            if len(g) and not self.counts[k]:
                raise ValueError(f"train.batch_size: the {len(g)} {k} sample(s) of vl.train_data give no whole batch "
                                 f"of {self.batch_size}; use a smaller batch or more data")
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()
        self._order: dict[tuple[int, str], torch.Tensor] = {}

    def __len__(self) -> int:
        return sum(self.counts.values())

    def set_epoch(self, epoch: int) -> None:
        self._epoch.fill_(int(epoch))
        self.mix.set_epoch(epoch)

    def _shuffled(self, kind: str) -> torch.Tensor:
        key = (int(self._epoch), kind)
        if key not in self._order:
            self._order = {k: v for k, v in self._order.items() if k[0] == key[0]}  # drop older epochs
            g = torch.Generator().manual_seed(mix_seed(self.seed, key[0], self.KINDS.index(kind)))
            group = self.groups[kind]
            self._order[key] = group[torch.randperm(len(group), generator=g)]
        return self._order[key]

    def __getitem__(self, index: int) -> dict:
        index = int(index)
        for kind in self.KINDS:
            if index < self.counts[kind]:
                rows = self._shuffled(kind)[index * self.batch_size:(index + 1) * self.batch_size]
                return self._collate([self.mix[int(i)] for i in rows])
            index -= self.counts[kind]
        raise IndexError(f"batch {index} outside the {len(self)} batches of the caption mix")

    def bad_samples(self) -> list:
        return self.mix.bad_samples()

    def bad_sample_summary(self, limit: int | None = 20) -> str:
        return self.mix.bad_sample_summary(limit)
