"""VideoLLM, its vision towers, projector and transformers registration, on tiny local models.

Every language model here is a random 2-layer Llama with a word-level tokenizer trained on this
file's own sentences (``videomap.llm.tiny``); encoders are 4-block hybrids of width 32 on 4 frames
of 32x32 (2x2 patches), so one placeholder stands for 4 * 2 * 2 = 16 video tokens.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from videomap.llm import (
    IGNORE_INDEX,
    IMAGE_TOKEN_INDEX,
    VIDEO_TOKEN_INDEX,
    VideoLLM,
    VideoLLMConfig,
    VisionTower,
    build_projector,
)
from videomap.llm.tiny import build_tiny_causal_lm, build_word_tokenizer
from videomap.models import create_model

TEXTS = [
    "user : <video> what happens in the video ? assistant : the red ball moves to the left .",
    "user : <image> describe the image . assistant : a blue square on a white background .",
    "user : is the object moving up or down ? assistant : it moves down slowly .",
]
TINY = dict(depth=4, embed_dim=32, attn_every=2)
CLIP = dict(num_frames=4, img_size=32)


@pytest.fixture(scope="module")
def lm_dir(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("tiny_lm")
    tok = build_word_tokenizer(TEXTS, root / "tokenizer")
    return build_tiny_causal_lm(root / "lm", tok)


def make_config(lm_dir: str, **kw) -> VideoLLMConfig:
    return VideoLLMConfig(**{"language_model": lm_dir, "video_encoder": "videomap_tiny", "video_overrides": TINY,
                             **CLIP, **kw})


@pytest.fixture
def model(lm_dir) -> VideoLLM:
    torch.manual_seed(0)
    return VideoLLM.from_config(make_config(lm_dir))


def words(model: VideoLLM, text: str) -> list[int]:
    """Token ids of ``text`` with ``<video>`` / ``<image>`` as their placeholder ids."""
    out: list[int] = []
    for w in text.split():
        if w == "<video>":
            out.append(VIDEO_TOKEN_INDEX)
        elif w == "<image>":
            out.append(IMAGE_TOKEN_INDEX)
        else:
            out += model.tokenizer(w, add_special_tokens=False).input_ids
    return out


def sample(model: VideoLLM, prompt: str, answer: str) -> tuple[list[int], list[int]]:
    p, a = words(model, prompt), words(model, answer) + [model.tokenizer.eos_token_id]
    return p + a, [IGNORE_INDEX] * len(p) + a


def right_pad(rows: list[list[int]], value: int, length: int | None = None) -> torch.Tensor:
    length = length or max(map(len, rows))
    return torch.tensor([r + [value] * (length - len(r)) for r in rows])


def batch_of(model: VideoLLM, samples: list[tuple[list[int], list[int]]], length: int | None = None) -> dict:
    pad = model.tokenizer.pad_token_id
    ids = right_pad([s[0] for s in samples], pad, length)
    mask = right_pad([[1] * len(s[0]) for s in samples], 0, length)
    labels = right_pad([s[1] for s in samples], IGNORE_INDEX, length)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def manual_embeds(model: VideoLLM, ids: list[int], videos=None, images=None) -> torch.Tensor:
    """The expanded sequence built by hand: text embeddings with each placeholder's tokens spliced in."""
    emb = model.llm.get_input_embeddings()
    vids = iter(model.encode_videos(videos)) if videos is not None else iter(())
    imgs = iter(model.encode_images(images)) if images is not None else iter(())
    parts = []
    for i in ids:
        if i == VIDEO_TOKEN_INDEX:
            parts.append(next(vids))
        elif i == IMAGE_TOKEN_INDEX:
            parts.append(next(imgs))
        else:
            parts.append(emb(torch.tensor([i])))
    return torch.cat(parts)[None]


def manual_labels(model: VideoLLM, ids: list[int], labels: list[int], k_video: int, k_image: int) -> torch.Tensor:
    out = []
    for i, lab in zip(ids, labels):
        k = k_video if i == VIDEO_TOKEN_INDEX else k_image if i == IMAGE_TOKEN_INDEX else 0
        out += [IGNORE_INDEX] * k if k else [lab]
    return torch.tensor(out)[None]


def answer_ce(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Summed next-token cross-entropy over labelled positions, and their count."""
    lg, tg = logits[:, :-1].reshape(-1, logits.shape[-1]).float(), labels[:, 1:].reshape(-1)
    keep = tg != IGNORE_INDEX
    return F.cross_entropy(lg[keep], tg[keep], reduction="sum"), int(keep.sum())


# ---------------------------------------------------------------------------------------- config
def test_config_errors_name_the_argument(lm_dir):
    with pytest.raises(ValueError, match=r"video_encoder: unknown encoder 'nope'; choices: .*videomap_middle"):
        make_config(lm_dir, video_encoder="nope")
    with pytest.raises(ValueError, match=r"image_encoder: unknown encoder 'x'"):
        make_config(lm_dir, image_encoder="x")
    with pytest.raises(ValueError, match=r"llm_dtype: expected one of float32, bfloat16, float16"):
        make_config(lm_dir, llm_dtype="fp8")
    with pytest.raises(ValueError, match=r"projector: expected one of mlp2x_gelu, linear"):
        make_config(lm_dir, projector="qformer")
    with pytest.raises(ValueError, match=r"spatial_pool: expected an integer >= 1, got 0"):
        make_config(lm_dir, spatial_pool=0)
    with pytest.raises(ValueError, match=r"unknown VideoLLMConfig key\(s\) frames; valid: language_model, "):
        VideoLLMConfig.from_dict({"language_model": lm_dir, "frames": 8})
    cfg = make_config(lm_dir)
    assert VideoLLMConfig.from_dict(cfg.to_dict()) == cfg


def test_projector_choices():
    x = torch.randn(3, 5, 8)
    mlp = build_projector("mlp2x_gelu", 8, 16)
    assert [type(m).__name__ for m in mlp] == ["Linear", "GELU", "Linear"]
    assert mlp(x).shape == (3, 5, 16)
    assert isinstance(build_projector("linear", 8, 16), torch.nn.Linear)
    assert len(build_projector("mlp3x_gelu", 8, 16)) == 5
    with pytest.raises(ValueError, match="projector: expected one of mlp2x_gelu, linear"):
        build_projector("mlp0x_gelu", 8, 16)


# ---------------------------------------------------------------------------------------- vision
@pytest.fixture(scope="module")
def backbone():
    torch.manual_seed(0)
    return create_model("videomap_tiny", num_classes=0, **CLIP, **TINY).eval()


@pytest.mark.parametrize("kw, k_video, k_image", [
    ({}, 16, 4),
    ({"spatial_pool": 2}, 4, 1),
    ({"temporal_pool": 2}, 8, 4),
    ({"temporal_pool": 3}, 8, 4),          # 4 frames in windows of 3: the last window holds 1 (ceil)
    ({"use_cls": True, "spatial_pool": 2, "temporal_pool": 4}, 2, 2),
])
def test_token_counts_and_shapes(lm_dir, kw, k_video, k_image):
    model = VideoLLM.from_config(make_config(lm_dir, **kw))
    assert (model.visual_tokens("video"), model.visual_tokens("image")) == (k_video, k_image)
    assert model.encode_videos(torch.randn(2, 3, 4, 32, 32)).shape == (2, k_video, 64)
    assert model.encode_images(torch.randn(3, 3, 32, 32)).shape == (3, k_image, 64)
    with pytest.raises(ValueError, match="modality: expected 'video' or 'image'"):
        model.visual_tokens("audio")


def test_pooling_averages_the_token_grid(backbone):
    video = torch.randn(2, 3, 4, 32, 32)
    full = VisionTower(backbone).encode_video(video).reshape(2, 4, 2, 2, 32)  # (N, t, h, w, d)
    pooled = VisionTower(backbone, spatial_pool=2, temporal_pool=3, use_cls=True).encode_video(video)
    expected = torch.stack([full[:, :3].mean((1, 2, 3)), full[:, 3:].mean((1, 2, 3))], dim=1)
    torch.testing.assert_close(pooled[:, 1:], expected)
    torch.testing.assert_close(pooled[:, 0], backbone.forward_features(video)[:, 0])


@pytest.mark.parametrize("name, overrides", [
    ("videomap_tiny", TINY),                                   # ends with an attention block
    ("videomap_tiny", dict(depth=3, embed_dim=32, attn_every=2)),  # ends with a Mamba block
    ("videomap_tiny", dict(TINY, attn_wiring="branch")),
    ("videomamba_tiny", dict(depth=2, embed_dim=32)),
    ("vit_tiny", dict(depth=2, embed_dim=32, num_heads=2)),
])
def test_feature_layer_is_the_stream_a_deeper_block_reads(name, overrides):
    torch.manual_seed(0)
    net = create_model(name, num_classes=0, **CLIP, **overrides).eval()
    video = torch.randn(1, 3, 4, 32, 32)
    with torch.no_grad():
        final, streams = net.forward_intermediates(video)
        assert len(streams) == len(net.block_names())
        torch.testing.assert_close(final, net.forward_features(video))
        torch.testing.assert_close(net.final_norm(streams[-1]), final)
        for k in (0, len(streams) - 1):
            early = net.forward_intermediates(video, [k], stop_early=True, intermediates_only=True)
            torch.testing.assert_close(early[0], streams[k])
            normed = net.forward_intermediates(video, [k], norm=True, intermediates_only=True)
            torch.testing.assert_close(normed[0], net.final_norm(streams[k]))
        last = VisionTower(net, feature_layer=-1).encode_video(video)
        torch.testing.assert_close(last, net.forward_features(video)[:, 1:])
        # the input of block k+1, caught by a hook during the backbone's own forward pass
        names = net.block_names()
        modules = dict(net.named_modules())
        for k in range(len(names) - 1):
            seen = {}
            nxt = modules[names[k + 1]]
            handle = nxt.register_forward_pre_hook(lambda m, args, seen=seen: seen.update(args=args))
            net.forward_features(video)
            handle.remove()
            args = seen["args"]
            if names[k + 1].startswith("layers.") and args[1] is not None:
                stream = args[1] + args[0]  # a Mamba block reads residual + incoming hidden
            elif overrides.get("attn_wiring") == "branch" and names[k + 1].startswith("attn"):
                continue  # a branch-wired attention block sees the Mamba branch only, not the stream
            else:
                stream = args[0]
            got = VisionTower(net, feature_layer=k).encode_video(video)
            torch.testing.assert_close(got, stream[:, 1:].to(got.dtype))
            assert not torch.allclose(got, last)
    with pytest.raises(ValueError, match=rf"feature_layer: expected an index in \[-{len(names)}, {len(names)}\)"):
        VisionTower(net, feature_layer=len(names))


def test_images_through_the_video_encoder_at_one_frame(backbone):
    images = torch.randn(2, 3, 32, 32)
    tower = VisionTower(backbone)
    with torch.no_grad():
        expected = backbone.forward_features(images[:, :, None])[:, 1:]
    torch.testing.assert_close(tower.encode_image(images), expected)
    # tubelets of 2 frames: the image is repeated to fill one tubelet
    tube = create_model("videomap_tiny", num_classes=0, tubelet_size=2, **CLIP, **TINY).eval()
    assert VisionTower(tube).encode_image(images).shape == (2, 4, 32)
    assert VisionTower(tube).num_tokens(1, 32) == 4 and VisionTower(tube).num_tokens(4, 32) == 8


def test_pixel_shape_errors(model):
    with pytest.raises(ValueError, match=r"videos: expected a float tensor of shape \(N, C, T, H, W\), "
                                         r"e.g. \(N, 3, 4, 32, 32\), got torch.float32 \(3, 4, 32, 32\)"):
        model.encode_videos(torch.randn(3, 4, 32, 32))
    with pytest.raises(ValueError, match=r"images: expected a float tensor of shape \(N, C, H, W\)"):
        model.encode_images(torch.randn(1, 3, 1, 32, 32))
    with pytest.raises(ValueError, match=r"got torch.float32 \(1, 4, 4, 32, 32\)"):
        model.encode_videos(torch.randn(1, 4, 4, 32, 32))
    with pytest.raises(ValueError, match=r"got torch.uint8 \(1, 3, 4, 32, 32\)"):
        model.encode_videos(torch.zeros(1, 3, 4, 32, 32, dtype=torch.uint8))


def test_frozen_tower_stays_in_eval_mode(model):
    model.train()
    assert model.projector.training and model.llm.training
    assert not model.video_tower.training and not model.video_tower.backbone.training
    assert not any(p.requires_grad for p in model.video_tower.parameters())
    assert model.encode_videos(torch.randn(1, 3, 4, 32, 32)).requires_grad  # through the projector only


# ---------------------------------------------------------------------------------------- forward / loss
def test_loss_is_the_mean_over_answer_tokens(model):
    torch.manual_seed(1)
    video = torch.randn(1, 3, 4, 32, 32)
    ids, labels = sample(model, "user : <video> what happens in the video ? assistant :", "the red ball moves left")
    batch = batch_of(model, [(ids, labels)])
    out = model(**batch, videos=video)

    embeds = manual_embeds(model, ids, videos=video)
    full_labels = manual_labels(model, ids, labels, 16, 4)
    assert embeds.shape[1] == len(ids) - 1 + 16
    logits = model.llm(inputs_embeds=embeds).logits
    torch.testing.assert_close(out.logits, logits)
    total, n = answer_ce(logits, full_labels)
    assert n == 5 + 1  # five answer words and the eos
    torch.testing.assert_close(out.loss, total / n)
    # the prompt does not count: a mean over every position is another number
    everything = F.cross_entropy(logits[0, :-1], torch.cat([full_labels[0, 1:-1].clamp(min=0), full_labels[0, -1:]]))
    assert abs(everything.item() - out.loss.item()) > 1e-3

    # labels only matter where they mark answers
    relabelled = dict(batch, labels=batch["labels"].clone())
    relabelled["labels"][0, 3] = IGNORE_INDEX  # a prompt position: already ignored
    torch.testing.assert_close(model(**relabelled, videos=video).loss, out.loss)
    changed = dict(batch, labels=batch["labels"].clone())
    changed["labels"][0, -2] = words(model, "blue")[0]
    assert abs(model(**changed, videos=video).loss.item() - out.loss.item()) > 1e-4
    # extra right padding changes nothing
    padded = batch_of(model, [(ids, labels)], length=len(ids) + 5)
    torch.testing.assert_close(model(**padded, videos=video).loss, out.loss)


def test_expanded_labels_ignore_visual_tokens_and_padding(model):
    long = sample(model, "user : <video> what happens in the video ? assistant :", "the red ball moves to the left")
    short = sample(model, "user : <video> what happens ? assistant :", "it moves down")
    batch = batch_of(model, [short, long], length=len(long[0]) + 3)  # more padding than needed
    embeds, mask, lab = model.prepare_inputs_embeds(**batch, videos=torch.randn(2, 3, 4, 32, 32))
    k = model.visual_tokens("video")
    n_short, n_long = len(short[0]) - 1 + k, len(long[0]) - 1 + k
    assert embeds.shape == (2, n_long, 64)  # re-padded to the longest expanded row
    assert mask.sum(1).tolist() == [n_short, n_long] and bool(mask[0, :n_short].all())
    assert bool((lab[0, n_short:] == IGNORE_INDEX).all()) and bool((embeds[0, n_short:] == 0).all())
    ids, labels = short
    pos = ids.index(VIDEO_TOKEN_INDEX)
    assert bool((lab[0, pos: pos + k] == IGNORE_INDEX).all())
    assert lab[0][lab[0] != IGNORE_INDEX].tolist() == [t for t in labels if t != IGNORE_INDEX]
    # generation pads on the left instead
    _, left_mask, _ = model.prepare_inputs_embeds(batch["input_ids"], batch["attention_mask"],
                                                  videos=torch.randn(2, 3, 4, 32, 32), padding_side="left")
    assert bool(left_mask[0, n_long - n_short:].all()) and not bool(left_mask[0, : n_long - n_short].any())


def test_mixed_batch_of_video_image_and_text(model):
    torch.manual_seed(2)
    videos, images = torch.randn(1, 3, 4, 32, 32), torch.randn(1, 3, 32, 32)
    samples = [
        sample(model, "user : <video> what happens in the video ? assistant :", "the red ball moves to the left ."),
        sample(model, "user : <image> describe the image . assistant :", "a blue square"),
        sample(model, "user : is the object moving up or down ? assistant :", "it moves down slowly ."),
    ]
    out = model(**batch_of(model, samples), videos=videos, images=images)
    total, count = torch.zeros(()), 0
    for row, ((ids, labels), kw) in enumerate(zip(samples, [dict(videos=videos), dict(images=images), {}])):
        embeds = manual_embeds(model, ids, **kw)
        logits = model.llm(inputs_embeds=embeds).logits
        n = embeds.shape[1]
        torch.testing.assert_close(out.logits[row, :n], logits[0], atol=1e-5, rtol=1e-4)
        s, c = answer_ce(logits, manual_labels(model, ids, labels, 16, 4))
        total, count = total + s, count + c
    torch.testing.assert_close(out.loss, total / count, atol=1e-5, rtol=1e-4)


def test_placeholder_and_media_counts_must_match(model):
    ids, labels = sample(model, "user : <video> what happens ? assistant :", "it moves")
    batch = batch_of(model, [(ids, labels)])
    with pytest.raises(ValueError, match=r"videos: the prompts hold 1 <video> placeholder\(s\) but 2 videos"):
        model(**batch, videos=torch.randn(2, 3, 4, 32, 32))
    with pytest.raises(ValueError, match=r"videos: the prompts hold 1 <video> placeholder\(s\) but 0 videos"):
        model(**batch)
    with pytest.raises(ValueError, match=r"images: the prompts hold 0 <image> placeholder\(s\) but 1 images"):
        model(**batch, videos=torch.randn(1, 3, 4, 32, 32), images=torch.randn(1, 3, 32, 32))
    bad = dict(batch, input_ids=batch["input_ids"].clone())
    bad["input_ids"][0, 0] = -7
    with pytest.raises(ValueError, match=r"input_ids: negative id -7"):
        model(**bad, videos=torch.randn(1, 3, 4, 32, 32))
    with pytest.raises(ValueError, match=rf"labels: expected shape \(1, {len(ids)}\) \(that of input_ids\)"):
        model(**dict(batch, labels=batch["labels"][:, :-1]), videos=torch.randn(1, 3, 4, 32, 32))


# ---------------------------------------------------------------------------------------- generation / scoring
def greedy_by_hand(model: VideoLLM, ids: list[int], steps: int, **media) -> list[int]:
    embeds = manual_embeds(model, ids, **media)
    out = []
    for _ in range(steps):
        nxt = int(model.llm(inputs_embeds=embeds).logits[0, -1].argmax())
        out.append(nxt)
        embeds = torch.cat([embeds, model.llm.get_input_embeddings()(torch.tensor([[nxt]]))], dim=1)
    return out


def test_generate_returns_new_tokens_and_batches_like_single_prompts(model):
    torch.manual_seed(3)
    videos = torch.randn(2, 3, 4, 32, 32)
    p1 = words(model, "user : <video> what happens in the video ? assistant :")
    p2 = words(model, "user : <video> what happens ? assistant :")
    kw = dict(max_new_tokens=6, min_new_tokens=6)  # no early eos: every row has 6 tokens
    with torch.no_grad():
        alone1 = model.generate(torch.tensor([p1]), videos=videos[:1], **kw)
        alone2 = model.generate(torch.tensor([p2]), videos=videos[1:], **kw)
        assert alone1.shape == (1, 6)
        assert alone1[0].tolist() == greedy_by_hand(model, p1, 6, videos=videos[:1])
        pad = model.tokenizer.pad_token_id
        both = model.generate(right_pad([p1, p2], pad), attention_mask=right_pad([[1] * len(p1), [1] * len(p2)], 0),
                              videos=videos, **kw)
    assert both.shape == (2, 6)
    assert both[0].tolist() == alone1[0].tolist() and both[1].tolist() == alone2[0].tolist()


def test_generate_image_and_text_prompts(model):
    image = torch.randn(1, 3, 32, 32)
    prompt = words(model, "user : <image> describe the image . assistant :")
    with torch.no_grad():
        got = model.generate(torch.tensor([prompt]), images=image, max_new_tokens=4, min_new_tokens=4)
        assert got[0].tolist() == greedy_by_hand(model, prompt, 4, images=image)
        text = words(model, "user : is the object moving ? assistant :")
        assert model.generate(torch.tensor([text]), max_new_tokens=3, min_new_tokens=3)[0].tolist() == \
            greedy_by_hand(model, text, 3)


def test_answer_logprobs_sums_log_softmax_of_the_answer(model):
    videos = torch.randn(2, 3, 4, 32, 32)
    samples = [sample(model, "user : <video> what happens ? assistant :", "the ball moves left"),
               sample(model, "user : <video> what happens ? assistant :", "it moves down slowly")]
    batch = batch_of(model, samples)
    with torch.no_grad():
        scores = model.answer_logprobs(**batch, videos=videos)
        assert scores.shape == (2,)
        for b, (ids, labels) in enumerate(samples):
            logits = model.llm(inputs_embeds=manual_embeds(model, ids, videos=videos[b: b + 1])).logits[0]
            lab = manual_labels(model, ids, labels, 16, 4)[0]
            logp = torch.log_softmax(logits, -1)
            expected = sum(float(logp[i - 1, t]) for i, t in enumerate(lab.tolist()) if t != IGNORE_INDEX)
            assert abs(float(scores[b]) - expected) < 1e-4
            one = batch_of(model, [(ids, labels)])
            loss = model(**one, videos=videos[b: b + 1]).loss
            n = sum(t != IGNORE_INDEX for t in labels)
            assert abs(float(scores[b]) + float(loss) * n) < 1e-3


# ---------------------------------------------------------------------------------------- training stages
def trainable(model: VideoLLM) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


def test_set_trainable_stages(model):
    projector = {f"projector.{n}" for n, _ in model.projector.named_parameters()}
    llm = {f"llm.{n}" for n, _ in model.llm.named_parameters()}
    assert model.set_trainable("align")["trainable"] == sum(p.numel() for p in model.projector.parameters())
    assert trainable(model) == projector
    # a backward pass in stage 1 reaches the projector and nothing else
    ids, labels = sample(model, "user : <video> what happens ? assistant :", "it moves")
    model.train()
    model(**batch_of(model, [(ids, labels)]), videos=torch.randn(1, 3, 4, 32, 32)).loss.backward()
    assert all(p.grad is not None for p in model.projector.parameters())
    assert all(p.grad is None for p in model.llm.parameters())
    assert all(p.grad is None for p in model.video_tower.parameters())

    # a batch without media still reaches the projector (zero gradients), as DDP needs
    model.zero_grad(set_to_none=True)
    text = sample(model, "user : is the object moving ? assistant :", "it moves")
    model(**batch_of(model, [text])).loss.backward()
    assert all(p.grad is not None and not p.grad.any() for p in model.projector.parameters())

    model.set_trainable("instruct")
    assert trainable(model) == projector | llm
    assert not model.video_tower.training

    model.set_trainable("instruct", train_encoder=True)
    tower = {f"video_tower.{n}" for n, _ in model.video_tower.named_parameters()}
    assert trainable(model) == projector | llm | tower
    assert model.video_tower.training  # follows the parent once unfrozen
    model.set_trainable("align")
    assert trainable(model) == projector and not model.video_tower.training

    with pytest.raises(ValueError, match="stage: expected one of align, instruct, got 'pretrain'"):
        model.set_trainable("pretrain")
    with pytest.raises(ValueError, match="lora: adapters train in stage 'instruct' only"):
        model.set_trainable("align", lora={"r": 4})
    assert model.no_weight_decay() <= {n for n, _ in model.named_parameters()}
    assert "video_tower.backbone.pos_embed" in model.no_weight_decay()


def test_lora_trains_adapters_only(model):
    pytest.importorskip("peft", reason="LoRA needs the optional peft package")
    model.set_trainable("instruct", lora={"r": 4, "lora_alpha": 8, "lora_dropout": 0.0})
    names = trainable(model)
    assert names and all(n.startswith("projector.") or "lora_" in n for n in names)
    assert any("lora_A" in n for n in names) and any("lora_B" in n for n in names)


def test_lora_without_peft_says_how_to_get_it(model, monkeypatch):
    monkeypatch.setitem(sys.modules, "peft", None)  # import peft -> ImportError
    with pytest.raises(ImportError, match="LoRA needs the peft package: pip install peft"):
        model.set_trainable("instruct", lora={"r": 4})


def test_gradient_checkpointing_keeps_the_loss(model):
    model.set_trainable("instruct")
    model.train()
    ids, labels = sample(model, "user : <video> what happens ? assistant :", "it moves down")
    batch, video = batch_of(model, [(ids, labels)]), torch.randn(1, 3, 4, 32, 32)
    plain = model(**batch, videos=video).loss
    model.gradient_checkpointing_enable()
    checkpointed = model(**batch, videos=video).loss
    checkpointed.backward()
    torch.testing.assert_close(checkpointed, plain)
    assert model.llm.get_input_embeddings().weight.grad is not None


def test_bf16_lm_and_autocast_keep_dtypes_consistent(lm_dir):
    videos = torch.randn(1, 3, 4, 32, 32)
    bf16 = VideoLLM.from_config(make_config(lm_dir, llm_dtype="bfloat16"))
    ids, labels = sample(bf16, "user : <video> what happens ? assistant :", "it moves")
    batch = batch_of(bf16, [(ids, labels)])
    assert bf16.encode_videos(videos).dtype == torch.bfloat16
    assert torch.isfinite(bf16(**batch, videos=videos).loss)
    fp32 = VideoLLM.from_config(make_config(lm_dir))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert fp32.encode_videos(videos).dtype == torch.float32  # the embedding table's dtype
        loss = fp32(**batch, videos=videos).loss
    assert torch.isfinite(loss)


# ---------------------------------------------------------------------------------------- save / load
def logits_of(model: VideoLLM, batch: dict, media: dict) -> torch.Tensor:
    with torch.no_grad():
        return model(**batch, **media).logits


def perturb(params) -> None:
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in params:
            p.add_(0.05 * torch.randn(p.shape, generator=g))


@pytest.mark.parametrize("stage", ["align", "instruct", "lora"])
def test_save_and_load_round_trip(lm_dir, tmp_path, stage):
    if stage == "lora":
        pytest.importorskip("peft", reason="LoRA needs the optional peft package")
    torch.manual_seed(4)
    image_encoder = dict(image_encoder="vit_tiny", image_overrides=dict(depth=2, embed_dim=32, num_heads=2)) \
        if stage == "instruct" else {}
    model = VideoLLM.from_config(make_config(lm_dir, spatial_pool=2, **image_encoder))
    if stage == "lora":
        model.set_trainable("instruct", lora={"r": 4, "lora_alpha": 8})
    else:
        model.set_trainable(stage)
    perturb(p for p in model.parameters() if p.requires_grad)  # stands in for training
    media = dict(videos=torch.randn(1, 3, 4, 32, 32), images=torch.randn(1, 3, 32, 32))
    batch = batch_of(model, [sample(model, "user : <video> <image> what happens ? assistant :", "it moves")])
    before = logits_of(model, batch, media)

    out = tmp_path / "ckpt"
    model.save_pretrained(out)
    files = set(os.listdir(out))
    assert {"videomap_llm.json", "projector.safetensors", "video_encoder"} <= files
    assert ("llm" in files) == (stage == "instruct")
    assert ("llm_adapter" in files) == (stage == "lora")
    assert ("image_encoder" in files) == (stage == "instruct")

    loaded = VideoLLM.from_pretrained(out)
    assert loaded.llm_state == {"align": "source", "instruct": "full", "lora": "lora"}[stage]
    torch.testing.assert_close(logits_of(loaded, batch, media), before)
    prompt = batch["input_ids"][:, :-3]  # up to "assistant :"
    kw = dict(max_new_tokens=3, min_new_tokens=3)
    assert torch.equal(loaded.generate(prompt, **media, **kw), model.generate(prompt, **media, **kw))
    if stage == "instruct":
        assert loaded.config.language_model == str(out / "llm")
    else:
        assert loaded.config.language_model == os.path.abspath(lm_dir)
    with pytest.raises(FileNotFoundError, match="no videomap_llm.json"):
        VideoLLM.from_pretrained(tmp_path)


# ---------------------------------------------------------------------------------------- transformers
def test_encoder_round_trip_through_transformers_auto_classes(backbone, tmp_path):
    from transformers import AutoConfig, AutoModel

    from videomap.llm import register_with_transformers
    from videomap.models.hf import VideoMAPModel

    register_with_transformers()
    register_with_transformers()  # idempotent
    VideoMAPModel.from_backbone(backbone).save_pretrained(tmp_path / "enc")
    config = AutoConfig.from_pretrained(tmp_path / "enc")
    assert config.model_type == "videomap" and config.hidden_size == 32 and config.num_frames == 4
    loaded = AutoModel.from_pretrained(tmp_path / "enc").eval()
    assert isinstance(loaded, VideoMAPModel)
    video = torch.randn(2, 3, 4, 32, 32)
    with torch.no_grad():
        expected = backbone.forward_features(video)
        out = loaded(pixel_values=video, output_hidden_states=True)
        torch.testing.assert_close(loaded(video).last_hidden_state, expected)
        torch.testing.assert_close(out.last_hidden_state, expected)
        assert len(out.hidden_states) == len(backbone.block_names()) + 1
        assert loaded(torch.randn(1, 3, 32, 32)).last_hidden_state.shape == (1, 5, 32)


def test_importing_the_package_stays_light():
    code = ("import sys, videomap.llm; from videomap.llm import IGNORE_INDEX; "
            "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
