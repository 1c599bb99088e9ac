"""``videomap demo --llm``: a toy VideoMAP-LLaVA trained end to end on a CPU.

Generated clips of the main demo's six motion classes (:mod:`videomap.data.synthetic`) with
questions about what happens in them. The video encoder is the main demo's VideoMAP pre-trained
VideoHybrid, frozen; the language model is a tiny Llama trained from scratch on a word-level
tokenizer made from the questions and answers. Both LLaVA stages run through ``videomap
llm-train``'s runner (stage 1: projector only; stage 2: projector + the whole LM, since the LM
knows no language yet), then the held-out clips are answered by ``llm-eval``'s runner.

The honest control is the same LM trained on the same questions without the video: every
question type is balanced over its answers, so text alone is at chance.
"""

from __future__ import annotations

import json
import logging
import os
import random
import time
from typing import Any

from ..config import load_config
from ..data import SYNTHETIC_CLASSES, make_synthetic_dataset
from ..io import write_json, write_text
from .demo import demo_params, encoder_overrides, read_clip_list

log = logging.getLogger(__name__)

# What each class looks like in words: the event, the direction and the kind of motion.
_EVENT = {
    "moving_right": "the object moves to the right",
    "moving_left": "the object moves to the left",
    "rotating_clockwise": "the object turns clockwise",
    "rotating_counterclockwise": "the object turns counterclockwise",
    "approaching": "the object comes closer",
    "receding": "the object moves away",
}
_DIRECTION = {"moving_right": "right", "moving_left": "left", "rotating_clockwise": "clockwise",
              "rotating_counterclockwise": "counterclockwise", "approaching": "closer", "receding": "away"}
_KIND = {"moving_right": "sliding", "moving_left": "sliding", "rotating_clockwise": "turning",
         "rotating_counterclockwise": "turning", "approaching": "scaling", "receding": "scaling"}
# yes/no questions name a class; half of them ask about the true one
_YES_NO = {
    "moving_right": "does the object move to the right?",
    "moving_left": "does the object move to the left?",
    "rotating_clockwise": "does the object turn clockwise?",
    "rotating_counterclockwise": "does the object turn counterclockwise?",
    "approaching": "does the object come closer?",
    "receding": "does the object move away?",
}

# question type -> (question, answer for a class); every answer of a type covers the same number of
# classes, so no answer is more likely than another without the video
QUESTION_TYPES: dict[str, tuple[str, dict[str, str]]] = {
    "event": ("what happens in this video?", _EVENT),
    "direction": ("which way does the object move?", _DIRECTION),
    "kind": ("what kind of motion is it?", _KIND),
}
CAPTION_PROMPT = "describe the video briefly."


def answer_sets() -> dict[str, set[str]]:
    """The possible answers of each question type (chance = 1 / their number)."""
    sets = {qtype: set(answers.values()) for qtype, (_, answers) in QUESTION_TYPES.items()}
    sets["yes_no"] = {"yes", "no"}
    return sets


def _turn(question: str, answer: str, with_video: bool) -> list[dict[str, str]]:
    prompt = f"<video>\n{question}" if with_video else question
    return [{"from": "human", "value": prompt}, {"from": "gpt", "value": answer}]


def _questions(name: str, rng: random.Random) -> list[tuple[str, str, str]]:
    """``(question type, question, answer)`` for a clip of class ``name``; the yes/no question names
    the clip's class or, with probability 1/2, another one (so yes and no are balanced)."""
    out = [(qtype, question, answers[name]) for qtype, (question, answers) in QUESTION_TYPES.items()]
    asked = name if rng.random() < 0.5 else rng.choice([c for c in SYNTHETIC_CLASSES if c != name])
    out.append(("yes_no", _YES_NO[asked], "yes" if asked == name else "no"))
    return out


def qa_items(clips: list[tuple[str, int]], seed: int, with_video: bool = True) -> list[dict[str, Any]]:
    """Evaluation data: one single-turn sample per (clip, question type), LLaVA format."""
    rng = random.Random(seed)
    items = []
    for i, (path, label) in enumerate(clips):
        for qtype, question, answer in _questions(SYNTHETIC_CLASSES[label], rng):
            item = {"id": f"{i}_{qtype}", "qtype": qtype, "conversations": _turn(question, answer, with_video)}
            if with_video:
                item["video"] = path
            items.append(item)
    return items


def conversation_items(clips: list[tuple[str, int]], seed: int, with_video: bool = True) -> list[dict[str, Any]]:
    """Training data: one multi-turn conversation per clip holding every question type in a random
    order (the video is decoded and encoded once for all of them; each type comes first in a quarter
    of the clips, as it does at evaluation)."""
    rng = random.Random(seed)
    items = []
    for i, (path, label) in enumerate(clips):
        qas = _questions(SYNTHETIC_CLASSES[label], rng)
        rng.shuffle(qas)
        conv = []
        for k, (_, question, answer) in enumerate(qas):
            conv += _turn(question, answer, with_video and k == 0)
        item = {"id": f"{i}_chat", "conversations": conv}
        if with_video:
            item["video"] = path
        items.append(item)
    return items


def caption_items(clips: list[tuple[str, int]]) -> list[dict[str, Any]]:
    """Stage-1 data: one short caption per clip (LLaVA's alignment data are captions too)."""
    return [{"id": f"{i}_caption", "video": path,
             "conversations": _turn(CAPTION_PROMPT, _EVENT[SYNTHETIC_CLASSES[label]], True)}
            for i, (path, label) in enumerate(clips)]


def vocabulary_texts() -> list[str]:
    """Every word the toy conversations use (the word-level tokenizer is trained on them)."""
    texts = [CAPTION_PROMPT, "yes no"]
    for question, answers in QUESTION_TYPES.values():
        texts += [question, *answers.values()]
    return texts + list(_YES_NO.values())


def demo_encoder_overrides(quick: bool = False) -> str:
    """The main demo's encoder architecture as a ``llm.video_overrides`` value."""
    return encoder_overrides(quick)


def demo_encoder(demo_out: str, quick: bool = False, seed: int = 0) -> str:
    """The main demo's VideoMAP pre-trained encoder (``<demo_out>/pretrain/encoder.safetensors``).

    Reused when ``videomap demo`` has already written it; otherwise only the demo's pre-training
    stage is run (same clips, model and recipe as :func:`videomap.tasks.demo.run_demo`, which
    continues from it later).
    """
    from .demo import pretrain_config
    from .pretrain import run_pretrain

    p = demo_params(quick)
    run_dir = os.path.join(demo_out, "pretrain")
    encoder = os.path.join(run_dir, "encoder.safetensors")
    if os.path.isfile(encoder):
        log.info("using the demo's pre-trained encoder %s", encoder)
        return encoder
    unlabeled = os.path.join(demo_out, "data", "unlabeled")
    unlabeled_list = os.path.join(unlabeled, "train.csv")
    if not os.path.isfile(unlabeled_list):
        unlabeled_list, _ = make_synthetic_dataset(unlabeled, num_train=p["num_unlabeled"], num_val=0,
                                                   num_frames=p["clip_frames"], size=p["size"], seed=seed + 1)
    log.info("no pre-trained encoder in %s: running the demo's VideoMAP pre-training (%d unlabeled clips, "
             "%d epochs) first", run_dir, p["num_unlabeled"], p["pre_epochs"])
    return run_pretrain(pretrain_config(unlabeled_list, run_dir, seed, quick))["encoder"]


# The recipe (docs/llm.md, "The toy run", says what mattered). The encoder is the main demo's; the
# LM a 2-layer Llama trained from scratch. Every one of the encoder's 4 x 4 x 4 tokens reaches the
# LM (no pooling) and training conversations hold all four questions of a clip, so each clip is
# decoded and encoded once per epoch.
FULL = dict(num_train=600, num_test=150, lm_hidden=128, lm_layers=2, lm_heads=4,
            spatial_pool=1, feature_layer=-1, align_epochs=1, instruct_epochs=15, batch=32, align_lr=1e-3,
            instruct_lr=1e-3)
QUICK = dict(num_train=24, num_test=12, lm_hidden=32, lm_layers=1, lm_heads=2,
             spatial_pool=2, feature_layer=-1, align_epochs=1, instruct_epochs=2, batch=8, align_lr=1e-3,
             instruct_lr=1e-3)


def _pair_files(items: list[dict[str, Any]], out_dir: str) -> tuple[str, str]:
    """Questions as Video-ChatGPT's ``test_q.json`` / ``test_a.json`` pair, the format the
    papers' MSRVTT-QA / ActivityNet-QA evaluation ships in."""
    questions = [{"video_name": it["video"], "question_id": it["id"],
                  "question": it["conversations"][0]["value"].split("\n", 1)[-1]} for it in items]
    answers = [{"question_id": it["id"], "answer": it["conversations"][1]["value"], "type": it["qtype"]}
               for it in items]
    return (write_json(os.path.join(out_dir, "test_q.json"), questions, indent=None),
            write_json(os.path.join(out_dir, "test_a.json"), answers, indent=None))


def _text_only_answers(model, questions: list[str], max_new_tokens: int = 8, batch_size: int = 64) -> list[str]:
    """Greedy answers of a model trained without video (the control) to bare questions."""
    import torch

    from ..llm.conversation import build_prompt, resolve_pad_token_id
    from ..llm.data import collate_instructions

    tok = model.tokenizer
    eos = tok.eos_token_id
    answers = []
    for start in range(0, len(questions), batch_size):
        entries = [{"input_ids": build_prompt(tok, q, None), "labels": None}
                   for q in questions[start:start + batch_size]]
        batch = collate_instructions(entries, resolve_pad_token_id(tok))
        with torch.no_grad():
            out = model.generate(batch["input_ids"], batch["attention_mask"], max_new_tokens=max_new_tokens)
        for row in out.tolist():
            row = row[: row.index(eos)] if eos in row else row
            answers.append(tok.decode(row, skip_special_tokens=True).strip())
    return answers


def _accuracy_by_type(qtypes: list[str], correct: list[bool]) -> dict[str, float]:
    out = {}
    for qtype in [*QUESTION_TYPES, "yes_no"]:
        hits = [c for t, c in zip(qtypes, correct) if t == qtype]
        out[qtype] = 100.0 * sum(hits) / max(1, len(hits))
    out["all"] = 100.0 * sum(correct) / max(1, len(correct))
    return out


def run_llm_demo(out: str = "runs/llm-demo", quick: bool = False, seed: int = 0,
                 demo_dir: str | None = None) -> dict[str, Any]:
    """The toy VideoMAP-LLaVA: data, both stages, the text-only control, held-out accuracy.

    ``demo_dir`` is the main demo's run directory whose pre-trained encoder is used (default
    ``runs/demo``, or ``runs/demo-quick`` with ``quick``); its pre-training runs first if missing.
    """
    from ..llm import VideoLLM
    from ..llm.qa import exact_match
    from ..llm.tiny import build_tiny_causal_lm, build_word_tokenizer
    from .llm import run_llm_eval, run_llm_train

    p = QUICK if quick else FULL
    d = demo_params(quick)  # clip length, frames and size of the main demo (its encoder's input)
    t_start = time.time()
    out = os.path.abspath(out)
    demo_dir = os.path.abspath(demo_dir or ("runs/demo-quick" if quick else "runs/demo"))
    times: dict[str, float] = {}

    t0 = time.time()
    encoder = demo_encoder(demo_dir, quick=quick, seed=seed)
    times["encoder"] = time.time() - t0

    t0 = time.time()
    data = os.path.join(out, "data")
    log.info("writing %d training and %d held-out clips with questions to %s", p["num_train"], p["num_test"], data)
    train_list, test_list = make_synthetic_dataset(data, num_train=p["num_train"], num_val=p["num_test"],
                                                   num_frames=d["clip_frames"], size=d["size"], seed=seed + 2)
    train, test = read_clip_list(train_list), read_clip_list(test_list)
    align_json = write_json(os.path.join(data, "align.json"), caption_items(train), indent=None)
    instruct_json = write_json(os.path.join(data, "instruct.json"), conversation_items(train, seed), indent=None)
    text_json = write_json(os.path.join(data, "instruct_text_only.json"), conversation_items(train, seed, False),
                           indent=None)
    test_items = qa_items(test, seed + 1)
    test_q, test_a = _pair_files(test_items, data)
    lm_dir = os.path.join(out, "lm")
    tokenizer = build_word_tokenizer(vocabulary_texts(), os.path.join(lm_dir, "tokenizer"))
    build_tiny_causal_lm(os.path.join(lm_dir, "model"), tokenizer, hidden_size=p["lm_hidden"],
                         num_layers=p["lm_layers"], num_heads=p["lm_heads"], seed=seed)
    times["data"] = time.time() - t0

    common = [
        "task=llm", "llm.max_length=128", f"train.batch_size={p['batch']}", "train.num_workers=0",
        "train.weight_decay=0.0", "train.warmup_epochs=0.1", "train.min_lr=0.0", "train.log_every=20",
        "train.tensorboard=false", "train.resume=true", "train.save_trainable_only=true", f"train.seed={seed}",
    ]
    model = [
        f"llm.language_model={os.path.join(lm_dir, 'model')}", "llm.video_encoder=videomap_tiny",
        f"llm.video_checkpoint={encoder}",
        f"llm.video_overrides={demo_encoder_overrides(quick)}", f"llm.num_frames={d['frames']}",
        f"llm.img_size={d['size']}",
        f"llm.spatial_pool={p['spatial_pool']}", f"llm.feature_layer={p['feature_layer']}",
    ]
    runs = {k: os.path.join(out, k) for k in ("align", "instruct", "instruct_text_only")}

    log.info("stage 1/2: aligning the projector on %d captions (LM and encoder frozen)", len(train))
    t0 = time.time()
    run_llm_train(load_config(None, common + model + [
        "llm.stage=align", f"llm.train_json={align_json}", f"train.epochs={p['align_epochs']}",
        f"train.lr={p['align_lr']}", f"train.output_dir={runs['align']}"]))
    times["align"] = time.time() - t0
    stage1 = os.path.join(runs["align"], "final")
    for name, json_file, what in (("instruct", instruct_json, "with the video"),
                                  ("instruct_text_only", text_json, "without the video (the control)")):
        log.info("stage 2/2: instruction tuning projector + LM %s, %d conversations", what, len(train))
        t0 = time.time()
        run_llm_train(load_config(None, common + [
            "llm.stage=instruct", f"llm.init_from={stage1}", f"llm.train_json={json_file}",
            f"train.epochs={p['instruct_epochs']}", f"train.lr={p['instruct_lr']}",
            f"train.output_dir={runs[name]}"]))
        times[name] = time.time() - t0

    log.info("answering %d held-out questions about %d clips", len(test_items), len(test))
    t0 = time.time()
    eval_cfg = load_config(None, common + [
        "llm.eval_format=msrvtt_qa", f"llm.eval_json={test_q}", f"llm.eval_answers_json={test_a}",
        "llm.eval_batch_size=64", "llm.max_new_tokens=8", f"train.output_dir={os.path.join(out, 'eval')}"])
    video_eval = run_llm_eval(eval_cfg, os.path.join(runs["instruct"], "final"))
    with open(video_eval["predictions"], encoding="utf-8") as f:
        records = {r["question_id"]: r for r in map(json.loads, f)}
    preds = [records[it["id"]]["pred"] or "" for it in test_items]
    text_model = VideoLLM.from_pretrained(os.path.join(runs["instruct_text_only"], "final"))
    text_preds = _text_only_answers(text_model, [it["conversations"][0]["value"].split("\n", 1)[-1]
                                                 for it in test_items])
    times["eval"] = time.time() - t0
    return _report(out, p, quick, test_items, preds, text_preds, times, time.time() - t_start, exact_match)




def _report(out: str, p: dict[str, Any], quick: bool, items: list[dict[str, Any]], preds: list[str],
            text_preds: list[str], times: dict[str, float], total: float, exact_match) -> dict[str, Any]:
    """Per-question-type accuracy of both models next to chance; results.md / results.json."""
    import math

    qtypes = [it["qtype"] for it in items]
    refs = [it["conversations"][1]["value"] for it in items]
    video_ok = [exact_match(pr, r) for pr, r in zip(preds, refs)]
    text_ok = [exact_match(pr, r) for pr, r in zip(text_preds, refs)]
    video_acc, text_acc = _accuracy_by_type(qtypes, video_ok), _accuracy_by_type(qtypes, text_ok)
    sizes = answer_sets()
    chance = {t: 100.0 / len(sizes[t]) for t in sizes}
    probs = [1.0 / len(sizes[t]) for t in qtypes]
    chance["all"] = 100.0 * sum(probs) / len(probs)
    # how many standard errors of a guesser the accuracy lies above chance
    se = 100.0 * math.sqrt(sum(q * (1 - q) for q in probs)) / len(probs)
    z = (video_acc["all"] - chance["all"]) / se
    rows = [f"| {t.replace('_', '/')} | {len(sizes[t])} | {chance[t]:.1f} | **{video_acc[t]:.1f}** | "
            f"{text_acc[t]:.1f} |" for t in sizes]
    rows.append(f"| all ({len(items)} questions) | | {chance['all']:.1f} | **{video_acc['all']:.1f}** | "
                f"{text_acc['all']:.1f} |")
    examples, seen = [], set()
    for it, pr in zip(items, preds):
        if it["qtype"] != "event" or it["video"] in seen or len(examples) >= 6:
            continue
        seen.add(it["video"])
        examples.append(f"- `{os.path.basename(it['video'])}` \"{it['conversations'][0]['value'].split(chr(10))[-1]}\""
                        f" -> \"{pr}\" (truth: \"{it['conversations'][1]['value']}\")")
    verdict = (f"{video_acc['all']:.1f} % vs {chance['all']:.1f} % chance: {z:.1f} standard errors above chance"
               + ("" if z > 5 else " -- NOT clearly above chance" + (" (expected for --quick)" if quick else "")))
    md = "\n".join([
        f"# videomap demo --llm ({'quick' if quick else 'full'})", "",
        f"Held-out exact-match accuracy on {len(items)} questions about {len(items) // len(sizes)} generated clips "
        f"never seen in training. Video model: the main demo's VideoMAP pre-trained encoder (frozen) -> "
        f"projector -> a {p['lm_layers']}-layer, {p['lm_hidden']}-d Llama trained from scratch "
        f"({p['align_epochs']} align + {p['instruct_epochs']} instruct epochs on {p['num_train']} clips). "
        "Text only: the same LM and schedule trained on the same conversations without the video.", "",
        "| question type | answers | chance | video LLM | text only |", "|---|---|---|---|---|", *rows, "",
        verdict + ".", "", "Examples (held-out clips):", *examples, "",
        "Time: " + ", ".join(f"{k} {v:.0f}s" for k, v in times.items()) + f", total {total:.0f}s.",
    ])
    print("\n" + md + "\n", flush=True)
    write_text(os.path.join(out, "results.md"), md + "\n")
    summary = {"video": video_acc, "text_only": text_acc, "chance": chance, "z_above_chance": z,
               "num_questions": len(items), "num_train_clips": p["num_train"], "examples": examples,
               "times_s": times, "total_s": total, "quick": quick, "params": p}
    write_json(os.path.join(out, "results.json"), summary)
    return summary
