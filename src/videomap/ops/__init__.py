"""Low-level operators: the Mamba-1 selective scan (fast C kernel on CPU, mamba_ssm on CUDA,
chunked PyTorch fallback everywhere else; :func:`.scan_op.choose_backend` alone decides which),
its sequential reference, its ONNX translation and onnxruntime custom operator
(:mod:`.onnx_runtime`), and Mamba's causal convolution + SiLU.

Importing this package registers ``torch.ops.videomap.selective_scan_fwd`` / ``_bwd`` (see
:mod:`.scan_op`), which is what a loaded ``torch.export`` program of a model calls."""

from .conv import causal_conv1d_silu, causal_depthwise_conv1d
from .reference import selective_scan_ref
from .scan import selective_scan, selective_scan_backend
from .scan_saved import scan_arguments, scan_backward_saved, scan_forward_saving

__all__ = ["causal_conv1d_silu", "causal_depthwise_conv1d", "scan_arguments", "scan_backward_saved",
           "scan_forward_saving", "selective_scan", "selective_scan_backend", "selective_scan_ref"]
