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

from ..config import load_config
from ..constants import IMAGENET_MEAN, IMAGENET_STD
from ..data import SYNTHETIC_CLASSES, VideoClsDataset, make_synthetic_dataset
from ..engine import read_metrics
from ..io import write_json, write_text
from .finetune import run_evaluate, run_finetune
from .pretrain import build_pretrainer, run_pretrain

log = logging.getLogger(__name__)

FULL = dict(num_unlabeled=600, num_train=120, num_val=300, clip_frames=16, frames=8, size=32, patch=8, tubelet=2,
            embed_dim=64, depth=4, pre_epochs=30, ft_epochs=30, batch=16, pre_lr=1.5e-3, ft_lr=1e-3)
QUICK = dict(num_unlabeled=32, num_train=24, num_val=12, clip_frames=8, frames=4, size=32, patch=8, tubelet=2,
             embed_dim=32, depth=4, pre_epochs=1, ft_epochs=1, batch=8, pre_lr=1.5e-3, ft_lr=1e-3)


def demo_params(quick: bool = False) -> dict:
    """The recipe of the full or quick demo (the other toy demos take their clips and encoder from it)."""
    return QUICK if quick else FULL


def read_clip_list(list_file: str) -> list[tuple[str, int]]:
    """``(path, label)`` rows of a list written by :func:`~videomap.data.make_synthetic_dataset`."""
    with open(list_file, encoding="utf-8") as f:
        return [(row[0], int(row[1])) for row in csv.reader(f) if row]


def encoder_overrides(quick: bool = False) -> str:
    """The demo encoder's architecture, as the YAML text of ``model.overrides``."""
    p = demo_params(quick)
    prefix = "model.overrides="
    return next(o[len(prefix):] for o in model_overrides(p, p["frames"], p["tubelet"]) if o.startswith(prefix))


def model_overrides(p: dict, frames: int, tubelet: int, **arch: str) -> list[str]:
    """The demo's model as job-config overrides (``p``: :data:`FULL` or :data:`QUICK`; ``arch``:
    constructor arguments that replace or add to the demo's, e.g. ``attn_wiring="branch"``).

    Mamba's dt-bias initialisation is kept (``keep_dt_bias_init``, not the released code's wipe):
    on this task it is worth 5-13 points of top-1 (docs/demo.md has the measurement).
    """
    args = {"embed_dim": p["embed_dim"], "depth": p["depth"], "attn_every": 4, "patch_size": p["patch"],
            "tubelet_size": tubelet, "global_pool": "avg", "keep_dt_bias_init": "true", **arch}
    return [
        "model.name=videomap_tiny", f"model.num_frames={frames}", f"model.img_size={p['size']}",
        "model.drop_path_rate=0.0",
        "model.overrides={" + ", ".join(f"{k}: {v}" for k, v in args.items()) + "}",
    ]


def train_overrides(p: dict, seed: int) -> list[str]:
    """The demo's data handling and optimiser settings shared by every run."""
    return [
        "data.flip=false", "data.sampling=dense", "data.frame_stride=2", "data.crop_scale=[0.7, 1.0]",
        "data.test_clips=2", "data.test_crops=1", f"train.batch_size={p['batch']}", "train.num_workers=0",
        "train.log_every=20", "train.tensorboard=false", "train.resume=true", "train.warmup_epochs=1",
        "train.weight_decay=0.05", f"train.seed={seed}",
    ]


def pretrain_config(p: dict, unlabeled_list: str, output_dir: str, seed: int):
    """The demo's VideoMAP pre-training job (step 1); other demos reuse its encoder."""
    return load_config(None, model_overrides(p, p["frames"], p["tubelet"]) + train_overrides(p, seed) + [
        "task=pretrain", f"data.train_list={unlabeled_list}", "pretrain.objective=frame",
        "pretrain.teacher=pixel_motion", "pretrain.mask_type=attention", "pretrain.mask_ratio=0.5",
        f"pretrain.decoder_dim={p['embed_dim']}", "pretrain.decoder_depth=1", f"train.epochs={p['pre_epochs']}",
        f"train.lr={p['pre_lr']}", "train.min_lr=0.0", f"train.output_dir={output_dir}",
    ])


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
    p = QUICK if quick else FULL
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
    video_model = model_overrides(p, p["frames"], p["tubelet"])
    common = train_overrides(p, seed)

    log.info("1/4 VideoMAP pre-training on %d unlabeled clips (frame-wise causal decoder, next-frame target, "
             "teacher = pixel change, 50%% attention masking)", p["num_unlabeled"])
    t0 = time.time()
    pre_cfg = pretrain_config(p, unlabeled_list, runs["pretrain"], seed)
    pre = run_pretrain(pre_cfg)
    times["pretrain"] = time.time() - t0

    arms = (("finetune_pretrained", video_model, pre["encoder"], "2/4 fine-tuning the pre-trained encoder"),
            ("finetune_scratch", video_model, None, "3/4 fine-tuning from scratch (same schedule)"),
            ("finetune_single_frame", model_overrides(p, 1, 1), None,
             "4/4 a single-frame model from scratch (shows the task needs time)"))
    results = {}
    for label, model, weights, what in arms:
        log.info("%s on %d labelled clips", what, p["num_train"])
        t0 = time.time()
        ft_cfg = load_config(None, model + common + [
            "task=finetune", f"data.train_list={train_list}", f"data.val_list={val_list}",
            f"train.epochs={p['ft_epochs']}", f"train.lr={p['ft_lr']}", "train.min_lr=0.0",
            "finetune.label_smoothing=0.1", f"train.eval_every_epochs={p['ft_epochs']}",
            f"train.output_dir={runs[label]}",
        ] + ([f"model.pretrained={weights}"] if weights else []))
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
