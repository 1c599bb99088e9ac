"""Vision-encoder peak memory for a Video LLM (the VideoMAP paper's Fig. 6), measured, not quoted.

    python benchmarks/llm_memory.py [--encoders videomap_middle vit_base videomamba_middle]
        [--frames 8 16 32 64 128] [--modes train inference] [--amp none|bf16] [--budget-gb 16]
        [--device auto|cpu|cuda] [--out bench_out] [--resume | --report-only] [--write-doc] [--quick]

One encoder on one 224x224 clip, batch 1: ``train`` is a forward plus a backward of the token
features (what an LLM step sends back into an encoder that is being trained), ``inference`` is a
forward under ``torch.no_grad``. VideoMAP-M (``videomap_middle``) is compared with UMT-B
(``vit_base``, joint space-time attention) and VideoMamba-M (``videomamba_middle``), the
encoders of the paper's comparison; the paper reports about 40 % less memory for VideoMAP-M
than for the Transformer encoder. ``vit_base@math`` is UMT-B with PyTorch's math attention kernel,
which stores the attention matrix (the default kernels on CPU do not).

Every (encoder, frames, mode) case runs alone in a fresh subprocess, one after another.

* CPU: a warm-up on a tiny model of the same family loads the kernels and thread pools, the clip
  is made, free heap is returned (``malloc_trim``), then the resident set is read and its peak
  reset (``/proc/self/clear_refs``), then the model is built and run; the number is the peak
  resident set minus that baseline: weights + (train) gradients + activations + temporaries, but
  not the interpreter, torch or the input clip; tensors may still reuse a few MiB of heap the
  process holds, which sets the floor of what is resolved. Large blocks are mmapped with a fixed threshold, as in the
  other benchmarks, so freed memory leaves the resident set. The weights are reported on their own.
  A watchdog polls the case's resident set every 50 ms and kills it once it exceeds the budget:
  the cell then reads ``> budget`` (it did exceed it; how far is not known), so the machine never
  swaps. Larger frame counts of an encoder/mode that went over budget are skipped (``--no-skip``
  runs them anyway).
* CUDA: ``torch.cuda.max_memory_allocated`` during the step minus the allocation after the model
  and clip exist, plus the weights; the process is capped at the budget
  (``set_per_process_memory_fraction``), an out-of-memory error reads ``> budget``.

Precision: ``--amp`` defaults to bf16 autocast on CUDA (the paper's 7B LLM ran in fp16 on GPUs)
and to none (fp32) on CPU unless asked; under autocast the weights stay fp32.

Prints the tables, writes ``llm_memory.json`` and ``llm_memory.png`` to ``--out``, and with
``--write-doc`` replaces the marked block in docs/llm.md and copies the plot to docs/img/.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, load_average, machine_summary, reset_peak_rss, rss_kib, run_context  # noqa: E402

ENCODERS = {"videomap_middle": "VideoMAP-M", "vit_base": "UMT-B", "videomamba_middle": "VideoMamba-M"}
MODES = ("train", "inference")
PAPER_RATIO = 0.6  # "saves about 40% of GPU memory for the vision encoder" (VideoMAP paper, §4.2, Fig. 6)
# --quick: same architectures, tiny widths and depths, so that the whole pipeline runs in seconds
# (width 128: weight matrices above the 128 KiB mmap threshold, so that they show in the resident set)
QUICK_OVERRIDES = {
    "videomap_middle": dict(depth=4, embed_dim=128, attn_every=2),
    "vit_base": dict(depth=2, embed_dim=128, num_heads=2),
    "videomamba_middle": dict(depth=4, embed_dim=128),
}
DOC = REPO / "docs" / "llm.md"
BEGIN, END = "<!-- llm-memory:begin -->", "<!-- llm-memory:end -->"
GIB = 2**30


# ---------------------------------------------------------------------------------------- one case
def _autocast(torch, device: str, amp: str):
    return torch.autocast(device, dtype=torch.bfloat16) if amp == "bf16" else torch.autocast(device, enabled=False)


def split_spec(spec: str) -> tuple[str, str]:
    """``"vit_base@math"`` -> ("vit_base", "math"): the registry name and the attention kernel choice."""
    name, _, sdpa = spec.partition("@")
    if sdpa not in ("", "math"):
        raise SystemExit(f"--encoders: {spec!r}: the only suffix is '@math' (PyTorch's math attention kernel, "
                         "which materialises the attention matrix)")
    return name, sdpa or "default"


def label(spec: str) -> str:
    name, sdpa = split_spec(spec)
    return ENCODERS.get(name, name) + (" (math attention)" if sdpa == "math" else "")


def _warmup_overrides(name: str) -> dict:
    """The smallest model of ``name``'s family (smaller than --quick's, so that the heap it frees
    cannot hold a --quick model and hide it from the measurement)."""
    from videomap.models import MODEL_DEFS, VisionTransformer

    cls, arch = MODEL_DEFS[name]
    ov: dict = dict(depth=2, embed_dim=32)
    if cls is VisionTransformer:
        ov["num_heads"] = 2
    elif arch.get("attn_every"):
        ov.update(attn_every=2, attn_head_dim=16)
    return ov


def _sdpa_ctx(sdpa: str):
    if sdpa == "math":
        from torch.nn.attention import SDPBackend, sdpa_kernel

        return sdpa_kernel(SDPBackend.MATH)
    return contextlib.nullcontext()


def run_case(spec: str, frames: int, mode: str, size: int, batch: int, device: str, amp: str,
             overrides: dict, budget_gb: float) -> dict:
    """Build encoder ``spec`` and run one step in this process; peak memory in bytes (see the module doc)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    import videomap

    name, sdpa = split_spec(spec)

    torch.manual_seed(0)
    cuda = device == "cuda"
    if cuda:
        total = torch.cuda.get_device_properties(0).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, budget_gb * GIB / total))
    # warm-up on a tiny model of the same family: loads the scan kernel, oneDNN and the thread pools,
    # which belong to the process, not to the encoder being measured; the profiler records which
    # attention kernels PyTorch picks (they decide whether the attention matrix is stored)
    tiny = videomap.create_model(name, num_classes=0, num_frames=1, img_size=16, **_warmup_overrides(name)).to(device)
    clip = torch.randn(1, 3, 1, 16, 16, device=device)
    with profile(activities=[ProfilerActivity.CPU]) as prof, _sdpa_ctx(sdpa), _autocast(torch, device, amp):
        tiny.forward_features(clip).float().mean().backward()
        with torch.no_grad():
            tiny.forward_features(clip)
    kernels = sorted({e.key for e in prof.key_averages() if "attention" in e.key and e.key.startswith("aten::_")})
    del tiny, clip, prof
    x = torch.randn(batch, 3, frames, size, size, device=device)
    gc.collect()
    _malloc_trim()  # free heap back to the system: the model's memory must show as new resident pages
    if cuda:
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
    else:
        before = rss_kib()[0] * 1024
        reset_peak_rss()
    print(f"BASE {before}", flush=True)  # the watchdog measures against this
    t0 = time.perf_counter()
    model = videomap.create_model(name, num_classes=0, num_frames=frames, img_size=size, **overrides).to(device)
    model.train(mode == "train")
    build_s = time.perf_counter() - t0
    weights = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
    row = {"encoder": spec, "frames": frames, "mode": mode, "weights_bytes": weights, "attention_kernels": kernels,
           "params": sum(p.numel() for p in model.parameters()),
           "tokens": 1 + frames // model.tubelet_size * (size // model.patch_size) ** 2, "build_s": build_s}
    if cuda:
        torch.cuda.synchronize()
        after = torch.cuda.memory_allocated()
        row["weights_alloc_bytes"] = after - before
        torch.cuda.reset_peak_memory_stats()
    else:
        row["weights_rss_bytes"] = rss_kib()[0] * 1024 - before
    amp_ctx = _autocast(torch, device, amp)
    t0 = time.perf_counter()
    try:
        with _sdpa_ctx(sdpa):
            _step(model, x, mode, amp_ctx)
        if cuda:
            torch.cuda.synchronize()
    except torch.OutOfMemoryError:
        row.update(status="over_budget", step_s=time.perf_counter() - t0)
        return row
    row["step_s"] = time.perf_counter() - t0
    if cuda:
        row["peak_bytes"] = torch.cuda.max_memory_allocated() - after + row["weights_alloc_bytes"]
    else:
        row["peak_bytes"] = rss_kib()[1] * 1024 - before
    row["status"] = "ok" if row["peak_bytes"] <= budget_gb * GIB else "over_budget"
    return row


def _malloc_trim() -> None:
    with contextlib.suppress(OSError, AttributeError):  # not glibc: the free heap (a few MiB) stays counted
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _step(model, x, mode: str, amp_ctx) -> None:
    import torch

    if mode == "train":
        with amp_ctx:
            out = model.forward_features(x)
        out.float().mean().backward()
    else:
        with torch.no_grad(), amp_ctx:
            model.forward_features(x)


# ---------------------------------------------------------------------------------------- watchdog
def _proc_kib(pid: int, field: str) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _mem_available_kib() -> int:
    with open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1])
    return 1 << 62


def run_watched(cmd: list[str], env: dict[str, str], budget_bytes: float, min_free_bytes: float,
                timeout_s: float | None, poll_s: float = 0.05) -> dict:
    """Run one case; kill it when its resident set exceeds the baseline the child reports plus the
    budget (before the baseline arrives: the budget plus 4 GiB for the interpreter and torch), when
    the machine's available memory falls below ``min_free_bytes``, or after ``timeout_s``."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    out_lines: list[str] = []
    err_tail: list[str] = []

    def pump(stream, sink: list[str], keep: int | None) -> None:
        for line in stream:
            sink.append(line)
            if keep and len(sink) > keep:
                del sink[0]

    readers = [threading.Thread(target=pump, args=(proc.stdout, out_lines, None), daemon=True),
               threading.Thread(target=pump, args=(proc.stderr, err_tail, 200), daemon=True)]
    for r in readers:
        r.start()
    base = None
    stop = None
    used = 0
    while proc.poll() is None:
        if base is None:
            base = next((int(ln.split()[1]) for ln in list(out_lines) if ln.startswith("BASE ")), None)
        rss = _proc_kib(proc.pid, "VmRSS")
        if rss is not None:
            used = rss * 1024 - (base if base is not None else 0)
            limit = budget_bytes if base is not None else budget_bytes + 4 * GIB
            if used > limit:
                stop = "over_budget"
            elif _mem_available_kib() * 1024 < min_free_bytes:
                stop = "low_memory"
            elif timeout_s is not None and time.perf_counter() - t0 > timeout_s:
                stop = "timeout"
        if stop:
            hwm = _proc_kib(proc.pid, "VmHWM")
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            for r in readers:
                r.join(timeout=5)
            seen = (hwm * 1024 - base) if (hwm is not None and base is not None) else used
            return {"status": stop, "stopped": True, "seen_bytes": max(used, seen), "case_s": time.perf_counter() - t0}
        time.sleep(poll_s)
    for r in readers:
        r.join(timeout=30)
    case_s = time.perf_counter() - t0
    if proc.returncode != 0:
        return {"status": "failed", "stopped": False, "case_s": case_s, "error": "".join(err_tail)[-2000:]}
    row = json.loads(out_lines[-1])
    row.update(stopped=False, case_s=case_s)
    return row


# ---------------------------------------------------------------------------------------- reporting
def _gib(b: float) -> str:
    v = b / GIB
    return f"{v:.2f}" if v >= 0.01 else f"{b / 2**20:.1f} MiB"


def cell(r: dict | None, budget_gb: float) -> str:
    """One table cell: GiB, or why there is no number."""
    if r is None:
        return "–"
    st = r["status"]
    if st == "ok":
        return _gib(r["peak_bytes"])
    if st == "over_budget":
        if r.get("stopped") or "peak_bytes" not in r:
            return f"> {budget_gb:g}"
        return f"{_gib(r['peak_bytes'])} (> {budget_gb:g})"
    return {"skipped": "skipped", "timeout": "timeout", "low_memory": "stopped (machine low on memory)",
            "failed": "failed"}.get(st, st)


def largest_within(rows: dict, enc: str, mode: str, frames: list[int]) -> str:
    """Largest frame count that ran within the budget, with every smaller count also within it."""
    best = None
    for t in sorted(frames):
        r = rows.get((enc, t, mode))
        if r is None or r["status"] != "ok":
            nxt = f" ({t}: {'not run' if r is None else r['status'].replace('_', ' ')})"
            return (str(best) if best else "none") + nxt
        best = t
    return f"{best} (all tried)" if best else "none"


def ratio_cell(a: dict | None, b: dict | None, budget_gb: float) -> str:
    """VideoMAP-M / UMT-B; a bound where one of them went over the budget."""
    if a is None or b is None:
        return "–"
    if a["status"] == "ok" and b["status"] == "ok" and b["peak_bytes"] > 0:
        return f"{a['peak_bytes'] / b['peak_bytes']:.2f}"
    if a["status"] == "ok" and b["status"] == "over_budget" and a["peak_bytes"] > 0:
        return f"< {a['peak_bytes'] / (budget_gb * GIB):.2f}"
    if a["status"] == "over_budget" and b["status"] == "ok" and b["peak_bytes"] > 0:
        return f"> {budget_gb * GIB / b['peak_bytes']:.2f}"
    return "n/a"


def tables(rows: dict, encoders: list[str], frames: list[int], modes: list[str], budget_gb: float) -> str:
    head = "| encoder | weights (GiB) | " + " | ".join(f"T={t}" for t in frames) + " |"
    sep = "|---|---|" + "---|" * len(frames)
    parts = []
    for mode in modes:
        what = ("training: forward + backward, peak GiB (weights + gradients + activations + temporaries)"
                if mode == "train" else
                "inference: forward under no_grad, peak GiB (weights + activations + temporaries)")
        lines = [f"**{what}**", "", head, sep]
        for enc in encoders:
            w = next((r["weights_bytes"] for (e, _, _), r in rows.items() if e == enc and "weights_bytes" in r), None)
            cells = [cell(rows.get((enc, t, mode)), budget_gb) for t in frames]
            name = f"{label(enc)} (`{enc}`)"
            lines.append(f"| {name} | {_gib(w) if w else '–'} | " + " | ".join(cells) + " |")
        parts.append("\n".join(lines))
    time_lines = ["**wall time of the step (s)**: " + ", ".join(modes), "",
                  "| encoder | mode | " + " | ".join(f"T={t}" for t in frames) + " |",
                  "|---|---|" + "---|" * len(frames)]
    for enc in encoders:
        for mode in modes:
            cs = []
            for t in frames:
                r = rows.get((enc, t, mode))
                cs.append(f"{r['step_s']:.1f}" if r and r.get("status") == "ok" else
                          (f"(stopped after {r['case_s']:.0f})" if r and r.get("stopped") else "–"))
            time_lines.append(f"| {label(enc)} | {mode} | " + " | ".join(cs) + " |")
    parts.append("\n".join(time_lines))
    return "\n\n".join(parts)


def summary(rows: dict, encoders: list[str], frames: list[int], modes: list[str], budget_gb: float) -> str:
    lines = [f"**Largest frame count within {budget_gb:g} GiB** (224², batch 1)", "",
             "| encoder | " + " | ".join(modes) + " |", "|---|" + "---|" * len(modes)]
    for enc in encoders:
        lines.append(f"| {label(enc)} | "
                     + " | ".join(largest_within(rows, enc, m, frames) for m in modes) + " |")
    refs = [e for e in ("vit_base", "vit_base@math") if e in encoders]
    if "videomap_middle" in encoders and refs:
        lines += ["", f"**VideoMAP-M / UMT-B peak memory** (paper: about {PAPER_RATIO:.1f}, i.e. about 40 % less)", "",
                  "| mode | " + " | ".join(f"T={t}" for t in frames) + " |", "|---|" + "---|" * len(frames)]
        for ref in refs:
            for m in modes:
                what = m + (", UMT-B with math attention" if ref != "vit_base" else "")
                lines.append(f"| {what} | " + " | ".join(ratio_cell(rows.get(("videomap_middle", t, m)),
                                                                    rows.get((ref, t, m)), budget_gb)
                                                         for t in frames) + " |")
    return "\n".join(lines)


def plot(rows: dict, encoders: list[str], frames: list[int], modes: list[str], budget_gb: float, title: str,
         path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.5, 4.5))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    colors = ["tab:red", "tab:blue", "tab:green", "tab:purple", "tab:orange"]
    for i, enc in enumerate(encoders):
        for mode in modes:
            pts = [(t, rows[(enc, t, mode)]["peak_bytes"] / GIB) for t in frames
                   if rows.get((enc, t, mode), {}).get("status") == "ok"]
            over = [t for t in frames if rows.get((enc, t, mode), {}).get("status") == "over_budget"]
            style = "-" if mode == "train" else "--"
            if pts:
                ax.plot(*zip(*pts), style, marker="o", color=colors[i % len(colors)],
                        label=f"{label(enc)} {mode}")
            if over:
                ax.plot(over, [budget_gb] * len(over), "x", color=colors[i % len(colors)], markersize=10, mew=2)
    ax.axhline(budget_gb, color="k", ls=":", lw=1, label=f"budget {budget_gb:g} GiB (x: went over)")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(frames, [str(t) for t in frames])
    ax.set_xlabel("frames")
    ax.set_ylabel("peak memory of the encoder (GiB)")
    ax.grid(True, alpha=0.3, which="both")
    ax.legend(fontsize=7, loc="upper left")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def growth_notes(rows: dict, encoders: list[str], frames: list[int], modes: list[str]) -> list[str]:
    """Measured growth of (peak - weights) per doubling of the frame count, per encoder and mode."""
    notes = []
    for mode in modes:
        for enc in encoders:
            ok = [(t, rows[(enc, t, mode)]) for t in frames if rows.get((enc, t, mode), {}).get("status") == "ok"]
            if len(ok) < 2:
                continue
            (t0, r0), (t1, r1) = ok[0], ok[-1]
            a0 = r0["peak_bytes"] - r0["weights_bytes"] * (2 if mode == "train" else 1)
            a1 = r1["peak_bytes"] - r1["weights_bytes"] * (2 if mode == "train" else 1)
            if a0 > 0 and a1 > 0 and t1 > t0:
                import math

                per = (a1 / a0) ** (1 / math.log2(t1 / t0))
                grads = " and gradients" if mode == "train" else ""
                notes.append(f"{label(enc)} {mode}: beyond weights{grads}, "
                             f"x{per:.2f} per doubling of T ({t0} -> {t1} frames: {_gib(a0)} -> {_gib(a1)} GiB)")
    return notes


def write_doc_block(block: str, path: Path = DOC) -> None:
    """Replace the text between the markers (inclusive) or append it; create the file if needed."""
    new_block = f"{BEGIN}\n{block.strip()}\n{END}\n"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("# Video LLM\n\n" + new_block)
        return
    text = path.read_text()
    i, j = text.find(BEGIN), text.find(END)
    if i >= 0 and j > i:
        rest = text[j + len(END):].lstrip("\n")
        text = text[:i] + new_block + ("\n" + rest if rest else "")
    else:
        text = text.rstrip("\n") + "\n\n" + new_block
    path.write_text(text)


# ---------------------------------------------------------------------------------------- main
def _key(r: dict) -> tuple[str, int, str]:
    return r["encoder"], int(r["frames"]), r["mode"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--encoders", nargs="+", default=list(ENCODERS),
                    help="registry names (videomap.models.list_models()); NAME@math: with the math attention kernel")
    ap.add_argument("--frames", nargs="+", type=int, default=[8, 16, 32, 64, 128])
    ap.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--amp", choices=["none", "bf16"], default=None,
                    help="autocast precision (default: bf16 on CUDA, none = fp32 on CPU)")
    ap.add_argument("--budget-gb", type=float, default=16.0, help="memory budget per case in GiB (2^30 bytes)")
    ap.add_argument("--min-free-gb", type=float, default=1.0,
                    help="CPU: stop a case when the machine's available memory falls below this (GiB)")
    ap.add_argument("--case-timeout", type=float, default=None, help="seconds after which a case is stopped")
    ap.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's default)")
    ap.add_argument("--no-skip", action="store_true",
                    help="also run frame counts above one that already went over the budget")
    ap.add_argument("--resume", action="store_true", help="reuse finished cases from --out/llm_memory_cases.jsonl")
    ap.add_argument("--report-only", action="store_true",
                    help="run nothing: tables, plot and doc from the finished cases in --out (implies --resume)")
    ap.add_argument("--out", default="bench_out")
    ap.add_argument("--write-doc", action="store_true", help="rewrite the marked block of docs/llm.md")
    ap.add_argument("--doc-note", default="", help="a sentence added to the doc block (e.g. cases left out and why)")
    ap.add_argument("--quick", action="store_true", help="tiny models, 2 and 4 frames at 64x64: a smoke test")
    ap.add_argument("--case", help=argparse.SUPPRESS)  # internal: "encoder:frames:mode" in this process
    ap.add_argument("--overrides", default="{}", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.device == "auto":
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    elif args.device == "cuda" and not args.case:
        import torch

        if not torch.cuda.is_available():
            raise SystemExit("--device cuda: torch sees no CUDA device (use --device cpu or auto)")
    if args.amp is None:
        args.amp = "bf16" if args.device == "cuda" else "none"
    if args.case:
        import torch

        if args.threads:
            torch.set_num_threads(args.threads)
        enc, frames, mode = args.case.split(":")
        row = run_case(enc, int(frames), mode, args.size, args.batch, args.device, args.amp,
                       json.loads(args.overrides), args.budget_gb)
        print(json.dumps(row))
        return 0

    unknown = [e for e in args.encoders if split_spec(e)[0] not in _registry()]
    if unknown:
        raise SystemExit(f"--encoders: unknown model(s) {unknown}; expected names from videomap.models.list_models()")
    if args.quick:
        if args.frames == ap.get_default("frames"):
            args.frames = [2, 4]
        if args.size == ap.get_default("size"):
            args.size = 64
    frames = sorted(set(args.frames))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cases_path = out / "llm_memory_cases.jsonl"
    setting = {"size": args.size, "batch": args.batch, "amp": args.amp, "device": args.device,
               "budget_gb": args.budget_gb, "quick": args.quick}
    rows: dict[tuple[str, int, str], dict] = {}
    if (args.resume or args.report_only) and cases_path.exists():
        for line in cases_path.read_text().splitlines():
            r = json.loads(line)
            if r.get("setting") == setting and r["status"] not in ("failed", "low_memory", "skipped"):
                rows[_key(r)] = r
    elif cases_path.exists():
        cases_path.unlink()

    env = {**os.environ, "PYTHONPATH": str(REPO / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    if args.device == "cpu":
        env["MALLOC_MMAP_THRESHOLD_"] = "131072"  # freed activations leave the resident set (see module doc)
    over: set[tuple[str, str]] = {(e, m) for (e, _, m), r in rows.items() if r["status"] == "over_budget"}
    # small frame counts of every encoder first: if time runs out, the largest cases are what is missing
    for mode in args.modes:
        for t in frames:
            for enc in args.encoders:
                if (enc, t, mode) in rows or args.report_only:
                    continue
                if (enc, mode) in over and not args.no_skip:
                    r = {"encoder": enc, "frames": t, "mode": mode, "status": "skipped"}
                else:
                    ov = QUICK_OVERRIDES.get(split_spec(enc)[0], {}) if args.quick else {}
                    cmd = [sys.executable, __file__, "--case", f"{enc}:{t}:{mode}", "--size", str(args.size),
                           "--batch", str(args.batch), "--device", args.device, "--amp", args.amp,
                           "--budget-gb", str(args.budget_gb), "--overrides", json.dumps(ov)]
                    if args.threads:
                        cmd += ["--threads", str(args.threads)]
                    r = {"encoder": enc, "frames": t, "mode": mode,
                         **run_watched(cmd, env, args.budget_gb * GIB, args.min_free_gb * GIB, args.case_timeout)}
                    if r["status"] == "failed":
                        print(r["error"], file=sys.stderr)
                if r["status"] == "over_budget":
                    over.add((enc, mode))
                rows[(enc, t, mode)] = r
                with cases_path.open("a") as fh:
                    fh.write(json.dumps({**r, "setting": setting}) + "\n")
                print(f"  {enc:<18} T={t:<4} {mode:<9} {cell(r, args.budget_gb):>10} GiB  "
                      f"{r.get('step_s', float('nan')):7.1f} s step  {r.get('case_s', 0):7.1f} s case  [{r['status']}]",
                      flush=True)
    failed = [k for k, r in rows.items() if r["status"] == "failed"]

    machine = machine_summary()
    if args.threads:
        machine["torch_threads"] = str(args.threads)
    precision = "fp32" if args.amp == "none" else "bf16 autocast"
    title = (f"vision encoder, {args.batch}x3xTx{args.size}², {precision}, {args.device}"
             + (" (quick: tiny models)" if args.quick else ""))
    text = tables(rows, args.encoders, frames, args.modes, args.budget_gb)
    summ = summary(rows, args.encoders, frames, args.modes, args.budget_gb)
    notes = growth_notes(rows, args.encoders, frames, args.modes)
    print("\n" + title + "\n\n" + text + "\n\n" + summ + ("\n\n" + "\n".join(notes) if notes else ""))
    (out / "llm_memory.json").write_text(json.dumps(
        {"setting": setting, "args": vars(args), "machine": machine, "load": load_average(),
         "paper_ratio": PAPER_RATIO, "rows": [{**r, "setting": setting} for r in rows.values()]}, indent=1))
    plot(rows, args.encoders, frames, args.modes, args.budget_gb, title, out / "llm_memory.png")
    if args.write_doc:
        img = REPO / "docs" / "img" / "llm_memory.png"
        img.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(out / "llm_memory.png", img)
        write_doc_block(doc_block(args, machine, rows, text, summ, notes))
    return 1 if failed else 0


def _registry() -> list[str]:
    from videomap.models import list_models

    return list_models()


def doc_block(args: argparse.Namespace, machine: dict[str, str], rows: dict, text: str, summ: str,
              notes: list[str]) -> str:
    """The Markdown between the markers of docs/llm.md: command, machine, tables, plot, reading."""
    cmd = (f"python benchmarks/llm_memory.py --device {args.device} --amp {args.amp} --budget-gb {args.budget_gb:g} "
           f"--frames {' '.join(map(str, sorted(set(args.frames))))} --encoders {' '.join(args.encoders)}"
           + (f" --threads {args.threads}" if args.threads else "") + " --write-doc")
    return "\n\n".join(x for x in [
        "## Vision-encoder memory (the paper's Fig. 6)",
        f"`{cmd}` {run_context(machine, machine['torch_threads'] + ' threads')}.",
        what_is_measured(args),
        text, summ,
        ("Measured growth of the memory beyond the weights (and gradients), per doubling of the frame count:\n\n"
         + "\n".join(f"- {n}" for n in notes)) if notes else "",
        "![vision-encoder peak memory versus frames](img/llm_memory.png)",
        reading(rows, args),
        args.doc_note,
    ] if x)


def what_is_measured(args: argparse.Namespace) -> str:
    precision = "fp32" if args.amp == "none" else "bf16 autocast (weights fp32)"
    where = ("the peak resident set minus the resident set just before the model was built (after a warm-up on a "
             "tiny model of the same family has loaded the kernels and thread pools): weights (listed separately), "
             "gradients (training), activations and temporaries; the input clip, Python and torch are not counted. "
             "A case whose resident set passed the budget was killed by a watchdog polling every 50 ms: "
             f"`> {args.budget_gb:g}` means it went over, not by how much, and larger frame counts of that encoder and "
             "mode were then skipped, not run" if args.device == "cpu" else
             "`torch.cuda.max_memory_allocated` during the step minus the allocation once model and clip exist, plus "
             "the weights; the process is capped at the budget and an out-of-memory error reads "
             f"`> {args.budget_gb:g}`")
    return (f"One encoder alone (no LLM), one {args.size}² clip, batch {args.batch}, {precision}, each case in its "
            "own process, one after another. *train* is a forward plus a backward of the token features (an encoder "
            "trained with the LLM; `VideoLLM` keeps its encoders frozen unless `set_trainable(..., "
            "train_encoder=True)`, and a frozen encoder costs what the *inference* rows show); *inference* is a "
            f"forward under `torch.no_grad`. Memory is {where}. Step times are of one cold step on a shared "
            "machine and only indicative. The paper does not state the frame count, precision or attention "
            "implementation behind its Fig. 6 (a GPU measurement inside Video-LLaVA); compare ratios and growth "
            "here, not absolute GiB.")


def reading(rows: dict, args: argparse.Namespace) -> str:
    """What the numbers say, computed from them (and, on CPU, the attention kernel that was checked)."""
    frames = sorted(set(args.frames))
    paras = []
    out = []
    for mode in args.modes:
        ratios = [rows[("videomap_middle", t, mode)]["peak_bytes"] / rows[("vit_base", t, mode)]["peak_bytes"]
                  for t in frames
                  if rows.get(("videomap_middle", t, mode), {}).get("status") == "ok"
                  and rows.get(("vit_base", t, mode), {}).get("status") == "ok"]
        if ratios:
            verdict = ("about the paper's 0.6" if max(abs(r - PAPER_RATIO) for r in ratios) <= 0.1 else
                       "less than UMT-B but not the paper's 0.6" if max(ratios) < 1 else
                       "more than UMT-B, so the paper's 40 % saving is not reproduced here" if min(ratios) > 1 else
                       "on both sides of UMT-B's")
            span = f"{min(ratios):.2f}" + (f"-{max(ratios):.2f}" if max(ratios) - min(ratios) >= 0.005 else "")
            out.append(f"{mode.capitalize()}: VideoMAP-M needs {span}x the memory of UMT-B at the frame counts where "
                       f"both fit the budget ({verdict}).")
    if out:
        paras.append("**Reading.** " + " ".join(out))
    if args.device == "cpu":
        paras.append(
            "On CPU, PyTorch's `scaled_dot_product_attention` runs its flash-attention kernel for both attention "
            "encoders, forward and backward (`aten::_scaled_dot_product_flash_attention_for_cpu` and `..._backward`, "
            "seen with `torch.profiler` on torch " + _torch_version() + "); it never stores the (196·T+1)² "
            "attention matrix, so UMT-B's memory grows close to linearly with the frame count (growth figures "
            "above; a stored matrix would push the growth toward x4 per doubling). A kernel that materialises the "
            "matrix adds heads x tokens² x bytes per layer, e.g. for UMT-B at T=64 12 x 12545² x 4 B = 7.0 GiB per "
            "layer in fp32 (3.5 GiB in half precision), a term that grows with the square of the frame count. "
            "Without it, what an encoder stores follows its depth, width and block type: UMT-B has 12 attention "
            "blocks of width 768, VideoMamba-M 32 Mamba blocks of width 576, VideoMAP-M the same 32 Mamba blocks "
            "plus 8 attention blocks.")
        per = stored_per_channel(rows, args)
        if per:
            paras[-1] += (" Training memory beyond weights and gradients, divided by tokens x blocks x width, is "
                          + ", ".join(f"{v:.0f} fp32 values for {label(e)} (T={t})" for e, t, v in per)
                          + " per token, block and channel.")
    out = []
    for mode in args.modes:
        pairs = [(t, rows[("vit_base@math", t, mode)], rows[("vit_base", t, mode)]) for t in frames
                 if rows.get(("vit_base@math", t, mode), {}).get("status") == "ok"
                 and rows.get(("vit_base", t, mode), {}).get("status") == "ok"]
        if pairs:
            cells = [(t, ratio_cell(rows.get(("videomap_middle", t, mode)), rows.get(("vit_base@math", t, mode)),
                                    args.budget_gb)) for t in frames]
            cells = [(t, c) for t, c in cells if c not in ("–", "n/a")]
            out.append(f"UMT-B {mode} needs "
                       + ", ".join(f"{_gib(m['peak_bytes'])} GiB at T={t} (flash: {_gib(f['peak_bytes'])})"
                                   for t, m, f in pairs)
                       + ("; VideoMAP-M / UMT-B is then " + ", ".join(f"{c} at T={t}" for t, c in cells)
                          if cells else "") + ".")
    if out:
        paras.append("**With a stored attention matrix** (`vit_base@math`: PyTorch's math attention kernel, the "
                     "setting in which a Transformer encoder's memory grows with the square of the frame count): "
                     + " ".join(out))
    return "\n\n".join(paras)


def stored_per_channel(rows: dict, args: argparse.Namespace) -> list[tuple[str, int, float]]:
    """(encoder, T, fp32 values per token, block and channel) of the largest training case in budget."""
    from videomap.models import MODEL_DEFS

    res = []
    for enc in args.encoders:
        name = split_spec(enc)[0]
        ok = [t for t in sorted(set(args.frames)) if rows.get((enc, t, "train"), {}).get("status") == "ok"]
        if args.quick or not ok or name not in MODEL_DEFS or enc != name:
            continue
        r = rows[(enc, ok[-1], "train")]
        arch = MODEL_DEFS[name][1]
        blocks = arch["depth"] + (arch["depth"] // arch["attn_every"] if arch.get("attn_every") else 0)
        extra = r["peak_bytes"] - 2 * r["weights_bytes"]
        res.append((enc, ok[-1], extra / (r["tokens"] * blocks * arch["embed_dim"] * 4)))
    return res


def _torch_version() -> str:
    import torch

    return torch.__version__


if __name__ == "__main__":
    sys.exit(main())
