"""Selective-scan benchmark on CPU: the C kernel vs the sequential reference, the PyTorch
fallback and the exp floor, plus the peak memory of forward+backward.

    python benchmarks/scan.py [--quick] [--out DIR] [--no-doc]

Prints a table with PASS/FAIL against the targets, writes ``scan.png`` and ``scan.json`` to
the output directory (default ``bench_out/``) and, for a full run, rewrites the
"## Selective scan" section of docs/performance.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    REPO,
    load_average,
    machine_summary,
    median_time,
    reset_peak_rss,
    rss_kib,
    update_doc_section,
)
from videomap.ops import selective_scan, selective_scan_backend, selective_scan_ref  # noqa: E402

CASES = [(384, 1568), (768, 1568), (768, 12544)]  # (E, L); B = 1, N = 16
NSTATE = 16
TARGET_SPEEDUP = 20.0  # fwd+bwd vs autograd through the sequential reference (first case only)
TARGET_FLOOR_RATIO = 3.0  # forward vs the exp floor
TARGET_PEAK_MB = 1024.0  # fwd+bwd at E=768, L=12544
REF_BWD_MAX_L = 1568  # autograd through the reference keeps every step: affordable up to here
SKIP = "skipped"


def make_inputs(dim: int, seqlen: int, nstate: int = NSTATE, seed: int = 0) -> list[torch.Tensor]:
    """Realistic ranges: Δ = softplus(delta + bias) around 0.1, A = -(1..16) as Mamba's init."""
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(1, dim, seqlen, generator=g)
    delta = 0.5 * torch.randn(1, dim, seqlen, generator=g) - 2.0
    A = -torch.arange(1, nstate + 1, dtype=torch.float32).repeat(dim, 1)
    B = torch.randn(1, nstate, seqlen, generator=g)
    C = torch.randn(1, nstate, seqlen, generator=g)
    D = torch.ones(dim)
    z = torch.randn(1, dim, seqlen, generator=g)
    bias = 0.1 * torch.randn(dim, generator=g)
    return [u, delta, A, B, C, D, z, bias]


def fwd(fn, inputs):
    with torch.no_grad():
        return fn(*inputs, delta_softplus=True)


def fwd_bwd(fn, leaves, grad_out):
    for t in leaves:
        t.grad = None
    out = fn(*leaves, delta_softplus=True)
    out.backward(grad_out)


class kernel_disabled:
    """Context manager: route selective_scan to the PyTorch fallback."""

    def __enter__(self):
        self.old = os.environ.get("VIDEOMAP_DISABLE_KERNEL")
        os.environ["VIDEOMAP_DISABLE_KERNEL"] = "1"

    def __exit__(self, *exc):
        if self.old is None:
            os.environ.pop("VIDEOMAP_DISABLE_KERNEL", None)
        else:
            os.environ["VIDEOMAP_DISABLE_KERNEL"] = self.old


def exp_floor(numel: int, repeats: int) -> float:
    """Median time of exp over numel fp32 values into a preallocated output."""
    x = torch.empty(numel).uniform_(-5.0, 0.0)
    y = torch.empty_like(x)
    return median_time(lambda: torch.exp(x, out=y), repeats)


def best_over_threads(settings: list[int], measure) -> float:
    default = torch.get_num_threads()
    try:
        times = []
        for n in settings:
            torch.set_num_threads(n)
            times.append(measure())
    finally:
        torch.set_num_threads(default)
    return min(times)


def memory_probe(dim: int, seqlen: int, fallback: bool) -> dict:
    """Run in a fresh process: peak RSS added by one forward+backward (inputs already allocated)."""
    if fallback:
        os.environ["VIDEOMAP_DISABLE_KERNEL"] = "1"
    small = [t.requires_grad_() for t in make_inputs(8, 64)]
    fwd_bwd(selective_scan, small, torch.ones(1, 8, 64))  # load the kernel, start autograd
    leaves = [t.requires_grad_() for t in make_inputs(dim, seqlen)]
    grad_out = torch.ones(1, dim, seqlen)
    if not reset_peak_rss():
        return {"error": "cannot reset VmHWM (/proc/self/clear_refs)"}
    before, _ = rss_kib()
    fwd_bwd(selective_scan, leaves, grad_out)
    _, peak = rss_kib()
    return {"added_mb": (peak - before) / 1024, "backend": selective_scan_backend(leaves[0])}


def run_memory_probe(dim: int, seqlen: int, fallback: bool = False) -> float | str:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--memory-probe", str(dim), str(seqlen)]
    if fallback:
        cmd.append("--fallback")
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    if res.returncode != 0:
        return f"error: {res.stderr.strip()[-300:]}"
    data = json.loads(res.stdout.strip().splitlines()[-1])
    return data.get("added_mb", data.get("error", "error"))


def bench_case(dim: int, seqlen: int, quick: bool) -> dict:
    r = {"E": dim, "L": seqlen}
    inputs = make_inputs(dim, seqlen)
    leaves = [t.clone().requires_grad_() for t in inputs]
    grad_out = torch.randn(1, dim, seqlen)
    long_seq = seqlen > REF_BWD_MAX_L

    r["exp_floor"] = exp_floor(dim * seqlen * NSTATE, 5 if quick else 15)

    assert selective_scan_backend(inputs[0]) == "cpu-kernel", "the C kernel is not active"
    r["ours_fwd"] = median_time(lambda: fwd(selective_scan, inputs), 5 if quick else 11)
    r["ours_fwd_bwd"] = median_time(lambda: fwd_bwd(selective_scan, leaves, grad_out), 3 if quick else 7)
    with kernel_disabled():
        reps = 1 if (quick or long_seq) else 3
        r["fallback_fwd"] = median_time(lambda: fwd(selective_scan, inputs), reps, warmup=0 if long_seq else 1)

    # The reference's per-step ops are too small for intra-op threads to help, and on a busy machine
    # spinning OpenMP workers can slow it down many times over; so it is timed with torch's default
    # thread count and with one thread, and the faster median is the baseline (the fair choice for it).
    settings = [1] if long_seq else sorted({torch.get_num_threads(), 1})
    reps = 1 if (quick or long_seq) else 3
    r["ref_fwd"] = best_over_threads(settings, lambda: median_time(
        lambda: fwd(selective_scan_ref, inputs), reps, warmup=0 if long_seq else 1))
    if long_seq or (quick and dim > CASES[0][0]):
        r["ref_fwd_bwd"] = SKIP
    else:
        r["ref_fwd_bwd"] = best_over_threads(settings, lambda: median_time(
            lambda: fwd_bwd(selective_scan_ref, leaves, grad_out), 1 if quick else 3, warmup=0))
    r["peak_mb_fwd_bwd"] = run_memory_probe(dim, seqlen)
    if long_seq and not quick:  # the fallback is memory-bounded too; show it where it matters
        r["fallback_peak_mb_fwd_bwd"] = run_memory_probe(dim, seqlen, fallback=True)
    return r


def fmt_ms(v) -> str:
    return v if isinstance(v, str) else f"{v * 1e3:.1f} ms"


def verdicts(results: list[dict]) -> list[dict]:
    """One row per target and case it applies to: measured value, target, PASS/FAIL."""
    rows = []
    for r in results:
        case = f"E={r['E']}, L={r['L']}"
        ratio = r["ours_fwd"] / r["exp_floor"]
        rows.append({"target": "forward / exp floor", "case": case, "value": f"{ratio:.2f}x",
                     "goal": f"<= {TARGET_FLOOR_RATIO:.0f}x", "ok": ratio <= TARGET_FLOOR_RATIO})
        if (r["E"], r["L"]) == CASES[0]:  # the speedup target is set for the first case
            sp = r["ref_fwd_bwd"] / r["ours_fwd_bwd"]
            rows.append({"target": "fwd+bwd speedup vs reference autograd", "case": case, "value": f"{sp:.0f}x",
                         "goal": f">= {TARGET_SPEEDUP:.0f}x", "ok": sp >= TARGET_SPEEDUP})
        mem = r["peak_mb_fwd_bwd"]
        if (r["E"], r["L"]) == CASES[-1]:
            ok = isinstance(mem, float) and mem <= TARGET_PEAK_MB
            rows.append({"target": "fwd+bwd peak memory added", "case": case,
                         "value": f"{mem:.0f} MB" if isinstance(mem, float) else str(mem),
                         "goal": f"<= {TARGET_PEAK_MB:.0f} MB", "ok": ok})
    return rows


def tables(results: list[dict], rows: list[dict]) -> str:
    head = ("| E | L | reference fwd | reference fwd+bwd | ours fwd | ours fwd+bwd | PyTorch fallback fwd "
            "| exp floor | ours fwd / floor | fwd speedup | fwd+bwd speedup | peak mem fwd+bwd |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|---|\n")
    body = ""
    for r in results:
        sp = (f"{r['ref_fwd_bwd'] / r['ours_fwd_bwd']:.0f}x" if isinstance(r["ref_fwd_bwd"], float) else SKIP)
        mem = r["peak_mb_fwd_bwd"]
        body += (f"| {r['E']} | {r['L']} | {fmt_ms(r['ref_fwd'])} | {fmt_ms(r['ref_fwd_bwd'])} "
                 f"| {fmt_ms(r['ours_fwd'])} | {fmt_ms(r['ours_fwd_bwd'])} | {fmt_ms(r['fallback_fwd'])} "
                 f"| {fmt_ms(r['exp_floor'])} | {r['ours_fwd'] / r['exp_floor']:.2f}x "
                 f"| {r['ref_fwd'] / r['ours_fwd']:.0f}x | {sp} "
                 f"| {f'{mem:.0f} MB' if isinstance(mem, float) else mem} |\n")
    tgt = "| target | case | measured | goal | result |\n|---|---|---|---|---|\n"
    for row in rows:
        tgt += (f"| {row['target']} | {row['case']} | {row['value']} | {row['goal']} "
                f"| {'PASS' if row['ok'] else 'FAIL'} |\n")
    return head + body + "\n" + tgt


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = [("ref_fwd", "reference fwd"), ("ref_fwd_bwd", "reference fwd+bwd"), ("fallback_fwd", "fallback fwd"),
              ("ours_fwd", "ours fwd"), ("ours_fwd_bwd", "ours fwd+bwd"), ("exp_floor", "exp floor")]
    fig, ax = plt.subplots(figsize=(11, 5.5))
    width = 0.8 / len(series)
    for i, (key, label) in enumerate(series):
        xs, ys = [], []
        for j, r in enumerate(results):
            x = j + (i - (len(series) - 1) / 2) * width
            if isinstance(r[key], float):
                xs.append(x)
                ys.append(r[key] * 1e3)
            else:
                ax.text(x, 0.02, r[key], rotation=90, ha="center", va="bottom", fontsize=7,
                        transform=ax.get_xaxis_transform())
        ax.bar(xs, ys, width, label=label)
    ax.set_yscale("log")
    ax.set_ylabel("time (ms, log scale)")
    ax.set_xticks(range(len(results)), [f"E={r['E']}\nL={r['L']}" for r in results])
    ax.set_title("Selective scan on CPU (B=1, N=16): median wall time")
    ax.legend(fontsize=8, ncol=len(series), loc="upper center", bbox_to_anchor=(0.5, -0.12))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def fallback_note(results: list[dict]) -> str:
    notes = [f"E={r['E']}, L={r['L']}: {r['fallback_peak_mb_fwd_bwd']:.0f} MB"
             for r in results if isinstance(r.get("fallback_peak_mb_fwd_bwd"), float)]
    return f"\nPeak memory added by fwd+bwd of the PyTorch fallback: {'; '.join(notes)}.\n" if notes else ""


def doc_body(results, rows, info, load_before, load_after, command) -> str:
    return f"""
Measured by `benchmarks/scan.py` (B=1, N=16, fp32, `delta_softplus=True`, D and z given).

- Machine: {info['cpu']}, {info['cores']} cores, torch {info['torch']} ({info['torch_threads']} threads),
  Python {info['python']}, {info['os']}.
- Command: `{command}`
- Load average (1/5/15 min) before / after the run: {load_before} and {load_after}. This
  machine is shared, so single runs are noisy; every time is the median of several repeats.

{tables(results, rows)}{fallback_note(results)}
Speedups are reference time / our time. Forward-and-backward uses the C kernel for both passes:
one fused sweep per channel with a 16-lane polynomial exp, the backward recomputing each
64-step chunk from a saved state (see `src/videomap/ops/csrc/selective_scan.c`).

How each column is measured:

- *reference*: `selective_scan_ref`, the sequential one-step-at-a-time loop (plain torch ops);
  its fwd+bwd is autograd through that loop. Autograd through the loop stores every step, so
  it is only run up to L={REF_BWD_MAX_L} (marked "{SKIP}" above, not estimated). Its per-step
  tensors are too small for intra-op threads to help, and on a busy machine spinning OpenMP
  workers slow it down several-fold, so it is timed with torch's default thread count and
  with 1 thread and the faster median is reported (1 thread only for L > {REF_BWD_MAX_L}).
- *ours*: `selective_scan` on the C kernel (`cpu-kernel` backend); fwd under `no_grad`,
  fwd+bwd = forward, then backward for every input (u, delta, A, B, C, D, z, delta_bias).
- *PyTorch fallback*: the same call with `VIDEOMAP_DISABLE_KERNEL=1` (chunked, exact, pure torch).
- *exp floor*: `torch.exp(x, out=y)` over an E·L·N fp32 tensor with a preallocated output, the
  cost of just computing the E·L·N decay factors once.
- *peak mem fwd+bwd*: a fresh process allocates the inputs, warms up on a tiny input, resets
  its peak RSS (`/proc/self/clear_refs`, VmHWM), runs one forward+backward and reports
  VmHWM − VmRSS before the call. It includes the output and all input gradients (for
  E=768, L=12544 each (1, E, L) fp32 tensor is 37 MB).
"""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer repeats; skip slow reference runs; no doc update")
    ap.add_argument("--out", default=str(REPO / "bench_out"), help="output directory (default bench_out/)")
    ap.add_argument("--no-doc", action="store_true", help="do not rewrite docs/performance.md")
    ap.add_argument("--memory-probe", nargs=2, type=int, metavar=("E", "L"), help=argparse.SUPPRESS)
    ap.add_argument("--fallback", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.memory_probe:
        print(json.dumps(memory_probe(*args.memory_probe, fallback=args.fallback)))
        return 0

    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    info = machine_summary()
    load_before = load_average()
    print(f"machine: {info}\nload average: {load_before}\nbackend: {selective_scan_backend()}", flush=True)
    results = []
    for dim, seqlen in CASES:
        print(f"case E={dim} L={seqlen} ...", flush=True)
        results.append(bench_case(dim, seqlen, args.quick))
        print("  " + ", ".join(f"{k}={v if k in ('E', 'L') or 'peak' in k else fmt_ms(v)}"
                               for k, v in results[-1].items()), flush=True)
    load_after = load_average()
    rows = verdicts(results)
    print()
    print(tables(results, rows))
    print(f"load average after: {load_after}")
    plot(results, out_dir / "scan.png")
    (out_dir / "scan.json").write_text(json.dumps({"machine": info, "results": results}, indent=2))
    print(f"wrote {out_dir / 'scan.png'} and {out_dir / 'scan.json'}")
    if not args.quick and not args.no_doc:
        command = "python benchmarks/scan.py" + (f" --out {args.out}" if args.out != str(REPO / "bench_out") else "")
        update_doc_section(REPO / "docs" / "performance.md", "## Selective scan",
                           doc_body(results, rows, info, load_before, load_after, command))
        print("updated docs/performance.md (## Selective scan)")
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
