"""Tests for videomap.data: decoding, lists, sampling, transforms, datasets, metrics."""

from __future__ import annotations

import gc
import logging
import os
import pickle
import traceback

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from tests.helpers import real_video
from videomap.data import (
    SYNTHETIC_CLASSES,
    BadDataError,
    FrameFolderReader,
    Mixup,
    RandAugment,
    RandomErasing,
    VideoClsDataset,
    VideoDecodeError,
    center_crop,
    decode_frames,
    dense_indices,
    make_broken_videos,
    make_synthetic_dataset,
    normalize,
    open_video,
    probe_video,
    random_hflip,
    random_resized_crop,
    read_annotations,
    render_clip,
    resize_short_side,
    sample_clip_indices,
    segment_indices,
    spatial_crops,
    write_video,
)
from videomap.finetune.metrics import AccuracyAccumulator, accuracy, average_view_probs

BITS = 9  # frame index encoded as 9 black/white stripes (up to 512 frames)


pytestmark = pytest.mark.usefixtures("one_thread")


def _striped(i: int, height: int = 16) -> np.ndarray:
    frame = np.zeros((height, BITS * 4 + 4, 3), np.uint8)  # width 40
    for b in range(BITS):
        if (i >> b) & 1:
            frame[:, 4 * b : 4 * b + 4] = 255
    return frame


def _read_index(frame: np.ndarray | torch.Tensor) -> int:
    frame = np.asarray(frame)
    column_means = [frame[:, 4 * b + 1 : 4 * b + 3].mean() for b in range(BITS)]
    return sum(1 << b for b, m in enumerate(column_means) if m > 128)


@pytest.fixture(scope="module")
def media(tmp_path_factory, synthetic_videos):
    root = tmp_path_factory.mktemp("media")
    paths = {}
    paths["bright"] = write_video(
        root / "bright.mp4", np.stack([np.full((32, 48, 3), 10 + 14 * i, np.uint8) for i in range(16)])
    )
    paths["long"] = write_video(
        root / "long.mp4", np.stack([_striped(i) for i in range(300)]), fps=25, gop_size=12
    )
    paths["mpeg4"] = write_video(root / "m4.mp4", np.stack([_striped(i) for i in range(20)]), codec="mpeg4")
    train, val = make_synthetic_dataset(root / "syn", num_train=12, num_val=6, num_frames=16, size=32)
    paths["train"], paths["val"] = train, val
    paths["broken"] = make_broken_videos(root / "broken", size=32)
    return paths


# ---------------------------------------------------------------------------------------------
# decoding
# ---------------------------------------------------------------------------------------------
def test_probe_and_decode_specific_frames(media):
    info = probe_video(media["bright"])
    assert (info.num_frames, info.height, info.width, info.fps) == (16, 32, 48, 8.0)
    assert info.count_source == "header"
    order = [0, 5, 15, 3, 3, 9]
    frames = decode_frames(media["bright"], order)
    assert frames.shape == (6, 32, 48, 3) and frames.dtype == torch.uint8
    means = frames.float().mean(dim=(1, 2, 3))
    expected = torch.tensor([10 + 14 * i for i in order], dtype=torch.float32)
    assert torch.allclose(means, expected, atol=3)
    ordered = decode_frames(media["bright"], list(range(16))).float().mean(dim=(1, 2, 3))
    assert bool((ordered[1:] > ordered[:-1]).all())


@pytest.mark.parametrize("key", ["long", "mpeg4"])
def test_decoded_frames_are_the_requested_ones(media, key):
    n = probe_video(media[key]).num_frames
    wanted = [1, n // 2, n - 1, 2, n // 2 + 1] if key == "mpeg4" else [5, 150, 290, 151, 6, 299]
    frames = decode_frames(media[key], wanted)
    assert [_read_index(f) for f in frames] == wanted


def test_seeking_skips_decoding_and_matches_sequential(media):
    far = [3, 200, 290]
    with open_video(media["long"], seek_gap=24) as seeking:
        a = seeking.get_frames(far)
        seek_count = seeking.frames_decoded
    with open_video(media["long"], seek_gap=10_000) as sequential:
        b = sequential.get_frames(far)
        assert sequential.frames_decoded >= 291
    assert torch.equal(a, b)
    assert [_read_index(f) for f in a] == far
    assert seek_count < 120  # two short runs from the key frames before 200 and 290


def test_real_mp4_seeking_matches_sequential_decoding():
    """A real camera encode (B-frames, a real GOP), not one of our own writes: seeking to far frames
    gives exactly the frames sequential decoding reaches."""
    path = real_video("bikes.mp4")
    info = probe_video(path)
    assert (info.num_frames, info.height, info.width) == (250, 272, 640)
    far = [0, 7, 120, 121, 249, 60]
    with open_video(path, seek_gap=8) as seeking:
        a = seeking.get_frames(far)
        decoded = seeking.frames_decoded
    with open_video(path, seek_gap=10_000) as sequential:
        b = sequential.get_frames(far)
        assert sequential.frames_decoded >= 250
    assert a.shape == (6, 272, 640, 3) and torch.equal(a, b)
    assert decoded < 250
    assert not torch.equal(a[2], a[4])  # the content moves


def test_indices_are_clamped(media):
    frames = decode_frames(media["bright"], [-3, 40])
    assert torch.allclose(frames.float().mean(dim=(1, 2, 3)), torch.tensor([10.0, 220.0]), atol=3)


def test_frame_folder(tmp_path):
    from PIL import Image

    folder = tmp_path / "video_001"
    folder.mkdir()
    for i in range(12):  # unpadded numbers: natural sort must put img_2 before img_10
        Image.fromarray(_striped(i)).save(folder / f"img_{i + 1}.png")
    (folder / "notes.txt").write_text("ignored")
    reader = open_video(folder)
    assert isinstance(reader, FrameFolderReader) and reader.num_frames == 12
    frames = reader.get_frames([0, 1, 9, 11, 1])
    assert frames.shape == (5, 16, 40, 3)
    assert [_read_index(f) for f in frames] == [0, 1, 9, 11, 1]
    (tmp_path / "empty").mkdir()
    with pytest.raises(VideoDecodeError, match="no images"):
        open_video(tmp_path / "empty")


@pytest.mark.parametrize(
    "kind, message",
    [
        ("missing", "not found"),
        ("zero_byte", "zero-byte"),
        ("truncated", "cannot open"),
        ("truncated_data", "truncated|no decodable"),
        ("not_video", "cannot open"),
    ],
)
def test_broken_files_raise_typed_errors(media, kind, message):
    path = media["broken"][kind]
    with pytest.raises(VideoDecodeError, match=message) as info:
        decode_frames(path, list(range(16)))
    assert info.value.path == path and info.value.reason
    assert pickle.loads(pickle.dumps(info.value)).reason == info.value.reason


def test_too_short_video_is_readable_but_tiny(media):
    assert probe_video(media["broken"]["too_short"]).num_frames == 1


# ---------------------------------------------------------------------------------------------
# annotation lists
# ---------------------------------------------------------------------------------------------
def test_annotation_formats(tmp_path):
    video = tmp_path / "k400.csv"
    video.write_text("a/x.mp4,3\n\n# comment\nb/my clip.mp4, 7\n")
    entries = read_annotations(video, root="/data")
    assert [(e.path, e.label, e.line) for e in entries] == [
        ("/data/a/x.mp4", 3, 1),
        ("/data/b/my clip.mp4", 7, 4),
    ]

    spaced = tmp_path / "k400.txt"
    spaced.write_text("x.mp4 1\ny.mp4\t2\n")
    assert [e.label for e in read_annotations(spaced)] == [1, 2]

    frames = tmp_path / "ssv2.txt"
    frames.write_text("rawframes/123 48 17\nrawframes/124 30 2\n")
    e = read_annotations(frames)[0]
    assert (e.path, e.total_frames, e.label) == ("rawframes/123", 48, 17)

    lvu = tmp_path / "lvu.csv"
    lvu.write_text("movie/a.mp4,4,93.5\n")
    e = read_annotations(lvu, fmt="auto")[0]
    assert (e.label, e.duration, e.total_frames) == (4, 93.5, None)

    piped = tmp_path / "piped.txt"
    piped.write_text("dir with space/v.mp4|5\n")
    assert read_annotations(piped, delimiter="|")[0].path == "dir with space/v.mp4"


@pytest.mark.parametrize(
    "content, fmt, line, expected",
    [
        ("a.mp4,1\nb.mp4\nc.mp4,2\n", "video", 2, "expected 2 fields"),
        ("a.mp4,1\nb.mp4,one\n", "video", 2, "integer label"),
        ("path,label\na.mp4,1\n", "video", 1, "headerless"),
        ("f/1 10 2\nf/2 ten 3\n", "frames", 2, "integer total_frames"),
        ("a.mp4,1,2.0\nb.mp4,1,long\n", "lvu", 2, "numeric duration"),
        ("a.mp4,1\n\nb.mp4,-4\n", "video", 3, ">= 0"),
        ("my clip.mp4 3\n", "video", 1, "non-space delimiter"),
    ],
)
def test_malformed_line_names_file_and_line(tmp_path, content, fmt, line, expected):
    path = tmp_path / "list.txt"
    path.write_text(content)
    with pytest.raises(ValueError) as info:
        read_annotations(path, fmt=fmt)
    message = str(info.value)
    assert f"{path}:{line}:" in message and expected in message


# ---------------------------------------------------------------------------------------------
# sampling
# ---------------------------------------------------------------------------------------------
def test_segment_sampling_train_and_test():
    n, t = 100, 8
    idx = segment_indices(n, t, train=True, generator=1)
    assert len(idx) == t
    for i, v in enumerate(idx):
        assert int(12.5 * i) <= v < int(12.5 * (i + 1))
    assert idx == segment_indices(n, t, train=True, generator=1)
    draws = {tuple(segment_indices(n, t, train=True, generator=s)) for s in range(20)}
    assert len(draws) > 15
    # test clip k of n_clips: offset seg / (n_clips + 1) * (k + 1)
    assert segment_indices(n, t, train=False, clip_idx=0, num_clips=1) == [
        int(12.5 * i + 6.25) for i in range(t)
    ]
    clips = [segment_indices(n, t, False, k, 2) for k in range(2)]
    assert clips[0] == [int(12.5 * i + 12.5 / 3) for i in range(t)]
    assert clips[1] == [int(12.5 * i + 25 / 3) for i in range(t)]


@pytest.mark.parametrize("train", [True, False])
def test_sampling_short_videos(train):
    for n in (1, 3, 7):
        seg = segment_indices(n, 8, train, generator=0)
        dense = dense_indices(n, 8, 4, train, generator=0)
        for idx in (seg, dense):
            assert len(idx) == 8 and min(idx) >= 0 and max(idx) <= n - 1
            assert idx == sorted(idx)
    assert dense_indices(10, 8, 4, train) == [0, 1, 3, 4, 5, 6, 8, 9]


def test_dense_sampling():
    idx = dense_indices(100, 8, 4, train=True, generator=3)
    assert np.all(np.diff(idx) == 4) and 0 <= idx[0] <= 100 - 29
    starts = [dense_indices(100, 8, 4, False, k, 3)[0] for k in range(3)]
    assert starts == [0, 36, 71]
    assert dense_indices(100, 8, 4, False)[0] == 35
    gen = torch.Generator().manual_seed(5)
    assert sample_clip_indices(100, 8, "dense", 4, True, generator=gen) == dense_indices(
        100, 8, 4, True, generator=torch.Generator().manual_seed(5)
    )
    with pytest.raises(ValueError, match="sampling method"):
        sample_clip_indices(100, 8, "uniform")


# ---------------------------------------------------------------------------------------------
# transforms
# ---------------------------------------------------------------------------------------------
def _static_clip(t: int = 6, h: int = 40, w: int = 56, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    frame = torch.randint(40, 200, (3, 1, h, w), generator=g, dtype=torch.uint8)  # room for autocontrast
    return frame.expand(3, t, h, w).contiguous()


def _frames_identical(clip: torch.Tensor) -> bool:
    return bool((clip == clip[:, :1]).all())


@pytest.mark.parametrize("op", RandAugment.OPS)
def test_randaugment_ops_are_clip_consistent(op):
    clip = _static_clip()
    ra = RandAugment(magnitude=9, num_ops=1, prob=1.0, ops=[op])
    out = ra(clip, torch.Generator().manual_seed(1))
    assert out.shape == clip.shape and out.dtype == torch.uint8
    assert _frames_identical(out)
    if op != "identity":
        assert not torch.equal(out, clip), f"{op} had no effect"
    out_f = ra(clip.float(), torch.Generator().manual_seed(1))
    assert out_f.dtype == torch.float32 and (out_f.float() - out.float()).abs().max() <= 1.0


def test_train_pipeline_keeps_frames_consistent():
    clip = _static_clip()
    ra = RandAugment.from_string("rand-m7-n4-mstd0.5-inc1")
    assert (ra.magnitude, ra.num_ops, ra.magnitude_std) == (7.0, 4, 0.5)
    erase = RandomErasing(prob=1.0)
    for seed in range(6):
        g = torch.Generator().manual_seed(seed)
        x = random_resized_crop(clip, 32, generator=g)
        x = random_hflip(x, 0.5, g)
        x = ra(x, g)
        x = erase(normalize(x), g)
        assert x.shape == (3, 6, 32, 32) and x.dtype == torch.float32
        assert _frames_identical(x)


def test_random_ops_are_seeded():
    clip = torch.randint(0, 256, (3, 4, 40, 56), dtype=torch.uint8)
    a = random_resized_crop(clip, 24, generator=torch.Generator().manual_seed(3))
    b = random_resized_crop(clip, 24, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    erased = RandomErasing(prob=1.0, mode="const")(torch.ones(3, 4, 20, 20), 0)
    assert (erased == 0).any() and _frames_identical(erased)
    assert torch.equal(random_hflip(clip, p=1.0), clip.flip(-1))
    assert torch.equal(random_hflip(clip, p=0.0), clip)


def test_resize_and_crops():
    clip = torch.arange(60, dtype=torch.float32).view(1, 1, 1, 60).expand(3, 2, 40, 60).contiguous()
    assert resize_short_side(clip, 20).shape == (3, 2, 20, 30)
    assert resize_short_side(clip.transpose(2, 3), 20).shape == (3, 2, 30, 20)
    crops = spatial_crops(clip, 40, 3)
    assert [c.shape for c in crops] == [(3, 2, 40, 40)] * 3
    assert [float(c[0, 0, 0, 0]) for c in crops] == [0.0, 10.0, 20.0]
    portrait = clip.transpose(2, 3)  # (3, 2, 60, 40): crops go top / middle / bottom
    assert [float(c[0, 0, 0, 0]) for c in spatial_crops(portrait, 40, 3)] == [0.0, 10.0, 20.0]
    assert torch.equal(center_crop(clip, 40), crops[1])
    u8 = torch.full((3, 2, 4, 4), 255, dtype=torch.uint8)
    expected = (1.0 - 0.485) / 0.229
    assert torch.allclose(normalize(u8)[0], torch.full((2, 4, 4), expected))


def test_mixup_soft_targets():
    x = torch.randn(6, 3, 4, 16, 16)
    y = torch.tensor([0, 1, 2, 3, 4, 0])
    mix = Mixup(num_classes=5, mixup_alpha=0.8, cutmix_alpha=1.0, label_smoothing=0.1)
    g = torch.Generator().manual_seed(0)
    for _ in range(6):
        xm, soft = mix(x, y, generator=g)
        assert xm.shape == x.shape and soft.shape == (6, 5)
        assert torch.allclose(soft.sum(1), torch.ones(6))
        assert bool((soft > 0).all())
    # CutMix only: the label weight equals the pasted area, the box is the same in every frame.
    cut = Mixup(num_classes=5, mixup_alpha=0.0, cutmix_alpha=1.0, label_smoothing=0.0)
    xs = torch.zeros(2, 3, 4, 16, 16)
    xs[1] = 1.0
    xm, soft = cut(xs, torch.tensor([0, 1]), generator=torch.Generator().manual_seed(1))
    pasted = float(xm[0].mean())
    assert soft[0, 1].item() == pytest.approx(pasted, abs=1e-6)
    assert _frames_identical(xm[0])
    # No mixing at all: only label smoothing.
    off = Mixup(num_classes=4, prob=0.0, label_smoothing=0.2)
    xm, soft = off(xs, torch.tensor([0, 3]))
    assert xm is xs and torch.allclose(soft[0], torch.tensor([0.85, 0.05, 0.05, 0.05]))


def test_mixup_draws_come_from_the_given_generator():
    x = torch.randn(6, 3, 4, 16, 16)
    y = torch.tensor([0, 1, 2, 3, 4, 0])
    mix = Mixup(num_classes=5, mixup_alpha=0.8, cutmix_alpha=1.0, switch_prob=0.5, label_smoothing=0.1)
    saved = torch.get_rng_state()
    try:
        # An explicit generator: same seed, same mix; the global RNG is left untouched.
        before = torch.get_rng_state()
        first = [mix(x, y, generator=torch.Generator().manual_seed(s)) for s in range(8)]
        assert torch.equal(torch.get_rng_state(), before)
        second = [mix(x, y, generator=torch.Generator().manual_seed(s)) for s in range(8)]
        for (xa, ya), (xb, yb) in zip(first, second):
            assert torch.equal(xa, xb) and torch.equal(ya, yb)
        assert len({tuple(m[1][0].tolist()) for m in first}) > 1  # the seed matters
        # No generator: the global RNG, so restoring its saved state (as a resumed checkpoint
        # does) reproduces the same mixes, identical to passing torch.default_generator.
        torch.manual_seed(123)
        state = torch.get_rng_state()
        a = [mix(x, y) for _ in range(3)]
        assert not torch.equal(torch.get_rng_state(), state)  # the draws advanced the global stream
        torch.set_rng_state(state)
        b = [mix(x, y, generator=torch.default_generator) for _ in range(3)]
        for (xa, ya), (xb, yb) in zip(a, b):
            assert torch.equal(xa, xb) and torch.equal(ya, yb)
    finally:
        torch.set_rng_state(saved)


# ---------------------------------------------------------------------------------------------
# metrics
# ---------------------------------------------------------------------------------------------
def test_view_averaging_and_accuracy(tmp_path):
    logits = torch.tensor([[[10.0, 0, 0], [0, 0, 10.0]], [[0, 5.0, 0], [0, 5.0, 0]]])  # (B=2, V=2, K=3)
    probs = average_view_probs(logits)
    assert probs.shape == (2, 3) and torch.allclose(probs.sum(1), torch.ones(2))
    assert probs[0, 0] == pytest.approx(probs[0, 2].item()) and probs[1].argmax() == 1
    scores = torch.tensor([[0.1, 0.5, 0.4], [0.8, 0.1, 0.1], [0.2, 0.3, 0.5]])
    target = torch.tensor([2, 0, 0])
    assert accuracy(scores, target, (1, 2)) == pytest.approx([100 / 3, 200 / 3])
    assert accuracy(scores, target, (1, 5)) == pytest.approx([100 / 3, 100.0])  # k capped at K

    acc = AccuracyAccumulator((1, 5))
    acc.update(scores, target, loss=2.0)
    acc.update(logits, torch.tensor([1, 1]), loss=1.0)
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        acc.all_reduce()
    finally:
        dist.destroy_process_group()
    result = acc.compute()
    assert result["count"] == 5 and result["top1"] == pytest.approx(40.0) and result["top5"] == 100.0
    assert result["loss"] == pytest.approx((2.0 * 3 + 1.0 * 2) / 5)


# ---------------------------------------------------------------------------------------------
# synthetic data
# ---------------------------------------------------------------------------------------------
def test_synthetic_dataset_files(media):
    entries = read_annotations(media["train"])
    assert len(entries) == 12 and sorted({e.label for e in entries}) == list(range(6))
    with open(os.path.join(os.path.dirname(media["train"]), "classes.txt")) as fh:
        classes = fh.read().split()
    assert tuple(classes) == SYNTHETIC_CLASSES
    info = probe_video(entries[0].path)
    assert (info.num_frames, info.height, info.width) == (16, 32, 32)


def test_synthetic_classes_share_their_first_frame():
    # Same seed => same state draws for every class: frame 0 is identical, motion differs.
    clips = [render_clip(label, np.random.default_rng(7), 8, 32) for label in range(6)]
    for clip in clips[1:]:
        assert np.array_equal(clip[0], clips[0][0])
        assert not np.array_equal(clip[-1], clips[0][-1])


# ---------------------------------------------------------------------------------------------
# dataset
# ---------------------------------------------------------------------------------------------
def _dataset(list_file, **kw):
    defaults = dict(num_frames=4, input_size=24, short_side=28, seed=3)
    defaults.update(kw)
    return VideoClsDataset(list_file, **defaults)


def test_dataset_modes_and_shapes(media):
    train = _dataset(media["train"], randaug="m7-n2", erase_prob=0.5, flip=False)
    clip, label, index = train[4]
    assert clip.shape == (3, 4, 24, 24) and clip.dtype == torch.float32
    assert (label, index) == (4, 4) and train.num_classes == 6
    val_clip, _, _ = _dataset(media["val"], mode="val")[0]
    assert val_clip.shape == (3, 4, 24, 24)
    test = _dataset(media["val"], mode="test", test_clips=2, test_crops=3, sampling="dense", frame_stride=2)
    views, _, _ = test[1]
    assert views.shape == (6, 3, 4, 24, 24)
    assert _dataset(media["val"], mode="test")[0][0].shape == (1, 3, 4, 24, 24)


def test_repeated_augmentation_gives_independent_clips_of_one_video(media):
    """num_sample=2 (the authors' --num_sample): one decode, two augmentations; the collate
    flattens video-major, labels repeated, and the DataLoader still yields len / batch steps."""
    from videomap.data import collate_repeated

    one = _dataset(media["train"], flip=False)
    two = _dataset(media["train"], num_sample=2, flip=False)
    clips, label, index = two[4]
    assert clips.shape == (2, 3, 4, 24, 24) and (label, index) == (4, 4)
    assert not torch.equal(clips[0], clips[1])  # independent crops
    assert torch.equal(clips, two[4][0])  # deterministic per (seed, epoch, index)
    same = _dataset(media["train"], num_sample=2, flip=False, crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0))
    first = same[4][0]
    assert torch.equal(first[0], first[1])  # no random geometry left: one decode, same frames
    loader = torch.utils.data.DataLoader(two, batch_size=3, collate_fn=collate_repeated, drop_last=True)
    plain = torch.utils.data.DataLoader(one, batch_size=3, drop_last=True)
    assert len(loader) == len(plain)
    x, y, idx = next(iter(loader))
    assert x.shape == (6, 3, 4, 24, 24) and y.tolist() == [0, 0, 1, 1, 2, 2] and idx.tolist() == [0, 0, 1, 1, 2, 2]
    assert _dataset(media["val"], mode="test", num_sample=2)[0][0].shape == (1, 3, 4, 24, 24)  # train only
    with pytest.raises(ValueError, match="num_sample"):
        _dataset(media["train"], num_sample=0)


def test_dataset_determinism_per_epoch(media):
    a, b = _dataset(media["train"], randaug="m9-n2"), _dataset(media["train"], randaug="m9-n2")
    assert torch.equal(a[2][0], b[2][0])
    assert torch.equal(a[2][0], a.load(2))
    first = a[2][0]
    a.set_epoch(1)
    assert a.epoch == 1 and not torch.equal(a[2][0], first)
    a.set_epoch(0)
    assert torch.equal(a[2][0], first)
    copy = pickle.loads(pickle.dumps(a))
    assert torch.equal(copy[2][0], first) and copy.registry.directory == a.registry.directory


def test_dataloader_workers_follow_set_epoch(media):
    ds = _dataset(media["train"])
    reference = {}
    for epoch in (0, 1):
        ds.set_epoch(epoch)
        reference[epoch] = torch.stack([ds[i][0] for i in range(len(ds))])
    loader = DataLoader(ds, batch_size=4, num_workers=2, persistent_workers=True)
    for epoch in (0, 1):
        ds.set_epoch(epoch)  # the persistent workers must see this
        got = torch.cat([clips for clips, _, _ in loader])
        assert torch.equal(got, reference[epoch])


def _broken_list(tmp_path, media, good: int) -> tuple[str, list[int]]:
    """``good`` readable entries with every broken kind spread through the list."""
    good_paths = [e.path for e in read_annotations(media["train"])]
    broken = list(media["broken"].values())
    step = max(1, (good + len(broken)) // len(broken))
    lines, bad_idx = [], []
    g = 0
    for i in range(good + len(broken)):
        if i % step == step // 2 and len(bad_idx) < len(broken):
            lines.append(f"{broken[len(bad_idx)]},1")
            bad_idx.append(i)
        else:
            lines.append(f"{good_paths[g % len(good_paths)]},{g % 6}")
            g += 1
    path = tmp_path / "with_broken.csv"
    path.write_text("\n".join(lines) + "\n")
    return str(path), bad_idx


@pytest.mark.parametrize("workers", [0, 2])
def test_bad_samples_are_skipped_and_reported_once(tmp_path, media, workers, caplog):
    list_file, bad_idx = _broken_list(tmp_path, media, good=54)  # 6 bad of 60 = 10%
    ds = _dataset(list_file, max_bad_fraction=0.1)
    order = torch.Generator().manual_seed(0)
    loader = DataLoader(ds, batch_size=8, num_workers=workers, shuffle=True, generator=order)
    with caplog.at_level(logging.WARNING, logger="videomap.data"):
        for epoch in range(2):
            ds.set_epoch(epoch)
            seen = 0
            for clips, _labels, indices in loader:
                assert clips.shape[1:] == (3, 4, 24, 24)
                assert not set(indices.tolist()) & set(bad_idx)
                seen += clips.shape[0]
            assert seen == len(ds)
    bad = ds.bad_samples()
    assert [b.index for b in bad] == bad_idx
    assert sorted(b.path for b in bad) == sorted(media["broken"].values())
    assert all(b.reason and b.epoch == 0 for b in bad)
    summary = ds.bad_sample_summary()
    assert "6 unreadable" in summary and "too short" in summary and "zero-byte" in summary
    if workers == 0:  # worker processes log to their own copies of the handlers
        warned = [r for r in caplog.records if r.name == "videomap.data.dataset"]
        assert len(warned) == len(bad_idx)
        assert sorted(
            p for p in media["broken"].values() if any(p in r.getMessage() for r in warned)
        ) == sorted(media["broken"].values())


@pytest.mark.parametrize("workers", [0, 2])
def test_too_many_bad_samples_abort(tmp_path, media, workers):
    list_file, _ = _broken_list(tmp_path, media, good=10)  # 6 of 16 bad
    ds = _dataset(list_file, max_bad_fraction=0.2)
    batches = iter(DataLoader(ds, batch_size=4, num_workers=workers))
    error = None
    try:
        for _ in batches:
            pass
    except (BadDataError, RuntimeError) as exc:  # workers re-raise it in the main process
        error = exc
        # Drop the frames that keep the iterator alive, so its workers stop now rather than at a
        # later garbage collection (which would wait for their join timeouts).
        traceback.clear_frames(exc.__traceback__)
    del batches
    assert isinstance(error, BadDataError)
    message = str(error)
    assert list_file in message and "max_bad_fraction=0.2" in message and "of 16 samples" in message


def test_dataset_on_frame_folders(tmp_path):
    from PIL import Image

    lines = []
    for v in range(2):
        folder = tmp_path / "rawframes" / f"vid{v}"
        folder.mkdir(parents=True)
        for i in range(10):
            Image.fromarray(np.full((20, 28, 3), 20 * i, np.uint8)).save(folder / f"img_{i + 1:05d}.jpg")
        lines.append(f"vid{v} 10 {v}")
    lines.append("missing_vid 10 1")
    list_file = tmp_path / "ssv2_frames.txt"
    list_file.write_text("\n".join(lines) + "\n")
    ds = _dataset(list_file, root=tmp_path / "rawframes", mode="val", max_bad_fraction=0.5)
    clip, label, index = ds[1]
    assert clip.shape == (3, 4, 24, 24) and (label, index) == (1, 1)
    means = clip.mean(dim=(0, 2, 3))
    assert bool((means[1:] > means[:-1]).all())  # segment centres in temporal order
    assert ds[2][2] == 0 and [b.reason for b in ds.bad_samples()] == ["file not found"]


def _collect_and_close_in_child(reader, queue):
    gc.collect()  # would free the parent's FFmpeg objects here, waiting on threads the child lacks
    reader.close()  # closing a reader the parent opened must not free them either
    queue.put("ok")


def test_forked_worker_never_frees_ffmpeg_objects_it_inherited(media):
    """A DataLoader worker is a fork: FFmpeg objects of the parent (with their worker threads) must
    not be freed in the child, where those threads do not exist; it used to hang the worker."""
    import multiprocessing as mp

    cyclic = open_video(_first_video(media["train"]))
    cyclic.get_frames([0, 3])  # decode: the decoder and converter start their threads here
    cyclic.self_ref = cyclic  # a reference cycle only the garbage collector frees
    held = open_video(_first_video(media["train"]))
    held.get_frames([1])
    del cyclic
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_collect_and_close_in_child, args=(held, queue))
    child.start()
    child.join(timeout=60)
    if child.is_alive():
        child.kill()
    assert child.exitcode == 0 and queue.get(timeout=5) == "ok"
    assert held.get_frames([2]).shape[0] == 1  # the parent's reader still works
    held.close()


def _first_video(list_file):
    with open(list_file) as f:
        return f.readline().split(",")[0]
