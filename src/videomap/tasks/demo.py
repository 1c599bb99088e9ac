"""``videomap demo``: VideoMAP's sample-efficiency claim, end to end on generated videos, on a CPU.

1. Writes real MP4 clips of six classes that only motion tells apart (left/right, clockwise /
   counter-clockwise, approaching / receding; see :mod:`videomap.data.synthetic`): many unlabeled
   clips, a few labelled ones (20 per class) and a validation set of 300.
2. Pre-trains a small VideoHybrid (4 Mamba + 1 Transformer block) on the unlabeled clips with
   VideoMAP's objective: 50 % attention masking, the frame-wise causal decoder, next-frame
   targets. The offline teacher is the pixels' frame-to-frame change (``pixel_motion``), not CLIP:
   no weights can be downloaded, and on these static backgrounds a plain next-frame pixel target
   is mostly "copy the background" (pre-training with it left a linear probe at chance).
3. Fine-tunes the pre-trained encoder on the labelled clips, and the same architecture from
   scratch with the same schedule; a single-frame model (from scratch) shows the task needs time.
4. Evaluates all three on the validation set, prints a table and writes ``results.md``,
   ``results.json``, ``curves.png`` and ``predictions.png`` (input frames, the attention mask and
   the decoder's predicted next-frame change beside the true one).

Design choices for the CPU budget (32x32 clips, 8x8 patches, tubelets of 2 frames, 64-d model,
mean-pooled head) are in docs/demo.md with the measurements behind them.
"""

from __future__ import annotations

import csv
import logging
import os
import time

import torch
import yaml

from ..config import JobConfig, load_config
from ..constants import IMAGENET_MEAN, IMAGENET_STD
from ..data import SYNTHETIC_CLASSES, VideoClsDataset, make_synthetic_dataset
from ..engine import read_metrics
from ..io import write_json, write_text
from .finetune import run_evaluate, run_finetune
from .pretrain import build_pretrainer, run_pretrain

log = logging.getLogger(__name__)

# The recipe is the shipped job files (configs/small/, package data): model, data handling,
# objective and schedule. The demo adds only what a job file does not hold: how many clips of
# what length it generates, where it writes, the seed, logging, and the quick version's shrink.
RECIPES = {"pretrain": "small/pretrain_motion.yaml", "finetune": "small/finetune_motion.yaml"}
CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")

DATA = dict(num_unlabeled=600, num_train=120, num_val=300, clip_frames=16)
QUICK_DATA = dict(num_unlabeled=32, num_train=24, num_val=12, clip_frames=8)
# the quick demo: half the frames, half the width, one epoch of each stage
QUICK = {
    "pretrain": ["model.num_frames=4", "model.overrides.embed_dim=32", "pretrain.decoder_dim=32", "train.epochs=1",
                 "train.batch_size=8"],
    "finetune": ["model.num_frames=4", "model.overrides.embed_dim=32", "train.epochs=1", "train.batch_size=8",
                 "train.eval_every_epochs=1"],
}
# run settings, not recipe: the demo loads clips in the main process and continues where it stopped
RUN = ["train.num_workers=0", "train.log_every=20", "train.tensorboard=false", "train.resume=true"]


def recipe_file(task: str) -> str:
    """The shipped job file of the demo's ``task`` (``"pretrain"`` or ``"finetune"``)."""
    if task not in RECIPES:
        raise ValueError(f"task: expected one of {sorted(RECIPES)}, got {task!r}")
    path = os.path.join(CONFIG_DIR, RECIPES[task])
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: the demo's recipe is missing from the installed package")
    return path


def demo_job(task: str, overrides: list[str] | None = None, quick: bool = False, seed: int = 0) -> JobConfig:
    """The demo's ``task`` job: the shipped recipe, shrunk when ``quick``, with the run settings,
    the seed and ``overrides`` (data lists, output directory, arm-specific changes) on top."""
    return load_config(recipe_file(task), (QUICK[task] if quick else []) + RUN + [f"train.seed={seed}"]
                       + list(overrides or []), command=task)


def demo_params(quick: bool = False) -> dict:
    """The full or quick demo at a glance: clip counts and lengths, and the recipe's sizes and
    schedule as read from the job files (the other toy demos take their clips and encoder from it)."""
    pre, ft = demo_job("pretrain", quick=quick), demo_job("finetune", quick=quick)
    arch = pre.model.overrides
    return {**(QUICK_DATA if quick else DATA), "frames": pre.model.num_frames, "size": pre.model.img_size,
            "patch": arch["patch_size"], "tubelet": arch["tubelet_size"], "embed_dim": arch["embed_dim"],
            "depth": arch["depth"], "pre_epochs": pre.train.epochs, "ft_epochs": ft.train.epochs,
            "batch": pre.train.batch_size, "pre_lr": pre.train.lr, "ft_lr": ft.train.lr}


def read_clip_list(list_file: str) -> list[tuple[str, int]]:
    """``(path, label)`` rows of a list written by :func:`~videomap.data.make_synthetic_dataset`."""
    with open(list_file, encoding="utf-8") as f:
        return [(row[0], int(row[1])) for row in csv.reader(f) if row]


def encoder_overrides(quick: bool = False) -> str:
    """The demo encoder's architecture (``model.overrides`` of the recipe) as YAML flow text."""
    return yaml.safe_dump(demo_job("pretrain", quick=quick).model.overrides, default_flow_style=True,
                          sort_keys=False, width=1 << 20).strip()


def pretrain_config(unlabeled_list: str, output_dir: str, seed: int = 0, quick: bool = False) -> JobConfig:
    """The demo's VideoMAP pre-training job (step 1); other demos reuse its encoder."""
    return demo_job("pretrain", [f"data.train_list={unlabeled_list}", f"train.output_dir={output_dir}"],
                    quick=quick, seed=seed)


def _train_curve(run_dir: str) -> list[tuple[int, float]]:
    return [(r["step"], r["loss"]) for r in read_metrics(run_dir) if r.get("split") == "train" and "loss" in r]


def _plot_curves(out: str, runs: dict[str, str]) -> str:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2)
    pre = _train_curve(runs["pretrain"])
    if pre:
        axes[0].plot(*zip(*pre), marker=".")
    axes[0].set_title("VideoMAP pre-training loss (next-frame change)")
    for label in ("finetune_pretrained", "finetune_scratch", "finetune_single_frame"):
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


def _unpatchify(x: torch.Tensor, p: int, h: int, w: int) -> torch.Tensor:
    """(h*w, 3*p*p) patch vectors -> (h*p, w*p, 3) image."""
    return x.reshape(h, w, 3, p, p).permute(0, 3, 1, 4, 2).reshape(h * p, w * p, 3)


@torch.no_grad()
def _plot_predictions(out: str, pre_cfg, run_dir: str, val_list: str, num_clips: int = 4) -> str:
    """For a few validation clips: the input frames, the attention mask (grey = hidden from the
    encoder), and, for the last frame, the true next-frame change next to the decoder's prediction."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from ..engine import find_latest_checkpoint
    from ..io import load_safetensors

    torch.manual_seed(0)
    model = build_pretrainer(pre_cfg)
    # the newest pre-training checkpoint holds the encoder and the decoder together
    model.load_state_dict(load_safetensors(find_latest_checkpoint(run_dir) / "model.safetensors"))
    model.eval()
    m = pre_cfg.model
    ds = VideoClsDataset(val_list, num_frames=m.num_frames, sampling="dense", frame_stride=2, mode="test",
                         input_size=m.img_size)
    mean, std = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
    enc = model.encoder
    t, h, w = enc.grid
    p = enc.patch_size
    cols = m.num_frames + 2
    fig = Figure(figsize=(1.3 * cols, 1.5 * num_clips))
    FigureCanvasAgg(fig)
    for row in range(num_clips):
        video, label, _ = ds[row]
        video = video[None] if video.ndim == 4 else video[:1]
        step = model.predict(video)
        mask, patch = step["mask"], step["target"]
        pred = step["pred"][0, 1:].reshape(t, h * w, -1)
        frames = (video[0].permute(1, 2, 3, 0) * std + mean).clamp(0, 1)  # (T, H, W, 3)
        hidden = mask[0].reshape(t, h, w).repeat_interleave(enc.tubelet_size, 0)
        for k in range(m.num_frames):
            ax = fig.add_subplot(num_clips, cols, row * cols + k + 1)
            img = frames[k].clone()
            shade = hidden[k].repeat_interleave(p, 0).repeat_interleave(p, 1)
            img[shade] = img[shade] * 0.35 + 0.3
            ax.imshow(img.numpy())
            ax.set_axis_off()
            if row == 0:
                ax.set_title(f"frame {k}", fontsize=7)
        true_change = _unpatchify(patch[0, t - 1], p, h, w)
        pred_change = _unpatchify(pred[t - 2], p, h, w)
        scale = float(true_change.abs().max()) or 1.0
        for j, (img, title) in enumerate(((true_change, "true change"), (pred_change, "predicted"))):
            ax = fig.add_subplot(num_clips, cols, row * cols + m.num_frames + j + 1)
            ax.imshow((img.mean(-1) / scale).clamp(-1, 1).numpy(), cmap="coolwarm", vmin=-1, vmax=1)
            ax.set_axis_off()
            if row == 0:
                ax.set_title(title, fontsize=7)
        first = fig.axes[row * cols]
        first.text(-0.08, 0.5, SYNTHETIC_CLASSES[int(label)], transform=first.transAxes, rotation=90,
                   ha="right", va="center", fontsize=7)
    fig.suptitle("grey: hidden from the encoder; right: last frame's change (truth / decoder)", fontsize=8)
    fig.tight_layout()
    path = os.path.join(out, "predictions.png")
    fig.savefig(path, dpi=110)
    return path


def run_demo(out: str = "runs/demo", quick: bool = False, seed: int = 0) -> dict:
    p = demo_params(quick)
    t_start = time.time()
    out = os.path.abspath(out)
    data_dir = os.path.join(out, "data")
    log.info("writing synthetic videos to %s", data_dir)
    train_list, val_list = make_synthetic_dataset(data_dir, num_train=p["num_train"], num_val=p["num_val"],
                                                  num_frames=p["clip_frames"], size=p["size"], seed=seed)
    unlabeled_list, _ = make_synthetic_dataset(os.path.join(data_dir, "unlabeled"), num_train=p["num_unlabeled"],
                                               num_val=0, num_frames=p["clip_frames"], size=p["size"], seed=seed + 1)
    runs = {k: os.path.join(out, k) for k in ("pretrain", "finetune_pretrained", "finetune_scratch",
                                              "finetune_single_frame")}
    times: dict[str, float] = {}

    log.info("1/4 VideoMAP pre-training on %d unlabeled clips (frame-wise causal decoder, next-frame target, "
             "teacher = pixel change, 50%% attention masking)", p["num_unlabeled"])
    t0 = time.time()
    pre_cfg = pretrain_config(unlabeled_list, runs["pretrain"], seed, quick)
    pre = run_pretrain(pre_cfg)
    times["pretrain"] = time.time() - t0

    single_frame = ["model.num_frames=1", "model.overrides.tubelet_size=1"]
    arms = (("finetune_pretrained", [f"model.pretrained={pre['encoder']}"],
             "2/4 fine-tuning the pre-trained encoder"),
            ("finetune_scratch", [], "3/4 fine-tuning from scratch (same schedule)"),
            ("finetune_single_frame", single_frame,
             "4/4 a single-frame model from scratch (shows the task needs time)"))
    results = {}
    for label, arm, what in arms:
        log.info("%s on %d labelled clips", what, p["num_train"])
        t0 = time.time()
        ft_cfg = demo_job("finetune", [f"data.train_list={train_list}", f"data.val_list={val_list}",
                                       f"train.output_dir={runs[label]}", *arm], quick=quick, seed=seed)
        run_finetune(ft_cfg)
        results[label] = run_evaluate(ft_cfg, os.path.join(runs[label], "final"))
        times[label] = time.time() - t0

    chance = 100.0 / len(SYNTHETIC_CLASSES)
    arch = (f"VideoHybrid, {p['embed_dim']}-d, {p['depth']} Mamba + {p['depth'] // 4} attention, "
            f"{p['patch']}x{p['patch']} patches, tubelets of {p['tubelet']}")
    rows = [("VideoMAP pre-trained -> fine-tuned", results["finetune_pretrained"]),
            ("from scratch (same fine-tuning)", results["finetune_scratch"]),
            ("single frame, from scratch", results["finetune_single_frame"])]
    table = [f"| model ({arch}) | val top-1 | val top-5 |", "|---|---|---|"]
    table += [f"| {name} | {r['top1']:.1f} | {r['top5']:.1f} |" for name, r in rows]
    table.append(f"| chance | {chance:.1f} | {5 * chance:.1f} |")
    total = time.time() - t_start
    md = "\n".join([
        f"# videomap demo ({'quick' if quick else 'full'})", "",
        f"Six motion-only classes, real MP4 files: {p['num_unlabeled']} unlabeled pre-training clips, "
        f"{p['num_train']} labelled training clips, {p['num_val']} validation clips (2 clips per video), "
        f"{p['frames']} frames at {p['size']}x{p['size']}. Teacher: the pixels' frame-to-frame change "
        "(offline; CLIP weights cannot be downloaded here).",
        "", *table, "",
        "Time: " + ", ".join(f"{k} {v:.0f}s" for k, v in times.items()) + f", total {total:.0f}s.",
    ])
    print("\n" + md + "\n", flush=True)
    write_text(os.path.join(out, "results.md"), md + "\n")
    summary = {
        "pretrained": results["finetune_pretrained"], "scratch": results["finetune_scratch"],
        "single_frame": results["finetune_single_frame"], "chance": chance, "num_val": p["num_val"],
        "num_labelled": p["num_train"], "num_unlabeled": p["num_unlabeled"], "total_s": total, "times_s": times,
        "quick": quick, "params": p,
    }
    write_json(os.path.join(out, "results.json"), summary)
    curves = _plot_curves(out, runs)
    predictions = _plot_predictions(out, pre_cfg, runs["pretrain"], val_list)
    log.info("results: %s  curves: %s  predictions: %s", os.path.join(out, "results.md"), curves, predictions)
    return {**summary, "plot": curves, "predictions": predictions}
