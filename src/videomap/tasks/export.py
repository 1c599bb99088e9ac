"""``videomap export``: a trained checkpoint as a deployable file, checked against PyTorch.

* ``pt2``: ``torch.export`` program (``torch.export.load`` runs it without this package's
  Python code, as long as the operator library is importable: ``import videomap.ops``).
* ``onnx``: ONNX with the selective scan in plain tensor ops, chunked and unrolled (or, with
  ``onnx_scan="loop"``, as an ONNX ``Scan`` loop: a small graph that onnxruntime runs about half
  as fast; with ``onnx_scan="kernel"``, as a custom node that onnxruntime runs at eager speed
  once :mod:`videomap.ops.onnx_runtime` has registered its library; :mod:`videomap.ops.onnx_scan`,
  docs/performance.md); checked with onnxruntime when it is installed.
* ``hf``: a transformers model directory (``config.json``, ``model.safetensors``, the
  ``video_preprocessor_config.json`` of :class:`videomap.data.video_processor.VideoMAPVideoProcessor`
  and the modules ``trust_remote_code=True`` imports), checked by loading it back; see
  docs/huggingface.md.

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

ExportFormat = Literal["pt2", "onnx", "hf"]
EXPORT_FORMATS = ("pt2", "onnx", "hf")


def _example(model, batch: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, model.in_chans, model.num_frames, model.img_size, model.img_size, generator=g)


def run_export(cfg: JobConfig, checkpoint: str, fmt: ExportFormat = "pt2", out: str | None = None,
               check_batch: int = 3, labels: str | None = None,
               onnx_scan: OnnxScanForm = "chunked") -> dict[str, Any]:
    """Export and verify; returns the path, the largest output difference on a fresh input of
    ``check_batch`` clips (the traced example had two: tracing with one would fix the batch at 1),
    and what checked it. ``labels`` (``hf`` only): a text file with one class name per line.
    ``onnx_scan``: how the ONNX file computes the selective scan (``"chunked"``, ``"loop"`` or
    ``"kernel"``, see :mod:`videomap.ops.onnx_scan`)."""
    if fmt not in EXPORT_FORMATS:
        raise ValueError(f"--format: expected one of {', '.join(EXPORT_FORMATS)}, got {fmt!r}")
    if checkpoint is None:
        raise ValueError("export needs --checkpoint (a save_pretrained directory or a weights file)")
    if labels is not None and fmt != "hf":
        raise ValueError("--labels: only used with --format hf")
    model = build_model_from_checkpoint(cfg, checkpoint, num_classes=None).eval()
    out = out or os.path.join(os.fspath(checkpoint) if os.path.isdir(checkpoint) else os.path.dirname(checkpoint),
                              "hf" if fmt == "hf" else f"model.{fmt}")
    if fmt == "hf":
        return _export_hf(cfg, model, out, labels, check_batch)
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
            if onnx_scan == "chunked":
                # each of the tens of thousands of unrolled nodes carries about 1 KB of tracing
                # metadata (stack trace, FX node); dropping it more than halves the file
                for node in program.model.graph.all_nodes():
                    node.metadata_props.clear()
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
        import onnxruntime  # noqa: F401
    except ImportError:
        log.warning("onnxruntime is not installed: the ONNX file was written but not run")
        return None, "none (onnxruntime missing)"
    from ..ops.cpu_build import KernelUnavailable
    from ..ops.onnx_runtime import inference_session

    try:
        session = inference_session(path)  # registers the operator library when the file needs it
    except KernelUnavailable as e:
        raise ValueError(f"--onnx-scan kernel: the onnxruntime operator library could not be built ({e}); "
                         "export with --onnx-scan chunked instead") from e
    (y,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    return torch.from_numpy(y), "onnxruntime"


def read_labels(path: str, num_classes: int) -> dict[int, str]:
    """``{i: name}`` from a text file with one class name per line (blank lines ignored)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--labels: {path} not found (expected a text file, one class name per line)")
    with open(path, encoding="utf-8") as f:
        names = [line.strip() for line in f if line.strip()]
    if len(names) != num_classes:
        raise ValueError(f"--labels: {path} has {len(names)} names but the classifier has {num_classes} outputs")
    if len(set(names)) != len(names):
        raise ValueError(f"--labels: {path} names a class twice")
    return dict(enumerate(names))


def _export_hf(cfg: JobConfig, model: torch.nn.Module, out: str, labels: str | None,
               check_batch: int) -> dict[str, Any]:
    """A transformers directory: the model (classifier or encoder), its video processor with the
    job's test-time sampling, and the remote code; reloaded and compared with the model."""
    try:
        from ..data.video_processor import VideoMAPVideoProcessor
        from ..models.hf import (
            AUTO_MAP,
            PROCESSOR_AUTO_MAP,
            VideoMAPForVideoClassification,
            VideoMAPModel,
            write_remote_code,
        )
    except ImportError as e:
        raise ValueError("--format hf needs transformers: pip install 'videomap-torch[hf]'") from e
    classes = int(model.num_classes)
    if labels is not None and classes == 0:
        raise ValueError("--labels: the checkpoint is an encoder without a classifier")
    id2label = read_labels(labels, classes) if labels is not None else None
    hf_cls = VideoMAPForVideoClassification if classes > 0 else VideoMAPModel
    t0 = time.time()
    hf_model = hf_cls.from_backbone(model, id2label=id2label)
    hf_model.config.auto_map = {k: v for k, v in AUTO_MAP.items()
                                if classes > 0 or k != "AutoModelForVideoClassification"}
    hf_model.save_pretrained(out)
    d = cfg.data
    processor = VideoMAPVideoProcessor(num_frames=model.num_frames, crop_size=model.img_size,
                                       short_side=d.short_side, sampling=d.sampling, frame_stride=d.frame_stride)
    processor.auto_map = dict(PROCESSOR_AUTO_MAP)
    processor.save_pretrained(out)
    write_remote_code(out)
    x = _example(model, check_batch, seed=1)
    with torch.no_grad():
        loaded = hf_cls.from_pretrained(out).eval()
        got = loaded(pixel_values=x)
        got = got.logits if classes > 0 else got.last_hidden_state
        want = model(x) if classes > 0 else model.forward_features(x)
    result = {"path": os.path.abspath(out), "format": "hf", "seconds": round(time.time() - t0, 1),
              "checked_by": f"{hf_cls.__name__}.from_pretrained", "max_abs_diff": float((got - want).abs().max()),
              "outputs": list(want.shape)}
    log.info("exported a transformers %s to %s (max |difference| vs PyTorch %.2e)", hf_cls.__name__, out,
             result["max_abs_diff"])
    return result
