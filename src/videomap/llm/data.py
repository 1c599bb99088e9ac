"""Instruction data for the Video-LLM: LLaVA / Video-ChatGPT JSON, media loading and batching.

Annotation file
    A JSON list (or JSON Lines, one object per line) of samples::

        {"id": "v_123", "video": "videos/v_123.mp4",
         "conversations": [{"from": "human", "value": "<video>\\nWhat happens?"},
                           {"from": "gpt", "value": "A bar moves to the left."}]}

    with ``"image"`` instead of ``"video"`` for an image sample and neither for a text-only one;
    media paths are relative to ``media_root``. Every entry is checked when the dataset is built
    (a broken file should fail at start-up, not hours into an epoch): errors name the file, the
    entry index and what was expected.

Media
    Videos are decoded with :mod:`videomap.data` exactly like the fine-tuning pipeline: segment
    sampling of ``num_frames`` frames; in ``mode="train"`` a random frame per segment and one random
    resized crop for the whole clip, in ``mode="test"`` the segment centres, a short-side resize and
    a centre crop; then ImageNet normalisation. A video is ``(3, T, H, W)``, an image ``(3, H, W)``
    (read with Pillow when installed, PyAV otherwise). No horizontal flip by default: instructions
    talk about left and right.

Bad samples
    Unreadable media (missing, empty, truncated, not a video, too few frames) and conversations
    that cannot fit ``max_length`` follow :class:`videomap.data.VideoClsDataset`'s rules: warned
    once, recorded in a cross-process :class:`~videomap.data.BadSampleRegistry`, replaced by the
    next usable entry (deterministic), and a :class:`~videomap.data.BadDataError` once more than
    ``max_bad_fraction`` of the file is bad.

Determinism
    The random choices of item ``i`` come from a generator seeded with ``(seed, epoch, i)``; the
    epoch is shared with DataLoader workers (:meth:`VideoInstructionDataset.set_epoch`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch.utils.data import Dataset

from ..data.dataset import BadSampleBookkeeping
from ..data.decode import VideoDecodeError
from ..data.media import MODES, is_image_path, load_image, load_video
from ..io import read_json_list
from ..seeding import sample_seed
from .constants import IGNORE_INDEX, IMAGE_PLACEHOLDER, IMAGE_TOKEN_INDEX, VIDEO_PLACEHOLDER, VIDEO_TOKEN_INDEX
from .conversation import ConversationTooLongError, normalize_conversation, tokenize_conversation

__all__ = [
    "MODES",
    "VideoInstructionDataset",
    "collate_instructions",
    "is_image_path",
    "load_image",
    "load_video",
    "read_instruction_file",
]


_MEDIA_KEYS = ("video", "image")


# ---------------------------------------------------------------------------------------------
# annotation file
# ---------------------------------------------------------------------------------------------
def read_instruction_file(json_file: str | os.PathLike) -> list[dict]:
    """Entries of a LLaVA / Video-ChatGPT instruction file, each checked (``ValueError`` naming the
    file, the entry index and what was expected)."""
    json_file = os.fspath(json_file)
    data = read_json_list(json_file, "samples")
    for index, entry in enumerate(data):
        _check_entry(json_file, index, entry)
    return data


def _check_entry(json_file: str, index: int, entry: Any) -> None:
    where = f"{json_file}: entry {index}"
    if not isinstance(entry, Mapping):
        raise ValueError(f"{where}: expected an object with 'conversations', got {type(entry).__name__}")
    if "id" in entry:
        where += f" (id {entry['id']!r})"
    media = [k for k in _MEDIA_KEYS if entry.get(k) is not None]
    if len(media) > 1:
        raise ValueError(f"{where}: has both 'video' and 'image'; expected at most one media file per sample")
    for key in media:
        if not isinstance(entry[key], str) or not entry[key].strip():
            raise ValueError(f"{where}: expected '{key}' to be a relative path string, got {entry[key]!r:.80}")
    if "conversations" not in entry:
        raise ValueError(f"{where}: missing 'conversations' (expected a list of human/gpt turns)")
    messages = normalize_conversation(entry["conversations"], where)
    text = "".join(m["content"] for m in messages if m["role"] == "user")
    counts = {VIDEO_PLACEHOLDER: text.count(VIDEO_PLACEHOLDER), IMAGE_PLACEHOLDER: text.count(IMAGE_PLACEHOLDER)}
    expected = {VIDEO_PLACEHOLDER: int("video" in media), IMAGE_PLACEHOLDER: int("image" in media)}
    if counts != expected:
        what = f"a '{media[0]}' file" if media else "no media file"
        raise ValueError(
            f"{where}: has {what}, so expected {expected[VIDEO_PLACEHOLDER]} {VIDEO_PLACEHOLDER} and "
            f"{expected[IMAGE_PLACEHOLDER]} {IMAGE_PLACEHOLDER} in the human turns, found "
            f"{counts[VIDEO_PLACEHOLDER]} and {counts[IMAGE_PLACEHOLDER]}"
        )


# ---------------------------------------------------------------------------------------------
# dataset
# ---------------------------------------------------------------------------------------------
class VideoInstructionDataset(BadSampleBookkeeping, Dataset):
    """Conversations with an optional video or image, tokenized for training (see module docstring).

    Items are dicts ``{"input_ids", "labels"}`` (1-D LongTensors from
    :func:`~videomap.llm.conversation.tokenize_conversation`), ``"video"`` ``(3, T, H, W)`` or
    ``None``, ``"image"`` ``(3, H, W)`` or ``None``, and ``"index"``: the entry actually loaded
    (the replacement when entry ``i`` was unusable).
    """

    bad_word = "unusable"  # unreadable media or a conversation too long for max_length

    def __init__(
        self,
        json_file: str | os.PathLike,
        tokenizer: Any,
        media_root: str | os.PathLike = "",
        num_frames: int = 8,
        img_size: int = 224,
        mode: str = "train",
        max_length: int | None = None,
        max_bad_fraction: float = 0.1,
        seed: int = 0,
        system: str | None = None,
        short_side: int | None = None,
        crop_scale: tuple[float, float] = (0.5, 1.0),
        flip: bool = False,
        min_frames: int | None = None,
        backend: str = "pyav",
        bad_sample_dir: str | os.PathLike | None = None,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be 'train' or 'test', got {mode!r}")
        if num_frames < 1 or img_size < 1:
            raise ValueError(f"num_frames and img_size must be >= 1, got {num_frames} and {img_size}")
        if max_length is not None and max_length < 2:
            raise ValueError(f"max_length must be >= 2 or None, got {max_length}")
        if not 0.0 <= max_bad_fraction <= 1.0:
            raise ValueError(f"max_bad_fraction must be in [0, 1], got {max_bad_fraction}")
        self.json_file = os.fspath(json_file)
        self.entries = read_instruction_file(self.json_file)
        self.tokenizer = tokenizer
        self.media_root = os.fspath(media_root)
        self.num_frames = int(num_frames)
        self.img_size = int(img_size)
        self.mode = mode
        self.max_length = None if max_length is None else int(max_length)
        self.seed = int(seed)
        self.system = system
        self.short_side = short_side
        if short_side is not None and short_side < img_size:
            raise ValueError(f"short_side ({short_side}) must be >= img_size ({img_size})")
        self.crop_scale = tuple(crop_scale)
        self.flip = bool(flip)
        self.min_frames = int(min_frames) if min_frames is not None else max(1, self.num_frames // 2)
        self.backend = backend
        self._init_bookkeeping(self.json_file, self.media_root, max_bad_fraction, bad_sample_dir)

    # -- bookkeeping --------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.entries)

    def modality(self, index: int) -> str | None:
        """"video", "image" or ``None`` (text only) for entry ``index``."""
        entry = self.entries[index]
        return next((k for k in _MEDIA_KEYS if entry.get(k) is not None), None)

    def media_path(self, index: int) -> str | None:
        kind = self.modality(index)
        return None if kind is None else os.path.join(self.media_root, self.entries[index][kind])


    # -- loading ------------------------------------------------------------------------------
    def load(self, index: int, generator: torch.Generator | None = None) -> dict:
        """Entry ``index`` without bad-sample handling (raises ``VideoDecodeError`` /
        :class:`~videomap.llm.conversation.ConversationTooLongError`)."""
        entry = self.entries[index]
        if generator is None:
            generator = torch.Generator()
            generator.manual_seed(sample_seed(self.seed, self.epoch, index))
        input_ids, labels = tokenize_conversation(
            self.tokenizer, entry["conversations"], system=self.system, max_length=self.max_length,
            source=f"{self.json_file}: entry {index}",
        )
        item = {"input_ids": input_ids, "labels": labels, "video": None, "image": None, "index": index}
        kind, path = self.modality(index), self.media_path(index)
        common = dict(generator=generator, short_side=self.short_side, crop_scale=self.crop_scale, flip=self.flip)
        if kind == "video":
            item["video"] = load_video(path, self.num_frames, self.img_size, self.mode, min_frames=self.min_frames,
                                       backend=self.backend, **common)
        elif kind == "image":
            item["image"] = load_image(path, self.img_size, self.mode, **common)
        return item

    def __getitem__(self, index: int) -> dict:
        return self._load_usable(index, self.load, (VideoDecodeError, ConversationTooLongError))[1]

    def _report_bad(self, index: int, err: Exception) -> None:
        path = self.media_path(index)
        if isinstance(err, VideoDecodeError):
            reason = err.reason if err.path == path else f"{err.path}: {err.reason}"
        else:
            reason = str(getattr(err, "reason", err))
        self._record_bad(index, path or f"{self.json_file}#{index}", reason)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(json_file={self.json_file!r}, samples={len(self)}, mode={self.mode!r}, "
                f"num_frames={self.num_frames}, img_size={self.img_size})")


# ---------------------------------------------------------------------------------------------
# batching
# ---------------------------------------------------------------------------------------------
def _media_list(items: Sequence[Mapping], key: str, token: int, dims: int) -> list[torch.Tensor]:
    out = []
    for n, item in enumerate(items):
        count = int((torch.as_tensor(item["input_ids"]) == token).sum())
        media = item.get(key)
        if media is None:
            tensors = []
        elif media.dim() == dims:
            tensors = [media]
        elif media.dim() == dims + 1:  # several media of one kind in one sample
            tensors = list(media.unbind(0))
        else:
            raise ValueError(f"item {n}: expected '{key}' of {dims} dims (or {dims + 1} for several), "
                             f"got shape {tuple(media.shape)}")
        if len(tensors) != count:
            raise ValueError(f"item {n}: {count} {key} placeholder(s) in input_ids but {len(tensors)} {key}(s)")
        out += tensors
    shapes = {tuple(t.shape) for t in out}
    if len(shapes) > 1:
        raise ValueError(f"all {key}s of a batch must have one shape, got {sorted(shapes)}")
    return out


def collate_instructions(items: Sequence[Mapping], pad_token_id: int) -> dict:
    """Batch dataset items: ``input_ids`` / ``attention_mask`` / ``labels`` ``(B, L)`` right-padded
    (``pad_token_id``, 0, ``IGNORE_INDEX``), ``videos`` ``(Nv, 3, T, H, W)`` and ``images``
    ``(Ni, 3, H, W)`` (``None`` when the batch has none) in row-major placeholder order, so the k-th
    placeholder of a kind, reading the batch row by row, takes media ``k``."""
    if not items:
        raise ValueError("cannot collate an empty list of items")
    if not isinstance(pad_token_id, int) or pad_token_id < 0:
        raise ValueError(f"pad_token_id must be a non-negative int, got {pad_token_id!r} "
                         "(tokenizers without a pad token can pad with eos)")
    length = max(len(item["input_ids"]) for item in items)
    input_ids = torch.full((len(items), length), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(items), length), dtype=torch.long)
    labels = torch.full((len(items), length), IGNORE_INDEX, dtype=torch.long)
    for row, item in enumerate(items):
        ids = torch.as_tensor(item["input_ids"], dtype=torch.long)
        n = len(ids)
        input_ids[row, :n] = ids
        attention_mask[row, :n] = 1
        if item.get("labels") is not None:
            if len(item["labels"]) != n:
                raise ValueError(f"item {row}: {len(item['labels'])} labels for {n} input ids")
            labels[row, :n] = torch.as_tensor(item["labels"], dtype=torch.long)
    videos = _media_list(items, "video", VIDEO_TOKEN_INDEX, 4)
    images = _media_list(items, "image", IMAGE_TOKEN_INDEX, 3)
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "labels": labels,
        "videos": torch.stack(videos) if videos else None,
        "images": torch.stack(images) if images else None,
    }
