"""The selective scan is a registered operator, so whole models compile (fullgraph) and export."""

from __future__ import annotations

import pytest
import torch

from tests.helpers import tiny_model
from videomap.ops import selective_scan
from videomap.ops.scan_op import op_backend

FAMILIES = ["videomamba_tiny", "videomap_tiny", "vit_tiny"]


def _scan_inputs(seqlen=37, requires_grad=True):
    g = torch.Generator().manual_seed(0)
    bsz, dim, n = 2, 4, 16

    def t(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g) * scale).requires_grad_(requires_grad)

    return (t(bsz, dim, seqlen), t(bsz, dim, seqlen, scale=0.5), (-torch.rand(dim, n, generator=g)).requires_grad_(),
            t(bsz, n, seqlen), t(bsz, n, seqlen), t(dim), t(bsz, dim, seqlen), t(dim))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_operator_passes_opcheck(dtype):
    """Schema, fake implementation, autograd registration and dispatch agree (torch's own checks)."""
    u, delta, A, B, C, D, z, bias = (x.detach().to(dtype) for x in _scan_inputs())
    args = (u, delta, A, B, C, D, z, bias, True, True)
    for x in args[:8]:
        x.requires_grad_()
    assert op_backend(u, 16) == ("cpu-kernel" if dtype == torch.float32 else "torch")  # both paths checked
    torch.library.opcheck(torch.ops.videomap.selective_scan_fwd.default, args,
                          test_utils=("test_schema", "test_faketensor", "test_autograd_registration"))


def test_compiled_scan_matches_eager_with_gradients():
    ins = _scan_inputs()

    def f(*a):
        return selective_scan(*a, delta_softplus=True, return_last_state=True)

    out, last = f(*ins)
    (out.square().sum() + last.sum()).backward()
    ref = [x.grad.clone() for x in ins]
    for x in ins:
        x.grad = None
    cout, clast = torch.compile(f, fullgraph=True, backend="aot_eager")(*ins)
    (cout.square().sum() + clast.sum()).backward()
    assert torch.allclose(cout, out, atol=1e-6) and torch.allclose(clast, last, atol=1e-6)
    for x, r in zip(ins, ref, strict=True):
        assert torch.allclose(x.grad, r, rtol=1e-5, atol=1e-6)


def _grads(model):
    return {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("name", FAMILIES)
def test_model_compiles_fullgraph_forward_and_backward(name):
    """Dynamo captures every registry family in one graph (``aot_eager`` keeps this fast; the
    inductor case below runs the real compiler once)."""
    torch.manual_seed(0)
    m = tiny_model(name, num_classes=3).train()
    x = torch.randn(2, 3, 4, 32, 32)
    out = torch.compile(m, fullgraph=True, backend="aot_eager")(x)
    out.square().sum().backward()
    got = _grads(m)
    m.zero_grad()
    ref = m(x)
    ref.square().sum().backward()
    assert torch.allclose(out, ref, atol=1e-5)
    want = _grads(m)
    assert got.keys() == want.keys() and len(got) == len(list(m.parameters()))
    for k in want:
        assert torch.allclose(got[k], want[k], rtol=1e-4, atol=1e-5), k


def test_inductor_compiles_videomamba_and_matches_eager():
    torch.manual_seed(0)
    m = tiny_model("videomamba_tiny", num_classes=3).train()
    x = torch.randn(2, 3, 4, 32, 32)
    out = torch.compile(m, fullgraph=True)(x)
    out.square().sum().backward()
    got = _grads(m)
    m.zero_grad()
    ref = m(x)
    ref.square().sum().backward()
    assert (out - ref).abs().max() <= 1e-5
    for k, g in _grads(m).items():
        assert torch.allclose(got[k], g, rtol=1e-4, atol=1e-5), k


@pytest.mark.parametrize("name", FAMILIES)
def test_export_runs_and_matches(name):
    torch.manual_seed(0)
    m = tiny_model(name, num_classes=3).eval()
    x = torch.randn(2, 3, 4, 32, 32)
    ep = torch.export.export(m, (x,))
    targets = {str(n.target) for g in ep.graph_module.modules() if isinstance(g, torch.fx.GraphModule)
               for n in g.graph.nodes if n.op == "call_function"}
    if name != "vit_tiny":
        assert "videomap.selective_scan_fwd.default" in targets
    x2 = torch.randn(2, 3, 4, 32, 32)
    assert torch.allclose(ep.module()(x2), m(x2), atol=1e-5)


def test_bf16_inference_reads_bf16_directly_and_matches_the_fp32_scan(monkeypatch):
    """bf16 u/delta/z without autograd go to the kernel as bf16 (no fp32 copies); the result is
    exactly the fp32 scan of the same values, rounded once to bf16."""
    import videomap.ops.scan_op as scan_op

    u, delta, A, B, C, D, z, bias = (x.detach() for x in _scan_inputs(seqlen=150))
    low = [t.bfloat16() for t in (u, delta, z)]
    seen = []
    real = scan_op.kernel_forward
    monkeypatch.setattr(scan_op, "kernel_forward", lambda *a, **k: seen.append(a[1].dtype) or real(*a, **k))
    out = selective_scan(low[0], low[1], A, B.bfloat16(), C.bfloat16(), D, low[2], bias, delta_softplus=True)
    assert seen == [torch.bfloat16] and out.dtype == torch.bfloat16
    ref = selective_scan(low[0].float(), low[1].float(), A, B.bfloat16().float(), C.bfloat16().float(), D,
                         low[2].float(), bias, delta_softplus=True)
    assert torch.equal(out, ref.bfloat16())
    torch.library.opcheck(torch.ops.videomap.selective_scan_fwd.default,
                          (low[0], low[1], A, B, C, D, low[2], bias, True, False),
                          test_utils=("test_schema", "test_faketensor"))
    # the PyTorch path (no kernel) gives the same values within fp32 rounding
    monkeypatch.setattr(scan_op, "op_backend", lambda u, n: "torch")
    out_t = selective_scan(low[0], low[1], A, B.bfloat16(), C.bfloat16(), D, low[2], bias, delta_softplus=True)
    assert out_t.dtype == torch.bfloat16 and (out_t.float() - out.float()).abs().max() <= 1e-2 * out.abs().max()
    # anything to differentiate is computed from fp32 copies, and gradients flow back in bf16
    seen.clear()
    monkeypatch.undo()
    ug = low[0].clone().requires_grad_()
    selective_scan(ug, low[1], A, B, C, D, low[2], bias, delta_softplus=True).float().sum().backward()
    assert ug.grad.dtype == torch.bfloat16 and torch.isfinite(ug.grad.float()).all()
