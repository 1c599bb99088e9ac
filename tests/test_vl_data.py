"""Video-text data, retrieval metrics / VTM re-ranking / evaluation loop (with a stand-in model) and the
persistent video index."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("transformers")

from transformers import BertTokenizerFast  # noqa: E402

from videomap.data import BadDataError, VideoDecodeError, make_broken_videos, write_video  # noqa: E402
from videomap.vl.data import (  # noqa: E402
    RetrievalSet,
    VideoCaptionDataset,
    clean_caption,
    collate_captions,
    read_caption_file,
    tokenize_texts,
)
from videomap.vl.index import (  # noqa: E402
    ModelMismatchError,
    VideoIndex,
    VideoIndexError,
    find_videos,
    model_identity,
    video_encoder_fn,
)
from videomap.vl.retrieval import (  # noqa: E402
    best_match_ranks,
    evaluate_retrieval,
    rerank_with_vtm,
    retrieval_metrics,
)

VOCAB_TEXT = ("a man is cooking in kitchen dog runs on grass red car drives fast woman sings song cat sleeps sofa "
              "bird flies sky walks he sits down then leaves people dance together pushing something left right")
SIZE, FRAMES = 32, 8


# ---------------------------------------------------------------------------------------------
# fixtures
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    """A BERT WordPiece tokenizer over a vocabulary written here (nothing is downloaded)."""
    d = tmp_path_factory.mktemp("tok")
    (d / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *VOCAB_TEXT.split()]) + "\n")
    tok = BertTokenizerFast.from_pretrained(str(d), local_files_only=True)
    assert tok.pad_token_id == 0 and tok.convert_tokens_to_ids("dog") != tok.unk_token_id
    return tok


def _frames(i: int, frames: int = FRAMES) -> np.ndarray:
    """Video ``i``: its own flat colour, brightening frame by frame (frame choice shows in the pixels)."""
    base = np.array([20 + 45 * i, 200 - 40 * i, 60 + 25 * i], dtype=np.int64) % 200
    t = np.arange(frames)[:, None, None, None] * 6
    return np.broadcast_to(base + t, (frames, SIZE, SIZE, 3)).astype(np.uint8).copy()


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    """Five real MP4 files, one PNG image and every kind of broken video."""
    root = tmp_path_factory.mktemp("media")
    for i in range(5):
        write_video(root / f"v{i}.mp4", _frames(i))
    from PIL import Image

    Image.fromarray(_frames(0, 1)[0]).save(root / "still.png")
    broken = make_broken_videos(root / "broken", num_frames=FRAMES, size=SIZE)
    return root, broken


def _write(path, entries, jsonl=False):
    with open(path, "w", encoding="utf-8") as fh:
        if jsonl:
            fh.writelines(json.dumps(e) + "\n" for e in entries)
        else:
            json.dump(entries, fh)
    return str(path)


# ---------------------------------------------------------------------------------------------
# metrics
# ---------------------------------------------------------------------------------------------
# 5 texts x 3 videos; video 0 has texts 0 and 1, video 1 text 2, video 2 texts 3 and 4
SIM = torch.tensor([
    [0.9, 0.1, 0.2],  # t0 -> v0 first: rank 0
    [0.3, 0.5, 0.3],  # t1 -> v0 behind v1 and tied with v2: rank 2 (the tie counts against it)
    [0.4, 0.4, 0.1],  # t2 -> v1 tied with v0: rank 1
    [0.2, 0.6, 0.5],  # t3 -> v2 behind v1: rank 1
    [0.1, 0.2, 0.7],  # t4 -> v2 first: rank 0
])
TXT2VID = [0, 0, 1, 2, 2]
VID2TXT = [[0, 1], [2], [3, 4]]


def test_metrics_match_a_hand_computed_example():
    assert best_match_ranks(SIM, TXT2VID).tolist() == [0, 2, 1, 1, 0]
    # v2t ranks the transpose: v0's best text t0 (0.9) is first; v1's text t2 (0.4) is behind t1 (0.5) and t3
    # (0.6); v2's best text t4 (0.7) is first (its other text t3 would be second: the best match counts)
    assert best_match_ranks(SIM.t(), VID2TXT).tolist() == [0, 2, 0]
    m = retrieval_metrics(SIM, TXT2VID, VID2TXT, ks=(1, 2, 5))
    assert m["t2v_r1"] == pytest.approx(40.0) and m["t2v_r2"] == pytest.approx(80.0) and m["t2v_r5"] == 100.0
    assert m["v2t_r1"] == pytest.approx(200 / 3) and m["v2t_r2"] == pytest.approx(200 / 3)
    assert m["t2v_medr"] == 2.0 and m["t2v_meanr"] == pytest.approx(9 / 5)  # 1-based ranks 1,3,2,2,1
    assert m["v2t_meanr"] == pytest.approx(5 / 3)
    assert m["mean_r"] == pytest.approx(((40 + 80 + 100) / 3 + (200 / 3 + 200 / 3 + 100) / 3) / 2)
    default = retrieval_metrics(SIM, TXT2VID, VID2TXT)
    assert set(default) >= {"t2v_r1", "t2v_r5", "t2v_r10", "v2t_r1", "v2t_r5", "v2t_r10", "mean_r"}
    assert default["t2v_r10"] == 100.0
    # dict ground truth (the authors' layout) gives the same numbers
    assert retrieval_metrics(SIM, dict(enumerate(TXT2VID)), dict(enumerate(VID2TXT))) == default


def test_ties_count_against_the_query_and_unscorable_queries_are_misses():
    flat = torch.zeros(4, 4)
    m = retrieval_metrics(flat, [0, 1, 2, 3], [[0], [1], [2], [3]])
    assert m["t2v_r1"] == 0.0 and m["v2t_r1"] == 0.0  # every wrong candidate ties with the right one
    sim = torch.eye(3)
    sim[:, 1] = -math.inf  # video 1 could not be read
    m = retrieval_metrics(sim, [0, 1, 2], [[0], [1], [2]])
    assert m["t2v_r1"] == pytest.approx(200 / 3) and m["t2v_r10"] == pytest.approx(200 / 3)  # never found
    assert best_match_ranks(sim, [0, 1, 2]).tolist() == [0, 3, 0]


def test_metrics_agree_with_a_sort_based_reference_without_ties():
    g = torch.Generator().manual_seed(0)
    sim = torch.rand(12, 5, generator=g)
    txt2vid = [i % 5 for i in range(12)]
    vid2txt = [[t for t in range(12) if t % 5 == v] for v in range(5)]
    expected_t2v = [int((sim[t].argsort(descending=True) == txt2vid[t]).nonzero()) for t in range(12)]
    expected_v2t = [min(int((sim[:, v].argsort(descending=True) == t).nonzero()) for t in vid2txt[v])
                    for v in range(5)]
    assert best_match_ranks(sim, txt2vid).tolist() == expected_t2v
    assert best_match_ranks(sim.t(), vid2txt).tolist() == expected_v2t


def test_metrics_reject_bad_input():
    with pytest.raises(ValueError, match="NaN"):
        retrieval_metrics(torch.tensor([[float("nan"), 0.0]]), [0], [[0], []])
    with pytest.raises(ValueError, match=r"vid2txt\[1\] is empty"):
        retrieval_metrics(torch.eye(2)[:1], [0], [[0], []])
    with pytest.raises(ValueError, match="txt2vid has 2 entries"):
        retrieval_metrics(torch.eye(3), [0, 1], [[0], [1], [2]])
    with pytest.raises(ValueError, match="outside the 3 candidates"):
        retrieval_metrics(torch.eye(3), [0, 1, 7], [[0], [1], [2]])


# ---------------------------------------------------------------------------------------------
# re-ranking
# ---------------------------------------------------------------------------------------------
def test_rerank_rescores_only_the_top_k_and_keeps_the_rest_below_in_order():
    sim = torch.tensor([[0.1, 0.9, 0.5, 0.5, 0.3, 0.0],
                        [0.8, 0.7, 0.6, 0.2, 0.1, 0.05]])
    calls = []
    vtm = torch.tensor([[0.0, -5.0, 0.0, 7.0, 0.0, 0.0],
                        [2.0, 3.0, 9.0, 0.0, 0.0, 0.0]])

    def score_fn(q, candidates):
        calls.append((q, candidates.tolist()))
        return vtm[q, candidates]

    out = rerank_with_vtm(sim, score_fn, k=3)
    # top-3 by similarity, ties (0.5, 0.5) towards the lower index
    assert calls == [(0, [1, 2, 3]), (1, [0, 1, 2])]
    assert out[0, [1, 2, 3]].tolist() == [-5.0, 0.0, 7.0] and out[1, [0, 1, 2]].tolist() == [2.0, 3.0, 9.0]
    order = [out[q].argsort(descending=True).tolist() for q in range(2)]
    assert order[0] == [3, 2, 1, 4, 0, 5]  # VTM order of the top-3, then the rest by similarity
    assert order[1] == [2, 1, 0, 3, 4, 5]
    assert out[0, [0, 4, 5]].max() < -5.0 and out[1, 3:].max() < 2.0
    assert torch.equal(rerank_with_vtm(sim, score_fn, k=0), sim.double())  # no re-ranking
    calls.clear()
    rerank_with_vtm(sim, score_fn, k=50)  # more than there are: all candidates
    assert [len(c) for _, c in calls] == [6, 6]
    with pytest.raises(ValueError, match="returned 1 scores for query 0, expected 2"):
        rerank_with_vtm(sim, lambda q, c: torch.zeros(1), k=2)


# ---------------------------------------------------------------------------------------------
# caption files and the training dataset
# ---------------------------------------------------------------------------------------------
def test_caption_file_layouts_and_errors(tmp_path):
    entries = [
        {"video": "video7020.mp4", "caption": "a woman is cooking"},  # MSRVTT 1k test
        {"video": "v_1.mp4", "caption": ["a man walks in.", "he sits down."], "duration": 3.0},  # several captions
        {"image": "coco/1.jpg", "caption": "a dog on a sofa"},  # image-text corpus
        {"video": ["a.webm", "b.webm"], "caption": "pushing something left"},  # several ground-truth videos
    ]
    for jsonl in (False, True):
        got = read_caption_file(_write(tmp_path / f"c{jsonl}.json", entries, jsonl), media_root="/data")
        assert [e.kind for e in got] == ["video", "video", "image", "video"]
        assert got[0].media == ("/data/video7020.mp4",) and got[3].media == ("/data/a.webm", "/data/b.webm")
        assert got[1].captions == ("a man walks in.", "he sits down.")
    # a file whose entries carry both keys reads the declared kind
    both = _write(tmp_path / "both.json", [{"video": "x.mp4", "image": "x.jpg", "caption": "c"}])
    with pytest.raises(ValueError, match=r"both.json: entry 0: has both 'video' and 'image'"):
        read_caption_file(both)
    assert read_caption_file(both, media_type="image")[0].media == ("x.jpg",)
    bad = {
        "missing caption": ([{"video": "x.mp4"}], r"entry 0: missing 'caption'"),
        "empty list": ([{"video": "x.mp4", "caption": "ok"}, {"video": "y.mp4", "caption": []}],
                       r"entry 1: expected 'caption' to be a non-empty string"),
        "no media": ([{"caption": "x"}], r"entry 0: missing 'video' or 'image'"),
        "object": ({"video": "x.mp4", "caption": "c"}, "expected a JSON list"),
        "number": ([{"video": 3, "caption": "c"}], r"expected 'video' to be a non-empty string"),
    }
    for name, (content, message) in bad.items():
        path = _write(tmp_path / f"{name}.json", content)
        with pytest.raises(ValueError, match=message) as info:
            read_caption_file(path)
        assert path in str(info.value)
    with pytest.raises(FileNotFoundError, match="nope.json"):
        read_caption_file(tmp_path / "nope.json")


def test_clean_caption_follows_the_authors_text_rules():
    assert clean_caption("A Man's dog-walking, on/off!  (Really?)") == "a mans dog walking on off really"
    assert clean_caption("<person> runs.") == "person runs"


def test_dataset_items_and_collate(media, tokenizer, tmp_path):
    root, _ = media
    entries = [{"video": "v0.mp4", "caption": "a man is cooking"},
               {"video": "v1.mp4", "caption": ["a dog runs", "red car drives fast"]},
               {"video": "v0.mp4", "caption": "a man is cooking in kitchen"},  # same video, second caption
               {"video": ["v2.mp4", "v3.mp4"], "caption": "a bird flies"}]
    ds = VideoCaptionDataset(_write(tmp_path / "train.json", entries), tokenizer, media_root=root, num_frames=4,
                             img_size=SIZE, max_text_len=8)
    assert len(ds) == 5 and ds.num_videos == 4  # one item per video file
    items = [ds[i] for i in range(len(ds))]
    batch = collate_captions(items)
    assert batch["videos"].shape == (5, 3, 4, SIZE, SIZE) and batch["videos"].dtype == torch.float32
    assert batch["input_ids"].shape == (5, 8) and batch["attention_mask"].shape == (5, 8)
    assert batch["index"].tolist() == [0, 1, 2, 3, 4]
    assert batch["video_ids"].tolist() == [0, 1, 0, 2, 3]  # v0 twice -> one id
    ids, mask = tokenize_texts(tokenizer, [items[2]["caption"]], 8)
    assert items[2]["caption"] == "a man is cooking in kitchen"
    assert torch.equal(batch["input_ids"][2], ids[0]) and torch.equal(batch["attention_mask"][2], mask[0])
    assert batch["attention_mask"][2].tolist() == [1] * 8  # [CLS] + 6 words + [SEP]: fills 8 exactly
    long = tokenize_texts(tokenizer, ["a man is cooking in kitchen dog runs on grass"], 8)[0]
    assert long.shape == (1, 8) and long[0, -1] == tokenizer.sep_token_id  # truncated, still closed
    # an image is a one-frame video
    img = VideoCaptionDataset(_write(tmp_path / "img.json", [{"image": "still.png", "caption": "a red car"}]),
                              tokenizer, media_root=root, num_frames=4, img_size=SIZE, mode="test")
    assert img[0]["video"].shape == (3, 1, SIZE, SIZE)
    with pytest.raises(ValueError, match="separate loaders"):
        collate_captions([items[0], img[0]])
    loader = torch.utils.data.DataLoader(ds, batch_size=2, collate_fn=collate_captions)
    assert [b["videos"].shape[0] for b in loader] == [2, 2, 1]


def test_caption_choice_and_frames_are_deterministic(media, tokenizer, tmp_path):
    root, _ = media
    captions = ["a dog runs", "a cat sleeps", "a bird flies", "people dance together"]
    path = _write(tmp_path / "c.json", [{"video": "v1.mp4", "caption": captions}, {"video": "v2.mp4", "caption": "x"}])

    def run(seed, epochs=range(10)):
        ds = VideoCaptionDataset(path, tokenizer, media_root=root, num_frames=4, img_size=16, seed=seed)
        out = []
        for e in epochs:
            ds.set_epoch(e)
            out.append(ds[0]["caption"])
        return out, ds

    first, ds = run(0)
    again, _ = run(0)
    assert first == again  # a function of (seed, epoch, index)
    assert len(set(first)) >= 3 and set(first) <= set(captions)  # varies over epochs
    assert run(1)[0] != first  # and with the seed
    ds.set_epoch(3)
    a, b = ds[0], ds[0]
    assert a["caption"] == b["caption"] and torch.equal(a["video"], b["video"])
    ds.set_epoch(4)
    assert not torch.equal(ds[0]["video"], a["video"])  # new frames / crop in a new epoch
    test = VideoCaptionDataset(path, tokenizer, media_root=root, num_frames=4, img_size=16, mode="test")
    for e in range(4):
        test.set_epoch(e)
        assert test[0]["caption"] == "a dog runs"


def test_bad_files_are_replaced_reported_once_and_limited(media, tokenizer, tmp_path, caplog):
    root, broken = media
    entries = [{"video": os.path.join(root, f"v{i}.mp4"), "caption": "a dog runs"} for i in range(4)]
    entries.insert(1, {"video": broken["truncated"], "caption": "a cat sleeps"})
    entries.insert(3, {"video": broken["missing"], "caption": "a cat sleeps"})
    path = _write(tmp_path / "bad.json", entries)
    ds = VideoCaptionDataset(path, tokenizer, num_frames=4, img_size=16, max_bad_fraction=0.5)
    with caplog.at_level(logging.WARNING, logger="videomap.data"):
        got = [ds[i]["index"] for i in range(len(ds))] + [ds[1]["index"]]
    assert got == [0, 2, 2, 4, 4, 5, 2]  # bad items 1 and 3 replaced by the next readable one
    assert [s.index for s in ds.bad_samples()] == [1, 3]
    assert len([r for r in caplog.records if "unreadable sample" in r.getMessage()]) == 2  # once each
    assert "file not found" in ds.bad_sample_summary()
    strict = VideoCaptionDataset(path, tokenizer, num_frames=4, img_size=16, max_bad_fraction=0.2)
    with pytest.raises(BadDataError, match=r"bad.json: 2 of 6 samples are unreadable"):
        for i in range(len(strict)):
            strict[i]


# ---------------------------------------------------------------------------------------------
# retrieval set and the evaluation loop
# ---------------------------------------------------------------------------------------------
def test_retrieval_set_mappings(media, tmp_path):
    root, _ = media
    entries = [{"video": "v0.mp4", "caption": "a man is cooking"},
               {"video": "v1.mp4", "caption": ["a dog runs.", "a dog runs on grass"]},
               {"video": "v0.mp4", "caption": "a woman sings"},  # the file repeats v0 once per caption
               {"video": ["v2.mp4", "v3.mp4"], "caption": "pushing something left"},
               {"video": "v4.mp4", "caption": "pushing something left"}]
    path = _write(tmp_path / "test.json", entries)
    rs = RetrievalSet(path, media_root=root, num_frames=4, img_size=SIZE)
    assert [os.path.basename(v) for v in rs.videos] == ["v0.mp4", "v1.mp4", "v2.mp4", "v3.mp4", "v4.mp4"]
    assert rs.texts == ["a man is cooking", "a dog runs", "a dog runs on grass", "a woman sings",
                        "pushing something left", "pushing something left"]
    assert rs.txt2vid == [[0], [1], [1], [0], [2, 3], [4]]
    assert rs.vid2txt == [[0, 3], [1, 2], [4], [4], [5]]
    grouped = RetrievalSet(path, media_root=root, group_texts=True)
    assert grouped.texts[-1] == "pushing something left" and len(grouped.texts) == 5
    assert grouped.txt2vid[4] == [2, 3, 4] and grouped.vid2txt[4] == [4]
    para = RetrievalSet(path, media_root=root, paragraph=True)
    assert para.texts[1] == "a dog runs a dog runs on grass" and para.txt2vid[1] == [1]
    assert len(para.texts) == len(entries)
    item = rs[2]
    assert item["video"].shape == (3, 4, SIZE, SIZE) and item["valid"] and item["index"] == 2


class FakeVideoTextModel(torch.nn.Module):
    """Stand-in for the video-text model: recognises each clip and each text of the test set and returns
    the embeddings and VTM scores the test designed, so the expected metrics are known exactly."""

    def __init__(self, tokenizer, fingerprints, text_ids, video_embed, text_embed, vtm):
        super().__init__()
        self.tokenizer = tokenizer
        self.fingerprints = fingerprints  # rounded clip mean -> video index
        self.text_ids = text_ids  # tuple(input_ids) -> text index
        self.video_embed, self.text_embed, self.vtm = video_embed, text_embed, vtm
        self.scale = torch.nn.Parameter(torch.ones(()))  # gives the model a device and dtype
        self.videos_encoded: list[int] = []
        self.vtm_pairs = 0

    def _video(self, clip):
        return self.fingerprints[round(float(clip.mean()), 4)]

    def encode_video(self, videos, mask=None):
        assert not self.training
        idx = [self._video(v) for v in videos]
        self.videos_encoded += idx
        tokens = torch.tensor(idx, dtype=torch.float32)[:, None, None].expand(-1, 2, 3)
        return tokens, F.normalize(self.video_embed[idx] * self.scale, dim=-1)

    def encode_text(self, input_ids, attention_mask):
        idx = [self.text_ids[tuple(row.tolist())] for row in input_ids]
        return None, F.normalize(self.text_embed[idx], dim=-1)

    def vtm_score(self, video_tokens, input_ids, attention_mask):
        assert video_tokens.shape[1:] == (2, 3) and input_ids.shape == attention_mask.shape
        self.vtm_pairs += len(input_ids)
        v = video_tokens[:, 0, 0].round().long()
        t = torch.tensor([self.text_ids[tuple(row.tolist())] for row in input_ids])
        return self.vtm[t, v]


def _fake_model(rs, tokenizer, sim, vtm):
    fingerprints = {}
    for v in range(len(rs)):
        with contextlib.suppress(VideoDecodeError):  # unreadable files never reach the model
            fingerprints[round(float(rs.load(v).mean()), 4)] = v
    ids, _ = rs.tokenize(tokenizer)
    text_ids = {tuple(row.tolist()): t for t, row in enumerate(ids)}
    assert len(text_ids) == len(rs.texts)
    # unit video embeddings on the axes and unit text rows: cosine similarity == the designed matrix
    return FakeVideoTextModel(tokenizer, fingerprints, text_ids, torch.eye(len(rs)), sim, vtm)


def test_retrieval_frames_are_resized_whole_as_the_authors_evaluate(tmp_path):
    """A wide clip whose outer quarters are bright: the released test transform (Resize((224, 224)),
    video_mm/dataset/__init__.py) keeps them at the edges; a short-side resize + centre crop
    cuts them off (the option ``test_geometry="center_crop"``)."""
    wide = np.full((FRAMES, SIZE, 2 * SIZE, 3), 20, dtype=np.uint8)
    wide[:, :, : SIZE // 2] = 235
    wide[:, :, -SIZE // 2:] = 235
    write_video(tmp_path / "wide.mp4", wide)
    path = _write(tmp_path / "wide.json", [{"video": "wide.mp4", "caption": "a wide clip"}])
    std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1, 1)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1, 1)

    def edges(geometry=None) -> tuple[float, float]:
        kw = {} if geometry is None else {"test_geometry": geometry}
        clip = RetrievalSet(path, media_root=tmp_path, num_frames=4, img_size=SIZE, **kw)[0]["video"]
        pixels = (clip * std + mean) * 255  # (3, T, H, W) back to 0-255
        return float(pixels[..., :2].mean()), float(pixels[..., SIZE // 2 - 2: SIZE // 2 + 2].mean())

    left, middle = edges()
    assert left > 180 and middle < 60, (left, middle)  # whole frame squeezed: bright edge kept
    left, middle = edges("center_crop")
    assert left < 60 and middle < 60, (left, middle)  # the bright quarters are cropped away
    with pytest.raises(ValueError, match="test_geometry"):
        RetrievalSet(path, media_root=tmp_path, test_geometry="crop")


def test_evaluate_retrieval_with_a_stand_in_model(media, tokenizer, tmp_path):
    root, broken = media
    captions = [["a man is cooking", "a man is cooking in kitchen"], ["a dog runs"], ["red car drives fast"],
                ["a woman sings song"], ["a cat sleeps on sofa", "a bird flies"]]
    entries = [{"video": f"v{i}.mp4", "caption": c} for i, c in enumerate(captions)]
    rs = RetrievalSet(_write(tmp_path / "eval.json", entries), media_root=root, num_frames=4, img_size=SIZE,
                      max_text_len=10)
    assert rs.txt2vid == [[0], [0], [1], [2], [3], [4], [4]]
    # texts x videos; unit rows so that they are the cosine similarities themselves
    sim = torch.tensor([
        [1.0, 0.0, 0.0, 0.0, 0.0],  # t0 -> v0: rank 0
        [0.6, 0.8, 0.0, 0.0, 0.0],  # t1 -> v0: rank 1
        [0.0, 0.6, 0.8, 0.0, 0.0],  # t2 -> v1: rank 1
        [0.0, 0.0, 1.0, 0.0, 0.0],  # t3 -> v2: rank 0
        [0.0, 0.0, 0.0, 0.6, 0.8],  # t4 -> v3: rank 1
        [0.0, 0.0, 0.0, 0.0, 1.0],  # t5 -> v4: rank 0
        [0.8, 0.0, 0.0, 0.0, 0.6],  # t6 -> v4: rank 1
    ])
    truth = torch.zeros(7, 5)
    truth[torch.arange(7), torch.tensor([0, 0, 1, 2, 3, 4, 4])] = 1.0
    vtm = 10.0 * truth  # a perfect matching head
    model = _fake_model(rs, tokenizer, sim, vtm)
    model.train()
    out_file = tmp_path / "out" / "results.json"
    res = evaluate_retrieval(model, rs, batch_size=2, rerank_k=2, output_file=out_file)
    assert sorted(model.videos_encoded) == [0, 1, 2, 3, 4]  # every video once
    assert model.training  # mode restored
    vtc = res["vtc"]
    assert vtc == retrieval_metrics(sim, rs.txt2vid, rs.vid2txt)
    assert vtc["t2v_r1"] == pytest.approx(300 / 7) and vtc["t2v_r5"] == 100.0
    # v2t: v0 best text t0 (1.0) first; v1 -> t2 (0.6) behind t1 (0.8); v2 -> t3 first;
    # v3 -> t4 (0.6) first; v4 -> t5 (1.0) first
    assert vtc["v2t_r1"] == pytest.approx(80.0)
    # the VTM head fixes every query whose match is in its top 2 (all of them here)
    assert res["vtm"]["t2v_r1"] == 100.0 and res["vtm"]["v2t_r1"] == 100.0
    assert model.vtm_pairs == 2 * (7 + 5)  # k candidates per query, both directions
    assert res["num_videos"] == 5 and res["num_texts"] == 7 and res["bad_videos"] == []
    assert json.loads(out_file.read_text()) == json.loads(json.dumps(res))
    # top-1 re-ranking cannot fix anything: same R@1 as the similarities alone
    assert evaluate_retrieval(model, rs, batch_size=3, rerank_k=1)["vtm"]["t2v_r1"] == pytest.approx(300 / 7)
    assert "vtm" not in evaluate_retrieval(model, rs, batch_size=4)

    # an unreadable video: listed, its queries are misses, the rest is unchanged
    entries[1]["video"] = broken["not_video"]
    rs_bad = RetrievalSet(_write(tmp_path / "bad.json", entries), media_root=root, num_frames=4, img_size=SIZE,
                          max_text_len=10, max_bad_fraction=0.2)
    res = evaluate_retrieval(_fake_model(rs_bad, tokenizer, sim, vtm), rs_bad, batch_size=2, rerank_k=5)
    assert [b["index"] for b in res["bad_videos"]] == [1]
    # text t2 (of video 1) and video 1 itself are never found, whatever k
    assert res["vtc"]["t2v_r10"] == pytest.approx(600 / 7) and res["vtc"]["v2t_r10"] == pytest.approx(80.0)
    assert res["vtm"]["t2v_r1"] == pytest.approx(600 / 7) and res["vtm"]["t2v_r10"] == pytest.approx(600 / 7)
    assert res["vtm"]["v2t_r1"] == pytest.approx(80.0)
    strict = RetrievalSet(rs_bad.json_file, media_root=root, num_frames=4, img_size=SIZE, max_bad_fraction=0.0)
    with pytest.raises(BadDataError, match="1 of 5 evaluation videos are unreadable"):
        evaluate_retrieval(_fake_model(strict, tokenizer, sim, vtm), strict, batch_size=2)


# ---------------------------------------------------------------------------------------------
# video index
# ---------------------------------------------------------------------------------------------
class CountingEncoder:
    """``encode_fn`` that embeds a file by its name (``vN.mp4`` -> axis N) and records what it was asked."""

    def __init__(self, dim=8, fail=()):
        self.dim, self.fail, self.calls = dim, set(fail), []

    def __call__(self, paths):
        self.calls.append([os.path.basename(p) for p in paths])
        out = torch.zeros(len(paths), self.dim)
        for i, p in enumerate(paths):
            name = os.path.basename(p)
            if name in self.fail:
                raise VideoDecodeError(p, "cannot decode")
            out[i, int(name[1]) % self.dim] = 3.0
            out[i, -1] = os.path.getsize(p) % 7 / 100  # content changes show in the embedding
        return out

    @property
    def embedded(self):
        return sorted(n for c in self.calls for n in c)


def test_index_is_incremental_searchable_and_persistent(media, tmp_path):
    root, _ = media
    folder = tmp_path / "videos"
    (folder / "sub").mkdir(parents=True)
    for i in range(3):
        shutil.copy(root / f"v{i}.mp4", folder / ("sub" if i == 2 else "") / f"v{i}.mp4")
    (folder / "notes.txt").write_text("not a video")
    index_dir = tmp_path / "index"
    enc = CountingEncoder()
    report = VideoIndex(index_dir, model_id="m1").add_videos([folder], enc, batch_size=2)
    assert enc.embedded == ["v0.mp4", "v1.mp4", "v2.mp4"] and len(report.added) == 3 and report.embedded == 3
    assert [len(c) for c in enc.calls] == [2, 1]

    index = VideoIndex(index_dir, model_id="m1")  # reopened from disk
    assert len(index) == 3 and index.embed_dim == 8
    query = torch.zeros(8)
    query[1] = 1.0
    hits = index.search(query, k=2)
    assert os.path.basename(hits[0][0]) == "v1.mp4" and hits[0][1] > 0.99 and hits[1][1] < 0.1
    assert len(index.search(query, k=10)) == 3

    enc = CountingEncoder()
    report = index.add_videos([folder], enc)
    assert enc.calls == [] and len(report.unchanged) == 3  # nothing new: nothing embedded

    shutil.copy(root / "v3.mp4", folder / "v3.mp4")
    report = VideoIndex(index_dir, model_id="m1").add_videos([folder], enc)
    assert enc.embedded == ["v3.mp4"] and [os.path.basename(p) for p in report.added] == ["v3.mp4"]

    # a changed file (other content, later mtime) is re-embedded in place
    enc = CountingEncoder()
    shutil.copy(root / "v4.mp4", folder / "v0.mp4")
    st = os.stat(folder / "v0.mp4")
    os.utime(folder / "v0.mp4", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    index = VideoIndex(index_dir, model_id="m1")
    row = index.entries[str(folder / "v0.mp4")]["row"]
    before = index.embeddings[row].clone()
    report = index.add_videos([folder], enc)
    assert enc.embedded == ["v0.mp4"] and len(report.updated) == 1 and len(index) == 4
    assert index.entries[str(folder / "v0.mp4")]["row"] == row and not torch.equal(index.embeddings[row], before)

    # same size, new modification time: re-embedded too
    enc = CountingEncoder()
    st = os.stat(folder / "sub" / "v2.mp4")
    os.utime(folder / "sub" / "v2.mp4", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert index.add_videos([folder], enc).updated == [str(folder / "sub" / "v2.mp4")]
    assert enc.embedded == ["v2.mp4"]
    # a changed file that can no longer be read leaves the index (its old embedding is stale)
    (folder / "v3.mp4").write_bytes(b"garbage" * 10)
    report = index.add_videos([folder], CountingEncoder(fail={"v3.mp4"}))
    assert [os.path.basename(p) for p, _ in report.failed] == ["v3.mp4"] and str(folder / "v3.mp4") not in index
    assert len(index) == 3

    # deleted files: skipped by search, dropped by remove_missing
    os.unlink(folder / "v1.mp4")
    assert all(os.path.basename(p) != "v1.mp4" for p, _ in index.search(query, k=4))
    assert os.path.basename(index.search(query, k=1, skip_missing=False)[0][0]) == "v1.mp4"
    assert [os.path.basename(p) for p in index.remove_missing()] == ["v1.mp4"]
    reopened = VideoIndex(index_dir, create=False)
    assert len(reopened) == 2 and reopened.model_id == "m1"
    assert sorted(os.path.basename(p) for p in reopened.paths) == ["v0.mp4", "v2.mp4"]
    assert torch.allclose(reopened.embeddings.norm(dim=1), torch.ones(2))
    # only the current generation is kept on disk, no temporary files
    left = sorted(n for n in os.listdir(index_dir) if n != ".lock")
    assert len(left) == 2 and left[0].startswith("embeddings-") and left[1] == "index.json"


def test_index_refuses_another_model_and_reports_damage(media, tmp_path):
    root, broken = media
    index_dir = tmp_path / "index"
    enc = CountingEncoder(fail={"v2.mp4"})
    files = [root / "v0.mp4", root / "v2.mp4", root / "v3.mp4", root / "missing.mp4"]
    report = VideoIndex(index_dir, model_id="model-a").add_videos(files, enc, batch_size=4)
    assert sorted(os.path.basename(p) for p in report.added) == ["v0.mp4", "v3.mp4"]
    assert {os.path.basename(p): r for p, r in report.failed} == {"v2.mp4": "cannot decode",
                                                                 "missing.mp4": "file not found"}
    enc.calls.clear()
    VideoIndex(index_dir, model_id="model-a").add_videos(files, enc)
    assert enc.calls == []  # an unreadable file is not retried until it changes

    with pytest.raises(ModelMismatchError, match=f"{index_dir}.*model 'model-a', not 'model-b'"):
        VideoIndex(index_dir, model_id="model-b")
    with pytest.raises(ValueError, match=f"4 values but the video index in {index_dir} holds 8-d"):
        VideoIndex(index_dir).search(torch.ones(4))
    fresh = VideoIndex(index_dir, model_id="model-b", rebuild=True)
    assert len(fresh) == 0 and VideoIndex(index_dir).model_id == "model-b"
    with pytest.raises(VideoIndexError, match="is empty"):
        fresh.search(torch.ones(8))
    with pytest.raises(VideoIndexError, match="no model identity"):
        VideoIndex(tmp_path / "new").add_videos(files, enc)
    with pytest.raises(VideoIndexError, match=f"no video index in {tmp_path / 'absent'}"):
        VideoIndex(tmp_path / "absent", create=False)

    # an interrupted run keeps what was saved before the failure
    class Crash(CountingEncoder):
        def __call__(self, paths):
            if len(self.calls) == 2:
                raise RuntimeError("out of memory")
            return super().__call__(paths)

    crash_dir = tmp_path / "crash"
    with pytest.raises(RuntimeError, match="out of memory"):
        VideoIndex(crash_dir, model_id="m").add_videos([root / f"v{i}.mp4" for i in range(4)], Crash(), batch_size=1,
                                                       save_every=1)
    assert len(VideoIndex(crash_dir, model_id="m")) == 2

    # damage: the embeddings file gone, index.json unreadable
    emb = [n for n in os.listdir(crash_dir) if n.startswith("embeddings-")]
    os.unlink(crash_dir / emb[0])
    with pytest.raises(VideoIndexError, match=f"video index in {crash_dir} is damaged.*missing"):
        VideoIndex(crash_dir)
    (crash_dir / "index.json").write_text("{not json")
    with pytest.raises(VideoIndexError, match=f"{crash_dir}"):
        VideoIndex(crash_dir)


def test_video_encoder_fn_find_videos_and_model_identity(media, tmp_path):
    root, broken = media

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(()))

        def encode_video(self, videos, mask=None):
            assert videos.shape[1:] == (3, 4, SIZE, SIZE)
            return None, videos.mean(dim=(2, 3, 4)) * self.w

    fn = video_encoder_fn(Model(), num_frames=4, img_size=SIZE)
    out = fn([str(root / "v0.mp4"), str(root / "v1.mp4")])
    assert out.shape == (2, 3) and not torch.allclose(out[0], out[1])
    with pytest.raises(VideoDecodeError):
        fn([str(root / "v0.mp4"), broken["zero_byte"]])
    found = find_videos([root, root / "v0.mp4"])
    assert sum(os.path.basename(p) == "v0.mp4" for p in found) == 1 and not any(p.endswith(".png") for p in found)
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "weights.bin").write_bytes(b"abc")
    a = model_identity(model_dir, num_frames=8)
    assert a.startswith("model@") and a == model_identity(model_dir, num_frames=8)
    assert a != model_identity(model_dir, num_frames=16)
    (model_dir / "weights.bin").write_bytes(b"abd")
    assert a != model_identity(model_dir, num_frames=8)
