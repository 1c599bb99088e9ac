"""ONNX translation of the selective-scan operator, for ``torch.onnx.export(dynamo=True)``.

Three forms of the recurrence h_l = exp(Δ_l A) ⊙ h_{l-1} + Δ_l B_l u_l, y_l = C_l · h_l:

* ``"chunked"`` (default): plain tensor ops, no loop node. The (static) sequence is padded to P chunks of K
  steps (Δ = 0 after softplus in the padding: decay 1, input 0). All P chunks advance together,
  one unrolled step at a time from a zero state, each step contracting its local state with C at
  once; a short unrolled recurrence over the P chunk ends gives the true state entering every
  chunk; each step then adds C_l · (exp(A ⊗ cumsum Δ) ⊙ entering state), the decay from its
  chunk's start. Only decay factors in (0, 1] appear (A < 0, Δ >= 0: no division by a cumulative
  decay, which overflows for realistic Δ). Every operation works on one step's (B, P, N, E)
  tensors, which stay in cache; single passes over (B, P, K, N, E) tensors measured several times
  slower per element. The graph is static in the sequence length; the batch stays dynamic. A whole
  model's graph gets tens of thousands of small nodes (docs/performance.md, Exported runtimes).
* ``"loop"``: an ONNX ``Scan`` whose body is one step (:mod:`._onnx_scan_fn`). A small graph;
  onnxruntime runs the body once per token, about half as fast as the chunked form.
* ``"kernel"``: one custom node ``videomap::SelectiveScan`` per scan (with the D skip and the
  silu(z) gate), run by the same C kernel as eager PyTorch once onnxruntime has the library of
  :mod:`.onnx_runtime` registered: eager speed, but only in onnxruntime with that library.

In the plain forms everything around the recurrence (bias, softplus, the D skip, the silu(z)
gate) is plain ONNX.
Only the forward exists: an exported graph is for inference, so tracing must run under
``torch.no_grad()`` (:func:`videomap.tasks.export.run_export` does).

Needs the optional packages ``onnx`` and ``onnxscript`` (``pip install videomap-torch[export]``).
"""

from __future__ import annotations

import functools
from typing import Any, Literal

OnnxScanForm = Literal["chunked", "loop", "kernel"]
FORMS: tuple[str, ...] = ("chunked", "loop", "kernel")
DEFAULT_CHUNK = 32


def _axes(op, *a: int):
    return op.Constant(value_ints=list(a))


def _prepare(op, delta, delta_bias, softplus: bool):
    if delta_bias is not None:
        delta = op.Add(delta, op.Unsqueeze(delta_bias, _axes(op, -1)))
    # softplus(x) = relu(x) + log(1 + exp(-|x|)): no overflow for any x, within 1e-9 of torch's
    # thresholded softplus (tests/test_export.py), and these five element-wise kernels take about
    # half the time of onnxruntime's own Softplus (about 7 ns per element on 2 cores).
    if not softplus:
        return delta
    one = op.Constant(value_float=1.0)
    return op.Add(op.Relu(delta), op.Log(op.Add(op.Exp(op.Neg(op.Abs(delta))), one)))


def _finish(op, y, u, D, z):
    if D is not None:
        y = op.Add(y, op.Mul(u, op.Unsqueeze(D, _axes(op, -1))))
    if z is not None:
        y = op.Mul(y, op.Mul(z, op.Sigmoid(z)))
    return y


def _static_len(value) -> int:
    dims = getattr(value, "shape", None)
    seqlen = None if dims is None or len(dims) != 3 else dims[2]
    if not isinstance(seqlen, int):
        raise ValueError("ONNX export of the selective scan needs a static sequence length "
                         f"(the clip length and resolution are fixed at export), got shape {dims}")
    return seqlen


def _loop(op, u, dt, A, B, C):
    """(y, last) through the one-step ``Scan`` loop."""
    from ._onnx_scan_fn import ssm_scan

    dt4 = op.Unsqueeze(op.Transpose(dt, perm=[2, 0, 1]), _axes(op, -1))          # (L, B, E, 1)
    a = op.Exp(op.Mul(dt4, A))                                                    # (L, B, E, N)
    du = op.Mul(dt4, op.Unsqueeze(op.Transpose(u, perm=[2, 0, 1]), _axes(op, -1)))
    b = op.Mul(du, op.Unsqueeze(op.Transpose(B, perm=[2, 0, 1]), _axes(op, 2)))    # (L, B, E, N)
    c = op.Unsqueeze(op.Transpose(C, perm=[2, 0, 1]), _axes(op, 2))               # (L, B, 1, N)
    h0 = op.Mul(op.Squeeze(op.Slice(b, _axes(op, 0), _axes(op, 1), _axes(op, 0)), _axes(op, 0)),
                op.Constant(value_float=0.0))
    last, y = ssm_scan(a, b, c, h0)
    return op.Transpose(y, perm=[1, 2, 0]), last                                  # (B, E, L)


def _chunk_major(op, x, n: int, k: int):
    """(B, X, P*K) -> (B, P, K, X): the channel axis innermost, so that every broadcast below runs
    over contiguous spans of E (onnxruntime is slow on short spans)."""
    return op.Reshape(op.Transpose(x, perm=[0, 2, 1]), op.Constant(value_ints=[0, n, k, -1]))


def _steps(op, x, k: int):
    """(B, P, K, X) -> K per-step tensors (B, P, 1, X)."""
    return op.Split(x, axis=2, num_outputs=k) if k > 1 else [x]


def _chunked(op, u, dt, A, B, C, seqlen: int, chunk: int):
    """(y, last) through the unrolled chunked recurrence (see the module docstring)."""
    k = max(1, min(chunk, seqlen))
    n = -(-seqlen // k)
    pad = n * k - seqlen
    dtu = op.Mul(dt, u)
    if pad:  # Δ = 0 after softplus: decay exp(0) = 1 and no input, so the state passes through
        pads = op.Constant(value_ints=[0, 0, 0, 0, 0, pad])
        dt, dtu, B, C = (op.Pad(t, pads) for t in (dt, dtu, B, C))
    at = op.Transpose(A, perm=[1, 0])                                               # (N, E)
    col = op.Constant(value_ints=[0, n, -1, 1])
    dt, C = _chunk_major(op, dt, n, k), _chunk_major(op, C, n, k)                   # (B, P, K, E|N)
    dts, dtus = _steps(op, dt, k), _steps(op, _chunk_major(op, dtu, n, k), k)       # (B, P, 1, E)
    bs = [op.Reshape(b, col) for b in _steps(op, _chunk_major(op, B, n, k), k)]     # (B, P, N, 1)
    cs = _steps(op, C, k)                                                           # (B, P, 1, N)
    hs, ys = [], []
    for i in range(k):  # all chunks at once, each from a zero state; states are (B, P, N, E)
        b = op.Mul(bs[i], dtus[i])
        hs.append(b if i == 0 else op.Add(op.Mul(op.Exp(op.Mul(dts[i], at)), hs[-1]), b))
        ys.append(op.MatMul(cs[i], hs[-1]))                                         # (B, P, 1, E)
    # Decay from each chunk's start to each of its steps: exp(A ⊗ cumsum Δ), with A < 0 and Δ >= 0,
    # so the exponent is <= 0 and nothing overflows.
    cums = _steps(op, op.CumSum(dt, op.Constant(value_int=2)), k)                   # (B, P, 1, E)
    # True state entering each chunk: H_0 = 0, H_p = decay_end[p-1] H_{p-1} + h_end[p-1].
    dec_last = op.Exp(op.Mul(cums[-1], at))                                         # (B, P, N, E)
    ends = op.Split(hs[-1], axis=1, num_outputs=n) if n > 1 else [hs[-1]]
    dec_ends = op.Split(dec_last, axis=1, num_outputs=n) if n > 1 else [dec_last]
    entering = [op.Mul(ends[0], op.Constant(value_float=0.0))]
    for p in range(n):
        entering.append(ends[p] if p == 0 else op.Add(op.Mul(dec_ends[p], entering[-1]), ends[p]))
    last = op.Transpose(op.Squeeze(entering[-1], _axes(op, 1)), perm=[0, 2, 1])    # (B, E, N)
    h_in = op.Concat(*entering[:-1], axis=1) if n > 1 else entering[0]              # (B, P, N, E)
    # y_l = C_l · local state + C_l · (decay ⊙ entering state), step by step: each step's tensors
    # stay in cache (one pass over (B, P, K, N, E) tensors is several times slower per element)
    ys = [op.Add(ys[i], op.MatMul(cs[i], op.Mul(op.Exp(op.Mul(cums[i], at)), h_in))) for i in range(k)]
    y = op.Concat(*ys, axis=2) if k > 1 else ys[0]                                  # (B, P, K, E)
    y = op.Transpose(op.Reshape(y, op.Constant(value_ints=[0, n * k, -1])), perm=[0, 2, 1])
    if pad:
        y = op.Slice(y, _axes(op, 0), _axes(op, seqlen), _axes(op, 2))
    return y, last


@functools.cache
def _kernel_op():
    """The custom operator as an onnxscript op (its schema says what the node takes and gives)."""
    import onnx
    import onnxscript
    from onnx.defs import OpSchema

    from .onnx_runtime import DOMAIN, OP_TYPE

    param, single, optional = OpSchema.FormalParameter, OpSchema.FormalParameterOption.Single, \
        OpSchema.FormalParameterOption.Optional
    inputs = [param(name, "T", param_option=single) for name in ("u", "delta", "A", "B", "C")]
    inputs += [param(name, "T", param_option=optional) for name in ("D", "z", "delta_bias")]
    schema = OpSchema(
        OP_TYPE, DOMAIN, 1, inputs=inputs, outputs=[param("y", "T"), param("last_state", "T")],
        type_constraints=[("T", ["tensor(float)"], "fp32 tensors")],
        attributes=[OpSchema.Attribute("softplus", onnx.helper.make_attribute("softplus", 0),
                                       "1: delta = softplus(delta + delta_bias)")])
    return onnxscript.values.Op(onnxscript.values.Opset(DOMAIN, 1), OP_TYPE, op_schema=schema)


def _translate(u, delta, A, B, C, D, z, delta_bias, softplus: bool = False, save_carries: bool = False, *,
               form: str = "chunked", chunk: int = DEFAULT_CHUNK):
    """``videomap::selective_scan_fwd`` in ONNX ops (traced: Python ``if`` picks the optional parts)."""
    from onnxscript import opset18 as op

    if save_carries:
        raise ValueError("ONNX export of the selective scan is inference only: trace under torch.no_grad()")
    if form == "kernel":
        y, last = _kernel_op()(u, delta, A, B, C, D, z, delta_bias, softplus=int(softplus))
        return y, last, op.ConstantOfShape(_axes(op, 0))
    dt = _prepare(op, delta, delta_bias, softplus)
    if form == "chunked":
        y, last = _chunked(op, u, dt, A, B, C, _static_len(u), chunk)
    else:
        y, last = _loop(op, u, dt, A, B, C)
    return _finish(op, y, u, D, z), last, op.ConstantOfShape(_axes(op, 0))  # no chunk states: empty


def onnx_translation_table(form: OnnxScanForm = "chunked", chunk: int = DEFAULT_CHUNK) -> dict[Any, Any]:
    """``custom_translation_table`` for :func:`torch.onnx.export` covering videomap's operators.

    ``form``: ``"chunked"`` (unrolled closed form, no loop node; see the module docstring),
    ``"loop"`` (ONNX ``Scan``, small graph) or ``"kernel"`` (a custom node for onnxruntime with
    :func:`videomap.ops.onnx_runtime.custom_ops_library` registered); ``chunk``: steps per chunk
    of the chunked form (16-64: fewer means more chunk-carry nodes, more means more unrolled steps)."""
    import torch

    from . import scan_op  # noqa: F401  (registers the operator)

    if form not in FORMS:
        raise ValueError(f"ONNX scan form: expected one of {', '.join(FORMS)}, got {form!r}")
    if not isinstance(chunk, int) or chunk < 1:
        raise ValueError(f"ONNX scan chunk: expected a positive integer, got {chunk!r}")
    fn = functools.wraps(_translate)(functools.partial(_translate, form=form, chunk=chunk))
    return {torch.ops.videomap.selective_scan_fwd.default: fn}
