"""Exported models: onnxruntime and torch.export programs against eager PyTorch (CPU, fp32).

    python benchmarks/export.py [--model videomamba_tiny] [--frames 8] [--size 224] [--repeats 3]
        [--onnx-scan chunked loop kernel]

Exports the model with ``videomap.tasks.export.run_export`` (pt2, and ONNX with each requested
form of the selective scan: the chunked closed form and the ``Scan`` loop in plain ONNX, and the
custom operator run by the C kernel, ``videomap.ops.onnx_runtime``), then times one forward
of batch 1 in eager PyTorch, in the loaded ``torch.export`` program and in onnxruntime (its own
thread pool, sized to the same number of cores), the runtimes taking turns in every repeat (each with
its default thread settings, a pause between them), and reports the largest output difference.
Target: onnxruntime within 1.5x of eager. Prints a table and rewrites its section of
docs/performance.md with ``--write-doc``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, machine_summary, median_times, run_context, update_doc_section  # noqa: E402

FORM_LABEL = {"chunked": "chunked scan", "loop": "Scan loop", "kernel": "custom-operator scan"}
DOC_NOTES = """\
The chunked and loop files are plain ONNX and run in any ONNX runtime; the custom-operator file
needs videomap's onnxruntime library (`videomap.ops.onnx_runtime`, above). In the chunked file
the scan's element-wise kernels (Mul, Exp, Add, the per-step MatMul with C, the step splits) take
about 70 % of onnxruntime's kernel time (`SessionOptions.enable_profiling`, one profiled run of
this model on 2 threads), the projections, convolutions and norms the rest. The per-scan table
isolates the scan: a single `Exp` over the (L, N, E) decays, the least any plain-ONNX form must
do, costs nearly as much as the whole fused scan, and the chunked form does about ten such
passes. Timings on a shared 2-core machine move by 10-40 % between runs; ratios from one run,
with the runtimes taking turns, are the numbers to compare."""


def _one_scan_module(dim: int, nstate: int):
    """One selective scan with the model's first-block sizes and S4D-style A (for the per-scan table)."""
    import torch

    from videomap.ops.scan import selective_scan

    class OneScan(torch.nn.Module):
        def __init__(self):
            super().__init__()
            g = torch.Generator().manual_seed(0)
            self.A = torch.nn.Parameter(-torch.arange(1.0, nstate + 1).repeat(dim, 1))
            self.D = torch.nn.Parameter(torch.ones(dim))
            self.bias = torch.nn.Parameter(torch.rand(dim, generator=g) * 4 - 6)

        def forward(self, u, delta, B, C, z):
            return selective_scan(u, delta, self.A, B, C, self.D, z, self.bias, delta_softplus=True)

    return OneScan().eval()


def time_one_scan(model, x, forms: list[str], repeats: int, tmp: Path) -> tuple[str, dict]:
    """Eager PyTorch against each ONNX form on one scan (E, L, N of the model's first block), and
    onnxruntime's ``Exp`` over one (L, N, E) tensor: the least any form of plain ONNX ops must do."""
    import numpy as np
    import onnx
    import onnxruntime as ort
    import torch
    from onnx import TensorProto, helper

    from videomap.ops.onnx_runtime import inference_session
    from videomap.ops.onnx_scan import onnx_translation_table

    layers = getattr(model, "layers", None)
    mixer = getattr(layers[0], "mixer", None) if layers else None
    if mixer is None:
        return f"({type(model).__name__} has no selective scan: no per-scan table)", {}
    dim, nstate, seen = mixer.d_inner, mixer.d_state, []
    hook = mixer.register_forward_hook(lambda mod, args, out: seen.append(args[0].shape[1]))
    with torch.no_grad():
        model(x)
    hook.remove()
    seqlen = seen[0]
    scan = _one_scan_module(dim, nstate)
    g = torch.Generator().manual_seed(1)
    ins = tuple(torch.randn(1, c, seqlen, generator=g) for c in (dim, dim, nstate, nstate, dim))
    fns = {"PyTorch eager (C kernel)": lambda: scan(*ins)}
    for form in forms:
        path = tmp / f"scan_{form}.onnx"
        with torch.no_grad():
            torch.onnx.export(scan, ins, dynamo=True, verbose=False, optimize=False,
                              custom_translation_table=onnx_translation_table(form)).save(str(path))
        sess = inference_session(path, threads=torch.get_num_threads())
        feed = {i.name: t.numpy() for i, t in zip(sess.get_inputs(), ins)}
        fns[f"onnxruntime, {FORM_LABEL[form]}"] = lambda s=sess, f=feed: s.run(None, f)
    io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [seqlen, nstate, dim]) for n in ("x", "y")]
    exp_model = helper.make_model(helper.make_graph([helper.make_node("Exp", ["x"], ["y"])], "exp", io[:1], io[1:]),
                                  opset_imports=[helper.make_opsetid("", 18)])
    onnx.checker.check_model(exp_model)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = torch.get_num_threads()
    exp_sess = ort.InferenceSession(exp_model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    decays = {"x": -np.random.default_rng(0).random((seqlen, nstate, dim), dtype=np.float32)}
    fns["onnxruntime, one Exp over (L, N, E)"] = lambda: exp_sess.run(None, decays)
    with torch.no_grad():
        times = median_times(fns, max(5, 3 * repeats), pause=0.2)
    base = times["PyTorch eager (C kernel)"]
    lines = [f"One selective scan alone (E {dim}, L {seqlen:,}, N {nstate}, batch 1; median of "
             f"{max(5, 3 * repeats)}, taking turns):", "", "| runtime | ms / scan | vs eager |", "|---|---|---|"]
    lines += [f"| {name} | {t * 1e3:.1f} | {t / base:.2f}x |" for name, t in times.items()]
    return "\n".join(lines), times


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="videomamba_tiny")
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--onnx-scan", nargs="+", choices=tuple(FORM_LABEL), default=list(FORM_LABEL),
                    help="ONNX forms of the selective scan to export and time")
    ap.add_argument("--write-doc", action="store_true")
    args = ap.parse_args(argv)
    import onnxruntime as ort
    import torch

    from videomap.config import load_config
    from videomap.models import create_model
    from videomap.ops.onnx_runtime import inference_session
    from videomap.tasks.export import run_export

    torch.manual_seed(0)
    model = create_model(args.model, num_classes=400, num_frames=args.frames, img_size=args.size).eval()
    x = torch.randn(1, 3, args.frames, args.size, args.size)
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(Path(tmp) / "ckpt")
        cfg = load_config(None, ["task=evaluate"])
        results = {"pt2": run_export(cfg, str(Path(tmp) / "ckpt"), "pt2", str(Path(tmp) / "m.pt2"))}
        for form in args.onnx_scan:
            results[form] = run_export(cfg, str(Path(tmp) / "ckpt"), "onnx", str(Path(tmp) / f"m_{form}.onnx"),
                                       onnx_scan=form)
        program = torch.export.load(results["pt2"]["path"]).module()
        sessions = {form: inference_session(results[form]["path"], threads=torch.get_num_threads())
                    for form in args.onnx_scan}
        with torch.no_grad():
            want = model(x)
            got = {"PyTorch eager": want, "torch.export program (.pt2)": program(x)}
            fns = {"PyTorch eager": lambda: model(x), "torch.export program (.pt2)": lambda: program(x)}
            for form, session in sessions.items():
                name = f"onnxruntime (.onnx, {FORM_LABEL[form]})"
                feed = {session.get_inputs()[0].name: x.numpy()}
                got[name] = torch.from_numpy(session.run(None, feed)[0])
                fns[name] = lambda s=session, f=feed: s.run(None, f)
            # taking turns, so that ratios survive load changes; the pause lets the previous runtime's
            # threads stop spinning (onnxruntime's and OpenMP's spin after a run and would slow the next)
            times = median_times(fns, args.repeats, pause=1.0)
        scan_table, _ = time_one_scan(model, x, args.onnx_scan, args.repeats, Path(tmp))
    rows = [(name, times[name], float((got[name] - want).abs().max())) for name in fns]
    t_eager = times["PyTorch eager"]
    table = ["| runtime | s / clip | vs eager | max abs. difference |", "|---|---|---|---|"]
    table += [f"| {name} | {t:.3f} | {t / t_eager:.2f}x | {d:.1e} |" for name, t, d in rows]
    text = "\n".join(table)
    machine = machine_summary()
    head = f"{args.model}, 1x{args.frames}x{args.size}², fp32, {torch.get_num_threads()} threads"
    took = ", ".join(f"{k} {v['seconds']} s" for k, v in results.items())
    verdict = ""
    verdicts = []
    for form in args.onnx_scan:
        ratio = next(t for name, t, _ in rows if FORM_LABEL[form] in name) / t_eager
        verdicts.append(f"{FORM_LABEL[form]} / eager: {ratio:.2f}x (target <= 1.5x: "
                        f"{'met' if ratio <= 1.5 else 'NOT met'})")
    verdict = "; ".join(verdicts)
    print(f"\n{head}\n{text}\n{verdict}\nexport took {took}\n\n{scan_table}")
    if args.write_doc:
        cmd = (f"python benchmarks/export.py --model {args.model} --frames {args.frames} --size {args.size} "
               f"--repeats {args.repeats} --onnx-scan {' '.join(args.onnx_scan)} --write-doc")
        body = (f"`{cmd}` {run_context(machine, f'onnxruntime {ort.__version__}')}; {head}:\n\n{text}\n\n"
                f"{verdict}. Export took {took}.\n\n{scan_table}\n\n{DOC_NOTES}")
        update_doc_section(REPO / "docs" / "performance.md", "### Exported runtimes", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
