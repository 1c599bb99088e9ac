"""The operator's mamba_ssm CUDA path, driven by a stand-in for the compiled extension.

No GPU exists here, so ``selective_scan_cuda`` is replaced by a module with the same calling
convention (see videomap.ops.cuda_scan) computing on CPU with the reference scan. What this checks
is our side of the contract: argument order and layouts (4-D B/C, fp32 A/D/bias), the optional
trailing ``cu_seqlens`` of newer releases, what is packed into the saved carries and unpacked for
backward, the gate, the last state and the gradients.
"""

from __future__ import annotations

import types

import pytest
import torch

from videomap.ops import cuda_scan, scan_op, selective_scan, selective_scan_ref
from videomap.ops.torch_scan import scan_backward, scan_forward


def _fake_extension(with_cu_seqlens: bool) -> types.ModuleType:
    calls = {"fwd": 0, "bwd": 0}

    def check(u, delta, A, B, C):
        assert B.dim() == 4 and B.shape[1] == 1 and C.dim() == 4 and C.shape[1] == 1, "B/C must be 4-D"
        assert B.dtype == u.dtype and C.dtype == u.dtype and delta.dtype == u.dtype
        assert A.dtype == torch.float32

    def fwd(u, delta, A, B, C, D, z, delta_bias, softplus, *rest):
        if len(rest) != int(with_cu_seqlens):
            raise TypeError("incompatible function arguments")
        check(u, delta, A, B, C)
        calls["fwd"] += 1
        out, last = selective_scan_ref(u, delta, A, B[:, 0], C[:, 0], D, None, delta_bias, softplus,
                                       return_last_state=True)
        bsz, dim, seqlen = u.shape
        x = torch.zeros(bsz, dim, -(-seqlen // cuda_scan.CHUNK), 2 * A.shape[1])
        x[:, :, -1, 1::2] = last
        res = [out.to(u.dtype), x]
        if z is not None:
            res.append((out * torch.nn.functional.silu(z.float())).to(u.dtype))
        return res

    def bwd(u, delta, A, B, C, D, z, delta_bias, dout, x, out, dz, softplus, recompute, *rest):
        if len(rest) != int(with_cu_seqlens):
            raise TypeError("incompatible function arguments")
        check(u, delta, A, B, C)
        assert dout.dtype == u.dtype and x.dtype == torch.float32
        calls["bwd"] += 1
        # an operator's backward runs below autograd, so the gradients come from the PyTorch scan's
        # own backward (tested against autograd through the reference in test_selective_scan.py)
        args = [t.float() if t is not None else None for t in (u, delta, A, B[:, 0], C[:, 0], D, z, delta_bias)]
        pre, _, _ = scan_forward(*args[:6], None, args[7], softplus, False)
        if z is not None:  # what forward saved must be the pre-gate output
            torch.testing.assert_close(out.float(), pre, rtol=1e-6, atol=1e-6)
        else:
            assert out is None
        _, _, states = scan_forward(*args, softplus, True)
        g = scan_backward(*args, softplus, states, dout.float(), None)
        res = [g[0], g[1], g[2], g[3].unsqueeze(1), g[4].unsqueeze(1),
               g[5] if D is not None else torch.zeros(u.shape[1]),
               g[7] if delta_bias is not None else torch.zeros(u.shape[1])]
        return res + ([g[6]] if z is not None else [])

    return types.SimpleNamespace(fwd=fwd, bwd=bwd, calls=calls)


def _inputs(seed: int, bsz=2, dim=6, seqlen=37, nstate=4, gate=True):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    return dict(u=r(bsz, dim, seqlen), delta=r(bsz, dim, seqlen) * 0.5, A=-torch.rand(dim, nstate, generator=g) - 0.2,
                B=r(bsz, nstate, seqlen), C=r(bsz, nstate, seqlen), D=r(dim),
                z=r(bsz, dim, seqlen) if gate else None, delta_bias=r(dim) * 0.1)


@pytest.fixture(params=[False, True], ids=["old-signature", "cu_seqlens"])
def fake_cuda(request, monkeypatch):
    ext = _fake_extension(request.param)
    monkeypatch.setattr(cuda_scan, "cuda_module", lambda: ext)
    monkeypatch.setattr(scan_op, "op_backend", lambda u, nstate: "cuda-mamba_ssm")
    return ext


@pytest.mark.parametrize("gate", [True, False])
def test_mamba_ssm_path_matches_the_reference_forward_and_backward(fake_cuda, gate):
    x = _inputs(0, gate=gate)
    ref_in = {k: (v.clone().requires_grad_() if v is not None else None) for k, v in x.items()}
    got_in = {k: (v.clone().requires_grad_() if v is not None else None) for k, v in x.items()}
    ref, ref_last = selective_scan_ref(**ref_in, delta_softplus=True, return_last_state=True)
    got, got_last = selective_scan(**got_in, delta_softplus=True, return_last_state=True)
    assert fake_cuda.calls["fwd"] == 1
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got_last, ref_last, rtol=1e-5, atol=1e-5)
    dout = torch.randn_like(ref)
    ref.backward(dout)
    got.backward(dout)
    assert fake_cuda.calls["bwd"] == 1
    for k, t in ref_in.items():
        if t is not None:
            torch.testing.assert_close(got_in[k].grad, t.grad, rtol=1e-4, atol=1e-5, msg=k)


def test_mamba_ssm_path_passes_half_sequences_through_and_returns_fp32_state(fake_cuda):
    x = _inputs(1)
    half = {k: (v.bfloat16() if k in ("u", "delta", "z", "B", "C") else v) for k, v in x.items()}
    out, last, carries = torch.ops.videomap.selective_scan_fwd(*half.values(), True, True)
    assert out.dtype == torch.bfloat16 and last.dtype == torch.float32 and carries.dtype == torch.float32
    bsz, dim, seqlen = x["u"].shape
    assert carries.numel() == cuda_scan.carries_numel(bsz, dim, seqlen, x["A"].shape[1], True)


def test_mamba_ssm_path_refuses_a_gradient_through_the_last_state(fake_cuda):
    x = {k: (v.requires_grad_() if v is not None else None) for k, v in _inputs(2).items()}
    out, last = selective_scan(**x, delta_softplus=True, return_last_state=True)
    with pytest.raises(NotImplementedError, match="last_state"):
        (out.sum() + last.sum()).backward()


def test_mamba_ssm_path_compiles_with_matching_saved_state_size(fake_cuda):
    x = _inputs(3)
    leaves = {k: (v.clone().requires_grad_() if v is not None else None) for k, v in x.items()}

    def f(u, delta, A, B, C, D, z, delta_bias):
        return selective_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus=True)

    out = torch.compile(f, backend="aot_eager", fullgraph=True)(**leaves)
    out.sum().backward()
    torch.testing.assert_close(out, selective_scan_ref(**x, delta_softplus=True), rtol=1e-5, atol=1e-5)
    assert leaves["u"].grad is not None and fake_cuda.calls["bwd"] == 1
