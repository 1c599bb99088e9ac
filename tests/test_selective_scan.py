"""Selective scan: every backend against a float64 sequential reference, gradients included."""

from __future__ import annotations

import logging
import math
import subprocess
import sys
import textwrap

import pytest
import torch

from videomap.ops import cpu_build, selective_scan, selective_scan_backend, selective_scan_ref, torch_scan
from videomap.ops.torch_scan import scan_backward, scan_forward

TOL = 1e-5  # fp32 vs float64 reference, relative to the largest reference magnitude per tensor

needs_kernel = pytest.mark.skipif(
    cpu_build.find_compiler() is None or cpu_build.get_kernel() is None,
    reason=f"C kernel unavailable (no compiler or build failed): {cpu_build.kernel_error()}",
)


def make_inputs(bsz, dim, seqlen, nstate, *, regime="normal", z=True, D=True, bias=True, softplus=True,
                seed=0, noncontig_bc=False):
    """float64 inputs.  regime: 'small' (Δ ≈ 0.01), 'normal', 'large' (softplus inputs up to +10)."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    if regime == "small":
        target = 0.01 * (1 + 0.2 * torch.rand(bsz, dim, seqlen, generator=g, dtype=torch.float64))
        delta = torch.log(torch.expm1(target)) if softplus else target  # softplus^-1 so Δ ≈ 0.01
        A = -torch.exp(rnd(dim, nstate))
    elif regime == "large":
        delta = 10 * torch.rand(bsz, dim, seqlen, generator=g, dtype=torch.float64)
        A = -16 * torch.rand(dim, nstate, generator=g, dtype=torch.float64) - 0.5
    else:
        delta = 0.5 * rnd(bsz, dim, seqlen) - (1.5 if softplus else -0.3)
        A = -torch.exp(rnd(dim, nstate))
    if not softplus:
        delta = delta.abs()
    if noncontig_bc:  # as produced by x_proj: (B, L, N) transposed views
        Bm, Cm = rnd(bsz, seqlen, nstate).transpose(1, 2), rnd(bsz, seqlen, nstate).transpose(1, 2)
    else:
        Bm, Cm = rnd(bsz, nstate, seqlen), rnd(bsz, nstate, seqlen)
    return dict(
        u=rnd(bsz, dim, seqlen), delta=delta, A=A, B=Bm, C=Cm,
        D=rnd(dim) if D else None,
        z=rnd(bsz, dim, seqlen) if z else None,
        delta_bias=0.3 * rnd(dim) if bias else None,
        delta_softplus=softplus,
    )


def run(fn, inputs, dtype, seed=1):
    """Outputs and gradients of every tensor input (all as float64) for random cotangents."""
    leaves = {k: v.detach().to(dtype).requires_grad_() for k, v in inputs.items() if torch.is_tensor(v)}
    kwargs = {**inputs, **leaves}
    out, last = fn(**kwargs, return_last_state=True)
    g = torch.Generator().manual_seed(seed)
    g_out = torch.randn(out.shape, generator=g, dtype=torch.float64)
    g_last = torch.randn(last.shape, generator=g, dtype=torch.float64)
    ((out.double() * g_out).sum() + (last.double() * g_last).sum()).backward()
    res = {"out": out.detach().double(), "last_state": last.detach().double()}
    res.update({f"d{k}": v.grad.double() for k, v in leaves.items()})
    return res


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-300)).item()


def assert_close_to_ref(got, ref, tol=TOL):
    assert got.keys() == ref.keys()
    errs = {k: rel_err(got[k], ref[k]) for k in ref}
    bad = {k: f"{e:.2e}" for k, e in errs.items() if not e <= tol}
    assert not bad, f"relative errors above {tol}: {bad}"


class TorchScanFn(torch.autograd.Function):
    """The PyTorch path with a chosen recurrence method (the operator always takes the default)."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, softplus, method):
        out, last, carries = scan_forward(u, delta, A, B, C, D, z, delta_bias, softplus, True, method)
        ctx.softplus, ctx.method = softplus, method
        ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, carries)
        return out, last

    @staticmethod
    def backward(ctx, dout, dlast):
        *inputs, carries = ctx.saved_tensors
        grads = scan_backward(*inputs, ctx.softplus, carries, dout, dlast, method=ctx.method)
        return (*grads, None, None)


def torch_path(method):
    def fn(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, return_last_state=False):
        out, last = TorchScanFn.apply(u, delta, A, B, C, D, z, delta_bias, delta_softplus, method)
        return (out, last) if return_last_state else out
    return fn


CASES = {
    "L1": dict(shape=(2, 5, 1, 16)),
    "L37-nochunk-multiple": dict(shape=(2, 3, 37, 16)),
    "L130-small-delta": dict(shape=(1, 4, 130, 16), regime="small"),
    "L130-large-delta": dict(shape=(1, 4, 130, 16), regime="large"),
    "N7-no-z-no-D": dict(shape=(2, 3, 67, 7), z=False, D=False),
    "N33-no-bias-no-softplus": dict(shape=(1, 2, 45, 33), bias=False, softplus=False),
    "bare": dict(shape=(1, 3, 50, 16), z=False, D=False, bias=False, softplus=False),
    "noncontig-BC": dict(shape=(2, 3, 70, 16), noncontig_bc=True, regime="large"),
    "E1-batch3": dict(shape=(3, 1, 70, 16), regime="large"),
    "L1100-tiles": dict(shape=(1, 2, 1100, 16)),
}


def case_inputs(name):
    spec = dict(CASES[name])
    shape = spec.pop("shape")
    return make_inputs(*shape, **spec, seed=sum(map(ord, name)))


_REF_CACHE: dict[str, dict] = {}


def reference(name):
    if name not in _REF_CACHE:
        _REF_CACHE[name] = run(selective_scan_ref, case_inputs(name), torch.float64)
    return _REF_CACHE[name]


@needs_kernel
@pytest.mark.parametrize("name", list(CASES))
def test_cpu_kernel_fp32_matches_float64_reference(name):
    inputs = case_inputs(name)
    assert selective_scan_backend(inputs["u"].float()) == "cpu-kernel"
    assert_close_to_ref(run(selective_scan, inputs, torch.float32), reference(name))


@pytest.fixture
def short_torch_chunks(monkeypatch):
    """Chunks of at most 16 steps, so short test sequences span several chunks (last one partial)."""
    monkeypatch.setattr(torch_scan, "_MAX_CHUNK", 16)
    monkeypatch.setattr(torch_scan, "_MIN_CHUNK", 1)


@pytest.mark.parametrize("method", ["loop", "doubling"])
@pytest.mark.parametrize("name", [n for n in CASES if n != "L1100-tiles"])
def test_torch_fallback_fp32_matches_float64_reference(name, method, short_torch_chunks):
    assert torch_scan.chunk_len(1, 4, 16, 130) == 16
    assert_close_to_ref(run(torch_path(method), case_inputs(name), torch.float32), reference(name))


def _random_shapes(n, seed=2024):
    g = torch.Generator().manual_seed(seed)
    return [tuple(int(torch.randint(lo, hi, (1,), generator=g)) for lo, hi in ((1, 4), (1, 9), (1, 300), (1, 40)))
            for _ in range(n)]


@pytest.mark.parametrize("shape", _random_shapes(4), ids=lambda s: "x".join(map(str, s)))
def test_random_shapes_all_paths(shape, monkeypatch):
    monkeypatch.setattr(torch_scan, "_MAX_CHUNK", 32)
    inputs = make_inputs(*shape, regime="normal", seed=hash(shape) % 1000)
    ref = run(selective_scan_ref, inputs, torch.float64)
    fns = [torch_path("loop"), torch_path("doubling")]
    if cpu_build.find_compiler() is not None and cpu_build.get_kernel() is not None:
        fns.append(selective_scan)
    for fn in fns:
        assert_close_to_ref(run(fn, inputs, torch.float32), ref)


def test_disable_env_selects_torch_path_and_stays_correct(monkeypatch, short_torch_chunks):
    monkeypatch.setenv("VIDEOMAP_DISABLE_KERNEL", "1")
    inputs = case_inputs("L130-large-delta")
    assert selective_scan_backend() == "torch"
    assert selective_scan_backend(inputs["u"].float()) == "torch"
    assert_close_to_ref(run(selective_scan, inputs, torch.float32), reference("L130-large-delta"))


@pytest.mark.parametrize("name", ["L37-nochunk-multiple", "N7-no-z-no-D"])
def test_float64_path_matches_reference_to_float64_precision(name):
    inputs = case_inputs(name)
    assert selective_scan_backend(inputs["u"]) == "torch"
    assert_close_to_ref(run(selective_scan, inputs, torch.float64), reference(name), tol=1e-12)


@pytest.mark.parametrize("method", [None, "doubling"])
@pytest.mark.parametrize("opts", [dict(), dict(z=False, D=False, bias=False, softplus=False)])
def test_gradcheck_float64(method, opts, monkeypatch):
    monkeypatch.setattr(torch_scan, "_MAX_CHUNK", 4)  # L = 9 -> chunks of 4, 4, 1
    monkeypatch.setattr(torch_scan, "_MIN_CHUNK", 1)
    inputs = make_inputs(1, 2, 9, 3, seed=3, **opts)
    names = [k for k, v in inputs.items() if torch.is_tensor(v)]
    leaves = [inputs[k].clone().requires_grad_() for k in names]

    def fn(*tensors):
        kw = dict(zip(names, tensors))
        if method is None:  # the public entry point; float64 runs the PyTorch path
            return selective_scan(**kw, delta_softplus=inputs["delta_softplus"], return_last_state=True)
        return torch_path(method)(**kw, delta_softplus=inputs["delta_softplus"], return_last_state=True)

    assert torch.autograd.gradcheck(fn, leaves, eps=1e-6, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("backend", ["kernel", "torch"])
def test_large_delta_stays_finite(backend, monkeypatch):
    if backend == "kernel" and (cpu_build.find_compiler() is None or cpu_build.get_kernel() is None):
        pytest.skip("C kernel unavailable")
    if backend == "torch":
        monkeypatch.setenv("VIDEOMAP_DISABLE_KERNEL", "1")
    bsz, dim, seqlen, nstate = 1, 4, 150, 16
    g = torch.Generator().manual_seed(5)
    # softplus inputs from +10 up to +40 (past the x > 20 threshold) and A = -16: Δ·A down to -640
    delta = (10 + 30 * torch.rand(bsz, dim, seqlen, generator=g)).requires_grad_()
    A = torch.full((dim, nstate), -16.0, requires_grad=True)
    u, z = torch.randn(bsz, dim, seqlen, generator=g), torch.randn(bsz, dim, seqlen, generator=g)
    Bm, Cm = torch.randn(bsz, nstate, seqlen, generator=g), torch.randn(bsz, nstate, seqlen, generator=g)
    u.requires_grad_()
    bias = torch.zeros(dim, requires_grad=True)
    out, last = selective_scan(u, delta, A, Bm, Cm, torch.ones(dim), z, bias, True, return_last_state=True)
    (out.sum() + last.sum()).backward()
    for t in (out, last, u.grad, delta.grad, A.grad, bias.grad):
        assert torch.isfinite(t).all()
    # with Ā ≈ 0 the state is just the current input: h_l = Δ_l B_l u_l
    dt = delta.detach()[..., -1:]
    expect_last = (dt * u.detach()[..., -1:]) * Bm[:, None, :, -1]
    assert torch.allclose(last, expect_last, rtol=1e-5, atol=1e-5)


def test_bf16_autocast_keeps_fp32_math_and_input_dtype():
    inputs = case_inputs("L130-large-delta")
    f32 = {k: (v.float() if torch.is_tensor(v) else v) for k, v in inputs.items()}
    expect = selective_scan(**f32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = selective_scan(**f32)
        bf = {k: (v.bfloat16() if torch.is_tensor(v) else v) for k, v in inputs.items()}
        got_bf16 = selective_scan(**bf)
    assert got.dtype == torch.float32
    assert torch.equal(got, expect)
    # bf16 inputs: computed in fp32 from the bf16 values, returned as bf16
    assert got_bf16.dtype == torch.bfloat16
    from_bf = selective_scan(**{k: (v.float() if torch.is_tensor(v) else v) for k, v in bf.items()})
    assert rel_err(got_bf16.double(), from_bf.double()) < 1e-2
    assert torch.isfinite(got_bf16).all()


def test_bf16_inputs_backward_gives_bf16_grads():
    inputs = case_inputs("L37-nochunk-multiple")
    leaves = {k: v.bfloat16().requires_grad_() for k, v in inputs.items() if torch.is_tensor(v)}
    out = selective_scan(**{**inputs, **leaves})
    out.float().square().sum().backward()
    for v in leaves.values():
        assert v.grad.dtype == torch.bfloat16 and torch.isfinite(v.grad.float()).all()


def test_return_convention():
    inputs = {k: (v.float() if torch.is_tensor(v) else v) for k, v in case_inputs("L37-nochunk-multiple").items()}
    out = selective_scan(**inputs)
    assert torch.is_tensor(out) and out.shape == inputs["u"].shape
    out2, last = selective_scan(**inputs, return_last_state=True)
    assert torch.equal(out, out2)
    assert last.shape == (2, 3, 16)


def _saved_numel(fn, inputs):
    """Total elements autograd keeps for backward (inputs it saves included)."""
    total = 0

    def pack(t):
        nonlocal total
        total += t.numel()
        return t

    leaves = {k: v.float().requires_grad_() for k, v in inputs.items() if torch.is_tensor(v)}
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn(**{**inputs, **leaves})
    return total, sum(v.numel() for v in leaves.values())


@pytest.mark.parametrize("backend", ["kernel", "torch"])
def test_autograd_saves_inputs_and_chunk_carries_only(backend, monkeypatch):
    if backend == "kernel" and (cpu_build.find_compiler() is None or cpu_build.get_kernel() is None):
        pytest.skip("C kernel unavailable")
    if backend == "torch":
        monkeypatch.setenv("VIDEOMAP_DISABLE_KERNEL", "1")
    bsz, dim, seqlen, nstate = 1, 8, 640, 16
    inputs = make_inputs(bsz, dim, seqlen, nstate)
    saved, n_inputs = _saved_numel(selective_scan, inputs)
    full_states = bsz * dim * seqlen * nstate
    assert saved <= n_inputs + full_states // 4, (saved, n_inputs, full_states)


@needs_kernel
def test_backend_reporting_and_log(caplog):
    from videomap.ops import scan as scan_mod

    scan_mod._logged.discard("cpu-kernel")
    with caplog.at_level(logging.INFO, logger="videomap.ops"):
        assert selective_scan_backend() == "cpu-kernel"
        assert selective_scan_backend(torch.zeros(1)) == "cpu-kernel"
        assert selective_scan_backend(torch.zeros(1, dtype=torch.float64)) == "torch"
    lines = [r.getMessage() for r in caplog.records if "cpu-kernel" in r.getMessage()]
    assert len(lines) == 1  # logged once
    assert selective_scan_backend("meta") == "torch"
    assert selective_scan_backend("cuda") in ("cuda-mamba_ssm", "torch")


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_reported_and_logged_backend_is_what_the_operator_runs(dtype, monkeypatch, caplog):
    """selective_scan_backend, the log line of a call and the operator answer one question: fp16 /
    bf16 sequences reach the operator as fp32 (or bf16 for inference), so they take the kernel."""
    from videomap.ops import scan as scan_mod
    from videomap.ops import scan_op

    ran = []
    real = scan_op.op_backend
    monkeypatch.setattr(scan_op, "op_backend", lambda u, nstate: ran.append(real(u, nstate)) or ran[-1])
    monkeypatch.setattr(scan_mod, "_logged", set())
    inputs = case_inputs("L37-nochunk-multiple")
    inputs = {k: (v.to(dtype) if k in ("u", "delta", "z") else v) for k, v in inputs.items()}
    with caplog.at_level(logging.INFO, logger="videomap.ops"):
        selective_scan(**inputs)
    expected = "torch" if dtype == torch.float64 else "cpu-kernel"
    assert selective_scan_backend(inputs["u"]) == expected and ran == [expected]
    assert [r.getMessage().split(" -- ")[0] for r in caplog.records] == [f"selective_scan backend: {expected}"]
    assert real(inputs["u"].contiguous(), 16) == ("cpu-kernel" if dtype in (torch.float32, torch.bfloat16) else "torch")


def test_kernel_unavailable_falls_back_with_one_warning(monkeypatch, caplog):
    monkeypatch.setattr(cpu_build, "_cached", None)
    monkeypatch.setattr(cpu_build, "_error", None)
    monkeypatch.setattr(cpu_build, "find_compiler", lambda: None)
    with caplog.at_level(logging.WARNING, logger="videomap.ops"):
        assert selective_scan_backend() == "torch"
        inputs = case_inputs("L37-nochunk-multiple")
        assert_close_to_ref(run(selective_scan, inputs, torch.float32), reference("L37-nochunk-multiple"))
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "no C compiler" in warnings[0].getMessage()


@needs_kernel
def test_concurrent_builds_publish_one_library_and_the_cache_is_reused(tmp_path):
    """Two processes compiling into one empty cache at once both succeed (private temp file, atomic
    rename); a later load finds the library and does not recompile."""
    script = textwrap.dedent("""
        import sys
        from videomap.ops import cpu_build
        k = cpu_build.build(cache_dir=sys.argv[1])
        print(k.path, k.compiled)
    """)
    cache = tmp_path / "cache"
    procs = [subprocess.Popen([sys.executable, "-c", script, str(cache)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    paths = {o[0].split()[0] for o in outs}
    assert len(paths) == 1
    libs = list(cache.rglob("*.so"))
    assert len(libs) == 1 and not list(cache.rglob("*.tmp"))
    mtime = libs[0].stat().st_mtime_ns

    again = cpu_build.build(cache_dir=cache)
    assert not again.compiled
    assert str(again.path) in paths and again.path.stat().st_mtime_ns == mtime


@needs_kernel
def test_cache_dir_env_and_first_build(tmp_path, monkeypatch):
    monkeypatch.setenv("VIDEOMAP_CACHE_DIR", str(tmp_path))
    assert cpu_build.cache_root() == tmp_path
    first = cpu_build.build()
    assert first.compiled and first.path.is_relative_to(tmp_path)
    assert first.lib.vm_scan_chunk() == first.chunk


@pytest.mark.parametrize(
    "arg,bad,match",
    [
        ("B", lambda t: t.transpose(1, 2), r"B must have shape \(batch, d_state, seqlen\) = \(2, 4, 6\)"),
        ("C", lambda t: t[:, :3], r"C must have shape"),
        ("D", lambda t: t[:-1], r"D must have shape \(dim,\) = \(3,\)"),
        ("delta", lambda t: t[..., :-1], r"delta must have shape"),
        ("z", lambda t: t[None], r"z must have shape"),
        ("delta_bias", lambda t: t[None], r"delta_bias must have shape"),
        ("A", lambda t: t.to(torch.complex64), r"A must be real"),
        ("u", lambda t: t[0], r"u must have shape"),
    ],
)
def test_shape_validation(arg, bad, match):
    inputs = {k: (v.float() if torch.is_tensor(v) else v) for k, v in make_inputs(2, 3, 6, 4).items()}
    inputs[arg] = bad(inputs[arg])
    with pytest.raises(ValueError, match=match):
        selective_scan(**inputs)
    with pytest.raises(ValueError, match=match):
        selective_scan_ref(**inputs)


def test_reference_matches_closed_form_for_one_step():
    # L = 1: h = Δ B u, y = C·h + D u, gated by silu(z)
    inputs = make_inputs(1, 2, 1, 3, seed=11)
    dt = torch.nn.functional.softplus(inputs["delta"] + inputs["delta_bias"][:, None])
    h = (dt * inputs["u"])[..., None] * inputs["B"][:, None, :, :].transpose(-1, -2)
    y = (h * inputs["C"][:, None].transpose(-1, -2)).sum(-1) + inputs["D"][:, None] * inputs["u"]
    y = y * torch.nn.functional.silu(inputs["z"])
    out = selective_scan_ref(**inputs)
    assert torch.allclose(out, y, rtol=1e-12, atol=1e-12)
    assert math.isclose(rel_err(selective_scan(**inputs), y), 0.0, abs_tol=1e-12)
