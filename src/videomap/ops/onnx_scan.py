"""ONNX translation of the selective-scan operator, for ``torch.onnx.export(dynamo=True)``.

The recurrence becomes an ONNX ``Scan`` over the sequence axis whose body is one step,
``h = exp(Δ_l A) * h + Δ_l B_l u_l; y_l = C_l · h``; everything around it (bias, softplus, the
D skip, the silu(z) gate) is plain ONNX. The discretised inputs are materialised as
(L, B, E, N) tensors before the loop, which is fine for inference at the sizes ONNX runtimes
serve. Only the forward exists: an exported graph is for inference, so tracing must run under
``torch.no_grad()`` (:func:`videomap.tasks.export.run_export` does).

Needs the optional packages ``onnx`` and ``onnxscript`` (``pip install videomap-torch[export]``).
"""

from __future__ import annotations

from typing import Any


def _translate(u, delta, A, B, C, D, z, delta_bias, softplus: bool = False, save_carries: bool = False):
    """``videomap::selective_scan_fwd`` in ONNX ops (traced: Python ``if`` picks the optional parts)."""
    from onnxscript import opset18 as op

    from ._onnx_scan_fn import ssm_scan

    if save_carries:
        raise ValueError("ONNX export of the selective scan is inference only: trace under torch.no_grad()")

    def axes(*a: int):
        return op.Constant(value_ints=list(a))

    if delta_bias is not None:
        delta = op.Add(delta, op.Unsqueeze(delta_bias, axes(-1)))
    if softplus:
        delta = op.Softplus(delta)
    dt = op.Unsqueeze(op.Transpose(delta, perm=[2, 0, 1]), axes(-1))           # (L, B, E, 1)
    a = op.Exp(op.Mul(dt, A))                                                   # (L, B, E, N)
    du = op.Mul(dt, op.Unsqueeze(op.Transpose(u, perm=[2, 0, 1]), axes(-1)))    # (L, B, E, 1)
    b = op.Mul(du, op.Unsqueeze(op.Transpose(B, perm=[2, 0, 1]), axes(2)))      # (L, B, E, N)
    c = op.Unsqueeze(op.Transpose(C, perm=[2, 0, 1]), axes(2))                  # (L, B, 1, N)
    h0 = op.Mul(op.Squeeze(op.Slice(b, axes(0), axes(1), axes(0)), axes(0)), op.Constant(value_float=0.0))
    last, y = ssm_scan(a, b, c, h0)
    out = op.Transpose(y, perm=[1, 2, 0])                                       # (B, E, L)
    if D is not None:
        out = op.Add(out, op.Mul(u, op.Unsqueeze(D, axes(-1))))
    if z is not None:
        out = op.Mul(out, op.Mul(z, op.Sigmoid(z)))
    return out, last, op.ConstantOfShape(axes(0))  # no chunk states: an empty float tensor


def onnx_translation_table() -> dict[Any, Any]:
    """``custom_translation_table`` for :func:`torch.onnx.export` covering videomap's operators."""
    import torch

    from . import scan_op  # noqa: F401  (registers the operator)

    return {torch.ops.videomap.selective_scan_fwd.default: _translate}
