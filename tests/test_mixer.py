"""Bidirectional Mamba mixer: semantics against the reference scan, checkpoint layout."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tests.helpers import official_videomamba_state_dict
from videomap.layers import BiMamba
from videomap.models import create_model
from videomap.ops import selective_scan_ref


def one_direction(m: BiMamba, x_in: torch.Tensor, sfx: str) -> torch.Tensor:
    """Mamba-1 forward written out from the paper's equations, using the sequential reference scan."""
    xz = x_in @ m.in_proj.weight.t()  # (B, L, 2E)
    x, z = xz.chunk(2, dim=-1)
    x, z = x.transpose(1, 2), z.transpose(1, 2)
    conv = getattr(m, f"conv1d{sfx}")
    x = F.silu(F.conv1d(F.pad(x, (3, 0)), conv.weight, conv.bias, groups=x.shape[1]))
    x_dbl = x.transpose(1, 2) @ getattr(m, f"x_proj{sfx}").weight.t()
    dt, b, c = x_dbl.split([m.dt_rank, 16, 16], dim=-1)
    dt_proj = getattr(m, f"dt_proj{sfx}")
    a_log = m.A_log if sfx == "" else m.A_b_log
    return selective_scan_ref(x, (dt @ dt_proj.weight.t()).transpose(1, 2), -torch.exp(a_log),
                              b.transpose(1, 2), c.transpose(1, 2), getattr(m, f"D{sfx}"), z=z,
                              delta_bias=dt_proj.bias, delta_softplus=True)


@pytest.mark.parametrize("merge", ["sum", "mean"])
def test_bidirectional_equals_forward_plus_flipped_backward(merge):
    torch.manual_seed(0)
    m = BiMamba(32, merge=merge).double()
    with torch.no_grad():  # make the two directions differ
        for name, p in m.named_parameters():
            if name.endswith("_b") or "_b." in name or name.startswith("A_b"):
                p.add_(0.1 * torch.randn_like(p))
    x = torch.randn(2, 37, 32, dtype=torch.float64)
    fwd = one_direction(m, x, "")
    bwd = one_direction(m, x.flip(1), "_b").flip(-1)
    expected = (fwd + bwd) * (0.5 if merge == "mean" else 1.0)
    expected = expected.transpose(1, 2) @ m.out_proj.weight.t()
    out = m(x)
    assert torch.allclose(out, expected, rtol=1e-6, atol=1e-8)
    # and the backward direction really is different from the forward one
    assert not torch.allclose(fwd, one_direction(m, x.flip(1), "").flip(-1), atol=1e-6)


def test_official_layout_loads_strict():
    sd = official_videomamba_state_dict(192, 24, 8, 224, 400)
    model = create_model("videomamba_tiny", num_classes=400, num_frames=8, img_size=224)
    model.load_state_dict(sd, strict=True)
    assert torch.equal(model.layers[5].mixer.A_b_log, sd["layers.5.mixer.A_b_log"])


def test_mixer_init_follows_mamba():
    m = BiMamba(64)
    assert torch.allclose(m.A_log[0].exp(), torch.arange(1, 17, dtype=torch.float32))
    assert torch.equal(m.D, torch.ones(128))
    dt = F.softplus(m.dt_proj.bias)
    assert dt.min() >= 1e-4 * 0.999 and dt.max() <= 0.1 * 1.001
    wiped = create_model("videomamba_tiny", num_classes=4, img_size=32, num_frames=2, depth=2)
    assert wiped.layers[0].mixer.dt_proj.bias.abs().max() == 0  # default: as the released code
    kept = create_model("videomamba_tiny", num_classes=4, img_size=32, num_frames=2, depth=2,
                        keep_dt_bias_init=True)
    assert kept.layers[0].mixer.dt_proj.bias.abs().min() > 0  # the option keeps Mamba's init


def test_causal_conv_matches_conv1d_with_gradients():
    from videomap.ops import causal_depthwise_conv1d

    torch.manual_seed(0)
    for length in (1, 2, 3, 11):
        x = torch.randn(2, 6, length, dtype=torch.float64, requires_grad=True)
        w = torch.randn(6, 1, 4, dtype=torch.float64, requires_grad=True)
        b = torch.randn(6, dtype=torch.float64, requires_grad=True)
        ours = causal_depthwise_conv1d(x, w, b)
        ref = F.conv1d(x, w, b, padding=3, groups=6)[..., :length]
        assert torch.allclose(ours, ref)
        g = torch.randn_like(ref)
        assert all(torch.allclose(a, r) for a, r in zip(torch.autograd.grad(ours, (x, w, b), g),
                                                        torch.autograd.grad(ref, (x, w, b), g)))


def test_causal_conv_export_form_is_bitwise_the_same(monkeypatch):
    """Under torch.export the convolution adds padded shifts out of place (no slice scatter in the
    exported graph); the sums are the same, so eager and exported numerics agree bit for bit."""
    from videomap.ops import causal_depthwise_conv1d

    torch.manual_seed(0)
    for length in (1, 2, 3, 37):
        x, w, b = torch.randn(2, 6, length), torch.randn(6, 1, 4), torch.randn(6)
        want = causal_depthwise_conv1d(x, w, b)
        monkeypatch.setattr(torch.compiler, "is_exporting", lambda: True)
        got = causal_depthwise_conv1d(x, w, b)
        monkeypatch.undo()
        assert torch.equal(got, want), length


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("reverse", [False, True])
def test_fused_conv_silu_kernel_matches_pytorch(dtype, reverse):
    """The one-pass inference kernel equals flip -> conv -> silu in PyTorch (fp32 inside; bf16
    rounded once at the end), for lengths shorter than the kernel and not a multiple of 16."""
    import videomap.ops.conv as conv

    torch.manual_seed(0)
    for length in (1, 3, 37):
        x = torch.randn(2, 5, length).to(dtype)
        w, b = torch.randn(5, 1, 4), torch.randn(5)
        with torch.no_grad():
            assert conv._kernel_applies(x, w)
            got = conv.causal_conv1d_silu(x, w, b, reverse=reverse)
            xf = x.float().flip(-1) if reverse else x.float()
            ref = F.silu(conv.causal_depthwise_conv1d(xf, w, b))
        assert got.dtype == dtype and got.shape == x.shape
        tol = 1e-5 if dtype == torch.float32 else 1e-2
        assert torch.allclose(got.float(), ref.to(dtype).float(), rtol=tol, atol=tol), (length, reverse)
    # with autograd the PyTorch version runs (the kernel has no backward)
    xg = torch.randn(1, 5, 9, requires_grad=True)
    assert not conv._kernel_applies(xg, w)
    conv.causal_conv1d_silu(xg, w, b, reverse=True).sum().backward()
    assert xg.grad is not None


# --- training path that recomputes the mixer in backward (MambaBlock.recompute) -------------------
def _step_grads(name: str, recompute: bool, amp: bool = False, **kw):
    from tests.helpers import tiny_model

    torch.manual_seed(0)
    m = tiny_model(name, num_classes=3, drop_path_rate=0.3, mixer_recompute=recompute, **kw).train()
    torch.manual_seed(1)
    x = torch.randn(2, 3, 4, 32, 32, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
        out = m(x)
    out.float().square().sum().backward()
    return out, {"input": x.grad, **{k: p.grad for k, p in m.named_parameters()}}


@pytest.mark.parametrize("name,kw", [("videomamba_tiny", {}), ("videomap_tiny", {}),
                                     ("videomap_tiny", {"attn_wiring": "branch"})])
def test_recomputing_mixer_gives_the_plain_gradients(name, kw):
    """Same forward bit for bit; every parameter's and the input's gradient within 1e-6 of the plain
    path's, scaled by its largest entry where that exceeds 1 (a float32 ulp at 8 is 9.5e-7: only
    the order of a few sums differs, which moves a gradient of magnitude 8.8 by one ulp on some CPUs)."""
    out, got = _step_grads(name, True, **kw)
    ref, want = _step_grads(name, False, **kw)
    assert torch.equal(out, ref)
    assert got.keys() == want.keys()
    for k, w in want.items():
        assert got[k] is not None and w is not None, k
        err = (got[k] - w).abs().max()
        assert err <= 1e-6 * max(1.0, float(w.abs().max())), (k, err)


def test_recomputing_mixer_under_bf16_autocast_matches_the_plain_path():
    """Backward recomputes under the forward's autocast state: the bf16 operations are the same."""
    out, got = _step_grads("videomap_tiny", True, amp=True)
    ref, want = _step_grads("videomap_tiny", False, amp=True)
    assert torch.equal(out, ref)
    for k, w in want.items():
        assert torch.isfinite(got[k]).all(), k
        assert (got[k] - w).abs().max() <= 1e-2 * w.abs().max(), k


def test_recomputing_mixer_keeps_frozen_parameters_frozen():
    from tests.helpers import tiny_model

    m = tiny_model("videomamba_tiny", num_classes=3).train()
    frozen = [m.layers[0].norm.weight, m.layers[0].mixer.in_proj.weight, m.layers[1].mixer.A_b_log]
    for p in frozen:
        p.requires_grad_(False)
    m(torch.randn(1, 3, 4, 32, 32)).sum().backward()
    assert all(p.grad is None for p in frozen)
    assert m.layers[0].mixer.conv1d_b.weight.grad is not None and m.layers[1].mixer.A_log.grad is not None


@pytest.mark.parametrize("d,seqlen,bidirectional", [(32, 200, True), (48, 333, True), (32, 130, False)])
def test_recomputing_mixer_saves_only_input_output_and_carries(d, seqlen, bidirectional):
    """Saved bytes per block, counted with saved-tensor hooks: the plain path keeps the
    convolutions, projections and scan inputs of both directions; the recomputing path at most
    its input (d), the merged output (E) and the scan's chunk carries."""
    from videomap.engine.memory import saved_tensor_bytes
    from videomap.layers import MambaBlock
    from videomap.ops import cpu_build
    from videomap.ops.cpu_scan import carries_numel

    kern = cpu_build.get_kernel()
    if kern is None:
        pytest.skip("C kernel unavailable")
    torch.manual_seed(0)
    blk = MambaBlock(d, bidirectional=bidirectional)
    e, n = blk.mixer.d_inner, blk.mixer.d_state
    x = torch.randn(1, seqlen, d, requires_grad=True)
    saved = {}
    for recompute in (False, True):
        blk.recompute = recompute
        saved[recompute] = saved_tensor_bytes(lambda: blk(x), exclude=blk.parameters())
    directions = 2 if bidirectional else 1
    bound = 4 * (seqlen * (d + e) + directions * carries_numel(kern.chunk, 1, e, seqlen, n))
    assert saved[True] <= bound, (saved, bound)
    # the plain path keeps at least u, delta, z per direction and the conv input besides
    assert saved[False] >= 4 * seqlen * e * (3 * directions + 1) > saved[True]
