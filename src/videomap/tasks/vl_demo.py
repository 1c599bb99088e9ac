"""``videomap demo --vl``: a toy video-text model trained and evaluated end to end on a CPU.

Generated clips of the main demo's six motion classes (:mod:`videomap.data.synthetic`) get captions
that say what happens in them ("a glyph slides to the left", "the shape turns clockwise", ...,
twelve phrasings per class). The text encoder is a tiny BERT trained from scratch on a WordPiece
vocabulary made from those captions (:mod:`videomap.vl.tiny`); the video encoder is the main demo's
VideoHybrid, starting from its VideoMAP pre-trained weights when ``videomap demo`` has written them,
else from scratch. Training follows the paper's two phases in miniature: masked input with VTC,
VTM, MLM and UTA (the teacher is the pixels' frame-to-frame change, as in the main demo), then a
few unmasked epochs from that model. Everything runs through the runners of ``videomap vl-train``,
``retrieval-eval`` and ``search``.

How the retrieval is scored: the captions name only the motion class, so a caption matches *every*
held-out clip of its class and nothing else. Text-to-video R@k is the share of captions with a clip
of their class among the k best-ranked clips; video-to-text R@k the share of clips with a caption
of their class among the k best captions. Chance is the same quantity for a random ranking:
``1 - C(N - n, k) / C(N, k)`` with ``N`` candidates of which ``n`` match (for R@1 the fraction of
matching candidates, 1/6 here).
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from typing import Any

from ..config import load_config
from ..data import SYNTHETIC_CLASSES, make_synthetic_dataset
from ..io import write_json, write_text
from ..threads import configure_threads
from .demo import demo_params, encoder_overrides, read_clip_list

log = logging.getLogger(__name__)

# Who moves, and what it does (several phrasings per class); a caption is one of each.
SUBJECTS = ("a glyph", "the shape", "an object", "the bar")
MOTIONS = {
    "moving_right": ("moves to the right", "slides right", "travels to the right"),
    "moving_left": ("moves to the left", "slides left", "travels to the left"),
    "rotating_clockwise": ("turns clockwise", "rotates clockwise", "spins clockwise"),
    "rotating_counterclockwise": ("turns counterclockwise", "rotates counterclockwise", "spins counterclockwise"),
    "approaching": ("comes closer", "grows larger", "moves towards the camera"),
    "receding": ("moves away", "shrinks", "moves away from the camera"),
}

# The recipe (docs/retrieval.md, "The toy run", has the measurements behind it). The video encoder
# is the main demo's architecture; the text encoder a 3-layer, 64-d BERT whose last layer fuses.
FULL = dict(num_train=600, num_test=150, text_hidden=64, text_layers=3, text_heads=4, fusion_layers=1,
            embed_dim=64, batch=32, mask_ratio=0.5, epochs=40, lr=1.5e-3, unmasked_epochs=4, unmasked_lr=3e-4,
            rerank_k=16, workers=1)
QUICK = dict(num_train=48, num_test=24, text_hidden=32, text_layers=2, text_heads=2, fusion_layers=1,
             embed_dim=32, batch=8, mask_ratio=0.5, epochs=2, lr=1.5e-3, unmasked_epochs=1, unmasked_lr=3e-4,
             rerank_k=4, workers=1)


def captions(name: str) -> list[str]:
    """Every caption of class ``name`` (subject x motion phrase)."""
    return [f"{s} {m}" for m in MOTIONS[name] for s in SUBJECTS]


def vocabulary_texts() -> list[str]:
    return [c for name in SYNTHETIC_CLASSES for c in captions(name)]


def caption_items(clips: list[tuple[str, int]]) -> list[dict[str, Any]]:
    """Training captions: every phrasing of the clip's class (one is drawn per epoch)."""
    return [{"video": path, "caption": captions(SYNTHETIC_CLASSES[label])} for path, label in clips]


def retrieval_items(clips: list[tuple[str, int]]) -> list[dict[str, Any]]:
    """The retrieval set: one entry per caption, whose ground truth is every held-out clip of its class."""
    items = []
    for label, name in enumerate(SYNTHETIC_CLASSES):
        videos = [path for path, lab in clips if lab == label]
        if videos:
            items += [{"video": videos, "caption": text} for text in captions(name)]
    return items


def chance_recall(num_candidates: int, num_matching: int, k: int) -> float:
    """Percent chance that a random ranking puts a matching candidate among its first ``k``."""
    k = min(k, num_candidates)
    if num_candidates - num_matching < k:
        return 100.0
    return 100.0 * (1.0 - math.comb(num_candidates - num_matching, k) / math.comb(num_candidates, k))


def demo_video_overrides(quick: bool = False) -> dict[str, Any]:
    """The main demo's encoder architecture (``vl.video_overrides``)."""
    import yaml

    return yaml.safe_load(encoder_overrides(quick))


def run_vl_demo(out: str = "runs/vl-demo", quick: bool = False, seed: int = 0, demo_dir: str | None = None,
                params: dict[str, Any] | None = None) -> dict[str, Any]:
    """Data, tiny BERT, training, zero-shot retrieval of held-out clips and a search example.

    ``demo_dir``: the main demo's run directory (default ``runs/demo``, ``runs/demo-quick`` with
    ``quick``); its ``pretrain/encoder.safetensors`` starts the video encoder when present.
    ``params`` replaces entries of :data:`FULL` / :data:`QUICK`.
    """
    from ..vl.tiny import build_tiny_bert, build_wordpiece_vocab
    from .vl import run_retrieval_eval, run_search, run_vl_train

    p = {**(QUICK if quick else FULL), **(params or {})}
    d = demo_params(quick)  # clip length, frames and size of the main demo (its encoder's input)
    t_start = time.time()
    out = os.path.abspath(out)
    demo_dir = os.path.abspath(demo_dir or ("runs/demo-quick" if quick else "runs/demo"))
    times: dict[str, float] = {}

    encoder = os.path.join(demo_dir, "pretrain", "encoder.safetensors")
    if os.path.isfile(encoder):
        source = f"the main demo's VideoMAP pre-trained encoder ({encoder})"
    else:
        encoder = None
        source = f"trained from scratch (no pre-trained encoder in {os.path.join(demo_dir, 'pretrain')})"
    log.info("video encoder: %s", source)

    t0 = time.time()
    data = os.path.join(out, "data")
    log.info("writing %d training and %d held-out clips with captions to %s", p["num_train"], p["num_test"], data)
    train_list, test_list = make_synthetic_dataset(data, num_train=p["num_train"], num_val=p["num_test"],
                                                   num_frames=d["clip_frames"], size=d["size"], seed=seed + 3)
    train, test = read_clip_list(train_list), read_clip_list(test_list)
    train_json = write_json(os.path.join(data, "train_captions.json"), caption_items(train), indent=None)
    test_json = write_json(os.path.join(data, "test_retrieval.json"), retrieval_items(test), indent=None)
    text_dir = os.path.join(out, "text")
    tokenizer = build_wordpiece_vocab(vocabulary_texts(), os.path.join(text_dir, "tokenizer"))
    bert = build_tiny_bert(os.path.join(text_dir, "bert"), tokenizer, hidden_size=p["text_hidden"],
                           num_layers=p["text_layers"], heads=p["text_heads"], seed=seed)
    times["data"] = time.time() - t0

    common = [
        "task=vl", f"vl.text_encoder={bert}", "vl.video_encoder=videomap_tiny",
        "vl.video_overrides=" + json.dumps(demo_video_overrides(quick)),
        f"vl.num_frames={d['frames']}", f"vl.img_size={d['size']}", f"vl.embed_dim={p['embed_dim']}",
        f"vl.fusion_layers={p['fusion_layers']}", "vl.max_text_len=16", "vl.mlm_prob=0.5",
        # a 6-class toy: the hardest negatives are nearly always the same class, i.e. correct matches
        "vl.vtm_hard_negatives=false",
        "vl.flip=false", "vl.crop_scale=[0.7, 1.0]",  # a flip would swap left and right
        f"vl.train_data=[{{file: {train_json}}}]", f"vl.eval_json={test_json}", f"vl.rerank_k={p['rerank_k']}",
        "vl.eval_batch_size=64",
        f"train.batch_size={p['batch']}", "train.min_lr=0.0", "train.weight_decay=0.05",
        f"train.num_workers={p['workers']}", "train.log_every=20", "train.tensorboard=false", "train.resume=true",
        f"train.seed={seed}",
    ]
    # phase 1, the paper's masked pre-training in miniature: half of each clip's tokens hidden
    # (attention-guided), the visible ones aligned to the teacher (UTA), VTC + VTM + MLM on top.
    # The teacher is the pixels' frame-to-frame change, as in the main demo (no CLIP offline).
    masked = [
        "vl.vtc=1", "vl.vtm=1", "vl.mlm=1", "vl.uta=1", "vl.uta_teacher=pixel_motion",
        "vl.video_mask_type=attention", f"vl.video_mask_ratio={p['mask_ratio']}", "vl.image_mask_type=attention",
        f"train.epochs={p['epochs']}", f"train.lr={p['lr']}", "train.warmup_epochs=1",
        f"train.eval_every_epochs={p['epochs']}", f"train.output_dir={os.path.join(out, 'train_masked')}",
    ] + ([f"vl.video_checkpoint={encoder}"] if encoder else [])
    # phase 2, the paper's short unmasked tuning: every token, no UTA, from phase 1's model
    unmasked = [
        "vl.masked=false", "vl.uta=0", "vl.uta_teacher=none", "vl.video_mask_type=none", "vl.image_mask_type=none",
        f"train.epochs={p['unmasked_epochs']}", f"train.lr={p['unmasked_lr']}", "train.warmup_epochs=0.2",
        f"train.eval_every_epochs={p['unmasked_epochs']}", f"train.output_dir={os.path.join(out, 'train_unmasked')}",
    ]
    # one process decodes the next clips while this one computes: on a 2-core machine that beats
    # two compute threads on this small model (docs/retrieval.md, "The toy run")
    configure_threads(p["workers"])
    log.info("phase 1/2: %d masked epochs on %d captioned clips (VTC + VTM + MLM + UTA)", p["epochs"], len(train))
    t0 = time.time()
    phase1 = run_vl_train(load_config(None, common + masked, command="vl-train"))
    times["masked"] = time.time() - t0
    log.info("phase 2/2: %d unmasked epochs (VTC + VTM + MLM)", p["unmasked_epochs"])
    t0 = time.time()
    trained = run_vl_train(load_config(None, common + unmasked + [f"vl.init_from={phase1['final']}"],
                                       command="vl-train"))
    times["unmasked"] = time.time() - t0

    log.info("zero-shot retrieval of %d held-out clips", len(test))
    t0 = time.time()
    eval_cfg = load_config(None, common + [f"train.output_dir={os.path.join(out, 'eval')}"],
                           command="retrieval-eval")
    results = run_retrieval_eval(eval_cfg, trained["final"])
    times["eval"] = time.time() - t0

    t0 = time.time()
    query = captions("moving_left")[0]
    found = run_search(os.path.join(out, "index"), query=query, videos=[path for path, _ in test],
                       checkpoint=trained["final"], k=5)
    times["search"] = time.time() - t0
    label_of = {os.path.abspath(path): SYNTHETIC_CLASSES[label] for path, label in test}
    hits = [(os.path.basename(r["path"]), label_of.get(r["path"], "?"), r["score"]) for r in found["results"]]
    return _report(out, p, quick, source, results, len(test), query, hits, times, time.time() - t_start)


def _report(out: str, p: dict[str, Any], quick: bool, source: str, results: dict[str, Any], num_test: int,
            query: str, hits: list[tuple[str, str, float]], times: dict[str, float], total: float) -> dict[str, Any]:
    """The retrieval table next to chance; results.md / results.json."""
    num_classes = len(SYNTHETIC_CLASSES)
    num_texts = results["num_texts"]
    per_class_videos, per_class_texts = num_test / num_classes, num_texts / num_classes
    chance = {"t2v": {k: chance_recall(num_test, round(per_class_videos), k) for k in (1, 5)},
              "v2t": {k: chance_recall(num_texts, round(per_class_texts), k) for k in (1, 5)}}
    rankings = [("similarity (VTC)", results["vtc"])]
    if "vtm" in results:
        rankings.append((f"VTM re-ranked top {results['rerank_k']}", results["vtm"]))
    rows = []
    for direction, what in (("t2v", f"text -> video ({num_texts} captions, {num_test} clips, "
                                    f"{round(per_class_videos)} match each)"),
                            ("v2t", f"video -> text ({num_test} clips, {num_texts} captions, "
                                    f"{round(per_class_texts)} match each)")):
        cells = " | ".join(f"**{r[f'{direction}_r1']:.1f}** | {r[f'{direction}_r5']:.1f}" for _, r in rankings)
        rows.append(f"| {what} | {chance[direction][1]:.1f} | {chance[direction][5]:.1f} | {cells} |")
    header = "| direction | chance R@1 | chance R@5 | " + " | ".join(f"{n} R@1 | {n} R@5" for n, _ in rankings) + " |"
    # "well above chance": R@1 at least twice chance in both directions, for every ranking
    ok = all(r[f"{d}_r1"] >= 2 * chance[d][1] for _, r in rankings for d in ("t2v", "v2t"))
    verdict = "; ".join(f"{name}: text-to-video R@1 {r['t2v_r1']:.1f} %, video-to-text R@1 {r['v2t_r1']:.1f} %"
                        for name, r in rankings)
    verdict += f" (chance {chance['t2v'][1]:.1f} %)" + ("" if ok else " -- NOT clearly above chance"
                                                       + (" (expected for --quick)" if quick else ""))
    md = "\n".join([
        f"# videomap demo --vl ({'quick' if quick else 'full'})", "",
        f"Zero-shot retrieval of {num_test} generated clips never seen in training, with captions that name "
        f"only the motion class (a caption matches every held-out clip of its class). Model: video encoder "
        f"{source}; a {p['text_layers']}-layer, {p['text_hidden']}-d BERT from scratch ({p['fusion_layers']} "
        f"fusion layer); trained on {p['num_train']} captioned clips for {p['epochs']} epochs with VTC + VTM + MLM "
        f"+ UTA ({p['mask_ratio']:.0%} attention masking, the pixel-change teacher), then {p['unmasked_epochs']} "
        "unmasked epochs with VTC + VTM + MLM (the paper's two phases).", "",
        header, "|---|---|---|" + "---|---|" * len(rankings), *rows, "",
        verdict + ".", "",
        f"Search over the held-out clips for \"{query}\" (`videomap search`):",
        *[f"{i}. {score:.3f} `{name}` ({label})" for i, (name, label, score) in enumerate(hits, 1)], "",
        "Time: " + ", ".join(f"{k} {v:.0f}s" for k, v in times.items()) + f", total {total:.0f}s.",
    ])
    print("\n" + md + "\n", flush=True)
    write_text(os.path.join(out, "results.md"), md + "\n")
    summary = {"vtc": results["vtc"], "vtm": results.get("vtm"), "chance": chance, "num_test_clips": num_test,
               "num_test_captions": num_texts, "video_encoder": source, "search": {"query": query, "hits": hits},
               "above_chance": ok, "times_s": times, "total_s": total, "quick": quick, "params": p}
    write_json(os.path.join(out, "results.json"), summary)
    return summary


__all__ = ["FULL", "QUICK", "captions", "chance_recall", "run_vl_demo", "retrieval_items", "caption_items",
           "vocabulary_texts"]

