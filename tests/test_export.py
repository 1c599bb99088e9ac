"""``videomap export``: checkpoints as torch.export (.pt2) and ONNX files that run and match."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tests.helpers import tiny_model
from videomap.cli import main
from videomap.ops import selective_scan, selective_scan_ref


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "final"
    model = tiny_model("videomap_tiny", num_classes=3).eval()
    model.save_pretrained(path)
    return str(path), model


def test_export_pt2_runs_and_matches_with_any_batch(tmp_path, saved, capsys):
    path, model = saved
    out = tmp_path / "m.pt2"
    assert main(["export", "--checkpoint", path, "--format", "pt2", "--out", str(out)]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["checked_by"] == "torch.export.load" and res["max_abs_diff"] < 1e-5
    program = torch.export.load(str(out)).module()
    x = torch.randn(3, 3, 4, 32, 32)  # a batch size the export never saw
    with torch.no_grad():
        assert torch.allclose(program(x), model(x), atol=1e-5)


@pytest.mark.parametrize("name,scan", [("videomap_tiny", None), ("videomamba_tiny", None),
                                       ("videomamba_tiny", "loop"), ("videomap_tiny", "kernel")])
def test_export_onnx_matches_pytorch_in_onnxruntime(tmp_path, name, scan, capsys):
    pytest.importorskip("onnxruntime")
    if scan == "kernel":
        _needs_compiler()
    from videomap.ops.onnx_runtime import inference_session, uses_custom_ops

    torch.manual_seed(0)
    model = tiny_model(name, num_classes=3).eval()
    model.save_pretrained(tmp_path / "ckpt")
    out = tmp_path / "m.onnx"
    form = [] if scan is None else ["--onnx-scan", scan]
    assert main(["export", "--checkpoint", str(tmp_path / "ckpt"), "--format", "onnx", "--out", str(out), *form]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["checked_by"] == "onnxruntime" and res["max_abs_diff"] < 1e-4
    assert res["onnx_scan"] == (scan or "chunked")
    import onnx

    proto = onnx.load(str(out))
    ops = {n.op_type for n in proto.graph.node} | {n.op_type for f in proto.functions for n in f.node}
    # the default unrolls the recurrence into plain tensor ops; "loop" keeps it as an ONNX Scan
    assert ("Scan" in ops) == (scan == "loop")
    if scan is None:  # the tracing metadata of the unrolled nodes is dropped
        assert not any(n.metadata_props for n in proto.graph.node)
    assert uses_custom_ops(out) == (scan == "kernel")
    session = inference_session(out)
    x = torch.randn(3, 3, 4, 32, 32)
    (y,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        assert np.abs(y - model(x).numpy()).max() < 1e-4


class _Scans(torch.nn.Module):
    """The selective scan over a sequence and over its reverse (as the bidirectional mixer runs
    it), summed, plus the forward direction's last state: both directions in one graph."""

    def __init__(self, dim: int, nstate: int, d: bool, bias: bool, softplus: bool):
        super().__init__()
        g = torch.Generator().manual_seed(1)
        self.A = torch.nn.Parameter(-torch.exp(torch.randn(2, dim, nstate, generator=g)))
        self.D = torch.nn.Parameter(torch.randn(2, dim, generator=g)) if d else None
        self.bias = torch.nn.Parameter(torch.randn(2, dim, generator=g)) if bias else None
        self.softplus = softplus

    def direction(self, i: int, u, delta, B, C, z):
        return selective_scan(u, delta, self.A[i], B, C, None if self.D is None else self.D[i], z,
                              None if self.bias is None else self.bias[i], self.softplus, return_last_state=True)

    def forward(self, u, delta, B, C, z=None):
        y, last = self.direction(0, u, delta, B, C, z)
        flip = [t if t is None else t.flip(-1) for t in (u, delta, B, C, z)]
        y_b, _ = self.direction(1, *flip)
        return y + y_b.flip(-1), last

    def reference(self, u, delta, B, C, z=None):
        """The same in float64 through the sequential reference scan."""
        def ref(i, *xs):
            xs = [t if t is None else t.double() for t in xs]
            p = [t if t is None else t.detach().double()[i] for t in (self.A, self.D, self.bias)]
            return selective_scan_ref(xs[0], xs[1], p[0], xs[2], xs[3], p[1], xs[4], p[2], self.softplus,
                                      return_last_state=True)

        y, last = ref(0, u, delta, B, C, z)
        y_b, _ = ref(1, *[t if t is None else t.flip(-1) for t in (u, delta, B, C, z)])
        return y + y_b.flip(-1), last


def _scan_inputs(batch, dim, nstate, seqlen, with_z, delta_scale=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    u, z = torch.randn(batch, dim, seqlen, generator=g), torch.randn(batch, dim, seqlen, generator=g)
    delta = torch.randn(batch, dim, seqlen, generator=g) * delta_scale
    B, C = torch.randn(batch, nstate, seqlen, generator=g), torch.randn(batch, nstate, seqlen, generator=g)
    return (u, delta, B, C) + ((z,) if with_z else ())


def _onnx_scans(tmp_path, module, inputs, **table):
    from videomap.ops.onnx_scan import onnx_translation_table

    ort = pytest.importorskip("onnxruntime")
    names = ["u", "delta", "B", "C", "z"][:len(inputs)]
    batch = torch.export.Dim("batch", min=1, max=64)
    with torch.no_grad():
        program = torch.onnx.export(module, inputs, dynamo=True, verbose=False,
                                    dynamic_shapes={n: {0: batch} for n in names},
                                    custom_translation_table=onnx_translation_table(**table))
    path = tmp_path / "scan.onnx"
    program.save(str(path))
    from videomap.ops.onnx_runtime import inference_session

    session = inference_session(path)  # registers the custom-operator library for the kernel form
    assert isinstance(session, ort.InferenceSession)
    import onnx

    proto = onnx.load(str(path))
    ops = {n.op_type for n in proto.graph.node} | {n.op_type for f in proto.functions for n in f.node}
    return (lambda *xs: session.run(None, {i.name: x.numpy() for i, x in zip(session.get_inputs(), xs)})), ops


def _matches_reference_on_a_new_batch(run, module, dim, nstate, seqlen, with_z, softplus):
    """Run the exported scans on a batch size other than the traced one and compare y and the last
    state with the float64 reference; returns the inputs and y."""
    fresh = _scan_inputs(3, dim, nstate, seqlen, with_z, seed=5)
    if not softplus:
        fresh = (fresh[0], fresh[1].abs()) + fresh[2:]  # Δ must be >= 0 without softplus
    y, last = run(*fresh)
    want_y, want_last = module.reference(*fresh)
    assert np.abs(y - want_y.numpy()).max() < 1e-4 * max(1.0, float(want_y.abs().max()))
    assert np.abs(last - want_last.numpy()).max() < 1e-4 * max(1.0, float(want_last.abs().max()))
    return fresh, y


def _needs_compiler():
    from videomap.ops.cpu_build import find_compiler

    if find_compiler() is None:
        pytest.skip("no C compiler: the onnxruntime operator library cannot be built")


@pytest.mark.parametrize("seqlen,with_z,d,bias,softplus,nstate", [
    (37, True, True, True, True, 4),
    (37, False, False, False, False, 4),   # no z / D / bias: absent optional inputs of the node
    (70, True, True, True, True, 20),      # N padded to two state vectors, more than one kernel chunk
])
def test_onnx_kernel_scan_matches_the_sequential_reference(tmp_path, seqlen, with_z, d, bias, softplus, nstate):
    """The custom node, run by the C kernel inside onnxruntime, equals the float64 reference."""
    _needs_compiler()
    dim = 6
    module = _Scans(dim, nstate, d, bias, softplus).eval()
    inputs = _scan_inputs(2, dim, nstate, seqlen, with_z)
    if not softplus:
        inputs = (inputs[0], inputs[1].abs()) + inputs[2:]
    run, ops = _onnx_scans(tmp_path, module, inputs, form="kernel")
    assert "SelectiveScan" in ops and not ops & {"Scan", "Loop", "Exp"}
    _matches_reference_on_a_new_batch(run, module, dim, nstate, seqlen, with_z, softplus)


def test_onnx_kernel_node_rejects_inconsistent_shapes():
    """A hand-made graph feeding the node mismatched shapes gets onnxruntime's error with ours inside."""
    _needs_compiler()
    ort = pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper

    from videomap.ops.onnx_runtime import session_options

    names = ["u", "delta", "A", "B", "C"]
    node = helper.make_node("SelectiveScan", names, ["y", "last"], domain="videomap", softplus=1)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in names],
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("y", "last")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("videomap", 1)])
    session = ort.InferenceSession(model.SerializeToString(), session_options(), providers=["CPUExecutionProvider"])
    ok = {"u": np.ones((1, 3, 5), np.float32), "delta": np.ones((1, 3, 5), np.float32),
          "A": -np.ones((3, 2), np.float32), "B": np.ones((1, 2, 5), np.float32), "C": np.ones((1, 2, 5), np.float32)}
    y, last = session.run(None, ok)
    assert y.shape == (1, 3, 5) and last.shape == (1, 3, 2) and np.isfinite(y).all()
    with pytest.raises(Exception, match="inconsistent shapes"):
        session.run(None, {**ok, "B": np.ones((1, 2, 4), np.float32)})
    with pytest.raises(Exception, match="expected u"):
        session.run(None, {**ok, "A": np.ones((3,), np.float32)})


@pytest.mark.parametrize("seqlen,chunk,with_z,d,bias,softplus", [
    (37, 8, True, True, True, True),     # length not divisible by the chunk: padded after softplus
    (37, 8, False, False, False, False),  # no z / D / bias, raw delta (kept positive below)
    (24, 8, True, True, True, True),      # divisible
    (5, 16, True, False, True, True),     # one chunk shorter than the chunk length
    (9, 1, True, True, True, True),       # chunk 1: the carry recurrence does everything
])
def test_onnx_chunked_scan_matches_the_sequential_reference(tmp_path, seqlen, chunk, with_z, d, bias, softplus):
    dim, nstate = 6, 4
    module = _Scans(dim, nstate, d, bias, softplus).eval()
    inputs = _scan_inputs(2, dim, nstate, seqlen, with_z)
    if not softplus:
        inputs = (inputs[0], inputs[1].abs()) + inputs[2:]  # Δ must be >= 0 without softplus
    run, ops = _onnx_scans(tmp_path, module, inputs, form="chunked", chunk=chunk)
    assert not ops & {"Scan", "Loop"}
    fresh, y = _matches_reference_on_a_new_batch(run, module, dim, nstate, seqlen, with_z, softplus)
    with torch.no_grad():
        eager_y, _ = module(*fresh)
    assert np.abs(y - eager_y.numpy()).max() < 1e-4 * max(1.0, float(eager_y.abs().max()))


def test_onnx_chunked_scan_stays_finite_for_large_steps(tmp_path):
    """Δ·A down to about -1e3 per step: a form dividing by cumulative decays overflows here."""
    dim, nstate = 4, 16
    module = _Scans(dim, nstate, True, True, True).eval()
    with torch.no_grad():
        module.A.copy_(-torch.arange(1, nstate + 1.0).expand(2, dim, nstate) * 4)
    inputs = _scan_inputs(1, dim, nstate, 50, True, delta_scale=30.0)
    run, _ = _onnx_scans(tmp_path, module, inputs, form="chunked", chunk=32)
    y, last = run(*inputs)
    want_y, want_last = module.reference(*inputs)
    assert np.isfinite(y).all() and np.isfinite(last).all()
    assert np.abs(y - want_y.numpy()).max() < 1e-4 * max(1.0, float(want_y.abs().max()))


def test_onnx_loop_form_matches(tmp_path):
    dim, nstate = 6, 4
    module = _Scans(dim, nstate, True, True, True).eval()
    inputs = _scan_inputs(2, dim, nstate, 13, True)
    run, ops = _onnx_scans(tmp_path, module, inputs, form="loop")
    assert "Scan" in ops
    y, _ = run(*inputs)
    assert np.abs(y - module.reference(*inputs)[0].numpy()).max() < 1e-4


def test_onnx_translation_rejects_bad_options():
    from videomap.ops.onnx_scan import onnx_translation_table

    with pytest.raises(ValueError, match="chunked, loop"):
        onnx_translation_table(form="unrolled")
    with pytest.raises(ValueError, match="positive integer"):
        onnx_translation_table(chunk=0)


def test_exported_softplus_is_torch_softplus():
    """The exported Δ = softplus(delta + bias) is the overflow-free form, equal to torch's
    thresholded softplus from -300 to 300 (evaluated by onnxscript's eager mode)."""
    pytest.importorskip("onnxruntime")
    from onnxscript import opset18 as op

    from videomap.ops.onnx_scan import _prepare

    x = torch.tensor([300.0, 100.0, 30.0, 20.5, 20.0, 5.0, 1e-3, 0.0, -5.0, -30.0, -100.0, -300.0])
    def run(softplus):  # onnxscript's eager mode returns its own tensor type, holding the array
        out = _prepare(op, x.numpy(), None, softplus)
        return np.asarray(getattr(out, "value", out))

    y = run(True)
    assert np.isfinite(y).all()
    assert np.abs(y - torch.nn.functional.softplus(x).numpy()).max() < 1e-6
    assert np.array_equal(run(False), x.numpy())


def test_export_errors_name_the_problem(tmp_path, saved, capsys):
    path, _ = saved
    assert main(["export", "--checkpoint", path, "--format", "pt2", "--onnx-scan", "loop"]) == 2
    assert "--onnx-scan applies to --format onnx" in capsys.readouterr().err
    assert main(["export", "--format", "pt2"]) == 2
    assert "--checkpoint" in capsys.readouterr().err
    assert main(["export", "--checkpoint", str(tmp_path / "missing")]) == 2
    assert "missing" in capsys.readouterr().err
