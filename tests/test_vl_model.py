"""VideoTextModel and its losses on tiny local models.

The text encoder is a random 4-layer BERT (width 64) over a WordPiece vocabulary trained on this
file's captions (``videomap.vl.tiny``), split into 2 unimodal and 2 fusion layers; the video encoder
is a 2-layer VideoMamba of width 32 on 4 frames of 32x32 (2x2 patches, 16 tokens per clip).
"""

from __future__ import annotations

import datetime
import json
import os
import socket

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from videomap.vl import VideoTextConfig, VideoTextModel
from videomap.vl.losses import IGNORE_INDEX, mlm_mask, sample_negatives, vtc_loss
from videomap.vl.tiny import build_tiny_bert, build_wordpiece_vocab

CAPTIONS = [
    "a red ball rolls to the left .",
    "a blue square rotates slowly in the middle .",
    "two small dogs run across the green grass !",
    "a man opens the door and walks outside .",
    "the yellow car stops at the red light .",
]
VIDEO = dict(video_encoder="videomamba_tiny", video_overrides=dict(depth=2, embed_dim=32), num_frames=4, img_size=32)


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("tiny_bert")
    tok = build_wordpiece_vocab(CAPTIONS, root / "tokenizer")
    return build_tiny_bert(root / "bert", tok, hidden_size=64, num_layers=4, heads=4)


def make_config(bert_dir: str, **kw) -> VideoTextConfig:
    return VideoTextConfig(**{"text_encoder": bert_dir, **VIDEO, "embed_dim": 16, "fusion_layers": 2,
                              "video_mask_ratio": 0.5, **kw})


def make_model(bert_dir: str, seed: int = 0, **kw) -> VideoTextModel:
    torch.manual_seed(seed)
    return VideoTextModel.from_config(make_config(bert_dir, **kw))


def batch(model: VideoTextModel, n: int = 4, frames: int = 4, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    enc = model.tokenize(CAPTIONS[:n])
    return torch.randn(n, 3, frames, 32, 32, generator=g), enc["input_ids"], enc["attention_mask"]


# ---------------------------------------------------------------------------------------------- tiny models
def test_tiny_builders_load_with_auto_classes(bert_dir):
    from transformers import AutoModelForMaskedLM, AutoTokenizer, BertForMaskedLM

    tok = AutoTokenizer.from_pretrained(bert_dir, local_files_only=True)
    mlm = AutoModelForMaskedLM.from_pretrained(bert_dir, local_files_only=True)
    assert isinstance(mlm, BertForMaskedLM)
    assert mlm.config.vocab_size == len(tok) and mlm.config.num_hidden_layers == 4
    assert os.path.isfile(os.path.join(os.path.dirname(bert_dir), "tokenizer", "vocab.txt"))
    ids = tok("A red ball").input_ids
    assert tok.convert_ids_to_tokens(ids) == ["[CLS]", "a", "red", "ball", "[SEP]"]
    assert tok.pad_token_id == 0 and tok.mask_token_id is not None


# ---------------------------------------------------------------------------------------------- text side
def test_unimodal_text_encoder_equals_stock_bert_on_its_layers(bert_dir):
    from safetensors.torch import load_file
    from transformers import AutoModel

    model = make_model(bert_dir)
    ids = model.tokenize(CAPTIONS[:3])
    assert bool((ids["attention_mask"] == 0).any()), "the batch must contain padding"
    for layers, same in ((2, True), (3, False)):
        stock = AutoModel.from_pretrained(bert_dir, local_files_only=True, num_hidden_layers=layers).eval()
        with torch.no_grad():
            ref = stock(**ids).last_hidden_state
            ours, _ = model.encode_text(ids["input_ids"], ids["attention_mask"])
        real = ids["attention_mask"].bool()
        assert torch.allclose(ours[real], ref[real], atol=1e-5) is same, layers
    # the fusion layers keep the checkpoint's self-attention and feed-forward; cross-attention is new
    ckpt = load_file(os.path.join(bert_dir, "model.safetensors"))
    last = model.text.layers[-1]
    assert torch.equal(last.attention.self.query.weight, ckpt["bert.encoder.layer.3.attention.self.query.weight"])
    assert torch.equal(last.output.dense.weight, ckpt["bert.encoder.layer.3.output.dense.weight"])
    assert not any("cross" in k for k in ckpt)
    assert model.text.cross[0].key.in_features == 32  # keys/values read video tokens at their own width


def test_fusion_sees_video_and_ignores_padding(bert_dir):
    model = make_model(bert_dir)
    video, ids, am = batch(model, 3)
    with torch.no_grad():
        vt, _ = model.encode_video(video)
        text, _ = model.encode_text(ids, am)
        fused = model.text.fuse(text, am, vt)
        other = model.text.fuse(text, am, vt.flip(0))
        assert not torch.allclose(fused[:, 0], other[:, 0], atol=1e-4)
        # changing what sits under padding changes nothing at real tokens
        pad = am == 0
        ids2 = ids.clone()
        ids2[pad] = 7
        text2, _ = model.encode_text(ids2, am)
        fused2 = model.text.fuse(text2, am, vt)
        assert torch.allclose(fused2[~pad], fused[~pad], atol=1e-5)
        # vtm_score pairs row by row
        s = model.vtm_score(vt, ids, am)
        s_perm = model.vtm_score(vt[[2, 0, 1]], ids[[2, 0, 1]], am[[2, 0, 1]])
    assert s.shape == (3,)
    assert torch.allclose(s[[2, 0, 1]], s_perm, atol=1e-5)


# ---------------------------------------------------------------------------------------------- losses
def test_vtc_reference_symmetry_and_duplicates():
    g = torch.Generator().manual_seed(0)
    v, t = torch.randn(5, 8, generator=g), torch.randn(5, 8, generator=g)
    temp = 0.1
    vn, tn = F.normalize(v, dim=-1), F.normalize(t, dim=-1)
    sim = vn @ tn.T / temp
    ref = (F.cross_entropy(sim, torch.arange(5)) + F.cross_entropy(sim.T, torch.arange(5))) / 2
    assert torch.allclose(vtc_loss(v, t, temp), ref, atol=1e-6)
    assert torch.allclose(vtc_loss(v, t, temp), vtc_loss(t, v, temp), atol=1e-6)
    assert torch.allclose(vtc_loss(v, t, temp, gather=False), vtc_loss(v, t, temp, gather=True))
    # pairs 1 and 2 show the same video: the target splits evenly between them
    idx = torch.tensor([0, 1, 1, 2, 3])
    target = (idx[:, None] == idx[None]).float()
    target = target / target.sum(1, keepdim=True)
    soft = (-(F.log_softmax(sim, 1) * target).sum(1).mean() - (F.log_softmax(sim.T, 1) * target).sum(1).mean()) / 2
    assert torch.allclose(vtc_loss(v, t, temp, idx=idx), soft, atol=1e-6)
    assert not torch.allclose(vtc_loss(v, t, temp, idx=idx), ref, atol=1e-3)
    assert torch.allclose(vtc_loss(v, t, temp, idx=idx), vtc_loss(t, v, temp, idx=idx), atol=1e-6)


def test_negatives_skip_same_video_and_prefer_hard_ones():
    idx = torch.tensor([0, 0, 1, 2, 3])
    sim = torch.zeros(5, 5)
    sim[4, 0] = sim[0, 4] = 8.0  # video 4 looks like text 0 and video 0 like text 4
    g = torch.Generator().manual_seed(0)
    vid_for_text, txt_for_video = zip(*(sample_negatives(sim, idx, generator=g) for _ in range(300)))
    vid_for_text, txt_for_video = torch.stack(vid_for_text), torch.stack(txt_for_video)
    assert not bool((idx[vid_for_text] == idx).any()) and not bool((idx[txt_for_video] == idx).any())
    assert (vid_for_text[:, 0] == 4).float().mean() > 0.95  # the hard negative video of text 0
    assert (txt_for_video[:, 0] == 4).float().mean() > 0.95
    uniform = torch.stack([sample_negatives(sim, idx, hard=False, generator=g)[0] for _ in range(600)])
    share = (uniform[:, 0] == 4).float().mean()  # 3 candidates for text 0: 2, 3, 4
    assert 0.25 < share < 0.42
    # a batch that is all one video has no true negative: anything but the pair itself
    same = sample_negatives(torch.randn(3, 3), torch.zeros(3, dtype=torch.long), generator=g)[0]
    assert not bool((same == torch.arange(3)).any())
    with pytest.raises(ValueError, match="at least 2 pairs"):
        sample_negatives(torch.zeros(1, 1))


def test_mlm_mask_80_10_10():
    g = torch.Generator().manual_seed(0)
    cls_id, pad_id, mask_id, vocab = 2, 0, 4, 1000
    ids = torch.randint(5, vocab, (400, 40), generator=g)
    ids[:, 0] = cls_id
    ids[:, 30:] = pad_id
    am = (ids != pad_id).long()
    masked, labels = mlm_mask(ids, am, 0.5, mask_id, vocab, protected_ids=(pad_id, cls_id), generator=g)
    chosen = labels != IGNORE_INDEX
    assert not bool(chosen[:, 0].any()) and not bool(chosen[:, 30:].any())
    assert torch.equal(labels[chosen], ids[chosen])
    assert torch.equal(masked[~chosen], ids[~chosen])
    rate = chosen[:, 1:30].float().mean()
    assert abs(rate - 0.5) < 0.02
    n = chosen.sum()
    to_mask = (masked[chosen] == mask_id).sum() / n
    kept = (masked[chosen] == ids[chosen]).sum() / n
    assert abs(to_mask - 0.8) < 0.02 and abs(kept - 0.1) < 0.015
    assert abs(1 - to_mask - kept - 0.1) < 0.015  # random replacements


# ---------------------------------------------------------------------------------------------- model
def test_every_loss_decreases_on_a_fixed_batch(bert_dir):
    model = make_model(bert_dir).train()
    video, ids, am = batch(model, 4)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    history = []
    for _ in range(8):
        torch.manual_seed(1)  # the same masks, negatives and dropout every step
        out = model(video, ids, am)
        assert set(out) == {"loss", "vtc", "vtm", "mlm", "uta"}
        assert torch.allclose(out["loss"], out["vtc"] + out["vtm"] + out["mlm"] + out["uta"])
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        history.append({k: float(v.detach()) for k, v in out.items()})
    for name in ("vtc", "vtm", "mlm", "uta", "loss"):
        assert history[-1][name] < history[0][name] * 0.9, (name, [h[name] for h in history])


def test_masked_training_drops_tokens_images_and_weights(bert_dir):
    model = make_model(bert_dir, vtc=2.0, mlm=0.0, uta=0.5).train()
    seen = []
    orig = model.video_encoder.forward_intermediates

    def counting(video, indices=None, **kw):
        out = orig(video, indices, **kw)
        seen.append(out[0].shape[1])
        return out

    model.video_encoder.forward_intermediates = counting
    video, ids, am = batch(model, 4)
    out = model(video, ids, am)
    assert set(out) == {"loss", "vtc", "vtm", "uta"}
    assert torch.allclose(out["loss"], 2 * out["vtc"] + out["vtm"] + 0.5 * out["uta"])
    model(video, ids, am, masked=False)
    model(video[:, :, :1], ids, am)  # images: 1-frame clips with the image ratio
    model.encode_video(video)
    # 16 patch tokens: video 50% per frame -> 8 visible, unmasked 16, image 4 patches at 50% -> 2
    assert seen == [1 + 8, 1 + 16, 1 + 2, 1 + 16]
    out_idx = model(video, ids, am, idx=torch.tensor([0, 1, 1, 2]))
    assert torch.isfinite(out_idx["loss"])


def test_vtm_batch_is_positives_then_negative_videos_then_negative_texts(bert_dir, monkeypatch):
    import videomap.vl.model as vl_model

    model = make_model(bert_dir, vtc=0.0, mlm=0.0, uta=0.0, video_mask_type="random")
    video, ids, am = batch(model, 4)
    vid_neg, txt_neg = torch.tensor([1, 2, 3, 0]), torch.tensor([3, 0, 1, 2])
    seen = {}

    def fixed_negatives(sim, idx=None, hard=True, generator=None):
        seen["sim"], seen["hard"] = sim, hard
        return vid_neg, txt_neg

    fuse = model.text.fuse

    def recording_fuse(text, mask, video_tokens, video_mask=None):
        seen["fuse"] = (text, mask, video_tokens)
        return fuse(text, mask, video_tokens, video_mask)

    monkeypatch.setattr(vl_model, "sample_negatives", fixed_negatives)
    monkeypatch.setattr(model.text, "fuse", recording_fuse)
    with torch.no_grad():
        torch.manual_seed(0)
        out = model(video, ids, am)
        torch.manual_seed(0)  # the same random mask again
        mask = model._teacher_and_mask(model._as_clip(video), True, "video")[2]
        vt, ve = model.encode_video(video, mask)
        tt, te = model.encode_text(ids, am)
    text_all, mask_all, video_all = seen["fuse"]
    assert torch.allclose(seen["sim"], ve @ te.T / model.temp, atol=1e-5) and seen["hard"] is True
    assert torch.allclose(video_all, torch.cat([vt, vt[vid_neg], vt]), atol=1e-6)
    assert torch.allclose(text_all, torch.cat([tt, tt, tt[txt_neg]]), atol=1e-6)
    assert torch.equal(mask_all, torch.cat([am, am, am[txt_neg]]))
    logits = model.itm_head(fuse(text_all, mask_all, video_all)[:, 0])
    labels = torch.tensor([1] * 4 + [0] * 8)
    assert torch.allclose(out["vtm"], F.cross_entropy(logits, labels), atol=1e-5)


def test_mlm_predicts_through_the_video_conditioned_fusion_layers(bert_dir):
    model = make_model(bert_dir, vtc=0.0, vtm=0.0, uta=0.0, video_mask_type="random")  # eval: no dropout
    video, ids, am = batch(model, 4)
    tok = model.tokenizer
    with torch.no_grad():
        for cross in model.text.cross:  # a fresh cross-attention barely moves the text; make the video count
            for lin in (cross.value, cross.dense):
                nn.init.normal_(lin.weight, std=0.5)
        torch.manual_seed(3)
        loss = model(video, ids, am, masked=False)["mlm"]
        torch.manual_seed(3)
        other = model(video.flip(0), ids, am, masked=False)["mlm"]
        torch.manual_seed(3)
        masked_ids, labels = mlm_mask(ids, am, 0.5, tok.mask_token_id, len(tok),
                                      protected_ids=(tok.pad_token_id, tok.cls_token_id))
        vt, _ = model.encode_video(video)
        hidden = model.text.fuse(model.text.encode(masked_ids, am), am, vt)
        logits = model.text.mlm_logits(hidden)
    chosen = labels != IGNORE_INDEX
    assert bool(chosen.any())
    assert torch.allclose(loss, F.cross_entropy(logits[chosen], labels[chosen]), atol=1e-5)
    assert abs(float(loss) - float(other)) > 1e-3  # the prediction depends on the video (float noise: ~1e-7)


def _uta_case(model):
    """One batch's UTA loss and, under the same seed, what it is computed from: the clip, the
    teacher's attention mask and the aligned targets (the patches' mean, then the visible patches)."""
    video, ids, am = batch(model, 2)
    clip = model._as_clip(video)
    with torch.no_grad():
        torch.manual_seed(5)
        loss = model(video, ids, am)["uta"]
        torch.manual_seed(5)
        tout = model.teacher(clip, (2, 2))
        mask = model.maskers["video"](2, (4, 2, 2), attn=tout.attn)
    patches = tout.patch.reshape(2, 16, -1)
    targets = torch.cat([patches.mean(1, keepdim=True), patches[~mask].reshape(2, 8, -1)], dim=1)
    return (video, ids, am), clip, loss, mask, targets


def test_uta_aligns_visible_tokens_to_the_teacher(bert_dir):
    model = make_model(bert_dir, vtc=0.0, vtm=0.0, mlm=0.0)  # pixel teacher, attention masking at 50%
    _, clip, loss, mask, targets = _uta_case(model)
    with torch.no_grad():
        student = model.uta_head(model.video_encoder.forward_features(clip, mask), mask)
    assert mask.reshape(2, 4, 4).sum(-1).eq(2).all()  # 2 of 4 patches hidden in every frame
    cos = F.cosine_similarity(student, targets, dim=-1)
    assert student.shape == (2, 1 + 8, 3 * 16 * 16)
    assert torch.allclose(loss, (2 - 2 * cos).mean(), atol=1e-5)


@pytest.mark.parametrize("weights", [dict(), dict(mlm=0.0), dict(vtc=0.0), dict(mlm=0.0, vtm=0.0, uta=0.0)])
def test_parameters_no_loss_reaches_are_frozen(bert_dir, weights):
    masks = {} if weights.get("uta", 1) else dict(video_mask_type="random", image_mask_type="random")
    model = make_model(bert_dir, **weights, **masks).train()
    video, ids, am = batch(model, 3)
    model(video, ids, am)["loss"].backward()
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen == set(model.unused_parameters())
    assert bool(frozen) == bool(weights)
    # DDP without find_unused_parameters needs a gradient for every trainable tensor
    assert [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None] == []
    assert model.text.mlm.bert.embeddings.word_embeddings.weight.requires_grad  # tied to the MLM decoder


def test_temperature_init_and_clamp(bert_dir):
    model = make_model(bert_dir, mlm=0.0, vtm=0.0, uta=0.0, video_mask_type="random")
    assert abs(model.temp.item() - 0.07) < 1e-7
    video, ids, am = batch(model, 2)
    for value, expected in ((5.0, 0.5), (1e-5, 0.001)):
        with torch.no_grad():
            model.temp.fill_(value)
        model(video, ids, am)
        assert abs(model.temp.item() - expected) < 1e-7


def test_save_and_load_round_trip(bert_dir, tmp_path):
    from transformers import AutoModelForMaskedLM

    model = make_model(bert_dir).train()
    video, ids, am = batch(model, 3)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model(video, ids, am)["loss"].backward()
    opt.step()  # every part now differs from its source
    model.eval()
    model.save_pretrained(tmp_path / "vl")
    loaded = VideoTextModel.from_pretrained(tmp_path / "vl")
    assert loaded.config.fusion_layers == 2 and loaded.config.embed_dim == 16
    with torch.no_grad():
        vt, ve = model.encode_video(video)
        lt, le = loaded.encode_video(video)
        assert torch.allclose(vt, lt, atol=1e-6) and torch.allclose(ve, le, atol=1e-6)
        assert torch.allclose(model.encode_text(ids, am)[1], loaded.encode_text(ids, am)[1], atol=1e-6)
        assert torch.allclose(model.vtm_score(vt, ids, am), loaded.vtm_score(lt, ids, am), atol=1e-5)
        assert torch.equal(model.temp, loaded.temp)
        assert torch.equal(model.uta_head.proj.weight, loaded.uta_head.proj.weight)
    assert isinstance(AutoModelForMaskedLM.from_pretrained(tmp_path / "vl" / "text", local_files_only=True), nn.Module)
    # the unmasked phase: no uta, no teacher needed
    plain = VideoTextModel.from_pretrained(tmp_path / "vl", teacher=False, uta=0.0, video_mask_type="random",
                                           image_mask_type="random")
    assert plain.uta_head is None and plain.teacher is None
    assert torch.allclose(plain.encode_video(video)[1], le, atol=1e-6)
    with pytest.raises(FileNotFoundError, match="videomap_vl.json"):
        VideoTextModel.from_pretrained(tmp_path)


def test_config_errors_name_the_field(bert_dir):
    with pytest.raises(ValueError, match="unknown VideoTextConfig key"):
        VideoTextConfig.from_dict({"text_encoder": bert_dir, "fusion": 2})
    with pytest.raises(ValueError, match="vtm: expected a loss weight"):
        make_config(bert_dir, vtm=-1)
    with pytest.raises(ValueError, match="uta_teacher"):
        make_config(bert_dir, uta_teacher="none")
    with pytest.raises(ValueError, match="attention masking needs a teacher"):
        make_config(bert_dir, uta_teacher="none", uta=0.0)
    with pytest.raises(ValueError, match="video_mask_ratio"):
        make_config(bert_dir, video_mask_ratio=1.0)
    with pytest.raises(ValueError, match=r"fusion_layers: expected an integer in \[1, 3\]"):
        VideoTextModel.from_config(make_config(bert_dir, fusion_layers=4))
    with pytest.raises(OSError, match="text_encoder"):
        VideoTextModel.from_config(make_config(os.path.join(bert_dir, "missing")))


# ---------------------------------------------------------------------------------------------- distributed
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _gathered_vtc_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=60))
    try:
        g = torch.Generator().manual_seed(0)
        x, y = torch.randn(6, 8, generator=g), torch.randn(6, 8, generator=g)
        idx = torch.tensor([0, 1, 2, 3, 3, 4])  # pair 3 (rank 0) and pair 4 (rank 1) show one video
        torch.manual_seed(1)
        proj_v, proj_t = nn.Linear(8, 5), nn.Linear(8, 5)
        temp = nn.Parameter(torch.tensor(0.1))
        params = [*proj_v.parameters(), *proj_t.parameters(), temp]
        ref = vtc_loss(proj_v(x), proj_t(y), temp, gather=False, idx=idx)  # one process, whole batch
        ref_grads = torch.autograd.grad(ref, params)
        lo, hi = (0, 4) if rank == 0 else (4, 6)  # unequal shards
        loss = vtc_loss(proj_v(x[lo:hi]), proj_t(y[lo:hi]), temp, gather=True, idx=idx[lo:hi])
        loss.backward()
        for p in params:  # what DDP does with gradients
            dist.all_reduce(p.grad)
            p.grad /= world
        full = [p.grad.clone() for p in params]
        for p in params:
            p.grad = None
        # the authors' AllGather: only the local slice of the gathered gradient comes back
        released = vtc_loss(proj_v(x[lo:hi]), proj_t(y[lo:hi]), temp, gather=True, idx=idx[lo:hi],
                            gather_grad="released")
        released.backward()
        for p in params:
            dist.all_reduce(p.grad)
            p.grad /= world
        encoders = len(params) - 1  # every tensor but the temperature
        result = {"loss": float(loss), "ref": float(ref), "released_loss": float(released),
                  "grad_err": max(float((p - r).abs().max()) for p, r in zip(full, ref_grads)),
                  "grad_scale": max(float(r.abs().max()) for r in ref_grads),
                  "released_ratio_err": max(float((p.grad * world - f).abs().max())
                                            for p, f in zip(params[:encoders], full[:encoders])),
                  "released_temp_err": float((params[-1].grad - full[-1]).abs().max())}
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
            json.dump(result, f)
    finally:
        dist.destroy_process_group()


def test_gathered_vtc_two_processes_equals_one_process(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_gathered_vtc_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    for rank in range(2):
        r = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert abs(r["loss"] - r["ref"]) < 1e-6, r
        assert r["grad_err"] < 1e-6 and r["grad_scale"] > 1e-3, r
        # vl.vtc_gather=released: same loss, the encoders' gradient is 1/world of the full one,
        # the temperature's unchanged
        assert abs(r["released_loss"] - r["ref"]) < 1e-6, r
        assert r["released_ratio_err"] < 1e-6 and r["released_temp_err"] < 1e-6, r


# ---------------------------------------------------------------------------------------------- released checkpoints
def _authors_layout(encoder: nn.Module, teacher_dim: int) -> dict[str, torch.Tensor]:
    """``encoder``'s weights as the authors' masked pre-training file holds them: the final norm as
    ``norm.weight``, the stage-1 alignment head as ``clip_decoder.0.{head,norm}`` and the fixed
    ``clip_pos_embed`` (video_mm/models/backbones/videomamba/videomamba.py)."""
    sd = {k: v.clone() for k, v in encoder.state_dict().items() if not k.startswith("head.")}
    sd["norm.weight"] = sd.pop("norm_f.weight")
    g = torch.Generator().manual_seed(3)
    d = encoder.embed_dim
    sd["clip_decoder.0.head.weight"] = torch.randn(teacher_dim, d, generator=g)
    sd["clip_decoder.0.head.bias"] = torch.randn(teacher_dim, generator=g)
    sd["clip_decoder.0.norm.weight"] = torch.randn(teacher_dim, generator=g)
    sd["clip_decoder.0.norm.bias"] = torch.randn(teacher_dim, generator=g)
    sd["clip_pos_embed"] = torch.zeros(1, 17, teacher_dim)
    return {f"module.{k}": v for k, v in sd.items()}


def test_authors_masked_checkpoint_loads_strictly(bert_dir, tmp_path):
    from videomap.models import create_model

    torch.manual_seed(4)
    source = create_model("videomamba_tiny", num_classes=0, num_frames=4, img_size=32, depth=2, embed_dim=32)
    with torch.no_grad():
        source.norm_f.weight.uniform_(0.5, 1.5)
    path = tmp_path / "videomamba_m16_k400_mask_pt_f8_res224.pth"
    torch.save({"model": _authors_layout(source, 3 * 16 * 16)}, path)
    model = make_model(bert_dir, video_checkpoint=str(path))
    assert torch.equal(model.video_encoder.norm_f.weight, source.norm_f.weight)
    for name, tensor in source.state_dict().items():
        assert torch.equal(model.video_encoder.state_dict()[name], tensor), name
    # the uta head starts from the stage-1 clip_decoder, not from scratch
    sd = torch.load(path, weights_only=True)["model"]
    assert torch.equal(model.uta_head.proj.weight, sd["module.clip_decoder.0.head.weight"])
    assert torch.equal(model.uta_head.norm.bias, sd["module.clip_decoder.0.norm.bias"])
    fresh = make_model(bert_dir)  # no checkpoint: a new head
    assert not torch.equal(fresh.uta_head.proj.weight, sd["module.clip_decoder.0.head.weight"])


# ------------------------------------------------------------------------------------- released training signal
def test_uta_student_point_is_the_stream_before_the_last_block(bert_dir):
    """uta_student="pre_last_block": the aligned tokens are the un-normalised residual stream after
    the second-to-last block (the authors' ``x_clip_vis.append(residual)``), so the last block and
    the final norm get no alignment gradient; the default aligns the normalised output."""
    model = make_model(bert_dir, vtc=0.0, vtm=0.0, mlm=0.0, uta_student="pre_last_block")
    (video, ids, am), clip, loss, mask, targets = _uta_case(model)
    with torch.no_grad():
        stream = model.video_encoder.forward_intermediates(clip, [-2], mask=mask, intermediates_only=True)[0]
        student = model.uta_head(stream, mask)
        output = model.uta_head(model.video_encoder.forward_features(clip, mask), mask)
    assert torch.allclose(loss, (2 - 2 * F.cosine_similarity(student, targets, dim=-1)).mean(), atol=1e-5)
    assert not torch.allclose(loss, (2 - 2 * F.cosine_similarity(output, targets, dim=-1)).mean(), atol=1e-3)
    model.train()
    model(video, ids, am)["loss"].backward()
    enc = model.video_encoder
    assert enc.norm_f.weight.grad is None and all(p.grad is None for p in enc.layers[-1].parameters())
    assert enc.layers[0].mixer.in_proj.weight.grad.abs().sum() > 0
    default = make_model(bert_dir, vtc=0.0, vtm=0.0, mlm=0.0).train()
    default(video, ids, am)["loss"].backward()
    assert default.video_encoder.norm_f.weight.grad.abs().sum() > 0


def test_keep_temporal_embeds_each_frame_and_averages_frame_similarities(bert_dir):
    model = make_model(bert_dir, keep_temporal=True)
    video, ids, am = batch(model, 3)
    enc = model.video_encoder
    with torch.no_grad():
        _, embed = model.encode_video(video)
        feats = enc.forward_features(video)
        cls, tokens = feats[:, :1], feats[:, 1:].reshape(3, 4, 4, -1)  # (B, T, hw, C)
        frames = F.normalize(model.vision_proj(model.pool_norm(cls + tokens.mean(2))), dim=-1)
        assert embed.shape == (3, 4, 16) and torch.allclose(embed, frames, atol=1e-6)
        _, text = model.encode_text(ids, am)
        # the authors' get_sim: per-frame similarities averaged over frames
        sim = torch.einsum("btd,nd->btn", frames, text).mean(1) / model.temp
        expected = (F.cross_entropy(sim, torch.arange(3)) + F.cross_entropy(sim.T, torch.arange(3))) / 2
        assert torch.allclose(vtc_loss(embed, text, model.temp, gather=False), expected, atol=1e-5)
        # masked training pools the whole clip (frames keep different tokens under attention masking)
        mask = model.maskers["video"](3, (4, 2, 2), attn=model.teacher(video, (2, 2)).attn)
        assert model.encode_video(video, mask)[1].shape == (3, 16)
        assert make_model(bert_dir).encode_video(video)[1].shape == (3, 16)  # default: one clip embedding


def test_images_can_skip_the_temporal_position_embedding(bert_dir):
    image = torch.randn(2, 3, 1, 32, 32, generator=torch.Generator().manual_seed(1))
    for released in (False, True):
        model = make_model(bert_dir, image_temporal_pos=not released)
        with torch.no_grad():
            before = model.encode_video(image)[1]
            model.video_encoder.temporal_pos_embedding.normal_()
            after = model.encode_video(image)[1]
        assert torch.allclose(before, after, atol=1e-6) == released
