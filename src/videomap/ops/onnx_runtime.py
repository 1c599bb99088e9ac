"""onnxruntime sessions that know videomap's custom operator.

An ONNX file exported with ``onnx_scan="kernel"`` holds each selective scan as one node
``videomap::SelectiveScan``, computed by the same C kernel as eager PyTorch (``csrc/
ort_selective_scan.c``, built on first use like the kernel itself, cached per machine). It runs at
about eager speed where the plain-ONNX forms cannot (docs/performance.md, Exported runtimes), but
only in onnxruntime with the library registered:

    sess = videomap.ops.onnx_runtime.inference_session("model.onnx")

or, from any onnxruntime binding, ``SessionOptions.register_custom_ops_library(custom_ops_library())``
(C/C++: ``RegisterCustomOpsLibrary``), the library being a plain shared object with no Python or
torch dependency. Files exported with the other forms need nothing of this module.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from . import cpu_build

SOURCE = Path(__file__).resolve().parent / "csrc" / "ort_selective_scan.c"
LIB_NAME = "libvideomap_onnxruntime_ops.so"
DOMAIN = "videomap"
OP_TYPE = "SelectiveScan"


def custom_ops_library(cache_dir: str | os.PathLike | None = None) -> str:
    """Path of the onnxruntime custom-operator library, compiled on first call (needs a C
    compiler, like the eager kernel); raises ``cpu_build.KernelUnavailable`` naming the reason."""
    return str(cpu_build.build(cache_dir, source=SOURCE, lib_name=LIB_NAME).path)


def uses_custom_ops(path: str | os.PathLike) -> bool:
    """Whether an ONNX file contains videomap's custom operator (read without its weights)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return any(n.domain == DOMAIN and n.op_type == OP_TYPE for n in model.graph.node)


def session_options(threads: int | None = None) -> Any:
    """``onnxruntime.SessionOptions`` with the custom-operator library registered; ``threads``
    sets onnxruntime's intra-op pool (the kernel sizes its own OpenMP threads as in PyTorch)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads is not None:
        opts.intra_op_num_threads = int(threads)
    opts.register_custom_ops_library(custom_ops_library())
    return opts


def inference_session(path: str | os.PathLike, threads: int | None = None,
                      providers: tuple[str, ...] = ("CPUExecutionProvider",)) -> Any:
    """An ``onnxruntime.InferenceSession`` for any exported file: the custom-operator library is
    registered only when the file uses it, so files of the plain forms need no compiler."""
    import onnxruntime as ort

    if uses_custom_ops(path):
        opts = session_options(threads)
    else:
        opts = ort.SessionOptions()
        if threads is not None:
            opts.intra_op_num_threads = int(threads)
    return ort.InferenceSession(str(path), opts, providers=list(providers))
