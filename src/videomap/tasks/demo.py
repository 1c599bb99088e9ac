"""``videomap demo``: the VideoMAP story end to end on generated videos, on a CPU.

1. Writes real MP4 clips of six classes that only motion tells apart (left/right, clockwise /
   counter-clockwise, approaching / receding; see :mod:`videomap.data.synthetic`).
2. Pre-trains a small VideoHybrid (4 Mamba : 1 Transformer) with VideoMAP's frame-wise causal
   decoder on unlabeled clips. The offline teacher is **per-patch normalised pixels**, not CLIP:
   no weights can be downloaded, and a randomly initialised CLIP would be a meaningless target.
   So the target is "the next frame's normalised pixels", with VideoMAP's frame-causal decoder.
3. Fine-tunes it, and fine-tunes the same architecture from scratch as the baseline, with the
   same schedule; both are evaluated with 2 clips x 3 crops per video.
4. Prints a results table and writes ``results.md``, ``results.json`` and ``curves.png``.
"""

from __future__ import annotations

import logging
import os
import time

from ..config import load_config
from ..data import make_synthetic_dataset
from ..engine import read_metrics
from ..io import write_json, write_text
from .finetune import run_evaluate, run_finetune
from .pretrain import run_pretrain

log = logging.getLogger(__name__)

FULL = dict(num_unlabeled=384, num_train=192, num_val=96, frames=8, size=64, pre_epochs=8, ft_epochs=15,
            eval_every=5, embed_dim=96, depth=8, batch=16, pre_lr=1.5e-3, ft_lr=1e-3)
QUICK = dict(num_unlabeled=32, num_train=32, num_val=12, frames=4, size=32, pre_epochs=1, ft_epochs=1,
             eval_every=1, embed_dim=32, depth=4, batch=8, pre_lr=1.5e-3, ft_lr=1e-3)


def _base_overrides(p: dict) -> list[str]:
    return [
        "model.name=videomap_tiny", f"model.num_frames={p['frames']}", f"model.img_size={p['size']}",
        "model.drop_path_rate=0.0",
        f"model.overrides={{embed_dim: {p['embed_dim']}, depth: {p['depth']}, attn_every: 4}}",
        "data.flip=false", "data.sampling=segment", "data.crop_scale=[0.6, 1.0]",
        "data.test_clips=2", "data.test_crops=3", f"train.batch_size={p['batch']}", "train.num_workers=0",
        "train.log_every=5", "train.tensorboard=false", "train.resume=true", "train.warmup_epochs=1",
        "train.weight_decay=0.05",
    ]


def _train_curve(run_dir: str) -> list[tuple[int, float]]:
    return [(r["step"], r["loss"]) for r in read_metrics(run_dir) if r.get("split") == "train" and "loss" in r]


def _plot(out: str, runs: dict[str, str]) -> str:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2)
    pre = _train_curve(runs["pretrain"])
    if pre:
        axes[0].plot(*zip(*pre), marker=".")
    axes[0].set_title("VideoMAP pre-training loss (next-frame MSE)")
    for label in ("finetune_pretrained", "finetune_scratch"):
        curve = _train_curve(runs[label])
        if curve:
            axes[1].plot(*zip(*curve), marker=".", label=label.replace("finetune_", ""))
    axes[1].set_title("fine-tuning loss")
    axes[1].legend()
    for ax in axes:
        ax.set_xlabel("step")
        ax.grid(True, alpha=0.3)
    fig.tight_layout()
    path = os.path.join(out, "curves.png")
    fig.savefig(path, dpi=110)
    return path


def run_demo(out: str = "runs/demo", quick: bool = False, seed: int = 0) -> dict:
    p = QUICK if quick else FULL
    t_start = time.time()
    out = os.path.abspath(out)
    data_dir = os.path.join(out, "data")
    log.info("writing synthetic videos to %s", data_dir)
    train_list, val_list = make_synthetic_dataset(data_dir, num_train=p["num_train"], num_val=p["num_val"],
                                                  num_frames=16, size=p["size"], seed=seed)
    unlabeled_list, _ = make_synthetic_dataset(os.path.join(data_dir, "unlabeled"), num_train=p["num_unlabeled"],
                                               num_val=0, num_frames=16, size=p["size"], seed=seed + 1)
    base = _base_overrides(p)
    runs = {k: os.path.join(out, k) for k in ("pretrain", "finetune_pretrained", "finetune_scratch")}
    times = {}

    log.info("1/3 VideoMAP pre-training (frame-wise causal decoder, next-frame target, "
             "teacher = normalised pixels, 50%% saliency-weighted attention masking)")
    t0 = time.time()
    pre_cfg = load_config(None, base + [
        "task=pretrain", f"data.train_list={unlabeled_list}", "pretrain.objective=frame", "pretrain.teacher=pixel",
        "pretrain.mask_type=attention", "pretrain.mask_ratio=0.5", f"pretrain.decoder_dim={p['embed_dim']}",
        "pretrain.decoder_depth=2", "pretrain.target_norm=none", f"train.epochs={p['pre_epochs']}",
        f"train.lr={p['pre_lr']}",
        f"train.output_dir={runs['pretrain']}", f"train.seed={seed}",
    ])
    pre = run_pretrain(pre_cfg)
    times["pretrain"] = time.time() - t0

    results = {}
    for label, weights in (("finetune_pretrained", pre["encoder"]), ("finetune_scratch", None)):
        how = "from the pre-trained encoder" if weights else "from scratch"
        log.info("%d/3 fine-tuning %s", 2 if weights else 3, how)
        t0 = time.time()
        ft_cfg = load_config(None, base + [
            "task=finetune", f"data.train_list={train_list}", f"data.val_list={val_list}",
            f"train.epochs={p['ft_epochs']}", f"train.lr={p['ft_lr']}", "finetune.label_smoothing=0.1",
            f"train.eval_every_epochs={p['eval_every']}",
            f"train.output_dir={runs[label]}", f"train.seed={seed}",
        ] + ([f"model.pretrained={weights}"] if weights else []))
        run_finetune(ft_cfg)
        final = os.path.join(runs[label], "final")
        results[label] = run_evaluate(ft_cfg, final)
        times[label] = time.time() - t0

    chance = 100.0 / 6
    rows = [("VideoMAP pre-trained -> fine-tuned", results["finetune_pretrained"]),
            ("from scratch (same schedule)", results["finetune_scratch"])]
    arch = f"VideoHybrid, {p['embed_dim']}-d, {p['depth']} Mamba + {p['depth'] // 4} attention"
    table = [f"| model ({arch}) | val top-1 | val top-5 | views |", "|---|---|---|---|"]
    for name, r in rows:
        table.append(f"| {name} | {r['top1']:.1f} | {r['top5']:.1f} | 2 clips x 3 crops |")
    table.append(f"| chance | {chance:.1f} | {5 * chance:.1f} | |")
    total = time.time() - t_start
    md = "\n".join([
        f"# videomap demo ({'quick' if quick else 'full'})", "",
        "Six motion-only classes (a single frame is at chance), real MP4 files, "
        f"{p['num_unlabeled']} unlabeled pre-training clips, {p['num_train']} labelled training clips, "
        f"{p['num_val']} validation clips, {p['frames']} frames at {p['size']}x{p['size']}.",
        "Teacher: per-patch normalised pixels of the next frame (offline; CLIP weights cannot be downloaded here).",
        "", *table, "",
        "Time: " + ", ".join(f"{k} {v:.0f}s" for k, v in times.items()) + f", total {total:.0f}s.",
    ])
    print("\n" + md + "\n", flush=True)
    write_text(os.path.join(out, "results.md"), md + "\n")
    write_json(os.path.join(out, "results.json"),
               {"results": results, "times_s": times, "total_s": total, "quick": quick, "params": p})
    plot = _plot(out, runs)
    log.info("results: %s  curves: %s", os.path.join(out, "results.md"), plot)
    return {"results": results, "times": times, "total_s": total, "plot": plot}
