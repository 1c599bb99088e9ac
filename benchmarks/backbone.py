"""Backbone inference throughput and peak memory versus frame count (CPU or CUDA).

    python benchmarks/backbone.py [--frames 8 16 32 64] [--models ...] [--device cpu] [--out bench_out]

Each (model, T) case runs in a fresh subprocess so that peak memory is its own: on CPU the peak
resident set is reset (``/proc/self/clear_refs``) after the model and input exist, so the number
is the memory the forward pass adds; on CUDA it is ``torch.cuda.max_memory_allocated`` above the
same baseline. Prints a table, checks the targets, writes a PNG.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

TARGETS = "videomamba_tiny clips/s at T=64 >= 2x vit_tiny; videomamba_tiny time(T=64)/time(T=8) <= 10"


def _rss_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def run_case(name: str, frames: int, size: int, device: str, repeats: int, dtype: str) -> dict:
    import torch

    import videomap

    torch.manual_seed(0)
    model = videomap.create_model(name, num_classes=400, num_frames=frames, img_size=size).to(device).eval()
    x = torch.randn(1, 3, frames, size, size, device=device)
    amp = torch.autocast(device, dtype=torch.bfloat16) if dtype == "bf16" else torch.autocast(device, enabled=False)
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        base = _rss_kb("VmRSS") * 1024
    times = []
    with torch.inference_mode(), amp:
        for _ in range(repeats + 1):
            t0 = time.perf_counter()
            model(x)
            if device == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
    peak = (torch.cuda.max_memory_allocated() if device == "cuda" else _rss_kb("VmHWM") * 1024) - base
    t = sorted(times[1:])[len(times[1:]) // 2] if repeats > 1 else times[-1]
    row = {"model": name, "frames": frames, "seconds": t, "clips_per_s": 1.0 / t, "peak_mb": peak / 2**20}
    if dtype == "bf16":  # do bf16 predictions match fp32 ones? (after the timing: not in the peak)
        xs = torch.randn(4, 3, frames, size, size, device=device)
        with torch.inference_mode():
            ref = torch.cat([model(xs[i:i + 1]) for i in range(4)])
            with amp:
                low = torch.cat([model(xs[i:i + 1]) for i in range(4)]).float()
        row["top1_agree"] = float((ref.argmax(-1) == low.argmax(-1)).float().mean())
        row["max_logit_diff"] = float((ref - low).abs().max())
        row["logit_std"] = float(ref.std())  # untrained heads give near-tied logits: read the diff against this
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["videomamba_tiny", "videomap_tiny", "vit_tiny"])
    ap.add_argument("--frames", nargs="+", type=int, default=[8, 16, 32, 64])
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", "--amp", choices=["fp32", "bf16"], default="fp32",
                    help="bf16: autocast, plus top-1 agreement / max logit difference against fp32")
    ap.add_argument("--repeats", type=int, default=2, help="timed runs after one warm-up (median)")
    ap.add_argument("--out", default="bench_out")
    ap.add_argument("--case", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.case:  # child process: one measurement, JSON on stdout
        name, frames = args.case.split(":")
        print(json.dumps(run_case(name, int(frames), args.size, args.device, args.repeats, args.dtype)))
        return

    rows = []
    for name in args.models:
        for frames in args.frames:
            cmd = [sys.executable, __file__, "--case", f"{name}:{frames}", "--size", str(args.size),
                   "--device", args.device, "--repeats", str(args.repeats), "--dtype", args.dtype]
            out = subprocess.run(cmd, capture_output=True, text=True)
            if out.returncode != 0:
                print(out.stderr, file=sys.stderr)
                raise SystemExit(f"case {name} T={frames} failed")
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
            r = rows[-1]
            print(f"  {name:<16} T={frames:<3} {r['seconds']:8.3f} s  {r['clips_per_s']:7.3f} clips/s  "
                  f"{r['peak_mb']:8.1f} MB", flush=True)

    import torch

    print(f"\nBackbone inference, batch 1, {args.size}x{args.size}, {args.dtype}, device={args.device} "
          f"({platform.processor() or platform.machine()}, {os.cpu_count()} cpus, torch {torch.__version__})")
    low = args.dtype == "bf16"
    print("| model | T | s/clip | clips/s | peak MB |"
          + (" top-1 = fp32 (4 clips) | max logit diff / logit std |" if low else "")
          + "\n|---|---|---|---|---|" + ("---|---|" if low else ""))
    for r in rows:
        extra = f" {r['top1_agree']:.0%} | {r['max_logit_diff']:.3f} / {r['logit_std']:.3f} |" if low else ""
        print(f"| {r['model']} | {r['frames']} | {r['seconds']:.3f} | {r['clips_per_s']:.3f} | {r['peak_mb']:.1f} |"
              + extra)

    by = {(r["model"], r["frames"]): r for r in rows}
    tmax, tmin = max(args.frames), min(args.frames)
    checks = []
    if ("videomamba_tiny", tmax) in by and ("vit_tiny", tmax) in by:
        ratio = by[("videomamba_tiny", tmax)]["clips_per_s"] / by[("vit_tiny", tmax)]["clips_per_s"]
        checks.append((f"videomamba_tiny / vit_tiny clips/s at T={tmax}", ratio, ">= 2", ratio >= 2))
    if ("videomamba_tiny", tmax) in by and ("videomamba_tiny", tmin) in by:
        growth = by[("videomamba_tiny", tmax)]["seconds"] / by[("videomamba_tiny", tmin)]["seconds"]
        checks.append((f"videomamba_tiny time T={tmax} / T={tmin}", growth, "<= 10", growth <= 10))
    if low and ("videomamba_tiny", tmin) in by and ("vit_tiny", tmin) in by:
        slower = by[("videomamba_tiny", tmin)]["seconds"] / by[("vit_tiny", tmin)]["seconds"]
        checks.append((f"videomamba_tiny / vit_tiny time at T={tmin}", slower, "<= 2.5", slower <= 2.5))
    if checks:
        print("\n| check | measured | target | result |\n|---|---|---|---|")
        for label, val, target, ok in checks:
            print(f"| {label} | {val:.2f} | {target} | {'PASS' if ok else 'FAIL'} |")

    os.makedirs(args.out, exist_ok=True)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for name in args.models:
        fr = [f for f in args.frames if (name, f) in by]
        axes[0].plot(fr, [by[(name, f)]["clips_per_s"] for f in fr], marker="o", label=name)
        axes[1].plot(fr, [by[(name, f)]["peak_mb"] for f in fr], marker="o", label=name)
    for ax, label in zip(axes, ["clips / s", "peak memory added (MB)"]):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("frames")
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
        ax.legend()
    fig.suptitle(f"Backbone inference, {args.size}px, batch 1, {args.device}")
    fig.tight_layout()
    path = os.path.join(args.out, f"backbone_{args.device}.png")
    fig.savefig(path, dpi=120)
    with open(os.path.join(args.out, f"backbone_{args.device}.json"), "w") as f:
        json.dump(rows, f, indent=1)
    print(f"\nplot: {path}")


if __name__ == "__main__":
    main()
