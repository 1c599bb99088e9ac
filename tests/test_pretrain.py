"""VideoMAP pre-training: decoder masks, masking, target alignment, optimisation, encoder export."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tests.helpers import tiny_model
from videomap.models import create_model, load_pretrained
from videomap.pretrain import (
    ARDecoder,
    CachedTeacher,
    CLIPTeacher,
    MaskedPretrainer,
    MaskGenerator,
    PixelTeacher,
    TeacherOutput,
    block_causal_mask,
    next_frame_loss,
)

GRID = (4, 2, 2)  # t, h, w for 4 frames at 32x32, patch 16


def tiny_encoder(name: str = "videomap_tiny", num_classes: int = 0, **kw):
    return tiny_model(name, num_classes=num_classes, **kw)


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(0)
    cfg = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=32, patch_size=16, projection_dim=24)
    path = tmp_path_factory.mktemp("tiny_clip")
    CLIPVisionModelWithProjection(cfg).save_pretrained(path)
    return str(path)


# ----------------------------------------------------------------------------- decoder masks
def test_block_causal_mask_layout():
    m = block_causal_mask(3, 2)
    expected = torch.tensor([[1, 1, 0, 0, 0, 0], [1, 1, 0, 0, 0, 0], [1, 1, 1, 1, 0, 0],
                             [1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]], dtype=torch.bool)
    assert torch.equal(m, expected)


def loud(dec: ARDecoder) -> ARDecoder:
    """Large random weights, so that every attention path has a clearly visible effect."""
    with torch.no_grad():
        for p in dec.parameters():
            p.normal_(0, 0.3)
    return dec.eval()


@pytest.mark.parametrize("granularity", ["frame", "token"])
def test_decoder_is_causal_at_its_granularity(granularity):
    torch.manual_seed(0)
    t, h, w = GRID
    n = h * w
    dec = loud(ARDecoder(16, 8, GRID, dim=16, depth=3, granularity=granularity))
    full = torch.randn(1, 1 + t * n, 16)
    base = dec.decode(full, GRID)
    unit = n if granularity == "frame" else 1  # tokens per causal group
    for g in range(t * n // unit - 1):
        lo, hi = 1 + g * unit, 1 + (g + 1) * unit  # group g occupies [lo, hi)
        later = full.clone()
        later[:, hi:] += torch.randn_like(later[:, hi:])
        out = dec.decode(later, GRID)
        assert torch.allclose(out[:, :hi], base[:, :hi], atol=1e-6), f"group {g} saw the future"
        own = full.clone()
        own[:, lo] += 3.0 * torch.randn(16)  # change one token of group g
        changed = (dec.decode(own, GRID)[:, lo:hi] - base[:, lo:hi]).abs().amax(-1)
        assert bool((changed > 1e-4).all()), f"group {g}: not every prediction of the group changed"


def test_token_decoder_differs_from_frame_decoder_within_a_frame():
    torch.manual_seed(0)
    dec = loud(ARDecoder(16, 8, GRID, dim=16, granularity="token"))
    full = torch.randn(1, 17, 16)
    base = dec.decode(full, GRID)
    mod = full.clone()
    mod[:, 2] += 3.0 * torch.randn(16)  # second token of frame 0: the first token must not see it
    out = dec.decode(mod, GRID)
    assert torch.allclose(out[:, 1], base[:, 1], atol=1e-6)
    assert not torch.allclose(out[:, 2], base[:, 2], atol=1e-4)
    frame = loud(ARDecoder(16, 8, GRID, dim=16, granularity="frame"))
    assert not torch.allclose(frame.decode(mod, GRID)[:, 1], frame.decode(full, GRID)[:, 1], atol=1e-4)


# ----------------------------------------------------------------------------- masking
@pytest.mark.parametrize("kind", ["attention", "random_frame", "tube", "frame_row", "shared_row"])
@pytest.mark.parametrize("ratio", [0.2, 0.5, 0.8])
def test_mask_counts_per_frame(kind, ratio):
    """Kinds that fix the count per frame: floor(h*w*r) patches or floor(h*r) rows in every frame."""
    t, h, w = 3, 5, 4
    gen = MaskGenerator(kind, ratio, seed=0)
    attn = torch.rand(6, t, h * w)
    mask = gen(6, (t, h, w), attn=attn).reshape(6, t, h, w)
    if kind.endswith("row"):
        expected = (h - int(h * ratio)) * w
        assert bool((mask == mask[..., :1]).all())  # whole rows
    else:
        expected = h * w - int(h * w * ratio)
    assert bool(((~mask).sum((2, 3)) == expected).all())
    if kind in ("tube", "shared_row"):
        assert bool((mask == mask[:, :1]).all())


@pytest.mark.parametrize("ratio", [0.2, 0.5, 0.8])
def test_random_mask_draws_over_the_whole_clip(ratio):
    """VideoMamba's ``random``: floor(T*h*w*r) hidden per sample, not a fixed count per frame."""
    t, h, w = 4, 5, 3
    n = t * h * w
    mask = MaskGenerator("random", ratio, seed=0)(64, (t, h, w))
    assert bool((mask.sum(1) == int(n * ratio)).all())
    per_frame = mask.reshape(64, t, h * w).sum(-1)
    assert per_frame.unique().numel() > 1  # frames hide different numbers of patches
    frame_wise = MaskGenerator("random_frame", ratio, seed=0)(64, (t, h, w)).reshape(64, t, h * w).sum(-1)
    assert bool((frame_wise == int(h * w * ratio)).all())  # the per-frame variant keeps its own name


@pytest.mark.parametrize("ratio", [0.25, 0.5, 0.75])
def test_clip_row_mask_draws_rows_over_all_frames(ratio):
    """VideoMamba's ``RandomRowMaskingGenerator``: T*floor(h*r) whole rows among all T*h rows."""
    t, h, w = 4, 4, 3
    mask = MaskGenerator("clip_row", ratio, seed=0)(64, (t, h, w)).reshape(64, t, h, w)
    assert bool((mask == mask[..., :1]).all())  # whole rows
    rows = mask[..., 0]  # (B, t, h)
    assert bool((rows.sum((1, 2)) == t * int(h * ratio)).all())
    assert rows.sum(2).unique().numel() > 1  # not the same number of rows in every frame
    assert not bool((rows == rows[:, :1]).all())  # nor the same rows


def test_masks_give_equal_counts_per_sample_to_the_encoder():
    """The encoder needs the same number of hidden tokens per sample; every kind delivers it."""
    torch.manual_seed(0)
    enc = tiny_encoder().eval()
    x = torch.randn(3, 3, 4, 32, 32)
    attn = torch.rand(3, *GRID[:1], 4)
    for kind in ("attention", "random", "random_frame", "tube", "frame_row", "clip_row", "shared_row", "none"):
        mask = MaskGenerator(kind, 0.5, seed=0)(3, GRID, attn=attn)
        assert enc.forward_features(x, mask=mask).shape[1] == 1 + int((~mask[0]).sum()), kind


def test_attention_masking_prefers_salient_patches():
    n = 16
    attn = torch.full((1, 1, n), 0.2 / (n - 4))
    attn[0, 0, :4] = 0.2  # four salient patches carry most of the attention
    gen = MaskGenerator("attention", 0.5, seed=0)
    visible = torch.zeros(n)
    draws = 400
    for _ in range(draws):
        visible += (~gen(1, (1, 4, 4), attn=attn))[0].float()
    rate = visible / draws
    assert rate[:4].min() > 0.9 and rate[4:].max() < 0.5, rate


def test_attention_masking_needs_attention():
    with pytest.raises(ValueError, match="attention"):
        MaskGenerator("attention", 0.5)(1, GRID, attn=None)
    with pytest.raises(ValueError, match="ratio"):
        MaskGenerator("random", 1.0)


def test_encoder_never_sees_masked_tokens_through_pretrainer():
    torch.manual_seed(0)
    enc = tiny_encoder().eval()
    mask = MaskGenerator("random", 0.5, seed=1)(2, GRID)
    x = torch.randn(2, 3, 4, 32, 32)
    out = enc.forward_features(x, mask=mask)
    assert out.shape[1] == 1 + int((~mask[0]).sum())
    x2 = x.clone()
    m = mask.reshape(2, 4, 2, 2)
    for b, t, r, c in m.nonzero().tolist():
        x2[b, :, t, r * 16:(r + 1) * 16, c * 16:(c + 1) * 16] = torch.randn(3, 16, 16) * 10
    assert torch.allclose(enc.forward_features(x2, mask=mask), out, atol=1e-6)


# ----------------------------------------------------------------------------- targets
class FrameIndexTeacher(nn.Module):
    """Features equal to the frame index, so alignment errors are visible."""

    feature_dim = 4

    def forward(self, frames):
        b, _, t, h, w = frames.shape
        idx = torch.arange(t, dtype=torch.float32).view(1, t, 1, 1).expand(b, t, (h // 16) * (w // 16), 4)
        return TeacherOutput(patch=idx.clone(), cls=idx[:, :, 0].clone(), attn=None)


def test_frame_t_is_compared_with_frame_t_plus_one():
    t, h, w = GRID
    target = FrameIndexTeacher()(torch.zeros(1, 3, 4, 32, 32)).patch
    # predictions equal to "my frame index + 1" give zero loss; "my own index" does not
    own = torch.arange(t, dtype=torch.float32).view(1, t, 1, 1).expand(1, t, h * w, 4).reshape(1, -1, 4)
    pred_next = torch.cat([torch.zeros(1, 1, 4), own + 1], dim=1)
    pred_same = torch.cat([torch.zeros(1, 1, 4), own], dim=1)
    mask = torch.zeros(1, t * h * w, dtype=torch.bool)
    assert next_frame_loss(pred_next, target, mask, GRID).item() == 0.0
    assert next_frame_loss(pred_same, target, mask, GRID).item() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="at least 2 frames"):
        next_frame_loss(pred_next[:, :5], target[:, :1], mask[:, :4], (1, 2, 2))


def test_masked_only_loss_ignores_visible_positions():
    t, h, w = GRID
    target = torch.zeros(1, t, h * w, 2)
    pred = torch.zeros(1, 1 + t * h * w, 2)
    mask = torch.zeros(1, t * h * w, dtype=torch.bool)
    mask[0, 0] = True
    pred[0, 2] = 5.0  # a visible position of frame 0: counted by "all", not by "masked"
    assert next_frame_loss(pred, target, mask, GRID, loss_on="masked").item() == 0.0
    assert next_frame_loss(pred, target, mask, GRID, loss_on="all").item() > 0


def test_target_hidden_scores_only_targets_hidden_from_the_encoder():
    """``target_hidden`` keys on the *target* token (t+1, p); ``masked`` on the prediction's own input
    token (t, p)."""
    t, h, w = GRID
    n = h * w
    target = torch.zeros(1, t, n, 2)
    mask = torch.zeros(1, t * n, dtype=torch.bool)
    mask[0, 1 * n + 0] = True  # frame 1, position 0 hidden: the target of the prediction at (0, 0)
    mask[0, 2 * n + 3] = True  # frame 2, position 3 hidden: the input of (2, 3) and the target of (1, 3)
    pred = torch.zeros(1, 1 + t * n, 2)
    pred[0, 1 + 0 * n + 0] = 5.0  # prediction (0, 0) -> target (1, 0), hidden
    pred[0, 1 + 0 * n + 1] = 7.0  # prediction (0, 1) -> target (1, 1), visible everywhere
    pred[0, 1 + 2 * n + 3] = 3.0  # prediction (2, 3): its input was hidden, its target (3, 3) visible
    assert next_frame_loss(pred, target, mask, GRID, loss_on="target_hidden").item() == pytest.approx(25.0 / 2)
    assert next_frame_loss(pred, target, mask, GRID, loss_on="masked").item() == pytest.approx(9.0 / 2)
    assert next_frame_loss(pred, target, mask, GRID, loss_on="all").item() == pytest.approx(
        (25 + 49 + 9) / ((t - 1) * n))
    with pytest.raises(ValueError, match="loss_on"):
        next_frame_loss(pred, target, mask, GRID, loss_on="hidden")


# ----------------------------------------------------------------------------- decoder cls
def _encoder_output_grad(cls_weight: float, teacher=None):
    """Gradients at the encoder's output tokens (the cls one feeds the classifier later) and at its
    cls_token parameter after one pre-training loss."""
    torch.manual_seed(0)
    pt = MaskedPretrainer(tiny_encoder(), teacher or PixelTeacher(16), objective="frame", mask_type="random",
                          decoder_dim=16, decoder_depth=1, cls_weight=cls_weight)
    captured = {}
    features = pt.encoder.forward_features

    def keep(video, mask=None):
        out = features(video, mask=mask)
        out.retain_grad()
        captured["tokens"] = out
        return out

    pt.encoder.forward_features = keep
    loss, stats = pt(moving_pattern())
    loss.backward()
    return captured["tokens"].grad, pt.encoder.cls_token.grad.clone(), stats


def test_decoder_cls_gives_the_encoder_cls_a_signal():
    grad, cls_param, stats = _encoder_output_grad(1.0)
    assert grad[:, 0].abs().sum() > 0 and "loss_cls" in stats
    grad0, cls_param0, stats0 = _encoder_output_grad(0.0)
    # without the cls term the encoder's cls output gets exactly nothing: the decoder drops it
    # before its blocks and the loss ignored its output
    assert bool((grad0[:, 0] == 0).all()) and bool((grad0[:, 1:] != 0).any()) and "loss_cls" not in stats0
    # the cls_token parameter also reaches the patch tokens through the encoder, so its gradient is
    # not zero either way, but the cls term changes it
    assert not torch.allclose(cls_param, cls_param0)


def test_cls_target_is_the_clip_level_teacher_cls():
    from videomap.pretrain import clip_level_cls, cls_loss

    x = torch.randn(2, 3, 4, 32, 32)
    out = PixelTeacher(16)(x, (2, 2))
    # pixels have no cls: the clip-level target is the mean of all patch targets of the clip
    assert torch.allclose(clip_level_cls(out), out.patch.mean((1, 2)), atol=1e-6)
    assert torch.allclose(clip_level_cls(TeacherOutput(out.patch, out.cls)), out.cls.mean(1), atol=1e-6)
    pred = torch.zeros(2, 17, 768)
    pred[:, 0] = clip_level_cls(out)
    assert cls_loss(pred, clip_level_cls(out)).item() == pytest.approx(0.0, abs=1e-10)


# ----------------------------------------------------------------------------- teachers
def test_pixel_teacher_shapes_and_normalisation():
    x = torch.randn(2, 3, 4, 32, 32)
    out = PixelTeacher(16)(x, (2, 2))
    assert out.patch.shape == (2, 4, 4, 768) and out.cls.shape == (2, 4, 768)
    assert torch.allclose(out.patch.mean(-1), torch.zeros(2, 4, 4), atol=1e-4)
    assert torch.allclose(out.attn.sum(-1), torch.ones(2, 4))


def test_clip_teacher_from_local_dir(clip_dir):
    teacher = CLIPTeacher(clip_dir, local_files_only=True)
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    teacher.train()
    assert not teacher.training
    out = teacher(torch.randn(2, 3, 4, 32, 32), (2, 2))
    assert out.patch.shape == (2, 4, 4, 24) and out.cls.shape == (2, 4, 24) and out.attn.shape == (2, 4, 4)
    assert torch.allclose(out.patch.norm(dim=-1), torch.ones(2, 4, 4), atol=1e-5)
    assert torch.allclose(out.attn.sum(-1), torch.ones(2, 4), atol=1e-5)
    # a larger frame gives a larger grid (position embeddings interpolated), resampled to the request
    assert teacher(torch.randn(1, 3, 2, 64, 64), (2, 2)).patch.shape == (1, 2, 4, 24)
    with pytest.raises(ValueError, match="CLIP"):
        CLIPTeacher(clip_dir + "/missing", local_files_only=True)


def test_clip_targets_videomamba_versus_postnorm(clip_dir):
    """``videomamba``: last-layer tokens without ln_post, per-frame cls averaged over frames before the
    projection; ``postnorm``: ln_post on every token. Recomputed here from the HF model's states."""
    import torch.nn.functional as F

    torch.manual_seed(0)
    x = torch.randn(2, 3, 4, 32, 32)
    vm = CLIPTeacher(clip_dir, local_files_only=True)
    assert vm.target == "videomamba"
    pn = CLIPTeacher(clip_dir, local_files_only=True, target="postnorm")
    a, b = vm(x, (2, 2)), pn(x, (2, 2))

    clip = vm.clip
    frames = x.permute(0, 2, 1, 3, 4).reshape(8, 3, 32, 32) * vm.in_scale + vm.in_shift
    with torch.no_grad():
        states = clip.vision_model(pixel_values=frames, output_hidden_states=True).hidden_states
        last = states[-1]  # (8, 1 + 4, 32): the last encoder layer, no post_layernorm
        proj = clip.visual_projection
        raw = F.normalize(proj(last), dim=-1)
        post = F.normalize(proj(clip.vision_model.post_layernorm(last)), dim=-1)
        clip_cls = F.normalize(proj(last[:, 0].reshape(2, 4, -1).mean(1)), dim=-1)
    assert torch.allclose(a.patch, raw[:, 1:].reshape(2, 4, 4, -1), atol=1e-5)
    assert torch.allclose(a.cls, raw[:, 0].reshape(2, 4, -1), atol=1e-5)
    assert torch.allclose(a.clip_cls, clip_cls, atol=1e-5)
    assert torch.allclose(b.patch, post[:, 1:].reshape(2, 4, 4, -1), atol=1e-5)
    assert b.clip_cls is None
    from videomap.pretrain import clip_level_cls

    assert torch.allclose(clip_level_cls(b), post[:, 0].reshape(2, 4, -1).mean(1), atol=1e-5)
    # the two modes really differ, and averaging before projecting is not the mean of the per-frame cls
    assert not torch.allclose(a.patch, b.patch, atol=1e-3)
    assert not torch.allclose(a.clip_cls, F.normalize(a.cls.mean(1), dim=-1), atol=1e-4)
    assert torch.allclose(a.attn, b.attn)  # the masking attention does not depend on the target mode
    with pytest.raises(ValueError, match="clip target"):
        CLIPTeacher(clip_dir, local_files_only=True, target="ln_post")


def test_cached_teacher_reuses_outputs():
    calls = []

    class Counting(PixelTeacher):
        def compute(self, frames, grid):
            calls.append(1)
            return super().compute(frames, grid)

    t = CachedTeacher(Counting(16), max_items=2)
    x = torch.randn(1, 3, 2, 32, 32)
    a, b = t(x, (2, 2)), t(x.clone(), (2, 2))
    assert a is b and len(calls) == 1 and t.hits == 1
    t(torch.randn(1, 3, 2, 32, 32), (2, 2))
    assert len(calls) == 2


# ----------------------------------------------------------------------------- optimisation
def moving_pattern(b=2, t=4, size=32) -> torch.Tensor:
    """Smooth stripes that drift by a fixed step per frame: the next frame is predictable."""
    g = torch.Generator().manual_seed(0)
    coords = torch.arange(size, dtype=torch.float32)
    freq = torch.rand(b, 3, 1, 1, 1, generator=g) * 0.3 + 0.1
    phase = torch.rand(b, 3, 1, 1, 1, generator=g) * 6.28
    step = torch.arange(t, dtype=torch.float32).view(1, 1, t, 1, 1) * 3.0
    x = coords.view(1, 1, 1, 1, size) + 0.5 * coords.view(1, 1, 1, size, 1)
    return torch.sin(freq * (x + step) + phase) + 0.05 * torch.randn(b, 3, t, size, size, generator=g)


def _train(pretrainer, steps=15, lr=5e-3):
    torch.manual_seed(0)
    x = moving_pattern()
    opt = torch.optim.AdamW([p for p in pretrainer.parameters() if p.requires_grad], lr=lr)
    losses = []
    for _ in range(steps):
        loss, _ = pretrainer(x)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("objective", ["frame", "token", "video"])
@pytest.mark.parametrize("backbone", ["videomamba_tiny", "videomap_tiny", "vit_tiny"])
@pytest.mark.parametrize("teacher_kind", ["pixel", "clip"])
def test_few_steps_reduce_loss(objective, backbone, teacher_kind, clip_dir):
    torch.manual_seed(0)
    teacher = PixelTeacher(16) if teacher_kind == "pixel" else CLIPTeacher(clip_dir, local_files_only=True)
    pt = MaskedPretrainer(tiny_encoder(backbone), teacher, objective=objective, mask_type="attention",
                          mask_ratio=0.5 if objective != "video" else 0.75, decoder_dim=32, decoder_depth=1)
    losses = _train(pt)
    assert min(losses[-3:]) < 0.8 * losses[0], losses


def test_saved_encoder_loads_with_only_head_missing(tmp_path):
    torch.manual_seed(0)
    pt = MaskedPretrainer(tiny_encoder(), PixelTeacher(16), mask_type="tube", decoder_dim=16, decoder_depth=1)
    path = pt.save_encoder(tmp_path / "enc.safetensors")
    clf = tiny_encoder(num_classes=7)
    missing, unexpected = load_pretrained(clf, path, strict=True)
    assert sorted(missing) == ["head.bias", "head.weight"] and unexpected == []
    assert torch.equal(clf.layers[0].mixer.A_log, pt.encoder.layers[0].mixer.A_log)
    clf2 = create_model("videomap_tiny", num_classes=7, img_size=32, num_frames=4, depth=4, embed_dim=32,
                        attn_every=2, pretrained=str(path))
    assert torch.equal(clf2.pos_embed, pt.encoder.pos_embed)
    assert "decoder" not in str(list(pt.encoder_state_dict())) and not any(
        k.startswith("head.") for k in pt.encoder_state_dict())


def test_pixel_motion_teacher_targets_the_change_between_frames():
    """Static content gives zero targets; a moving square gives non-zero targets only where it moves,
    and the targets are exactly frame t minus frame t-1 (frame 0: zero)."""
    from videomap.pretrain import PixelTeacher

    video = torch.zeros(1, 3, 4, 32, 32)
    video[:, :, :, :, 16:] = 0.7  # static right half
    for t in range(4):
        video[:, :, t, 2:6, 2 + t:6 + t] = 2.0  # a square moving right in the top-left patch
    out = PixelTeacher(16, target="motion")(video, (2, 2))
    frames = PixelTeacher(16, normalize=False)(video, (2, 2)).patch
    assert torch.equal(out.patch[:, 0], torch.zeros_like(out.patch[:, 0]))
    assert torch.allclose(out.patch[:, 1:], frames[:, 1:] - frames[:, :-1])
    moving = out.patch.abs().sum(-1)[0, 1:]  # (T-1, 4 patches)
    assert (moving[:, 0] > 0).all() and (moving[:, 1:] == 0).all()
    with pytest.raises(ValueError, match="expected 'frames' or 'motion'"):
        PixelTeacher(16, target="flow")


@pytest.mark.parametrize("backbone", ["videomamba_tiny", "videomap_tiny"])
def test_umt_alignment_can_read_the_stream_before_the_last_block(backbone):
    """student="pre_last_block" (the authors' videomamba_pretrain.py aligns ``residual`` after the
    block loop): the aligned tokens are the un-normalised stream entering the last block, and the
    last block and final norm are frozen (no gradient reaches them, as in the released checkpoints)."""
    torch.manual_seed(0)
    encoder = tiny_encoder(backbone)
    pt = MaskedPretrainer(encoder, PixelTeacher(16), objective="video", mask_type="random", mask_ratio=0.5,
                          student="pre_last_block")
    video = torch.randn(2, 3, 4, 32, 32)
    torch.manual_seed(1)
    out = pt.predict(video)
    stream = encoder.forward_intermediates(video, [-2], mask=out["mask"], intermediates_only=True)[0]
    assert torch.allclose(out["pred"], pt.decoder(stream, out["mask"]), atol=1e-6)
    frozen = {n for n, p in encoder.named_parameters() if not p.requires_grad}
    last, norm = encoder.block_names()[-1], encoder.final_norm_name
    assert frozen and all(n.startswith((last + ".", norm + ".")) for n in frozen)
    pt(video)[0].backward()
    assert all(p.grad is not None for p in encoder.parameters() if p.requires_grad)
    default = MaskedPretrainer(tiny_encoder(backbone), PixelTeacher(16), objective="video", mask_type="random",
                               mask_ratio=0.5)
    assert all(p.requires_grad for p in default.encoder.parameters())
    with pytest.raises(ValueError, match="student"):
        MaskedPretrainer(tiny_encoder(backbone), PixelTeacher(16), objective="frame", student="pre_last_block")
