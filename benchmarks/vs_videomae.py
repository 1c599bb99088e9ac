"""Side by side with Hugging Face VideoMAE: seconds per clip and peak memory on the same CPU.

    python benchmarks/vs_videomae.py [--models videomae_base videomamba_small videomamba_middle
        videomap_middle] [--frames 16] [--size 224] [--threads 2] [--out bench_out] [--write-doc] [--quick]

``videomae_base`` is transformers' ``VideoMAEForVideoClassification(VideoMAEConfig())`` (12 layers,
width 768, tubelet 2, patch 16, 400 classes, random weights: built from the config, nothing is
downloaded); the others come from ``videomap.create_model``. Every (model, mode, precision) case
runs in its own process with the same number of threads: batch 1, inference (``no_grad``) or one
training step (forward, cross-entropy, backward), fp32 or bf16 autocast. Time: the median of the
timed repeats after one warm-up. Memory: the peak resident set a step adds on top of the weights,
the input and (training) the gradient buffers, with a fixed glibc mmap threshold in every case so
that freed activations leave the resident set. Prints a table, writes JSON and a PNG, and rewrites
its section of docs/performance.md with ``--write-doc``. ``--quick`` runs tiny configurations (a
smoke test of the script, not a measurement).
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

DEFAULT_MODELS = ("videomae_base", "videomamba_small", "videomamba_middle", "videomap_middle")
MODES = ("inference", "training")
PRECISIONS = ("fp32", "bf16")
VIDEOMAE = "videomae_base"
NUM_CLASSES = 400
# --quick: the same code paths at toy sizes
QUICK_CLIP = dict(frames=4, size=32)
QUICK_VIDEOMAE = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
QUICK_OURS = dict(depth=2, embed_dim=32)
DOC_NOTES = """\
Reading the table: the weights are random (speed and memory do not depend on them) and the batch is
one clip. VideoMAE embeds tubelets of two frames, so at the same 16 frames it processes half as many
tokens as VideoMamba / VideoMAP (tubelet 1, one token per 16x16 patch per frame); that is the
models' design as released, not a setting of this benchmark. Attention cost grows with the square of
the token count and Mamba's linearly, so the balance shifts towards the Mamba models at more frames
(see Backbones above). Memory is what one step adds on top of the weights, so it reflects activations,
not model size. Each case runs once, one after the other, on a shared machine: a case that meets a
busy spell is slowed by up to about 2x (the load average is recorded above), so differences smaller
than that between rows of one mode and precision are noise; rerun the command to check them."""


def build(name: str, frames: int, size: int, quick: bool):
    """(model, input clip of batch 1): VideoMAE takes (B, T, C, H, W), ours (B, C, T, H, W)."""
    import torch

    if name == VIDEOMAE:
        from transformers import VideoMAEConfig, VideoMAEForVideoClassification

        cfg = VideoMAEConfig(num_frames=frames, image_size=size, num_labels=NUM_CLASSES,
                             **(QUICK_VIDEOMAE if quick else {}))
        model = VideoMAEForVideoClassification(cfg)
        model.num_tokens = frames // cfg.tubelet_size * (size // cfg.patch_size) ** 2  # no cls token
        x = torch.randn(1, frames, 3, size, size)
        return (lambda v: model(pixel_values=v).logits), model, x
    import videomap

    extra = dict(QUICK_OURS, **({"attn_every": 1} if name.startswith("videomap") else {})) if quick else {}
    model = videomap.create_model(name, num_classes=NUM_CLASSES, num_frames=frames, img_size=size, **extra)
    pe = model.patch_embed
    model.num_tokens = frames // pe.tubelet_size * (size // pe.patch_size) ** 2 + 1  # one cls token
    return model, model, torch.randn(1, 3, frames, size, size)


def run_case(name: str, mode: str, precision: str, frames: int, size: int, repeats: int, threads: int,
             quick: bool) -> dict:
    """One case in this process: median seconds of a step and the peak resident memory it adds."""
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    fn, model, x = build(name, frames, size, quick)
    model.train(mode == "training")
    target = torch.randint(0, NUM_CLASSES, (1,))
    amp = torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")

    def step() -> None:
        if mode == "training":
            with amp:
                logits = fn(x)
            torch.nn.functional.cross_entropy(logits.float(), target).backward()
        else:
            with torch.no_grad(), amp:
                fn(x)

    step()  # warm-up: gradient buffers, the scan kernel, oneDNN primitives
    base, _ = rss_kib()
    reset_peak_rss()
    times = []
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    _, peak = rss_kib()
    params = sum(p.numel() for p in model.parameters())
    return {"model": name, "mode": mode, "precision": precision, "seconds": statistics.median(times),
            "peak_mib": (peak - base) / 1024, "params_m": params / 1e6, "tokens": model.num_tokens,
            "repeats": len(times)}


def _case(args: argparse.Namespace, name: str, mode: str, precision: str) -> dict:
    repeats = args.train_repeats if mode == "training" else args.repeats
    cmd = [sys.executable, __file__, "--case", f"{name}:{mode}:{precision}", "--frames", str(args.frames),
           "--size", str(args.size), "--threads", str(args.threads), "--repeats", str(repeats)]
    cmd += ["--quick"] if args.quick else []
    # a fixed mmap threshold: glibc otherwise raises it after the warm-up frees its activations and
    # keeps later ones on its heap, so the resident set would not show what a step needs.
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "MALLOC_MMAP_THRESHOLD_": "131072",
           "OMP_NUM_THREADS": str(args.threads)}
    return run_json_case(cmd, env, f"{name} {mode} {precision}")


def _winners(rows: list[dict]) -> list[str]:
    """One line per (mode, precision): who is fastest and who needs least memory, and by how much."""
    lines = []
    for mode in MODES:
        for prec in PRECISIONS:
            group = [r for r in rows if r["mode"] == mode and r["precision"] == prec]
            if len(group) < 2:
                continue
            fast = sorted(group, key=lambda r: r["seconds"])
            small = sorted(group, key=lambda r: r["peak_mib"])
            lead = fast[1]["seconds"] / fast[0]["seconds"]
            less = small[1]["peak_mib"] / max(small[0]["peak_mib"], 1e-9)
            lines.append(f"- {mode}, {prec}: fastest {fast[0]['model']} ({lead:.2f}x ahead of {fast[1]['model']}); "
                         f"least memory {small[0]['model']} ({less:.2f}x less than {small[1]['model']})")
    return lines


def _plot(rows: list[dict], models: list[str], path: Path, title: str) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2)
    groups = [(m, p) for m in MODES for p in PRECISIONS]
    width = 0.8 / max(1, len(models))
    for ax, key, label in ((axes[0], "seconds", "seconds per clip"), (axes[1], "peak_mib", "peak MiB added")):
        for i, name in enumerate(models):
            by = {(r["mode"], r["precision"]): r[key] for r in rows if r["model"] == name}
            ax.bar([g + i * width for g in range(len(groups))], [by.get(g, 0) for g in groups], width, label=name)
        ax.set_xticks([g + 0.4 - width / 2 for g in range(len(groups))], [f"{m}\n{p}" for m, p in groups])
        ax.set_yscale("log")
        ax.set_ylabel(label)
        ax.grid(True, axis="y", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _report(args: argparse.Namespace, rows: list[dict], machine: dict[str, str], load: str) -> None:
    tokens = {r["model"]: r["tokens"] for r in rows if "tokens" in r}
    table = ["| model | params (M) | tokens | mode | precision | s / clip | peak MiB added | time vs VideoMAE "
             "| memory vs VideoMAE |", "|---|---|---|---|---|---|---|---|---|"]
    ref = {(r["mode"], r["precision"]): r for r in rows if r["model"] == VIDEOMAE}
    for r in rows:
        base = ref.get((r["mode"], r["precision"]))
        vs_t = f"{r['seconds'] / base['seconds']:.2f}x" if base else "-"
        vs_m = f"{r['peak_mib'] / max(base['peak_mib'], 1e-9):.2f}x" if base else "-"
        table.append(f"| {r['model']} | {r['params_m']:.1f} | {tokens.get(r['model'], '-')} | {r['mode']} | "
                     f"{r['precision']} | {r['seconds']:.3f} | {r['peak_mib']:.0f} | {vs_t} | {vs_m} |")
    text = "\n".join(table)
    winners = "\n".join(_winners(rows))
    head = f"batch 1, {args.frames}x{args.size}², {args.threads} threads"
    print(f"\n{head}\n{text}\n\n{winners}")

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    saved = {k: v for k, v in vars(args).items() if k not in ("case", "from_json")}
    (out / "vs_videomae.json").write_text(json.dumps({"rows": rows, "args": saved, "machine": machine,
                                                      "load": load}, indent=1))
    _plot(rows, args.models, out / "vs_videomae.png", f"{head}, CPU ({machine['cpu']})")
    if args.write_doc and not args.quick:
        import transformers

        cmd = (f"python benchmarks/vs_videomae.py --models {' '.join(args.models)} --modes {' '.join(args.modes)} "
               f"--precisions {' '.join(args.precisions)} --frames {args.frames} "
               f"--size {args.size} --threads {args.threads} --repeats {args.repeats} "
               f"--train-repeats {args.train_repeats} --write-doc")
        context = run_context(machine, f"transformers {transformers.__version__}", load)
        body = (f"`{cmd}` {context}; {head}; time = median of {args.repeats} inference runs / "
                f"{args.train_repeats} training steps after a warm-up; memory = peak resident set a step adds "
                f"above weights, input and gradient buffers (`bench_out/vs_videomae.png`):\n\n{text}\n\n"
                f"Who wins where (from this table):\n\n{winners}\n\n{DOC_NOTES}")
        update_doc_section(REPO / "docs" / "performance.md", "## Against Hugging Face VideoMAE", body)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS))
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    ap.add_argument("--precisions", nargs="+", choices=PRECISIONS, default=list(PRECISIONS))
    ap.add_argument("--threads", type=int, default=2, help="intra-op threads in every case")
    ap.add_argument("--repeats", type=int, default=3, help="timed inference runs after one warm-up")
    ap.add_argument("--train-repeats", type=int, default=2, help="timed training steps after one warm-up")
    ap.add_argument("--out", default="bench_out")
    ap.add_argument("--write-doc", action="store_true", help="rewrite the section in docs/performance.md")
    ap.add_argument("--quick", action="store_true", help="toy sizes: checks the script, measures nothing useful")
    ap.add_argument("--from-json", help="re-render the table, PNG and doc section of a saved vs_videomae.json")
    ap.add_argument("--case", help=argparse.SUPPRESS)  # internal: model:mode:precision in this process
    args = ap.parse_args(argv)
    if args.quick:
        args.frames, args.size = QUICK_CLIP["frames"], QUICK_CLIP["size"]
        args.repeats, args.train_repeats = 1, 1
    if args.case:
        name, mode, prec = args.case.split(":")
        print(json.dumps(run_case(name, mode, prec, args.frames, args.size, args.repeats, args.threads, args.quick)))
        return 0
    import videomap

    known = set(videomap.list_models()) | {VIDEOMAE}
    unknown = [m for m in args.models if m not in known]
    if unknown:
        raise SystemExit(f"unknown model(s) {', '.join(unknown)}; use {VIDEOMAE} or a registry name")

    if args.from_json:  # re-render a finished run (table, PNG, doc) without measuring again
        saved = json.loads(Path(args.from_json).read_text())
        rows, machine, load = saved["rows"], saved["machine"], saved["load"]
        for key in ("models", "modes", "precisions", "frames", "size", "threads", "repeats", "train_repeats"):
            setattr(args, key, saved["args"][key])
    else:
        rows = []
        for mode in args.modes:
            for prec in args.precisions:
                for name in args.models:
                    rows.append(_case(args, name, mode, prec))
                    r = rows[-1]
                    print(f"{name:<18} {mode:<9} {prec:<4} {r['seconds']:8.3f} s/clip {r['peak_mib']:9.0f} MiB",
                          flush=True)
        machine, load = machine_summary(), load_average()
    _report(args, rows, machine, load)
    return 0


if __name__ == "__main__":
    sys.exit(main())
