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
@pytest.mark.parametrize("kind", ["attention", "random", "tube", "frame_row", "clip_row"])
@pytest.mark.parametrize("ratio", [0.2, 0.5, 0.8])
def test_mask_counts_per_frame(kind, ratio):
    t, h, w = 3, 5, 4
    gen = MaskGenerator(kind, ratio, seed=0)
    attn = torch.rand(6, t, h * w)
    mask = gen(6, (t, h, w), attn=attn).reshape(6, t, h, w)
    if kind.endswith("row"):
        expected = (h - int(h * ratio)) * w
    else:
        expected = h * w - int(h * w * ratio)
    assert bool(((~mask).sum((2, 3)) == expected).all())
    if kind == "tube":
        assert bool((mask == mask[:, :1]).all())
    if kind == "clip_row":
        assert bool((mask == mask[:, :1]).all())
        assert bool((mask == mask[..., :1]).all())


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
