"""Exported models: onnxruntime and torch.export programs against eager PyTorch (CPU, fp32).

    python benchmarks/export.py [--model videomamba_tiny] [--frames 8] [--size 224] [--repeats 3]

Exports the model with ``videomap.tasks.export.run_export`` (both formats), then times one
forward of batch 1 in eager PyTorch, in the loaded ``torch.export`` program and in onnxruntime
(its own thread pool, sized to the same number of cores), and reports the largest output
difference. Prints a table and rewrites its section of docs/performance.md with ``--write-doc``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, machine_summary, median_time, run_context, update_doc_section  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="videomamba_tiny")
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--write-doc", action="store_true")
    args = ap.parse_args(argv)

    import onnxruntime as ort
    import torch

    from videomap.config import load_config
    from videomap.models import create_model
    from videomap.tasks.export import run_export

    torch.manual_seed(0)
    model = create_model(args.model, num_classes=400, num_frames=args.frames, img_size=args.size).eval()
    x = torch.randn(1, 3, args.frames, args.size, args.size)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(Path(tmp) / "ckpt")
        cfg = load_config(None, ["task=evaluate"])
        results = {fmt: run_export(cfg, str(Path(tmp) / "ckpt"), fmt, str(Path(tmp) / f"m.{fmt}"))
                   for fmt in ("pt2", "onnx")}
        with torch.no_grad():
            want = model(x)
            t_eager = median_time(lambda: model(x), args.repeats)
            program = torch.export.load(results["pt2"]["path"]).module()
            got_pt2 = program(x)
            t_pt2 = median_time(lambda: program(x), args.repeats)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = torch.get_num_threads()
        session = ort.InferenceSession(results["onnx"]["path"], opts, providers=["CPUExecutionProvider"])
        feed = {session.get_inputs()[0].name: x.numpy()}
        got_onnx = torch.from_numpy(session.run(None, feed)[0])
        t_onnx = median_time(lambda: session.run(None, feed), args.repeats)
    rows = [("PyTorch eager", t_eager, 0.0),
            ("torch.export program (.pt2)", t_pt2, float((got_pt2 - want).abs().max())),
            ("onnxruntime (.onnx)", t_onnx, float((got_onnx - want).abs().max()))]
    table = ["| runtime | s / clip | vs eager | max abs. difference |", "|---|---|---|---|"]
    table += [f"| {name} | {t:.3f} | {t / t_eager:.2f}x | {d:.1e} |" for name, t, d in rows]
    text = "\n".join(table)
    machine = machine_summary()
    head = f"{args.model}, 1x{args.frames}x{args.size}², fp32, {torch.get_num_threads()} threads"
    print(f"\n{head}\n{text}\nexport took pt2 {results['pt2']['seconds']} s, onnx {results['onnx']['seconds']} s")
    if args.write_doc:
        cmd = (f"python benchmarks/export.py --model {args.model} --frames {args.frames} --size {args.size} "
               f"--repeats {args.repeats} --write-doc")
        body = f"`{cmd}` {run_context(machine, f'onnxruntime {ort.__version__}')}; {head}:\n\n{text}"
        update_doc_section(REPO / "docs" / "performance.md", "### Exported runtimes", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
