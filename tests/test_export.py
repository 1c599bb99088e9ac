"""``videomap export``: checkpoints as torch.export (.pt2) and ONNX files that run and match."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tests.helpers import tiny_model
from videomap.cli import main


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


@pytest.mark.parametrize("name,kw", [("videomap_tiny", {}), ("videomamba_tiny", {})])
def test_export_onnx_matches_pytorch_in_onnxruntime(tmp_path, name, kw, capsys):
    ort = pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    model = tiny_model(name, num_classes=3, **kw).eval()
    model.save_pretrained(tmp_path / "ckpt")
    out = tmp_path / "m.onnx"
    assert main(["export", "--checkpoint", str(tmp_path / "ckpt"), "--format", "onnx", "--out", str(out)]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["checked_by"] == "onnxruntime" and res["max_abs_diff"] < 1e-4
    import onnx

    proto = onnx.load(str(out))
    ops = {n.op_type for n in proto.graph.node} | {n.op_type for f in proto.functions for n in f.node}
    assert "Scan" in ops  # the recurrence is a loop in the file, not unrolled
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    x = torch.randn(3, 3, 4, 32, 32)
    (y,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        assert np.abs(y - model(x).numpy()).max() < 1e-4


def test_export_errors_name_the_problem(tmp_path, saved, capsys):
    path, _ = saved
    assert main(["export", "--format", "pt2"]) == 2
    assert "--checkpoint" in capsys.readouterr().err
    assert main(["export", "--checkpoint", str(tmp_path / "missing")]) == 2
    assert "missing" in capsys.readouterr().err
