"""Backbones: shapes, parameter counts, inputs, position-embedding resizing, training."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import videomap
from tests.helpers import tiny_model
from videomap.models import create_model, list_models, load_pretrained


def tiny(name: str, **kw):
    """Test-size depth at the registry width (192), where these shape and training checks were set."""
    width = {"embed_dim": 192, **({"num_heads": 3} if name.startswith("vit") else {})}
    return tiny_model(name, **{"num_classes": 5, **width, **kw})


@pytest.mark.parametrize("name", ["videomamba_tiny", "videomap_tiny", "vit_tiny"])
def test_shapes(name):
    torch.manual_seed(0)
    m = tiny(name).eval()
    x = torch.randn(2, 3, 4, 32, 32)
    feats = m.forward_features(x)
    assert feats.shape == (2, 1 + 4 * 2 * 2, m.embed_dim)
    assert m(x).shape == (2, 5)
    assert torch.allclose(m.forward_head(feats), m(x), atol=1e-5)


def test_registry():
    names = list_models()
    for n in ["videomamba_tiny", "videomamba_small", "videomamba_middle", "videomap_tiny", "videomap_small",
              "videomap_middle", "videomap_base", "videomap_large", "vit_tiny", "vit_base"]:
        assert n in names
    with pytest.raises(ValueError, match="unknown model"):
        create_model("videomamba_huge")
    assert videomap.create_model is create_model


def test_registry_names_the_hybrid_class():
    """``videomap_*`` builds a VideoHybrid (still a VideoMamba, so its checkpoints and checks
    apply); ``videomamba_*`` builds the pure-Mamba class, which has no Transformer blocks."""
    from videomap.models import VideoHybrid, VideoMamba

    with torch.device("meta"):
        for name in list_models():
            m = create_model(name)
            assert isinstance(m, VideoHybrid) == name.startswith("videomap_"), name
            assert isinstance(m, VideoMamba) == name.startswith(("videomap_", "videomamba_")), name
            if isinstance(m, VideoMamba):
                assert (len(m.attn_layers) > 0) == isinstance(m, VideoHybrid), name
        with pytest.raises(ValueError, match="attn_every"):
            VideoHybrid(depth=4, embed_dim=32, attn_every=0)


PAPER_PARAMS = {  # (millions, relative tolerance)
    "videomamba_tiny": (7, 0.02), "videomamba_small": (26, 0.02), "videomamba_middle": (74, 0.02),
    "videomap_middle": (96, 0.03), "videomap_base": (171, 0.03), "videomap_large": (301, 0.03),
}


@pytest.mark.parametrize("name", sorted(PAPER_PARAMS))
def test_parameter_counts_match_papers(name):
    with torch.device("meta"):
        m = create_model(name, num_classes=400, num_frames=8, img_size=224)
    n = sum(p.numel() for p in m.parameters()) / 1e6
    target, tol = PAPER_PARAMS[name]
    assert abs(n - target) / target <= tol, f"{name}: {n:.2f}M vs paper {target}M"


def test_hybrid_layout_is_four_to_one():
    with torch.device("meta"):
        m = create_model("videomap_middle")
    assert len(m.layers) == 32 and len(m.attn_layers) == 8
    order = m.block_names()
    assert order[:5] == ["layers.0", "layers.1", "layers.2", "layers.3", "attn_layers.0"]
    assert m.attn_layers[0].attn.num_heads == 576 // 64


@pytest.mark.parametrize("name", ["videomamba_tiny", "videomap_tiny", "vit_tiny"])
def test_single_frame_input(name):
    m = tiny(name).eval()
    out = m.forward_features(torch.randn(1, 3, 1, 32, 32))
    assert out.shape == (1, 1 + 4, m.embed_dim)


def test_bad_inputs_raise_clear_errors():
    m = tiny("videomamba_tiny")
    with pytest.raises(ValueError, match="3 channels"):
        m(torch.randn(1, 4, 4, 32, 32))
    with pytest.raises(ValueError, match="divisible by patch_size=16"):
        m(torch.randn(1, 3, 4, 30, 32))
    with pytest.raises(ValueError, match="5-D tensor"):
        m(torch.randn(3, 4, 32, 32))
    m2 = create_model("vit_tiny", num_classes=5, img_size=32, num_frames=4, tubelet_size=2, depth=1)
    with pytest.raises(ValueError, match="divisible by tubelet_size=2"):
        m2(torch.randn(1, 3, 3, 32, 32))


def test_pos_embed_resizing_on_the_fly_matches_loaded_model(tmp_path):
    torch.manual_seed(0)
    src = tiny("videomamba_tiny").eval()
    with torch.no_grad():
        src.temporal_pos_embedding.normal_()
    path = tmp_path / "w.pt"
    torch.save(src.state_dict(), path)
    dst = tiny("videomamba_tiny", num_frames=8, img_size=64).eval()
    load_pretrained(dst, path)
    assert dst.temporal_pos_embedding.shape == (1, 8, dst.embed_dim)
    assert dst.pos_embed.shape == (1, 1 + 16, dst.embed_dim)
    # a linear ramp in time stays a ramp's endpoints-preserving resize: first/last stay close
    x = torch.randn(1, 3, 8, 64, 64)
    assert torch.allclose(src.forward_features(x), dst.forward_features(x), atol=1e-5)


def test_temporal_interpolation_is_linear():
    from videomap.layers import resize_temporal_pos_embed
    ramp = torch.arange(4, dtype=torch.float32).view(1, 4, 1)
    out = resize_temporal_pos_embed(ramp, 8)
    diffs = out[0, 1:-1, 0].diff()
    assert torch.allclose(diffs, torch.full_like(diffs, 0.5))


def test_mask_drops_tokens_and_hides_content():
    torch.manual_seed(0)
    m = tiny("videomap_tiny").eval()
    x = torch.randn(2, 3, 4, 32, 32)
    mask = torch.zeros(2, 16, dtype=torch.bool)
    mask[0, [1, 5, 6, 9, 10, 15]] = True
    mask[1, [0, 2, 3, 4, 12, 13]] = True
    out = m.forward_features(x, mask=mask)
    assert out.shape == (2, 1 + 10, m.embed_dim)
    # perturbing the pixels of hidden patches changes nothing
    x2 = x.clone()
    for b in range(2):
        for idx in mask[b].nonzero().flatten().tolist():
            t, rest = divmod(idx, 4)
            r, c = divmod(rest, 2)
            x2[b, :, t, r * 16:(r + 1) * 16, c * 16:(c + 1) * 16] += 5.0
    assert torch.allclose(m.forward_features(x2, mask=mask), out, atol=1e-6)
    with pytest.raises(ValueError, match="same number"):
        bad = mask.clone()
        bad[0, 0] = True
        m.forward_features(x, mask=bad)


@pytest.mark.parametrize("name", ["videomamba_tiny", "videomap_tiny", "vit_tiny"])
def test_training_step_reduces_loss(name):
    torch.manual_seed(0)
    m = tiny(name, drop_path_rate=0.1)
    x = torch.randn(4, 3, 4, 32, 32)
    y = torch.tensor([0, 1, 2, 3])
    opt = torch.optim.AdamW(m.parameters(), lr=1e-3)
    losses = []
    for _ in range(8):
        loss = torch.nn.functional.cross_entropy(m(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] * 0.7, losses


@pytest.mark.parametrize("name", ["videomamba_tiny", "videomap_tiny", "vit_tiny"])
def test_every_parameter_gets_a_gradient(name):
    # a loss over all tokens: the cls-only head cannot reach the last layer's forward-direction A
    # (the first token's state does not depend on A), so that is not a useful probe
    torch.manual_seed(0)
    m = tiny(name)
    feats = m.forward_features(torch.randn(2, 3, 4, 32, 32))
    (feats.square().mean() + m.forward_head(feats).square().mean()).backward()
    no_grad = [n for n, p in m.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not no_grad, f"parameters without gradient: {no_grad}"


def test_layer_ids_follow_execution_order():
    m = tiny("videomap_tiny")
    assert m.lr_layer_id("pos_embed") == 0
    assert m.lr_layer_id("layers.0.mixer.A_log") == 1
    assert m.lr_layer_id("attn_layers.0.attn.qkv.weight") == 3
    assert m.lr_layer_id("layers.2.norm.weight") == 4
    assert m.lr_layer_id("head.weight") == m.num_lr_layers() - 1


def test_drop_path_is_identity_in_eval():
    m = tiny("videomap_tiny", drop_path_rate=0.5).eval()
    x = torch.randn(1, 3, 4, 32, 32)
    assert torch.equal(m(x), m(x))


def test_global_pool_avg_classifies_the_mean_patch_token():
    torch.manual_seed(0)
    m = tiny("videomap_tiny", global_pool="avg").eval()
    x = torch.randn(2, 3, 4, 32, 32)
    feats = m.forward_features(x)
    assert torch.allclose(m(x), m.head(feats[:, 1:].mean(1)), atol=1e-6)
    assert torch.allclose(m.forward_head(feats, pre_logits=True), feats[:, 1:].mean(1))
    with pytest.raises(ValueError, match="global_pool"):
        tiny("videomap_tiny", global_pool="max")


def _attn_inputs(m, x):
    """What the first Transformer block receives, and the last Mamba block's mixer output before it."""
    seen = {}
    h1 = m.attn_layers[0].register_forward_pre_hook(lambda mod, args: seen.setdefault("attn_in", args[0]))
    h2 = m.layers[m.attn_every - 1].mixer.register_forward_hook(
        lambda mod, args, out: seen.setdefault("branch", out))
    with torch.no_grad():
        m(x)
    h1.remove()
    h2.remove()
    return seen


def test_attn_wiring_branch_applies_attention_to_the_mamba_branch_only():
    """MAP's released hybrid: ``h = attn(h) + h`` on the mixer output; ``residual`` feeds the stream."""
    torch.manual_seed(0)
    x = torch.randn(1, 3, 4, 32, 32)
    res = tiny("videomap_tiny").eval()
    torch.manual_seed(0)
    br = tiny("videomap_tiny", attn_wiring="branch").eval()
    assert sum(p.numel() for p in res.parameters()) == sum(p.numel() for p in br.parameters())
    br.load_state_dict(res.state_dict())
    seen = _attn_inputs(br, x)
    assert torch.equal(seen["attn_in"], seen["branch"])
    seen = _attn_inputs(res, x)
    assert not torch.allclose(seen["attn_in"], seen["branch"])
    assert not torch.allclose(res(x), br(x))
    with pytest.raises(ValueError, match="attn_wiring"):
        tiny("videomap_tiny", attn_wiring="sideways")


def test_residual_stream_stays_fp32_into_attention_under_bf16_autocast():
    m = tiny("videomap_tiny").eval()
    x = torch.randn(1, 3, 4, 32, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        seen = _attn_inputs(m, x)
    assert seen["branch"].dtype == torch.bfloat16  # the Mamba branch does run in bf16
    assert seen["attn_in"].dtype == torch.float32
    # a model cast to bf16 (no autocast) runs end to end in its own dtype
    assert m.to(torch.bfloat16)(x.bfloat16()).dtype == torch.bfloat16


def test_out_projections_scale_with_the_number_of_mamba_layers():
    """1/sqrt(Mamba layers) as VideoMamba and MAP (8 here), not of all 10 blocks."""
    torch.manual_seed(0)
    m = create_model("videomap_tiny", depth=8, embed_dim=64, num_frames=4, img_size=32)
    assert len(m.attn_layers) == 2
    w = m.layers[0].mixer.out_proj.weight
    bound = 1 / (w.shape[1] ** 0.5) / (8 ** 0.5)  # kaiming_uniform(a=sqrt 5) bound / sqrt(depth)
    assert w.abs().max() <= bound + 1e-7 and w.abs().max() > 0.9 * bound


def test_map_init_is_xavier_uniform_without_the_depth_rescale():
    """init="map": MAP's initialize_weights runs last (yunzeliu/MAP models_mamba.py), every Linear
    xavier-uniform (bound sqrt(6 / (fan_in + fan_out))) and no 1/sqrt(depth) on the out-projections;
    the default keeps VideoMamba's trunc-normal(0.02) and the rescale."""
    torch.manual_seed(0)
    m = create_model("videomap_tiny", depth=8, embed_dim=64, num_frames=4, img_size=32, init="map")
    linears = [mod for mod in m.modules() if isinstance(mod, nn.Linear)]
    assert len(linears) > 8
    for mod in linears:
        fan_out, fan_in = mod.weight.shape
        bound = (6 / (fan_in + fan_out)) ** 0.5
        assert mod.weight.abs().max() <= bound + 1e-7 and mod.weight.abs().max() > 0.9 * bound
        assert mod.bias is None or not mod.bias.any()
    default = create_model("videomap_tiny", depth=8, embed_dim=64, num_frames=4, img_size=32)
    w = default.layers[0].mixer.in_proj.weight.detach()
    assert abs(float(w.std()) - 0.02) < 0.002  # trunc-normal(0.02), far below xavier's spread
    with pytest.raises(ValueError, match="init"):
        create_model("videomap_tiny", depth=8, embed_dim=64, num_frames=4, img_size=32, init="xavier")


@pytest.mark.parametrize("name,kw", [("videomap_tiny", {}), ("videomap_tiny", {"attn_wiring": "branch"}),
                                     ("videomamba_tiny", {}), ("vit_tiny", {})])
@pytest.mark.parametrize("num_blocks", [None, 2])
def test_grad_checkpointing_gives_identical_gradients(name, kw, num_blocks):
    """Recomputed blocks replay the same drop-path draws, so every gradient is bit-identical."""
    def grads(checkpointing):
        torch.manual_seed(0)
        m = tiny_model(name, num_classes=3, drop_path_rate=0.3, **kw).train()
        m.set_grad_checkpointing(checkpointing, num_blocks)
        torch.manual_seed(1)
        m(torch.randn(2, 3, 4, 32, 32)).square().sum().backward()
        return m, {k: p.grad for k, p in m.named_parameters()}

    m, got = grads(True)
    assert m.checkpoint_blocks == (len(m.block_names()) if num_blocks is None else 2)
    _, want = grads(False)
    for k in want:
        assert torch.equal(got[k], want[k]), k


def test_grad_checkpointing_recomputes_in_backward():
    torch.manual_seed(0)
    m = tiny_model("videomap_tiny").train()
    calls = []
    # a pre-hook: recomputation stops as soon as the saved tensors are rebuilt, before any post-hook
    m.layers[0].register_forward_pre_hook(lambda *a: calls.append(1))
    x = torch.randn(1, 3, 4, 32, 32)
    m.set_grad_checkpointing(True, 1)
    m(x).sum().backward()
    assert len(calls) == 2  # forward, then again in backward
    calls.clear()
    with torch.no_grad():
        m(x)
    assert len(calls) == 1  # nothing to recompute without autograd
    with pytest.raises(ValueError, match="num_blocks"):
        m.set_grad_checkpointing(True, -1)


def test_forward_intermediates_indices_follow_timm():
    torch.manual_seed(0)
    net = create_model("videomap_tiny", num_classes=0, num_frames=4, img_size=32, patch_size=8,
                       depth=4, embed_dim=32, attn_every=2).eval()
    n = len(net.block_names())
    assert net.block_indices(None) == list(range(n))
    assert net.block_indices(2) == [n - 2, n - 1]
    assert net.block_indices([-1, 0, 0]) == [0, n - 1]
    for bad in (0, n + 1, [n], [1.5]):
        with pytest.raises(ValueError, match="indices"):
            net.block_indices(bad)
    video = torch.randn(2, 3, 4, 32, 32)
    with torch.no_grad():
        final, inter = net.forward_intermediates(video, 2)
        _, every = net.forward_intermediates(video)
    assert len(inter) == 2 and len(every) == n
    torch.testing.assert_close(inter[1], every[-1])
    torch.testing.assert_close(final, net.forward_features(video))
    assert final.shape == inter[0].shape == (2, 1 + 4 * 16, 32)
