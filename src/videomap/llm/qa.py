"""Video question answering evaluation: the open-ended and multiple-choice scoring loops.

What is measured
    Video-ChatGPT, Video-LLaVA and the VideoMAP paper report open-ended QA "accuracy" and "score"
    judged by GPT-3.5 (it reads question, reference and prediction and says yes/no plus 0-5). That
    needs an external API and a specific, since retired, model version, so it cannot run offline
    and is not reproduced here. :func:`evaluate_open_ended` reports **exact match after
    normalisation** (and, as a lenient extra, whether the normalised reference occurs as whole
    words in the prediction). These numbers are NOT comparable to the papers' GPT-judged ones:
    exact match is stricter for free-form answers. Multiple choice
    (:func:`evaluate_multiple_choice`) needs no judge: each candidate is scored by the model's
    log-likelihood of it as the answer and the most likely one is the prediction.

Resumable output
    Both evaluations append one JSON line per question to ``output_file`` as soon as it is
    answered; a rerun skips every question id already there (retrying only those whose media
    failed to load), so a long job never loses finished work. A partly written last line (a
    crash mid-write) is dropped before appending.

The annotation readers (every format, :class:`QAItem`) live in :mod:`videomap.llm.qa_readers`,
answer normalisation in :mod:`videomap.llm.answers`; both are re-exported here, where callers
have always found them.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch

from ..data.decode import VideoDecodeError
from ..engine.distributed import module_device
from .answers import contains_answer, exact_match, normalise_answer
from .constants import IGNORE_INDEX, IMAGE_PLACEHOLDER, VIDEO_PLACEHOLDER
from .conversation import build_prompt, resolve_pad_token_id, tokenize_conversation
from .data import collate_instructions, is_image_path, load_image, load_video
from .qa_readers import (
    QA_FORMATS,
    VIDEO_SUFFIXES,
    QAItem,
    read_activitynet_qa,
    read_msrvtt_qa,
    read_multiple_choice,
    read_qa,
    read_qa_pairs,
    read_tgif_qa,
    resolve_video_path,
)

__all__ = [
    "EVAL_MAX_NEW_TOKENS",
    "QAItem",
    "QA_FORMATS",
    "VIDEO_SUFFIXES",
    "contains_answer",
    "evaluate_multiple_choice",
    "evaluate_open_ended",
    "exact_match",
    "normalise_answer",
    "read_activitynet_qa",
    "read_msrvtt_qa",
    "read_multiple_choice",
    "read_qa",
    "read_qa_pairs",
    "read_tgif_qa",
    "resolve_video_path",
]

logger = logging.getLogger(__name__)

EVAL_MAX_NEW_TOKENS = 32  # open-ended QA answers are a word or a phrase


# ---------------------------------------------------------------------------------------------
# resumable predictions file
# ---------------------------------------------------------------------------------------------
def _load_records(path: str | None) -> dict[str, dict]:
    """Finished records by question id (the last one wins); drops a partly written last line."""
    if path is None or not os.path.exists(path):
        return {}
    with open(path, "rb") as fh:
        data = fh.read()
    if data and not data.endswith(b"\n"):
        keep = data.rfind(b"\n") + 1
        logger.warning("%s: dropping an incomplete last line (%d bytes) before resuming", path, len(data) - keep)
        with open(path, "r+b") as fh:
            fh.truncate(keep)
        data = data[:keep]
    records = {}
    for n, line in enumerate(data.decode("utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            records[str(record["question_id"])] = record
        except (json.JSONDecodeError, KeyError, TypeError):
            raise ValueError(f"{path}: line {n} is not a prediction record; not resuming from a foreign file") from None
    return records


def _check_items(items: Sequence[QAItem], multiple_choice: bool) -> None:
    if not items:
        raise ValueError("no questions to evaluate")
    seen = set()
    for item in items:
        if item.question_id in seen:
            raise ValueError(f"question id {item.question_id!r} occurs twice; ids must be unique to resume")
        seen.add(item.question_id)
        if multiple_choice:
            if not item.candidates or len(item.candidates) < 2:
                raise ValueError(f"question {item.question_id!r} has no candidates; not a multiple-choice item")
            if item.answer not in item.candidates:
                raise ValueError(f"question {item.question_id!r}: answer {item.answer!r} is not a candidate")


def _resume(output_file: str | None, items: Sequence[QAItem]) -> dict[str, dict]:
    done = _load_records(output_file)
    wanted = {item.question_id: item for item in items}
    for qid, record in done.items():
        if qid in wanted and record.get("answer") != wanted[qid].answer:
            raise ValueError(
                f"{output_file}: the stored answer of question {qid!r} ({record.get('answer')!r}) differs from "
                f"the annotation ({wanted[qid].answer!r}); the file belongs to another run, use a new output file"
            )
    return {qid: r for qid, r in done.items() if qid in wanted and "error" not in r}


class _Writer:
    def __init__(self, path: str | None) -> None:
        self.fh = None
        if path is not None:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            self.fh = open(path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()

    def write(self, records: Iterable[dict]) -> None:
        if self.fh is None:
            return
        for record in records:
            self.fh.write(json.dumps(record, ensure_ascii=False) + "\n")
        self.fh.flush()
        os.fsync(self.fh.fileno())

    def close(self) -> None:
        if self.fh is not None:
            self.fh.close()


# ---------------------------------------------------------------------------------------------
# evaluation
# ---------------------------------------------------------------------------------------------
def _load_media(item: QAItem, media_root: str, num_frames: int, img_size: int, backend: str
                ) -> tuple[str, torch.Tensor]:
    path = resolve_video_path(media_root, item.video)
    if is_image_path(path):
        return "image", load_image(path, img_size, "test")
    return "video", load_video(path, num_frames, img_size, "test", backend=backend)


def _to(batch: dict, device: torch.device) -> dict:
    return {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}


def _decode(tokenizer: Any, ids: Sequence[int]) -> str:
    stop = {i for i in (getattr(tokenizer, "eos_token_id", None), getattr(tokenizer, "pad_token_id", None))
            if isinstance(i, int)}
    out = []
    for i in ids:
        if int(i) in stop:
            break
        out.append(int(i))
    return tokenizer.decode(out, skip_special_tokens=True).strip()


def evaluate_open_ended(
    model: Any,
    items: Sequence[QAItem],
    media_root: str | os.PathLike = "",
    num_frames: int = 8,
    img_size: int = 224,
    *,
    tokenizer: Any = None,
    batch_size: int = 1,
    max_new_tokens: int = EVAL_MAX_NEW_TOKENS,
    answer_prompt: str | None = None,
    system: str | None = None,
    output_file: str | os.PathLike | None = None,
    backend: str = "pyav",
    generate_kwargs: Mapping[str, Any] | None = None,
    log_every: int = 100,
) -> dict:
    """Answer every question with ``model.generate`` and score exact match after
    :func:`normalise_answer`.

    The GPT-judged accuracy / score of Video-ChatGPT and the VideoMAP paper needs an external API
    and cannot run offline, so ``"accuracy"`` here is normalised exact match and is NOT comparable
    to the papers' numbers; ``"contains_accuracy"`` (reference found as whole words in the
    prediction) is a lenient companion. Media load in test mode (segment centres, short-side
    resize, centre crop); a file that fails is logged, recorded with its error and counted wrong
    (``"failed"``), and retried on the next resumed run. ``answer_prompt`` is appended to each
    question on a new line (e.g. LLaVA-1.5's "Answer the question using a single word or phrase.").
    ``tokenizer`` defaults to ``model.tokenizer``. Returns ``{"accuracy", "count", "correct",
    "contains_accuracy", "failed"}``; per-question records go to ``output_file`` (JSON Lines,
    resumable; see the module docstring).
    """
    _check_items(items, multiple_choice=False)
    tokenizer = tokenizer if tokenizer is not None else model.tokenizer
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    output_file = None if output_file is None else os.fspath(output_file)
    done = _resume(output_file, items)
    pending = [item for item in items if item.question_id not in done]
    if done:
        logger.info("resuming: %d of %d questions already answered in %s", len(items) - len(pending), len(items),
                    output_file)
    pad = resolve_pad_token_id(tokenizer)
    device = module_device(model)
    kwargs = {"max_new_tokens": max_new_tokens, **(generate_kwargs or {})}
    writer = _Writer(output_file)
    results = dict(done)
    try:
        for start in range(0, len(pending), batch_size):
            chunk = pending[start:start + batch_size]
            ready, records = [], []
            for item in chunk:
                base = {"question_id": item.question_id, "video": item.video, "question": item.question,
                        "answer": item.answer}
                try:
                    modality, media = _load_media(item, os.fspath(media_root), num_frames, img_size, backend)
                except VideoDecodeError as err:
                    logger.warning("question %s: cannot load %s: %s", item.question_id, err.path, err.reason)
                    records.append({**base, "pred": None, "correct": False, "error": f"{err.path}: {err.reason}"})
                    continue
                question = item.question if not answer_prompt else f"{item.question}\n{answer_prompt}"
                ids = build_prompt(tokenizer, question, modality, system=system)
                ready.append((base, {"input_ids": ids, "labels": None, "video": media if modality == "video" else None,
                                     "image": media if modality == "image" else None}))
            if ready:
                batch = collate_instructions([entry for _, entry in ready], pad)
                batch.pop("labels")
                batch = _to(batch, device)
                with torch.no_grad():
                    out = model.generate(batch["input_ids"], attention_mask=batch["attention_mask"],
                                         videos=batch["videos"], images=batch["images"], **kwargs)
                for (base, _), row in zip(ready, out.tolist()):
                    pred = _decode(tokenizer, row)
                    records.append({**base, "pred": pred, "correct": exact_match(pred, base["answer"])})
            writer.write(records)
            results.update({r["question_id"]: r for r in records})
            finished = start + len(chunk)
            if log_every and (finished // log_every > start // log_every or finished == len(pending)):
                logger.info("open-ended QA: %d / %d questions", len(results), len(items))
    finally:
        writer.close()
    correct = contains = failed = 0
    for item in items:
        record = results[item.question_id]
        if record.get("error") is not None:
            failed += 1
            continue
        correct += exact_match(record["pred"], item.answer)  # re-scored: normalisation may have changed
        contains += contains_answer(record["pred"], item.answer)
    n = len(items)
    return {"accuracy": correct / n, "count": n, "correct": correct, "contains_accuracy": contains / n,
            "failed": failed}


def evaluate_multiple_choice(
    model: Any,
    items: Sequence[QAItem],
    media_root: str | os.PathLike = "",
    num_frames: int = 8,
    img_size: int = 224,
    *,
    tokenizer: Any = None,
    length_normalize: bool = False,
    list_candidates: bool = False,
    system: str | None = None,
    output_file: str | os.PathLike | None = None,
    backend: str = "pyav",
    log_every: int = 100,
) -> dict:
    """Pick, for each question, the candidate with the highest log-likelihood as the answer.

    Each candidate is tokenized as the assistant's answer to the question (labels = its tokens
    and the closing end-of-turn token) and scored with ``model.answer_logprobs`` (sum of label
    log-probabilities), all candidates of a question in one batch. ``length_normalize`` divides by
    the number of label tokens, so long candidates are not penalised for their length.
    ``list_candidates`` adds "Options: a; b; c." to the question. Needs no external judge, unlike
    the papers' GPT-scored open-ended QA. Returns ``{"accuracy", "count", "correct", "failed"}``;
    records go to ``output_file`` (resumable, as in :func:`evaluate_open_ended`).
    """
    _check_items(items, multiple_choice=True)
    tokenizer = tokenizer if tokenizer is not None else model.tokenizer
    output_file = None if output_file is None else os.fspath(output_file)
    done = _resume(output_file, items)
    pending = [item for item in items if item.question_id not in done]
    pad = resolve_pad_token_id(tokenizer)
    device = module_device(model)
    writer = _Writer(output_file)
    results = dict(done)
    try:
        for n, item in enumerate(pending, 1):
            base = {"question_id": item.question_id, "video": item.video, "question": item.question,
                    "answer": item.answer, "candidates": list(item.candidates)}
            try:
                modality, media = _load_media(item, os.fspath(media_root), num_frames, img_size, backend)
            except VideoDecodeError as err:
                logger.warning("question %s: cannot load %s: %s", item.question_id, err.path, err.reason)
                record = {**base, "pred": None, "correct": False, "error": f"{err.path}: {err.reason}"}
            else:
                question = item.question
                if list_candidates:
                    question = f"{question}\nOptions: " + "; ".join(item.candidates) + "."
                placeholder = VIDEO_PLACEHOLDER if modality == "video" else IMAGE_PLACEHOLDER
                entries = []
                for candidate in item.candidates:
                    conv = [{"from": "human", "value": f"{placeholder}\n{question}"},
                            {"from": "gpt", "value": candidate}]
                    ids, labels = tokenize_conversation(tokenizer, conv, system=system)
                    entries.append({"input_ids": ids, "labels": labels,
                                    "video": media if modality == "video" else None,
                                    "image": media if modality == "image" else None})
                batch = _to(collate_instructions(entries, pad), device)
                with torch.no_grad():
                    scores = model.answer_logprobs(batch["input_ids"], batch["attention_mask"], batch["labels"],
                                                   videos=batch["videos"], images=batch["images"])
                scores = scores.detach().float().cpu()
                if length_normalize:
                    scores = scores / (batch["labels"] != IGNORE_INDEX).sum(1).clamp(min=1).float().cpu()
                best = int(torch.argmax(scores))
                record = {**base, "scores": [round(float(s), 6) for s in scores], "pred_index": best,
                          "pred": item.candidates[best], "answer_index": item.answer_index,
                          "correct": best == item.answer_index}
            writer.write([record])
            results[item.question_id] = record
            if log_every and (n % log_every == 0 or n == len(pending)):
                logger.info("multiple choice: %d / %d questions", len(results), len(items))
    finally:
        writer.close()
    failed = sum(1 for item in items if results[item.question_id].get("error") is not None)
    correct = sum(1 for item in items if results[item.question_id].get("pred") == item.answer)
    return {"accuracy": correct / len(items), "count": len(items), "correct": correct, "failed": failed}
