"""The ONNX function holding the selective scan's ``Scan`` loop (imported only when exporting:
onnxscript resolves the annotations below from this module's globals, so they live at top level)."""

import onnxscript
from onnxscript import FLOAT, graph
from onnxscript import opset18 as op

DOMAIN = onnxscript.values.Opset("videomap", 1)


@onnxscript.script(DOMAIN, default_opset=op)
def ssm_scan(a: FLOAT, b: FLOAT, c: FLOAT, h0: FLOAT) -> tuple[FLOAT, FLOAT]:
    """a, b: (L, B, E, N) decays and inputs; c: (L, B, 1, N); h0: (B, E, N) -> (last state, y (L, B, E))."""

    @graph()
    def step(h: FLOAT["B", "E", "N"], a_l: FLOAT["B", "E", "N"], b_l: FLOAT["B", "E", "N"],  # noqa: F821
             c_l: FLOAT["B", 1, "N"]):  # noqa: F821
        h_next = op.Add(op.Mul(a_l, h), b_l)
        y_l = op.ReduceSum(op.Mul(h_next, c_l), op.Constant(value_ints=[-1]), keepdims=0)
        return h_next, y_l

    last, y = op.Scan(h0, a, b, c, body=step, num_scan_inputs=3)
    return last, y
