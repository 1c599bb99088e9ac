"""Frame-index sampling (pure functions: counts in, index lists out).

Two schemes cover the VideoMamba recipes:

* **segment** (TSN style, used for SSv2 and long-form data): split the video into ``T`` equal
  segments; training takes a random frame per segment, test clip ``k`` of ``n`` takes offset
  ``seg / (n + 1) * (k + 1)`` inside every segment, so ``n`` clips are evenly interleaved.
* **dense** (Kinetics style): ``T`` frames ``stride`` apart; the start is random in training and
  ``n`` evenly spaced starts at test (the centre for ``n == 1``).

Videos shorter than a clip are handled without failing: segment sampling naturally repeats
frames when ``num_frames < T``; dense sampling stretches the clip over the whole video (an
effective stride below the requested one, repeating frames when needed). All indices are within
``[0, num_frames - 1]``. Randomness only comes from an explicit generator or seed so that a
sample can be reproduced from ``(seed, epoch, index)``.
"""

from __future__ import annotations

from typing import Literal, get_args

import torch

Sampling = Literal["segment", "dense"]
SAMPLING_METHODS = get_args(Sampling)

__all__ = ["SAMPLING_METHODS", "Sampling", "as_generator", "segment_indices", "dense_indices", "sample_clip_indices"]


def as_generator(generator: torch.Generator | int | None) -> torch.Generator:
    """Accept a generator, an integer seed, or ``None`` (a fresh generator seeded with 0)."""
    if isinstance(generator, torch.Generator):
        return generator
    g = torch.Generator()
    g.manual_seed(0 if generator is None else int(generator))
    return g


# The two draw helpers every data module uses. Each call consumes exactly one number from ``g``
# whatever its arguments, so the position of later draws in the stream never depends on video
# lengths or frame sizes.
def _randint(high: int, g: torch.Generator) -> int:
    """Uniform integer in ``[0, high)``; ``high <= 1`` gives 0 (one number is drawn regardless)."""
    return int(torch.randint(max(high, 1), (), generator=g))


def _uniform(g: torch.Generator, lo: float = 0.0, hi: float = 1.0) -> float:
    """Uniform float in ``[lo, hi)``."""
    return lo + (hi - lo) * float(torch.rand((), generator=g))


def _check(num_frames: int, clip_len: int, clip_idx: int, num_clips: int) -> None:
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    if clip_len < 1:
        raise ValueError(f"clip length must be >= 1, got {clip_len}")
    if num_clips < 1 or not 0 <= clip_idx < num_clips:
        raise ValueError(f"clip_idx must be in [0, {num_clips}), got {clip_idx}")


def segment_indices(
    num_frames: int,
    num_segments: int,
    train: bool,
    clip_idx: int = 0,
    num_clips: int = 1,
    generator: torch.Generator | int | None = None,
) -> list[int]:
    """One index per segment; random in training, offset ``seg/(n+1)*(k+1)`` for test clip ``k``."""
    _check(num_frames, num_segments, clip_idx, num_clips)
    seg = num_frames / num_segments
    if train:
        g = as_generator(generator)
        out = []
        for i in range(num_segments):
            lo = int(seg * i)
            hi = max(int(seg * (i + 1)), lo + 1)
            out.append(lo + _randint(hi - lo, g))
    else:
        offset = seg / (num_clips + 1) * (clip_idx + 1)
        out = [int(seg * i + offset) for i in range(num_segments)]
    return [min(max(i, 0), num_frames - 1) for i in out]


def dense_indices(
    num_frames: int,
    clip_len: int,
    stride: int,
    train: bool,
    clip_idx: int = 0,
    num_clips: int = 1,
    generator: torch.Generator | int | None = None,
) -> list[int]:
    """``clip_len`` frames ``stride`` apart; random start in training, evenly spaced starts at test."""
    _check(num_frames, clip_len, clip_idx, num_clips)
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    span = (clip_len - 1) * stride + 1
    if num_frames < span:
        # Too short for the requested stride: spread the clip over the whole video instead
        # (clip_len >= 2 here, since a one-frame span always fits).
        step = (num_frames - 1) / (clip_len - 1)
        return [min(int(round(i * step)), num_frames - 1) for i in range(clip_len)]
    room = num_frames - span  # number of extra start positions
    if train:
        start = _randint(room + 1, as_generator(generator))
    elif num_clips == 1:
        start = room // 2
    else:
        start = int(round(clip_idx * room / (num_clips - 1)))
    return [start + i * stride for i in range(clip_len)]


def sample_clip_indices(
    num_frames: int,
    clip_len: int,
    method: str = "segment",
    stride: int = 4,
    train: bool = True,
    clip_idx: int = 0,
    num_clips: int = 1,
    generator: torch.Generator | int | None = None,
) -> list[int]:
    """Dispatch to :func:`segment_indices` or :func:`dense_indices` by name."""
    if method == "segment":
        return segment_indices(num_frames, clip_len, train, clip_idx, num_clips, generator)
    if method == "dense":
        return dense_indices(num_frames, clip_len, stride, train, clip_idx, num_clips, generator)
    raise ValueError(f"unknown sampling method {method!r}; expected 'segment' or 'dense'")
