"""Gradient checkpointing: peak memory and time of one training step, with and without.

    python benchmarks/grad_checkpointing.py [--model videomamba_small] [--frames 32] [--size 224]
        [--batch 1] [--repeats 2] [--out bench_out]

Each mode (off, the first half of the blocks, every block) runs in two fresh subprocesses. Memory:
after the model, the input and the gradient buffers exist (one warm-up step), the peak resident
set is reset (``/proc/self/clear_refs``), so the number is what a forward + backward adds on top
of weights and gradients: the activations (large blocks are mmapped with a fixed threshold there,
so freed memory leaves the resident set). Time: the median step with the default allocator.
Targets: every block checkpointed stores at least 3x less, and the step takes at most 1.5x as
long. Prints a table, writes JSON and a PNG, and rewrites its section of docs/performance.md with
``--write-doc``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    REPO,
    load_average,
    machine_summary,
    reset_peak_rss,
    rss_kib,
    run_context,
    run_json_case,
    update_doc_section,
)

MODES = {"off": (False, None), "first half": (True, "half"), "every block": (True, None)}


def run_case(model_name: str, frames: int, size: int, batch: int, mode: str, repeats: int, what: str) -> dict:
    """One mode in this process: ``what="memory"`` (peak added by one step) or ``"time"``."""
    import torch

    import videomap

    torch.manual_seed(0)
    model = videomap.create_model(model_name, num_classes=400, num_frames=frames, img_size=size).train()
    enable, num = MODES[mode]
    if num == "half":
        num = len(model.block_names()) // 2
    model.set_grad_checkpointing(enable, num)
    x = torch.randn(batch, 3, frames, size, size)
    target = torch.randint(0, 400, (batch,))

    def step() -> None:
        loss = torch.nn.functional.cross_entropy(model(x), target)
        loss.backward()

    step()  # warm-up: allocates the gradient buffers, builds the scan kernel
    row = {"mode": mode, "blocks": model.checkpoint_blocks}
    if what == "memory":
        base, _ = rss_kib()
        reset_peak_rss()
        step()
        _, peak = rss_kib()
        row["activation_mib"] = (peak - base) / 1024
    else:
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            step()
            times.append(time.perf_counter() - t0)
        row["step_s"] = statistics.median(times)
    return row


def _run(args: argparse.Namespace, mode: str, what: str) -> dict:
    cmd = [sys.executable, __file__, "--case", mode, "--what", what, "--model", args.model, "--frames",
           str(args.frames), "--size", str(args.size), "--batch", str(args.batch), "--repeats", str(args.repeats)]
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    if what == "memory":
        # a fixed mmap threshold: glibc otherwise raises it after the warm-up frees its activations
        # and keeps later ones on its heap, so the resident set would not fall back to the baseline.
        # It slows allocation, hence the separate timing run with the default allocator.
        env["MALLOC_MMAP_THRESHOLD_"] = "131072"
    return run_json_case(cmd, env, f"{mode!r} ({what})")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="videomamba_small")
    ap.add_argument("--frames", type=int, default=32)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", default="bench_out")
    ap.add_argument("--write-doc", action="store_true", help="rewrite the section in docs/performance.md")
    ap.add_argument("--case", help=argparse.SUPPRESS)  # internal: run one mode in this process
    ap.add_argument("--what", default="time", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.case:
        print(json.dumps(run_case(args.model, args.frames, args.size, args.batch, args.case, args.repeats, args.what)))
        return 0

    rows = []
    for mode in MODES:
        rows.append({**_run(args, mode, "memory"), **_run(args, mode, "time")})
        print(f"{mode:<12} {rows[-1]['activation_mib']:9.0f} MiB  {rows[-1]['step_s']:7.2f} s/step", flush=True)

    off = rows[0]
    full = rows[-1]
    mem_ratio = off["activation_mib"] / max(full["activation_mib"], 1e-9)
    time_ratio = full["step_s"] / off["step_s"]
    table = ["| checkpointing | blocks | memory added by a step (MiB) | step (s) | vs off: memory | vs off: time |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        table.append(f"| {r['mode']} | {r['blocks']} | {r['activation_mib']:.0f} | {r['step_s']:.2f} | "
                     f"{off['activation_mib'] / max(r['activation_mib'], 1e-9):.2f}x less | "
                     f"{r['step_s'] / off['step_s']:.2f}x |")
    verdict = (f"every block: {mem_ratio:.2f}x less memory (target >= 3x: {'met' if mem_ratio >= 3 else 'NOT met'}), "
               f"{time_ratio:.2f}x the time (target <= 1.5x: {'met' if time_ratio <= 1.5 else 'NOT met'})")
    machine = machine_summary()
    text = "\n".join(table)
    print("\n" + text + "\n\n" + verdict)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "grad_checkpointing.json").write_text(json.dumps({"rows": rows, "args": vars(args), "machine": machine,
                                                             "load": load_average()}, indent=1))
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 3.5))
    FigureCanvasAgg(fig)
    ax1, ax2 = fig.subplots(1, 2)
    names = [r["mode"] for r in rows]
    ax1.bar(names, [r["activation_mib"] for r in rows], color="tab:blue")
    ax1.set_ylabel("MiB added by a training step")
    ax2.bar(names, [r["step_s"] for r in rows], color="tab:orange")
    ax2.set_ylabel("seconds per step")
    fig.suptitle(f"{args.model}, {args.batch}x{args.frames}x{args.size}², fwd+bwd, CPU")
    fig.tight_layout()
    fig.savefig(out / "grad_checkpointing.png", dpi=110)
    if args.write_doc:
        cmd = (f"python benchmarks/grad_checkpointing.py --model {args.model} --frames {args.frames} "
               f"--size {args.size} --batch {args.batch} --repeats {args.repeats} --write-doc")
        body = (f"`{cmd}` {run_context(machine)}:\n\n{text}\n\n{verdict}. Recomputation costs at most one "
                "extra forward per step (about a third of a step); differences smaller than the run-to-run "
                "noise of a shared machine (about 10 %) are noise, not a speed-up.\n\n"
                "`model.set_grad_checkpointing(True, num_blocks)` or the job keys `model.grad_checkpointing: true` "
                "and `model.checkpoint_num: k` (the first k blocks in execution order, the authors' "
                "`checkpoint_num`; unset = every block). Gradients are bit-identical to the plain model "
                "(`tests/test_models.py::test_grad_checkpointing_gives_identical_gradients`).")
        update_doc_section(REPO / "docs" / "performance.md", "## Gradient checkpointing", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
