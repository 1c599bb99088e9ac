"""Video-LLM data: conversation tokenization and labels, the instruction dataset, batching, QA readers
and the open-ended / multiple-choice evaluation loops (with a stand-in model)."""

from __future__ import annotations

import json
import logging
import os

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")

from transformers import AutoTokenizer  # noqa: E402

from videomap.data import BadDataError, decode_frames  # noqa: E402
from videomap.data import media as media_mod  # noqa: E402
from videomap.data.media import load_image, load_video  # noqa: E402
from videomap.data.sampling import segment_indices  # noqa: E402
from videomap.data.transforms import center_crop, normalize, resize_short_side  # noqa: E402
from videomap.llm.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX, VIDEO_TOKEN_INDEX  # noqa: E402
from videomap.llm.conversation import (  # noqa: E402
    ConversationTooLongError,
    build_prompt,
    tokenize_conversation,
)
from videomap.llm.data import VideoInstructionDataset, collate_instructions  # noqa: E402
from videomap.llm.qa import (  # noqa: E402
    QAItem,
    contains_answer,
    evaluate_multiple_choice,
    evaluate_open_ended,
    exact_match,
    normalise_answer,
    read_activitynet_qa,
    read_msrvtt_qa,
    read_multiple_choice,
    read_qa,
    read_qa_pairs,
    read_tgif_qa,
)
from videomap.llm.tiny import build_word_tokenizer  # noqa: E402

WORDS = [
    "what happens in the video", "which way does the object move", "the object moves left",
    "the object moves right", "it rotates clockwise", "what colour is the bar", "red", "blue",
    "is it moving", "yes", "no", "describe the image", "a red square on a dark background",
    "hello world", "be brief", "left", "right", "and",
]
CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def _load(directory):
    return AutoTokenizer.from_pretrained(directory, local_files_only=True)


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory):
    """Three prompt formats: the tiny plain template (no closing token: eos is inserted), no template
    (Vicuna fallback, eos closes answers) and ChatML (<|im_end|> closes answers)."""
    from tokenizers import AddedToken

    root = tmp_path_factory.mktemp("tok")
    template = _load(build_word_tokenizer(WORDS, root / "template"))
    plain = _load(build_word_tokenizer(WORDS, root / "plain", chat_template=None))
    chatml = _load(build_word_tokenizer(WORDS, root / "chatml"))
    chatml.add_tokens([AddedToken(t, special=True, normalized=False) for t in ("<|im_start|>", "<|im_end|>")],
                      special_tokens=True)
    chatml.chat_template = CHATML
    assert plain.chat_template is None
    return {"template": template, "plain": plain, "chatml": chatml}


@pytest.fixture(scope="module")
def tok(tokenizers):
    return tokenizers["template"]


def _closing(tokenizer, name):
    return tokenizer.convert_tokens_to_ids("<|im_end|>") if name == "chatml" else tokenizer.eos_token_id


def _label_runs(labels):
    runs, current = [], []
    for value in labels.tolist():
        if value == IGNORE_INDEX:
            if current:
                runs.append(current)
            current = []
        else:
            current.append(value)
    return runs + ([current] if current else [])


CONV = [
    {"from": "human", "value": "<video>\nWhich way does the object move?"},
    {"from": "gpt", "value": "the object moves left"},
    {"from": "human", "value": "Is it moving?"},
    {"from": "gpt", "value": "yes"},
]


# ---------------------------------------------------------------------------------------------
# conversation
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["template", "plain", "chatml"])
def test_labels_are_exactly_the_answers_and_their_closing_token(tokenizers, name):
    tokenizer = tokenizers[name]
    ids, labels = tokenize_conversation(tokenizer, CONV)
    assert ids.dtype == labels.dtype == torch.long and ids.shape == labels.shape and ids.dim() == 1
    kept = labels != IGNORE_INDEX
    assert torch.equal(labels[kept], ids[kept])  # labels are the ids themselves where not ignored
    runs = _label_runs(labels)
    assert len(runs) == 2  # one run per answer, prompts in between are ignored
    closing = _closing(tokenizer, name)
    for run, answer in zip(runs, ["the object moves left", "yes"]):
        assert run[-1] == closing and closing not in run[:-1]
        assert tokenizer.decode(run[:-1]) == answer
    assert int((ids == VIDEO_TOKEN_INDEX).sum()) == 1
    if name == "plain":  # Vicuna v1: "<s>SYSTEM USER: ... ASSISTANT: answer</s>USER: ..."
        assert ids[0] == tokenizer.bos_token_id
        words = tokenizer.convert_ids_to_tokens([i for i in ids.tolist() if i >= 0])
        assert words.count("assistant") >= 2 and words.count("user") >= 2


@pytest.mark.parametrize("name", ["template", "plain", "chatml"])
def test_build_prompt_is_the_training_prefix_plus_generation_prompt(tokenizers, name):
    tokenizer = tokenizers[name]
    ids, labels = tokenize_conversation(tokenizer, CONV[:2])
    first_answer = int((labels != IGNORE_INDEX).nonzero()[0])
    prompt = build_prompt(tokenizer, "Which way does the object move?", "video")
    assert torch.equal(prompt, ids[:first_answer])
    tail = tokenizer.convert_ids_to_tokens(prompt[-3:].tolist())
    assert "assistant" in tail  # ends with the generation prompt, ready for the answer
    assert int((prompt == VIDEO_TOKEN_INDEX).sum()) == 1
    # the placeholder is not doubled when the question already has it; text-only has none
    assert torch.equal(build_prompt(tokenizer, "<video>\nWhich way does the object move?", "video"), prompt)
    assert not (build_prompt(tokenizer, "hello", None) < 0).any()
    image = build_prompt(tokenizer, "describe the image", "image")
    assert int((image == IMAGE_TOKEN_INDEX).sum()) == 1 and not (image == VIDEO_TOKEN_INDEX).any()


def test_placeholders_are_single_ids_and_text_between_is_tokenized(tok):
    conv = [{"from": "human", "value": "<image>describe the image<video>what happens in the video"},
            {"from": "gpt", "value": "red"}]
    ids, _ = tokenize_conversation(tok, conv)
    assert int((ids == IMAGE_TOKEN_INDEX).sum()) == 1 and int((ids == VIDEO_TOKEN_INDEX).sum()) == 1
    i, v = int((ids == IMAGE_TOKEN_INDEX).nonzero()), int((ids == VIDEO_TOKEN_INDEX).nonzero())
    assert tok.decode(ids[i + 1:v].tolist()) == "describe the image"
    assert tok.decode(ids[v + 1:v + 6].tolist()) == "what happens in the video"
    assert tok.unk_token_id not in ids.tolist()  # "<", "video", ">" never became word tokens


def test_slow_tokenizer_path_matches_offsets(tokenizers):
    class Slow:  # a tokenizer without offset mapping: boundaries come from tokenizing prefixes
        is_fast = False

        def __init__(self, inner):
            self._inner = inner

        def __getattr__(self, name):
            return getattr(self._inner, name)

        def __call__(self, text, **kwargs):
            assert not kwargs.pop("return_offsets_mapping", False)
            return self._inner(text, **kwargs)

    for name in ("template", "plain", "chatml"):
        fast = tokenize_conversation(tokenizers[name], CONV, system="be brief")
        slow = tokenize_conversation(Slow(tokenizers[name]), CONV, system="be brief")
        assert torch.equal(fast[0], slow[0]) and torch.equal(fast[1], slow[1])


def test_system_prompt_is_rendered_and_not_labelled(tokenizers):
    tokenizer = tokenizers["chatml"]
    with_system, labels = tokenize_conversation(tokenizer, CONV[:2], system="be brief")
    without, labels_without = tokenize_conversation(tokenizer, CONV[:2])
    assert len(with_system) > len(without)
    assert tokenizer.decode(with_system.tolist()[:6], skip_special_tokens=True).startswith("system be brief")
    assert _label_runs(labels) == _label_runs(labels_without)


@pytest.mark.parametrize("conv, match", [
    ([{"from": "system", "value": "x"}, {"from": "gpt", "value": "y"}], "unknown role 'system'"),
    ([{"from": "human", "value": "a"}, {"from": "bot", "value": "b"}], "unknown role 'bot'"),
    ([{"from": "gpt", "value": "a"}, {"from": "human", "value": "b"}], "expected a user turn"),
    ([{"from": "human", "value": "a"}, {"from": "human", "value": "b"}], "expected a assistant turn"),
    ([{"from": "human", "value": "<video> a"}], "no answer"),
    ([{"from": "human", "value": "a"}, {"from": "gpt", "value": "<video> b"}], "must not contain a placeholder"),
    ([{"from": "human", "value": "a"}, {"from": "gpt", "value": 3}], "string 'value'"),
    ([], "non-empty list"),
])
def test_bad_conversations_are_rejected_by_name(tok, conv, match):
    with pytest.raises(ValueError, match=match) as info:
        tokenize_conversation(tok, conv, source="train.json: entry 7")
    assert "train.json: entry 7" in str(info.value)


def test_user_assistant_roles_are_accepted(tok):
    a = tokenize_conversation(tok, CONV)
    b = tokenize_conversation(tok, [{"role": {"human": "user", "gpt": "assistant"}[t["from"]], "content": t["value"]}
                                    for t in CONV])
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_templates_that_break_labelling_raise(tok):
    counting = tok.__class__.from_pretrained(tok.name_or_path, local_files_only=True)
    counting.chat_template = ("{{ messages | length }} {% for m in messages %}{{ m['role'] }}: {{ m['content'] }} "
                              "{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}")
    with pytest.raises(ValueError, match="not prefix-stable"):
        tokenize_conversation(counting, CONV)
    glued = tok.__class__.from_pretrained(tok.name_or_path, local_files_only=True)
    glued.chat_template = ("{% for m in messages %}{{ m['role'] }}{{ m['content'] }} {% endfor %}"
                           "{% if add_generation_prompt %}assistant{% endif %}")
    with pytest.raises(ValueError, match="spans the boundary"):  # "assistantyes" is one (unknown) word
        tokenize_conversation(glued, [{"from": "human", "value": "a"}, {"from": "gpt", "value": "yes"}])


def test_max_length_cuts_at_turn_ends_and_never_the_placeholder(tok):
    ids, labels = tokenize_conversation(tok, CONV)
    first_end = _label_runs(labels)[0]
    end_of_first = int((labels == first_end[-1]).nonzero()[0]) + 1  # after the first answer's eos
    cut_ids, cut_labels = tokenize_conversation(tok, CONV, max_length=len(ids) - 1)
    assert torch.equal(cut_ids, ids[:end_of_first]) and torch.equal(cut_labels, labels[:end_of_first])
    # shorter than the first exchange: the answer is cut, the prompt and its placeholder stay
    prompt_len = int((labels != IGNORE_INDEX).nonzero()[0])
    part_ids, part_labels = tokenize_conversation(tok, CONV, max_length=prompt_len + 2)
    assert len(part_ids) == prompt_len + 2 and int((part_ids == VIDEO_TOKEN_INDEX).sum()) == 1
    assert int((part_labels != IGNORE_INDEX).sum()) == 2
    with pytest.raises(ConversationTooLongError, match="max_length=5"):
        tokenize_conversation(tok, CONV, max_length=5)
    # a placeholder in a later turn keeps that turn: cutting before it would orphan the video
    late = [CONV[2], CONV[3], {"from": "human", "value": "<video> what happens in the video"},
            {"from": "gpt", "value": "it rotates clockwise"}]
    late_ids, _ = tokenize_conversation(tok, late)
    kept, _ = tokenize_conversation(tok, late, max_length=len(late_ids) - 1)
    assert int((kept == VIDEO_TOKEN_INDEX).sum()) == 1 and len(kept) == len(late_ids) - 1


# ---------------------------------------------------------------------------------------------
# dataset and batching
# ---------------------------------------------------------------------------------------------
def _videos(synthetic_videos):
    train_list, _ = synthetic_videos()
    with open(train_list, encoding="utf-8") as fh:
        return [line.split(",")[0] for line in fh if line.strip()]


def _png(path, height=20, width=28, seed=0):
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return pixels


def _qa(question, answer, placeholder=None):
    value = f"{placeholder}\n{question}" if placeholder else question
    return [{"from": "human", "value": value}, {"from": "gpt", "value": answer}]


def _write(path, entries):
    path.write_text(json.dumps(entries), encoding="utf-8")
    return path


@pytest.fixture
def instruction_file(tmp_path, synthetic_videos):
    videos = _videos(synthetic_videos)
    root = os.path.dirname(videos[0])
    pixels = _png(os.path.join(tmp_path, "square.png"))
    entries = [
        {"id": "v0", "video": os.path.basename(videos[0]), "conversations": _qa("what happens", "the object moves left",
                                                                                  "<video>")},
        {"id": "i0", "image": os.path.join(tmp_path, "square.png"),
         "conversations": _qa("describe the image", "a red square on a dark background", "<image>")},
        {"id": "t0", "conversations": _qa("hello", "hello world")},
        {"id": "v1", "video": os.path.basename(videos[1]), "conversations": CONV},
    ]
    return _write(tmp_path / "train.json", entries), root, videos, pixels


def test_dataset_items_match_the_video_pipeline(tok, instruction_file):
    path, root, videos, pixels = instruction_file
    ds = VideoInstructionDataset(path, tok, media_root=root, num_frames=4, img_size=24, mode="test")
    assert len(ds) == 4 and ds.modality(0) == "video" and ds.modality(1) == "image" and ds.modality(2) is None
    item = ds[0]
    assert item["index"] == 0 and item["image"] is None and item["video"].shape == (3, 4, 24, 24)
    frames = decode_frames(videos[0], segment_indices(8, 4, train=False))  # (T, H, W, 3) uint8
    expected = normalize(center_crop(resize_short_side(frames.permute(3, 0, 1, 2), 24), 24))
    assert torch.equal(item["video"], expected)
    ids, labels = tokenize_conversation(tok, _qa("what happens", "the object moves left", "<video>"))
    assert torch.equal(item["input_ids"], ids) and torch.equal(item["labels"], labels)

    image = ds[1]
    assert image["video"] is None and image["image"].shape == (3, 24, 24) and image["image"].dtype == torch.float32
    clip = torch.from_numpy(pixels).permute(2, 0, 1).unsqueeze(1)
    assert torch.allclose(image["image"], normalize(center_crop(resize_short_side(clip, 24), 24))[:, 0])
    text = ds[2]
    assert text["video"] is None and text["image"] is None and int((text["input_ids"] < 0).sum()) == 0
    assert ds[3]["video"].shape == (3, 4, 24, 24)


def test_train_mode_is_deterministic_per_seed_epoch_and_index(tok, instruction_file):
    path, root, _, _ = instruction_file
    ds = VideoInstructionDataset(path, tok, media_root=root, num_frames=4, img_size=16, mode="train", seed=3)
    a, b = ds[0]["video"], ds[0]["video"]
    assert a.shape == (3, 4, 16, 16) and torch.equal(a, b)
    ds.set_epoch(1)
    assert ds.epoch == 1 and not torch.equal(ds[0]["video"], a)
    ds.set_epoch(0)
    assert torch.equal(ds[0]["video"], a)
    other = VideoInstructionDataset(path, tok, media_root=root, num_frames=4, img_size=16, mode="train", seed=4)
    assert not torch.equal(other[0]["video"], a)
    assert ds[1]["image"].shape == (3, 16, 16)


def test_image_reading_without_pillow_matches(tmp_path, monkeypatch):
    path = tmp_path / "img.png"
    _png(path, 18, 30, seed=1)
    with_pil = load_image(path, 16)
    monkeypatch.setattr(media_mod, "_PILImage", None)
    assert torch.equal(load_image(path, 16), with_pil)  # PyAV decodes the lossless PNG identically


def test_bad_video_is_replaced_and_reported(tok, tmp_path, synthetic_videos, caplog):
    videos = _videos(synthetic_videos)
    (tmp_path / "broken.mp4").write_text("not a video\n" * 10)
    entries = [{"id": f"s{i}", "video": videos[i], "conversations": _qa("what happens", "left", "<video>")}
               for i in range(10)]
    entries[2]["video"] = str(tmp_path / "broken.mp4")
    entries[5]["video"] = str(tmp_path / "missing.mp4")
    ds = VideoInstructionDataset(_write(tmp_path / "a.json", entries), tok, num_frames=4, img_size=16, mode="test",
                                 max_bad_fraction=0.2)
    with caplog.at_level(logging.WARNING, logger="videomap.data"):
        assert ds[2]["index"] == 3 and ds[5]["index"] == 6
        assert ds[2]["index"] == 3  # known bad: replaced again without a second warning
    bad = {s.index: s for s in ds.bad_samples()}
    assert set(bad) == {2, 5} and "file not found" in bad[5].reason
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2 and any("broken.mp4" in w for w in warnings) and any("missing.mp4" in w for w in warnings)
    assert "2 unreadable sample(s)" in ds.bad_sample_summary()
    entries[7]["video"] = str(tmp_path / "missing2.mp4")
    strict = VideoInstructionDataset(_write(tmp_path / "b.json", entries), tok, num_frames=4, img_size=16,
                                     mode="test", max_bad_fraction=0.2)
    strict[2], strict[5]
    with pytest.raises(BadDataError, match=r"3 of 10 samples are unusable"):
        strict[7]


def test_too_long_conversation_is_dropped_like_a_bad_file(tok, tmp_path):
    long_answer = " ".join(["the object moves left"] * 10)
    entries = [{"id": "long", "conversations": _qa("what happens in the video", long_answer)},
               {"id": "ok", "conversations": _qa("hello", "yes")}]
    ds = VideoInstructionDataset(_write(tmp_path / "c.json", entries), tok, max_length=8, max_bad_fraction=0.5)
    assert ds[0]["index"] == 1 and ds[1]["labels"].tolist()[-2:] == [tok.convert_tokens_to_ids("yes"), tok.eos_token_id]
    (bad,) = ds.bad_samples()
    assert bad.index == 0 and bad.reason.startswith("conversation too long") and "c.json" not in bad.reason


@pytest.mark.parametrize("entry, match", [
    ({"id": "x", "video": "a.mp4"}, "missing 'conversations'"),
    ({"id": "x", "video": "a.mp4", "conversations": _qa("what", "left")}, r"expected 1 <video> and 0 <image>.*found 0"),
    ({"id": "x", "conversations": _qa("what", "left", "<video>")}, "no media file"),
    ({"id": "x", "video": "a.mp4", "image": "b.png", "conversations": _qa("what", "left", "<video>")},
     "both 'video' and 'image'"),
    ({"id": "x", "image": "b.png", "conversations": _qa("what", "left", "<video>")}, "'image' file"),
    ({"id": "x", "video": "a.mp4", "conversations": _qa("<video> what", "left", "<video>")}, "found 2"),
    ({"id": "x", "video": ["a.mp4"], "conversations": _qa("what", "left", "<video>")}, "relative path string"),
    ({"id": "x", "conversations": [{"from": "robot", "value": "hi"}, {"from": "gpt", "value": "yes"}]},
     "unknown role 'robot'"),
    ("just text", "expected an object"),
])
def test_malformed_entries_fail_at_construction_naming_the_entry(tok, tmp_path, entry, match):
    good = {"id": "ok", "conversations": _qa("hello", "yes")}
    path = _write(tmp_path / "bad.json", [good, entry])
    with pytest.raises(ValueError, match=match) as info:
        VideoInstructionDataset(path, tok)
    assert "bad.json: entry 1" in str(info.value)


def test_jsonl_files_are_read(tok, tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(json.dumps({"id": i, "conversations": _qa("hello", "yes")}) for i in range(3)) + "\n")
    assert len(VideoInstructionDataset(path, tok)) == 3
    (tmp_path / "e.json").write_text('{"data": []}')
    with pytest.raises(ValueError, match="expected a JSON list"):
        VideoInstructionDataset(tmp_path / "e.json", tok)


def test_collate_pads_right_and_orders_media_row_major():
    def item(ids, video=None, image=None):
        ids = torch.tensor(ids)
        return {"input_ids": ids, "labels": torch.where(ids > 5, ids, torch.full_like(ids, IGNORE_INDEX)),
                "video": video, "image": image, "index": 0}

    v = [torch.full((3, 2, 4, 4), float(k)) for k in range(3)]
    im = torch.full((3, 4, 4), 7.0)
    items = [item([1, VIDEO_TOKEN_INDEX, 6, 7], video=v[0]), item([1, 2]),
             item([IMAGE_TOKEN_INDEX, 8, 9, 10, 11, 3], image=im),
             item([1, VIDEO_TOKEN_INDEX, VIDEO_TOKEN_INDEX, 9], video=torch.stack(v[1:]))]
    batch = collate_instructions(items, pad_token_id=0)
    assert set(batch) == {"input_ids", "attention_mask", "labels", "videos", "images"}
    assert batch["input_ids"].shape == (4, 6)
    assert batch["input_ids"][1].tolist() == [1, 2, 0, 0, 0, 0]
    assert batch["attention_mask"][1].tolist() == [1, 1, 0, 0, 0, 0]
    assert batch["labels"][0].tolist() == [IGNORE_INDEX, IGNORE_INDEX, 6, 7, IGNORE_INDEX, IGNORE_INDEX]
    assert batch["attention_mask"].sum().item() == 4 + 2 + 6 + 4
    assert batch["videos"].shape == (3, 3, 2, 4, 4)
    assert [float(x[0, 0, 0, 0]) for x in batch["videos"]] == [0.0, 1.0, 2.0]  # row-major placeholder order
    assert batch["images"].shape == (1, 3, 4, 4) and float(batch["images"].max()) == 7.0
    text_only = collate_instructions([item([1, 2])], pad_token_id=0)
    assert text_only["videos"] is None and text_only["images"] is None
    with pytest.raises(ValueError, match="1 video placeholder"):
        collate_instructions([item([1, VIDEO_TOKEN_INDEX])], pad_token_id=0)
    with pytest.raises(ValueError, match="pad_token_id"):
        collate_instructions(items, pad_token_id=None)


def test_dataset_batches_through_a_dataloader(tok, instruction_file):
    path, root, _, _ = instruction_file
    ds = VideoInstructionDataset(path, tok, media_root=root, num_frames=4, img_size=16, mode="train")
    loader = torch.utils.data.DataLoader(ds, batch_size=4, collate_fn=lambda b: collate_instructions(b, 0))
    batch = next(iter(loader))
    assert batch["videos"].shape == (2, 3, 4, 16, 16) and batch["images"].shape == (1, 3, 16, 16)
    assert int((batch["input_ids"] == VIDEO_TOKEN_INDEX).sum()) == 2
    assert ((batch["labels"] != IGNORE_INDEX) <= batch["attention_mask"].bool()).all()


# ---------------------------------------------------------------------------------------------
# QA: normalisation and readers
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("text, expected", [
    ("The Man.", "man"), ("  a   DOG  ", "dog"), ("two", "2"), ("It's red!", "its red"), ("t-shirt", "t shirt"),
    ("2.5 metres", "2.5 metres"), ("1,000", "1000"), ("an apple, the pear", "apple pear"), ("Ｒｅｄ", "red"),
])
def test_normalise_answer(text, expected):
    assert normalise_answer(text) == expected


def test_exact_and_lenient_match():
    assert exact_match("The cat.", "cat") and exact_match("Two", ["2", "pair"])
    assert not exact_match("a black cat", "cat")
    assert contains_answer("a black cat", "cat") and not contains_answer("category", "cat")
    assert normalise_answer("two", numbers=False) == "two"


def test_read_qa_pairs_by_id_and_position(tmp_path):
    q = [{"video_name": "vid1", "question_id": "v_vid1_0", "question": "what is it"},
         {"video_name": "vid2", "question_id": "v_vid2_0", "question": "is it red"}]
    a = [{"answer": "yes", "type": 3, "question_id": "v_vid2_0"},
         {"answer": "cat", "type": 5, "question_id": "v_vid1_0"}]
    _write(tmp_path / "test_q.json", q)
    _write(tmp_path / "test_a.json", a)
    items = read_qa_pairs(tmp_path / "test_q.json", tmp_path / "test_a.json")
    assert [(i.question_id, i.video, i.answer, i.meta["type"]) for i in items] == [
        ("v_vid1_0", "vid1", "cat", 5), ("v_vid2_0", "vid2", "yes", 3)]
    anet = read_activitynet_qa(tmp_path / "test_q.json", tmp_path / "test_a.json")
    assert [i.video for i in anet] == ["v_vid1", "v_vid2"]
    assert [i.video for i in read_qa("msvd", tmp_path / "test_q.json", tmp_path / "test_a.json")] == ["vid1", "vid2"]
    _write(tmp_path / "pos_a.json", [{"answer": "cat"}, {"answer": "yes"}])
    assert [i.answer for i in read_qa_pairs(tmp_path / "test_q.json", tmp_path / "pos_a.json")] == ["cat", "yes"]
    _write(tmp_path / "short_a.json", [{"answer": "cat", "question_id": "v_vid1_0"}])
    with pytest.raises(ValueError, match="'v_vid2_0' has no answer"):
        read_qa_pairs(tmp_path / "test_q.json", tmp_path / "short_a.json")
    with pytest.raises(ValueError, match="needs an answer file"):
        read_qa("activitynet", tmp_path / "test_q.json")


def test_read_msrvtt_qa_original_format(tmp_path):
    rows = [{"answer": "man", "category_id": 2, "id": 0, "question": "who is talking", "video_id": 7010},
            {"answer": "cook", "category_id": 2, "id": 1, "question": "what is a woman doing", "video_id": 7011}]
    items = read_msrvtt_qa(_write(tmp_path / "test_qa.json", rows))
    assert [(i.question_id, i.video, i.answer) for i in items] == [("0", "video7010", "man"),
                                                                     ("1", "video7011", "cook")]
    assert items[0].meta == {"category_id": 2}
    with pytest.raises(ValueError, match="entry 0: missing the question"):
        read_msrvtt_qa(_write(tmp_path / "bad.json", [{"id": 0, "video_id": 1, "answer": "x"}]))


def test_read_tgif_qa_tables(tmp_path):
    frame = tmp_path / "Test_frameqa_question.csv"
    frame.write_text("gif_name\tquestion\tanswer\ttype\tvid_id\tkey\tdescription\n"
                     "tumblr_a\twhat is the color of the shirt ?\tblack\t2\tFRAMEQA1\t10\ta man in a black shirt .\n"
                     "tumblr_b\thow many dogs are there ?\ttwo\t1\tFRAMEQA2\t11\ttwo dogs .\n")
    items = read_tgif_qa(frame)
    assert [(i.question_id, i.video, i.answer) for i in items] == [("FRAMEQA1", "tumblr_a", "black"),
                                                                     ("FRAMEQA2", "tumblr_b", "two")]
    assert items[0].meta["task"] == "frameqa" and items[0].meta["type"] == "2" and items[0].candidates is None
    action = tmp_path / "Test_action_question.csv"
    action.write_text("gif_name\tquestion\ta1\ta2\ta3\ta4\ta5\tanswer\tvid_id\tkey\n"
                      "tumblr_c\tWhat does the butterfly do 10 times ?\tstuff\ttalk\tfall\tnod\tflap wings\t4\t"
                      "ACTION4\t26\n")
    (mc,) = read_tgif_qa(action)
    assert mc.candidates == ["stuff", "talk", "fall", "nod", "flap wings"] and mc.answer == "flap wings"
    assert mc.answer_index == 4 and mc.meta["task"] == "action" and mc.question_id == "ACTION4"
    count = tmp_path / "Test_count_question.csv"
    count.write_text("gif_name\tquestion\tanswer\tvid_id\tkey\ntumblr_d\tHow many times does he nod ?\t5\tCOUNT2\t16\n")
    (c,) = read_qa("tgif", count)
    assert c.answer == "5" and exact_match("five", c.answer)


def test_read_multiple_choice_answer_forms(tmp_path):
    rows = [{"question_id": "q1", "video": "a.mp4", "question": "which way", "candidates": ["left", "right"],
             "answer": "right"},
            {"id": 2, "video_name": "b", "question": "which way", "options": ["left", "right", "up"], "answer": 2},
            {"qid": "q3", "video": "c", "question": "which way", "choices": ["left", "right"], "answer": "(A)"}]
    items = read_multiple_choice(_write(tmp_path / "mc.json", rows))
    assert [(i.question_id, i.answer, i.answer_index) for i in items] == [("q1", "right", 1), ("2", "up", 2),
                                                                          ("q3", "left", 0)]
    table = tmp_path / "mc.csv"
    table.write_text("qid,video,question,a0,a1,a2,answer\n7,v.mp4,what,cat,dog,cow,1\n")
    (row,) = read_qa("multiple_choice", table)
    assert row.candidates == ["cat", "dog", "cow"] and row.answer == "dog"
    for bad, match in [({"answer": "a horse"}, "none of the candidates"), ({"answer": 5}, "out of range"),
                       ({"candidates": ["only"]}, "at least two candidates")]:
        _write(tmp_path / "bad.json", [{**rows[0], **bad}])
        with pytest.raises(ValueError, match=match) as info:
            read_multiple_choice(tmp_path / "bad.json")
        assert "bad.json: entry 0" in str(info.value)


# ---------------------------------------------------------------------------------------------
# QA: evaluation loops with a stand-in model
# ---------------------------------------------------------------------------------------------
class FakeVideoLLM:
    """Implements the two methods the evaluation uses, per the model interface: ``generate`` returns
    new tokens only; ``answer_logprobs`` sums a per-token log-probability over the label tokens."""

    def __init__(self, tokenizer, answers, per_token=None):
        self.tokenizer = tokenizer
        self.answers = answers  # question text -> generated answer
        self.per_token = per_token or {}  # candidate text -> log-probability per label token
        self.asked: list[str] = []
        self.videos: list[torch.Tensor] = []

    def _check_media(self, input_ids, videos, images):
        assert int((input_ids == VIDEO_TOKEN_INDEX).sum()) == (0 if videos is None else len(videos))
        assert int((input_ids == IMAGE_TOKEN_INDEX).sum()) == (0 if images is None else len(images))
        if videos is not None:
            assert videos.dim() == 5 and videos.dtype == torch.float32
            self.videos.extend(videos)

    def generate(self, input_ids, attention_mask=None, videos=None, images=None, max_new_tokens=32, **kwargs):
        self._check_media(input_ids, videos, images)
        rows = []
        for ids, mask in zip(input_ids.tolist(), attention_mask.tolist()):
            prompt = self.tokenizer.decode([i for i, m in zip(ids, mask) if m and i >= 0])
            question = next(q for q in self.answers if q in prompt)
            self.asked.append(question)
            answer = self.tokenizer(self.answers[question], add_special_tokens=False)["input_ids"]
            rows.append(answer + [self.tokenizer.eos_token_id])
        width = max(len(r) for r in rows)
        return torch.tensor([r + [self.tokenizer.pad_token_id] * (width - len(r)) for r in rows])

    def answer_logprobs(self, input_ids, attention_mask, labels, videos=None, images=None):
        self._check_media(input_ids, videos, images)
        scores = []
        for row in labels.tolist():
            ids = [i for i in row if i != IGNORE_INDEX]
            assert ids[-1] == self.tokenizer.eos_token_id  # the candidate's closing token is scored too
            self.asked.append(self.tokenizer.decode(ids, skip_special_tokens=True))
            scores.append(self.per_token.get(self.asked[-1], -3.0) * len(ids))
        return torch.tensor(scores)


@pytest.fixture
def qa_videos(synthetic_videos):
    videos = _videos(synthetic_videos)
    return os.path.dirname(videos[0]), [os.path.splitext(os.path.basename(v))[0] for v in videos]


def test_evaluate_open_ended_scores_writes_and_resumes(tok, tmp_path, qa_videos):
    import shutil

    source, names = qa_videos
    root = tmp_path / "media"
    root.mkdir()
    for name in names[:3]:
        shutil.copy(os.path.join(source, name + ".mp4"), root)
    items = [QAItem("q0", names[0], "which way does the object move", "left"),
             QAItem("q1", names[1], "what colour is the bar", "red"),
             QAItem("q2", names[2], "is it moving", "yes"),
             QAItem("q3", "late_video", "what happens in the video", "left")]
    answers = {"which way does the object move": "left", "what colour is the bar": "blue", "is it moving": "yes",
               "what happens in the video": "left"}
    model = FakeVideoLLM(tok, answers)
    out = tmp_path / "preds" / "msrvtt.jsonl"
    result = evaluate_open_ended(model, items, root, num_frames=4, img_size=16, tokenizer=tok, batch_size=2,
                                 output_file=out)
    assert result["count"] == 4 and result["failed"] == 1 and result["correct"] == 2
    assert result["accuracy"] == pytest.approx(0.5) and result["contains_accuracy"] == pytest.approx(0.5)
    assert sorted(model.asked) == sorted(list(answers)[:3])  # the missing video never reached the model
    expected = load_video(root / (names[0] + ".mp4"), 4, 16, "test")
    assert torch.equal(model.videos[0], expected)  # extension resolved, test-mode pipeline
    records = {r["question_id"]: r for r in map(json.loads, out.read_text().splitlines())}
    assert records["q1"]["pred"] == "blue" and records["q1"]["correct"] is False
    assert "file not found" in records["q3"]["error"]

    # resume: q0 and q1 were answered (q1's wrong answer stays), q3 failed (retried now that its video
    # exists), and a crash left half a line for q2
    shutil.copy(os.path.join(source, names[3] + ".mp4"), root / "late_video.mp4")
    kept = [line for line in out.read_text().splitlines() if json.loads(line)["question_id"] in ("q0", "q1", "q3")]
    out.write_text("\n".join(kept) + '\n{"question_id": "q2", "pr')
    model2 = FakeVideoLLM(tok, {**answers, "what colour is the bar": "red"})
    resumed = evaluate_open_ended(model2, items, root, num_frames=4, img_size=16, tokenizer=tok, output_file=out)
    assert sorted(model2.asked) == ["is it moving", "what happens in the video"]
    assert resumed == {"accuracy": 0.75, "count": 4, "correct": 3, "contains_accuracy": 0.75, "failed": 0}
    text = out.read_text()
    assert text.endswith("\n") and [json.loads(line)["question_id"] for line in text.splitlines()] == [
        "q0", "q1", "q3", "q2", "q3"]
    # a predictions file from another annotation is refused rather than silently mixed in
    with pytest.raises(ValueError, match="belongs to another run"):
        evaluate_open_ended(model2, [QAItem("q0", names[0], "which way does the object move", "right")], root,
                            num_frames=4, img_size=16, tokenizer=tok, output_file=out)


def test_evaluate_multiple_choice_by_loglikelihood(tok, tmp_path, qa_videos):
    root, names = qa_videos
    long, short = "the object moves left", "right"
    items = [QAItem("m0", names[0], "which way does the object move", long, [short, long]),
             QAItem("m1", names[1], "what colour is the bar", "red", ["blue", "red"])]
    # per token: the long candidate is likelier (-1.5 vs -3) but its 5 label tokens sum lower (-7.5 vs -6)
    model = FakeVideoLLM(tok, {}, per_token={long: -1.5, "red": -1.0})
    out = tmp_path / "mc.jsonl"
    plain = evaluate_multiple_choice(model, items, root, num_frames=4, img_size=16, tokenizer=tok, output_file=out)
    assert plain == {"accuracy": 0.5, "count": 2, "correct": 1, "failed": 0}
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert records[0]["pred"] == short and records[0]["scores"] == [-6.0, -7.5] and records[1]["correct"] is True
    assert len(model.videos) == 4  # the clip goes with every candidate row
    normalised = evaluate_multiple_choice(model, items, root, num_frames=4, img_size=16, tokenizer=tok,
                                          length_normalize=True)
    assert normalised["accuracy"] == 1.0
    model.asked.clear()
    again = evaluate_multiple_choice(model, items, root, num_frames=4, img_size=16, tokenizer=tok, output_file=out)
    assert again == plain and model.asked == []  # everything came from the predictions file
    with pytest.raises(ValueError, match="not a multiple-choice item"):
        evaluate_multiple_choice(model, [QAItem("x", names[0], "q", "a")], root, tokenizer=tok)


def test_evaluate_open_ended_sends_images_as_images(tok, tmp_path):
    _png(tmp_path / "square.png")
    seen = {}

    class ImageModel(FakeVideoLLM):
        def generate(self, input_ids, attention_mask=None, videos=None, images=None, **kwargs):
            seen["videos"], seen["images"] = videos, images
            return super().generate(input_ids, attention_mask, videos, images, **kwargs)

    model = ImageModel(tok, {"describe the image": "a red square on a dark background"})
    model.tokenizer = tok  # evaluate falls back to model.tokenizer
    result = evaluate_open_ended(model, [QAItem("i0", "square.png", "describe the image", "red square")], tmp_path,
                                 img_size=16)
    assert seen["videos"] is None and seen["images"].shape == (1, 3, 16, 16)
    assert result["accuracy"] == 0.0 and result["contains_accuracy"] == 1.0
