"""Sample efficiency on the demo's data: top-1 against the number of labels, per pre-training objective.

    python benchmarks/sample_efficiency.py [--quick] [--seeds 3] [--fractions 0.1 0.25 1.0] [--out DIR]

The paper's Table 7 compares frame-wise AR (VideoMAP), token-wise AR and video-wise alignment
(UMT) pre-training; its data-efficiency claim is that pre-training pays most with few labels.
Here each objective pre-trains the demo's VideoHybrid on the demo's unlabeled clips, then
fine-tunes on a balanced fraction of a labelled pool; "scratch" skips pre-training. Every arm has
the same schedule. Prints a table (mean ± std over seeds), writes ``sample_efficiency.json`` and
``sample_efficiency.png`` to the output directory (default ``bench_out/``).
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
from _common import machine_summary  # noqa: E402
from videomap.config import load_config  # noqa: E402
from videomap.data import make_synthetic_dataset  # noqa: E402
from videomap.tasks.demo import FULL, QUICK, model_overrides, train_overrides  # noqa: E402
from videomap.tasks.finetune import run_evaluate, run_finetune  # noqa: E402
from videomap.tasks.pretrain import run_pretrain  # noqa: E402

OBJECTIVES = ("frame", "token", "video", "scratch")


def _subset(list_file: str, n: int, dst: Path) -> str:
    """The first ``n`` lines: the synthetic lists cycle through the labels, so they are balanced."""
    with open(list_file) as f:
        lines = f.read().splitlines()[:n]
    dst.write_text("\n".join(lines) + "\n")
    return str(dst)


def run(args: argparse.Namespace) -> dict:
    p = dict(QUICK if args.quick else FULL)
    pool = args.pool or p["num_train"] * 5
    out = Path(args.out).resolve()
    data = out / "data"
    train_list, val_list = make_synthetic_dataset(data, num_train=pool, num_val=p["num_val"],
                                                  num_frames=p["clip_frames"], size=p["size"], seed=0)
    unlabeled, _ = make_synthetic_dataset(data / "unlabeled", num_train=p["num_unlabeled"], num_val=0,
                                          num_frames=p["clip_frames"], size=p["size"], seed=1)
    counts = sorted({max(6, round(f * pool / 6) * 6) for f in args.fractions})
    model = model_overrides(p, p["frames"], p["tubelet"])
    results: dict[str, dict[int, list[float]]] = {o: {n: [] for n in counts} for o in args.objectives}
    t0 = time.time()
    for seed in range(args.seeds):
        common = train_overrides(p, seed)
        for objective in args.objectives:
            encoder = None
            if objective != "scratch":
                cfg = load_config(None, model + common + [
                    "task=pretrain", f"data.train_list={unlabeled}", f"pretrain.objective={objective}",
                    "pretrain.teacher=pixel_motion", "pretrain.mask_ratio=0.5",
                    f"pretrain.decoder_dim={p['embed_dim']}", "pretrain.decoder_depth=1",
                    f"train.epochs={p['pre_epochs']}", f"train.lr={p['pre_lr']}",
                    "train.min_lr=0.0", "train.plot=false", f"train.output_dir={out / f'pre_{objective}_s{seed}'}",
                ])
                encoder = run_pretrain(cfg)["encoder"]
            for n in counts:
                run_dir = out / f"ft_{objective}_n{n}_s{seed}"
                cfg = load_config(None, model + common + [
                    "task=finetune", f"data.train_list={_subset(train_list, n, out / f'labels_{n}.csv')}",
                    f"data.val_list={val_list}", f"train.epochs={p['ft_epochs']}", f"train.lr={p['ft_lr']}",
                    "train.min_lr=0.0", "train.plot=false", f"train.eval_every_epochs={p['ft_epochs']}",
                    f"train.output_dir={run_dir}",
                ] + ([f"model.pretrained={encoder}"] if encoder else []))
                run_finetune(cfg)
                top1 = run_evaluate(cfg, str(run_dir / "final"))["top1"]
                results[objective][n].append(top1)
                print(f"seed {seed} {objective:<8} {n:>4} labels: top-1 {top1:.1f}", flush=True)
    return {"counts": counts, "results": results, "seconds": time.time() - t0, "params": p, "pool": pool,
            "seeds": args.seeds, "machine": machine_summary()}


def report(res: dict, out: Path) -> None:
    counts = res["counts"]
    header = "| objective | " + " | ".join(f"{n} labels" for n in counts) + " |"
    rows = [header, "|---" * (len(counts) + 1) + "|"]
    for objective, by_n in res["results"].items():
        cells = []
        for n in counts:
            vals = by_n[n]
            spread = f" ± {statistics.stdev(vals):.1f}" if len(vals) > 1 else ""  # one seed: no spread
            cells.append(f"{statistics.mean(vals):.1f}{spread}")
        rows.append(f"| {objective} | " + " | ".join(cells) + " |")
    table = "\n".join(rows)
    print("\n" + table + f"\n\n{res['seeds']} seed(s), {res['seconds']:.0f} s, top-1 on "
          f"{res['params']['num_val']} validation clips, chance 16.7\n")
    (out / "sample_efficiency.md").write_text(table + "\n")

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for objective, by_n in res["results"].items():
        means = [statistics.mean(by_n[n]) for n in counts]
        sds = [statistics.stdev(by_n[n]) if len(by_n[n]) > 1 else 0.0 for n in counts]
        ax.errorbar(counts, means, yerr=sds, marker="o", capsize=3, label=objective)
    ax.axhline(100 / 6, color="0.6", linestyle="--", label="chance")
    ax.set_xscale("log")
    ax.set_xlabel("labelled clips")
    ax.set_ylabel("val top-1 (%)")
    ax.set_title("sample efficiency by pre-training objective")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "sample_efficiency.png", dpi=110)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny sizes and one seed (for the test suite)")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--fractions", type=float, nargs="+", default=[0.1, 0.25, 1.0])
    ap.add_argument("--objectives", nargs="+", default=list(OBJECTIVES), choices=OBJECTIVES)
    ap.add_argument("--pool", type=int, default=None, help="labelled pool size (default: 5x the demo's labels)")
    ap.add_argument("--out", default="bench_out/sample_efficiency")
    args = ap.parse_args(argv)
    if args.quick:
        args.seeds = 1
    out = Path(args.out)
    os.makedirs(out, exist_ok=True)
    res = run(args)
    (out / "sample_efficiency.json").write_text(json.dumps(res, indent=1))
    report(res, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
