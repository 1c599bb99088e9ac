"""``videomap export``: a trained checkpoint as a deployable file, checked against PyTorch.

* ``pt2``: ``torch.export`` program (``torch.export.load`` runs it without this package's
  Python code, as long as the operator library is importable: ``import videomap.ops``).
* ``onnx``: ONNX with the selective scan as an ONNX ``Scan`` loop (or, with
  ``onnx_scan="chunked"``, in plain tensor ops, chunked and unrolled; :mod:`videomap.ops.onnx_scan`);
  checked with onnxruntime when it is installed.

The batch dimension is dynamic; clip length and resolution are the model's.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any, Literal

import torch

from ..config import JobConfig
from ..ops.onnx_scan import OnnxScanForm
from .common import build_model_from_checkpoint

log = logging.getLogger(__name__)

ExportFormat = Literal["pt2", "onnx"]


def _example(model, batch: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, model.in_chans, model.num_frames, model.img_size, model.img_size, generator=g)


def run_export(cfg: JobConfig, checkpoint: str, fmt: ExportFormat = "pt2", out: str | None = None,
               check_batch: int = 3, onnx_scan: OnnxScanForm = "loop") -> dict[str, Any]:
    """Export and verify; returns the path, the largest output difference on a fresh input of
    ``check_batch`` clips (the traced example had two: tracing with one would fix the batch at 1),
    and what checked it. ``onnx_scan``: how the ONNX file computes the selective scan
    (``"loop"`` or ``"chunked"``, see :mod:`videomap.ops.onnx_scan`)."""
    if fmt not in ("pt2", "onnx"):
        raise ValueError(f"--format: expected pt2 or onnx, got {fmt!r}")
    if checkpoint is None:
        raise ValueError("export needs --checkpoint (a save_pretrained directory or a weights file)")
    model = build_model_from_checkpoint(cfg, checkpoint, num_classes=None).eval()
    out = out or os.path.join(os.fspath(checkpoint) if os.path.isdir(checkpoint) else os.path.dirname(checkpoint),
                              f"model.{fmt}")
    x = _example(model, 2)
    batch = torch.export.Dim("batch", min=1, max=1024)
    t0 = time.time()
    with torch.no_grad():
        want = model(_example(model, check_batch, seed=1))
        if fmt == "pt2":
            ep = torch.export.export(model, (x,), dynamic_shapes={"video": {0: batch}})
            torch.export.save(ep, out)
            got = torch.export.load(out).module()(_example(model, check_batch, seed=1))
            checked_by = "torch.export.load"
        else:
            try:
                import onnx  # noqa: F401
                import onnxscript  # noqa: F401
            except ImportError as e:
                raise ValueError("--format onnx needs the packages onnx and onnxscript: "
                                 "pip install 'videomap-torch[export]'") from e
            from ..ops.onnx_scan import onnx_translation_table

            table = onnx_translation_table(onnx_scan)
            # onnxscript's graph optimizer takes over ten minutes on the thousands of nodes of the
            # unrolled scan; onnxruntime optimizes the graph itself when it loads it.
            program = torch.onnx.export(model, (x,), dynamo=True, dynamic_shapes={"video": {0: batch}},
                                        custom_translation_table=table, verbose=False,
                                        optimize=onnx_scan != "chunked")
            program.save(out)
            got, checked_by = _run_onnxruntime(out, _example(model, check_batch, seed=1))
    result = {"path": os.path.abspath(out), "format": fmt, "seconds": round(time.time() - t0, 1),
              "checked_by": checked_by}
    if fmt == "onnx":
        result["onnx_scan"] = onnx_scan
    if got is not None:
        result["max_abs_diff"] = float((got - want).abs().max())
        result["outputs"] = list(want.shape)
    log.info("exported %s to %s%s", fmt, out,
             f" (max |difference| vs PyTorch {result['max_abs_diff']:.2e}, {checked_by})" if got is not None else "")
    return result


def _run_onnxruntime(path: str, x: torch.Tensor) -> tuple[torch.Tensor | None, str]:
    try:
        import onnxruntime as ort
    except ImportError:
        log.warning("onnxruntime is not installed: the ONNX file was written but not run")
        return None, "none (onnxruntime missing)"
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    (y,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    return torch.from_numpy(y), "onnxruntime"
