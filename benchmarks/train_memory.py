"""Training-step memory of the Mamba backbones against ViTs, with and without the mixer recomputation.

    python benchmarks/train_memory.py [--frames 16] [--size 224] [--size-m 224] [--time-frames 16]
        [--time-size 224] [--repeats 2] [--budget-gb 12] [--out bench_out] [--write-doc] [--quick]

Memory: every case (model, mixer path) runs alone in a fresh subprocess under the watchdog of
``llm_memory.py``. The model is built, its gradient buffers allocated, one step on a 1-frame
32x32 clip loads the kernels; then free heap goes back to the system, the resident set is read and
its peak reset, and one training step (forward + backward of a 400-class cross-entropy, batch 1,
fp32) runs on the full clip. The number is the peak it adds: activations, temporaries and gradient
temporaries, not weights or gradient buffers. Large blocks are mmapped with a fixed threshold so
that freed memory leaves the resident set (as in ``grad_checkpointing.py``).

Pairs: videomamba_tiny / vit_tiny at ``--frames`` x ``--size``; videomap_middle (VideoMAP-M) /
vit_base (UMT-B, the default fused attention kernel, and ``vit_base@math``, PyTorch's math kernel
that stores the attention matrix) at ``--frames`` x ``--size-m``. The Mamba models run twice:
``new`` (default: the blocks recompute the mixer in backward) and ``old`` (``mixer_recompute=False``).

Saved values: what autograd keeps for backward per token and block, counted with saved-tensor hooks
on one block of each kind at the clip's token count, in units of the model width (fp32 values per
token per channel); summed over the blocks it predicts the ratio of the activation memories.

Time: videomamba_tiny at ``--time-frames`` x ``--time-size`` in one process, the two paths
alternating ``--repeats`` times after a warm-up each, default allocator; the ratio of the medians
new / old. On a shared machine short steps repeated often give a steadier ratio than a few long ones.

Targets: videomamba_tiny / vit_tiny <= 1.5x (goal 1.0), VideoMAP-M / UMT-B (fused) <= 1.0x, step
time new / old <= 1.15x. Prints a table, writes JSON and a PNG, and rewrites its section of
docs/performance.md with ``--write-doc``.
"""

from __future__ import annotations

import argparse
import gc
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
from llm_memory import _malloc_trim, _sdpa_ctx, run_watched, split_spec  # noqa: E402

MIB = 2**20
# (model spec, mixer path) per pair; "-" for models without Mamba blocks
PAIRS = {
    "tiny": [("videomamba_tiny", "new"), ("videomamba_tiny", "old"), ("vit_tiny", "-")],
    "middle": [("videomap_middle", "new"), ("videomap_middle", "old"), ("vit_base", "-"), ("vit_base@math", "-")],
}
LABELS = {"videomamba_tiny": "VideoMamba-Ti", "vit_tiny": "ViT-Ti", "videomap_middle": "VideoMAP-M",
          "vit_base": "UMT-B (ViT-B)", "vit_base@math": "UMT-B, math attention"}
TARGETS = {"tiny": (1.5, 1.0), "middle": (1.0, None)}
TIME_TARGET = 1.15


def _build(name: str, path: str, frames: int, size: int):
    import videomap

    kw = {} if path == "-" else {"mixer_recompute": path == "new"}
    return videomap.create_model(name, num_classes=400, num_frames=frames, img_size=size, **kw).train()


def _step(model, x, target) -> None:
    import torch

    torch.nn.functional.cross_entropy(model(x), target).backward()


def memory_case(spec: str, path: str, frames: int, size: int) -> dict:
    """Peak resident memory one training step adds, in this process (see the module doc)."""
    import torch

    name, sdpa = split_spec(spec)
    torch.manual_seed(0)
    model = _build(name, path, frames, size)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    target = torch.zeros(1, dtype=torch.long)
    with _sdpa_ctx(sdpa):
        _step(model, torch.randn(1, 3, 1, 32, 32), target)  # kernels, thread pools, oneDNN
        x = torch.randn(1, 3, frames, size, size)
        gc.collect()
        _malloc_trim()
        base = rss_kib()[0]
        reset_peak_rss()
        print(f"BASE {base * 1024}", flush=True)  # the watchdog measures against this
        t0 = time.perf_counter()
        _step(model, x, target)
        step_s = time.perf_counter() - t0
    return {"spec": spec, "path": path, "frames": frames, "size": size, "added_mib": (rss_kib()[1] - base) / 1024,
            "step_s": step_s, "tokens": 1 + frames * (size // 16) ** 2}


def time_case(frames: int, size: int, repeats: int) -> dict:
    """Median step time of videomamba_tiny with each mixer path, alternating in one process."""
    import torch

    torch.manual_seed(0)
    model = _build("videomamba_tiny", "new", frames, size)
    x, target = torch.randn(1, 3, frames, size, size), torch.zeros(1, dtype=torch.long)
    times: dict[str, list[float]] = {"new": [], "old": []}

    def run(path: str) -> float:
        for blk in model.layers:
            blk.recompute = path == "new"
        t0 = time.perf_counter()
        _step(model, x, target)
        return time.perf_counter() - t0

    run("new"), run("old")  # warm-up of both
    for _ in range(repeats):
        for path in ("old", "new"):
            times[path].append(run(path))
    med = {p: statistics.median(v) for p, v in times.items()}
    return {"step_s": med, "all_s": times, "ratio": med["new"] / med["old"]}


def counts_case(frames: int, size: int, size_m: int) -> dict:
    """fp32 values saved for backward per token and channel, per block kind (one block each)."""
    import torch

    from videomap.engine.memory import saved_tensor_bytes

    rows = []
    for pair, s in (("tiny", size), ("middle", size_m)):
        tokens = 1 + frames * (s // 16) ** 2
        for spec, path in PAIRS[pair]:
            name, sdpa = split_spec(spec)
            model = _build(name, path, 1, 16)  # the blocks only; their size does not depend on the grid
            d = model.embed_dim
            kinds = [(kind, getattr(model, attr), len(getattr(model, attr)))
                     for kind, attr in (("mamba", "layers"), ("attention", "attn_layers"), ("attention", "blocks"))
                     if len(getattr(model, attr, ())) > 0]
            x = torch.randn(1, tokens, d, requires_grad=True)
            per_block = {}
            with _sdpa_ctx(sdpa):
                for kind, blocks, _n in kinds:
                    blk = blocks[0]
                    saved = saved_tensor_bytes(lambda blk=blk, x=x: blk(x), exclude=blk.parameters())
                    per_block[kind] = saved / (4 * tokens * d)
            total = sum(per_block[k] * n * d for k, _, n in kinds)  # fp32 values per token, all blocks
            rows.append({"pair": pair, "spec": spec, "path": path, "d": d, "tokens": tokens, "per_block": per_block,
                         "blocks": {k: n for k, _, n in kinds}, "per_token_all_blocks": total})
            del model, x
            gc.collect()
    return {"rows": rows}


def sac_case(frames: int, size: int, n_blocks: int = 4) -> dict:
    """Memory kept after the forward of ``n_blocks`` videomamba_tiny blocks, per token, channel and
    block: plain autograd, PyTorch's selective activation checkpointing with a policy that keeps
    the scan operator's outputs and recomputes everything else, and the recomputing block."""
    import functools

    import torch
    from torch.utils.checkpoint import CheckpointPolicy, checkpoint, create_selective_checkpoint_contexts

    from videomap.layers import MambaBlock

    def policy(ctx, op, *args, **kwargs):
        keep = op is torch.ops.videomap.selective_scan_fwd.default
        return CheckpointPolicy.MUST_SAVE if keep else CheckpointPolicy.PREFER_RECOMPUTE

    torch.manual_seed(0)
    d, tokens = 192, 1 + frames * (size // 16) ** 2
    blocks = [MambaBlock(d) for _ in range(n_blocks)]
    kept: dict[str, list[float]] = {"plain": [], "selective checkpointing": [], "recomputing block": []}
    for _ in range(2):  # the first round warms up
        for mode, values in kept.items():
            x = torch.randn(1, tokens, d, requires_grad=True)
            gc.collect()
            _malloc_trim()
            base = rss_kib()[0]
            h, r = x, None
            for b in blocks:
                b.recompute = mode == "recomputing block"
                if mode == "selective checkpointing":
                    ctx = functools.partial(create_selective_checkpoint_contexts, policy)
                    h, r = checkpoint(b, h, r, use_reentrant=False, context_fn=ctx)
                else:
                    h, r = b(h, r)
            loss = (h + r).sum()
            values.append((rss_kib()[0] - base) * 1024 / (4 * tokens * d * n_blocks))
            loss.backward()
            del loss, h, r, x
    return {"tokens": tokens, "blocks": n_blocks, "kept": {k: v[-1] for k, v in kept.items()}}


# ------------------------------------------------------------------------------------------ driver
def _child(args: argparse.Namespace, *extra: str) -> list[str]:
    return [sys.executable, __file__, "--frames", str(args.frames), "--size", str(args.size),
            "--size-m", str(args.size_m), "--time-frames", str(args.time_frames), "--time-size",
            str(args.time_size), "--repeats", str(args.repeats), *extra]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--size", type=int, default=224, help="image size of the tiny pair")
    ap.add_argument("--size-m", type=int, default=224, help="image size of the VideoMAP-M / UMT-B pair")
    ap.add_argument("--time-frames", type=int, default=16, help="clip of the timed videomamba_tiny steps")
    ap.add_argument("--time-size", type=int, default=224)
    ap.add_argument("--repeats", type=int, default=2, help="timed steps per path")
    ap.add_argument("--budget-gb", type=float, default=12.0, help="a case above this is stopped")
    ap.add_argument("--out", default="bench_out")
    ap.add_argument("--write-doc", action="store_true", help="rewrite the section in docs/performance.md")
    ap.add_argument("--quick", action="store_true",
                    help="every case at 2 frames of 32x32, one timed step: a smoke test of the whole run")
    ap.add_argument("--case", help=argparse.SUPPRESS)  # internal: memory:<spec>:<path>:<size>, time, counts
    args = ap.parse_args(argv)
    if args.quick:
        if args.write_doc:
            ap.error("--quick measures nothing worth documenting: drop --write-doc")
        args.frames = args.time_frames = 2
        args.size = args.size_m = args.time_size = 32
        args.repeats = 1
    if args.case:
        if args.case == "time":
            print(json.dumps(time_case(args.time_frames, args.time_size, args.repeats)))
        elif args.case == "sac":
            print(json.dumps(sac_case(args.frames, args.size)))
        elif args.case == "counts":
            print(json.dumps(counts_case(args.frames, args.size, args.size_m)))
        else:
            _, spec, path, size = args.case.split(":")
            print(json.dumps(memory_case(spec, path, args.frames, int(size))))
        return 0

    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    counts = run_json_case(_child(args, "--case", "counts"), env, "saved-value counts")["rows"]
    mem_env = {**env, "MALLOC_MMAP_THRESHOLD_": "131072"}
    sac = run_json_case(_child(args, "--case", "sac"), mem_env, "selective checkpointing")
    print("kept after forward, values per token, channel and block: "
          + ", ".join(f"{k} {v:.1f}" for k, v in sac["kept"].items()), flush=True)
    mem: dict[tuple[str, str], dict] = {}
    for pair, cases in PAIRS.items():
        size = args.size if pair == "tiny" else args.size_m
        for spec, path in cases:
            row = run_watched(_child(args, "--case", f"memory:{spec}:{path}:{size}"), mem_env,
                              args.budget_gb * 2**30, min_free_bytes=2 * 2**30, timeout_s=1200)
            mem[(spec, path)] = {**row, "pair": pair}
            shown = f"{row['added_mib']:8.0f} MiB  {row['step_s']:6.1f} s" if "added_mib" in row else row["status"]
            print(f"{spec:<16} {path:<4} {shown}", flush=True)
    timing = run_json_case(_child(args, "--case", "time"), env, "step time")
    print(f"step time videomamba_tiny: new {timing['step_s']['new']:.2f} s, old {timing['step_s']['old']:.2f} s, "
          f"ratio {timing['ratio']:.2f}", flush=True)

    table, verdicts = report(args, mem, counts, timing)
    verdicts += (f"\n- kept after the forward of {sac['blocks']} videomamba_tiny blocks at {sac['tokens']} tokens, "
                 "in fp32 values per token, channel and block (resident memory): "
                 + ", ".join(f"{k} {v:.1f}" for k, v in sac["kept"].items()))
    print("\n" + table + "\n\n" + verdicts)
    machine = machine_summary()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "train_memory.json").write_text(json.dumps(
        {"memory": [{"spec": s, "path": p, **r} for (s, p), r in mem.items()], "counts": counts, "time": timing,
         "sac": sac, "args": vars(args), "machine": machine, "load": load_average()}, indent=1))
    plot(mem, args, out / "train_memory.png")
    if args.write_doc:
        cmd = (f"flock /tmp/videomap-bench.lock python benchmarks/train_memory.py --frames {args.frames} "
               f"--size {args.size} --size-m {args.size_m} --time-frames {args.time_frames} "
               f"--time-size {args.time_size} --repeats {args.repeats} --write-doc")
        scale = ("" if args.size_m >= args.size else
                 f"The VideoMAP-M / UMT-B pair runs at {args.size_m}² to keep the run short: saved activations "
                 "of Mamba blocks and of fused attention grow linearly with the token count, so that ratio "
                 "carries over to larger clips; the math-attention one grows with it (its matrix is quadratic).\n\n")
        body = f"`{cmd}` {run_context(machine, _cpu_features())}:\n\n{table}\n\n{verdicts}\n\n{scale}{DOC_NOTES}"
        update_doc_section(REPO / "docs" / "performance.md", "## Training memory", body)
    return 0


DOC_NOTES = """\
How: each Mamba block saves for backward only its input (the fp32 residual, 1 value per token and
channel), the merged output of the two scan directions (`out_proj`'s input, 2) and each scan's chunk
carries (one 16-state vector per 64 steps and channel of the expanded width: 0.5 per direction), and
recomputes in backward the RMSNorm, `in_proj`, both directions' causal convolutions and x/dt
projections and the flips; the scans are not rerun, their backward starts from the carries
(`videomap.layers.MambaBlock`, a `torch.autograd.Function` around the registered scan operators).
The plain path instead keeps the norm's intermediates, `x`, `z`, each direction's convolution input
and output, `u`, `delta`, `z` (flipped for the backward direction) and the projections' inputs.
A custom function was chosen over selective activation checkpointing
(`torch.utils.checkpoint.create_selective_checkpoint_contexts` with a policy that keeps the scan
operator's outputs and recomputes the rest): that keeps the block's two inputs and both
directions' scan outputs, about 7 values per token and channel instead of 4 (the last line above),
which would miss the VideoMAP-M target (32 blocks x 6.8 + 8 attention blocks x 12 values of width
576 per token is about 1.2x UMT-B's 12 x 16 of width 768). Gradients agree with the
plain path within 1e-6 (the forward is bit-identical; only the order of a few sums differs:
`tests/test_mixer.py::test_recomputing_mixer_gives_the_plain_gradients`). The plain path stays
available as `create_model(..., mixer_recompute=False)` (or `block.recompute = False`);
inference, `torch.compile` and `torch.export` always take it, and gradient checkpointing composes
with either.

The "step (s)" column is the one measured step of each memory case (fixed mmap threshold, which
slows allocation); the time ratio comes from the separate alternating runs. The ViT columns:
"fused" is PyTorch's default attention kernel on this CPU, which saves q, k, v,
the output and a log-sum-exp, not the attention matrix; "math" stores the (heads, L, L) matrix,
which is what attention costs without a fused kernel."""


def _cpu_features() -> str:
    """AMX / AVX-512 support from /proc/cpuinfo: what the fp32 and bf16 matmuls can use here."""
    try:
        flags = next(ln for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("flags")).split()
    except (OSError, StopIteration):
        return ""
    return ", ".join(name for flag, name in (("amx_bf16", "AMX-bf16"), ("avx512f", "AVX-512")) if flag in flags)


def _ratio(a: dict, b: dict) -> float | None:
    if "added_mib" in a and "added_mib" in b and b["added_mib"] > 0:
        return a["added_mib"] / b["added_mib"]
    return None


def report(args: argparse.Namespace, mem: dict, counts: list[dict], timing: dict) -> tuple[str, str]:
    cnt = {(r["spec"], r["path"]): r for r in counts}
    lines = ["| pair | model | mixer path | clip | memory added by a step (MiB) | vs the ViT (fused) | "
             "saved per token·channel, per block | saved per token, all blocks (values) | step (s) |",
             "|---|---|---|---|---|---|---|---|---|"]
    verdicts = []
    for pair, cases in PAIRS.items():
        ref = mem[cases[2]]
        size = args.size if pair == "tiny" else args.size_m
        for spec, path in cases:
            r = mem[(spec, path)]
            c = cnt.get((spec, path), {})
            per_block = ", ".join(f"{k} {v:.1f}" for k, v in c.get("per_block", {}).items())
            ratio = _ratio(r, ref)
            cells = [pair, LABELS[spec], path, f"{args.frames}x{size}²",
                     f"{r['added_mib']:.0f}" if "added_mib" in r else r["status"],
                     f"{ratio:.2f}x" if ratio is not None else "–", per_block,
                     f"{c['per_token_all_blocks']:,.0f}" if c else "–",
                     f"{r['step_s']:.1f}" if "step_s" in r else "–"]
            lines.append("| " + " | ".join(cells) + " |")
        new, old = _ratio(mem[cases[0]], ref), _ratio(mem[cases[1]], ref)
        target, goal = TARGETS[pair]
        if new is not None:
            extra = f", goal {goal:.1f}x: {'met' if new <= goal else 'not met'}" if goal else ""
            verdicts.append(f"{LABELS[cases[0][0]]} / {LABELS[cases[2][0]]}: {new:.2f}x with the recomputing mixer "
                            f"(target <= {target:.1f}x: {'met' if new <= target else 'NOT met'}{extra}), "
                            + (f"{old:.2f}x with the plain one" if old is not None else "plain path not measured"))
        if pair == "middle" and "added_mib" in mem[cases[3]] and "added_mib" in mem[cases[0]]:
            verdicts.append(f"against UMT-B with math attention: "
                            f"{mem[cases[0]]['added_mib'] / mem[cases[3]]['added_mib']:.2f}x")
    verdicts.append(f"step time of videomamba_tiny ({args.time_frames}x{args.time_size}², median of {args.repeats}, "
                    "alternating): "
                    f"{timing['step_s']['new']:.2f} s new / {timing['step_s']['old']:.2f} s old = "
                    f"{timing['ratio']:.2f}x (target <= {TIME_TARGET}x: "
                    f"{'met' if timing['ratio'] <= TIME_TARGET else 'NOT met'})")
    return "\n".join(lines), "\n".join(f"- {v}" for v in verdicts)


def plot(mem: dict, args: argparse.Namespace, path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 3.8))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2)
    colors = {"new": "tab:green", "old": "tab:red", "-": "tab:blue"}
    for ax, (pair, cases) in zip(axes, PAIRS.items(), strict=True):
        names = [LABELS[s] + ("" if p == "-" else f" ({p})") for s, p in cases]
        vals = [mem[c].get("added_mib", 0.0) for c in cases]
        ax.bar(range(len(cases)), vals, color=[colors[p] for _, p in cases])
        ax.set_xticks(range(len(cases)), names, rotation=20, ha="right", fontsize=7)
        ax.set_ylabel("MiB added by a training step")
        ax.set_title(f"{args.frames}x{args.size if pair == 'tiny' else args.size_m}², batch 1, fp32, CPU", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    sys.exit(main())
