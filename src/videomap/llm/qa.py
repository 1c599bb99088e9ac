"""Video question answering evaluation: annotation readers, answer normalisation and scoring.

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

Formats (layouts as in the public releases: github.com/mbzuai-oryx/Video-ChatGPT,
PKU-YuanGroup/Video-LLaVA, MILVLG/activitynet-qa, YunseokJANG/tgif-qa)
    * Video-ChatGPT / Video-LLaVA zero-shot QA pairs (MSRVTT-QA, MSVD-QA, TGIF-QA, ActivityNet-QA
      as distributed in ``GPT_Zero_Shot_QA/*``): ``test_q.json`` = list of ``{"video_name",
      "question_id", "question"}``, ``test_a.json`` = list of ``{"answer", "type", "question_id"}``
      (matched by ``question_id``, by position when the answers carry none). ActivityNet-QA videos
      are stored as ``v_<video_name>``. :func:`read_qa_pairs`, :func:`read_activitynet_qa`.
    * MSRVTT-QA original release (``train/val/test_qa.json``): list of ``{"id", "video_id",
      "question", "answer", "category_id"}``, video ``video<video_id>``. :func:`read_msrvtt_qa`.
    * TGIF-QA original release (``Test_{frameqa,count,action,transition}_question.csv``,
      tab-separated with a header): ``gif_name, question, answer, type, vid_id, key, description``
      (FrameQA), ``gif_name, question, answer, vid_id, key`` (Count) and ``gif_name, question,
      a1..a5, answer (0-based index), vid_id, key`` (Action / Transition, multiple choice).
      Video-ChatGPT evaluates FrameQA only. :func:`read_tgif_qa`.
    * Generic multiple choice: JSON / JSON Lines / CSV rows with a question, ``candidates`` (or
      ``options`` / ``choices`` / columns ``a0..`` or ``a1..``) and the answer as candidate text,
      0-based index or letter. :func:`read_multiple_choice`.

Resumable output
    Both evaluations append one JSON line per question to ``output_file`` as soon as it is
    answered; a rerun skips every question id already there (retrying only those whose media
    failed to load), so a long job never loses finished work. A partly written last line (a
    crash mid-write) is dropped before appending.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import re
import unicodedata
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ..data.decode import VideoDecodeError
from .constants import IGNORE_INDEX, IMAGE_PLACEHOLDER, VIDEO_PLACEHOLDER
from .conversation import build_prompt, resolve_pad_token_id, tokenize_conversation
from .data import collate_instructions, is_image_path, load_image, load_video

__all__ = [
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

logger = logging.getLogger("videomap.llm")

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".gif", ".m4v")


# ---------------------------------------------------------------------------------------------
# answers
# ---------------------------------------------------------------------------------------------
_ARTICLES = frozenset({"a", "an", "the"})
_NUMBER_WORDS = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
    "seven": "7", "eight": "8", "nine": "9", "ten": "10", "eleven": "11", "twelve": "12",
}
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
_SEPARATORS = re.compile(r"[-/]")
_PUNCT = re.compile(r"(?!(?<=\d)\.(?=\d))[^\w\s]|_")


def normalise_answer(text: Any, *, numbers: bool = True) -> str:
    """Canonical form of an answer for exact matching.

    The SQuAD rules (lower-case, drop punctuation, drop the articles a/an/the, collapse
    whitespace) plus two from VQA evaluation: number words up to twelve become digits ("two" ->
    "2"; ``numbers=False`` keeps them) and a decimal point between digits is kept ("2.5"); also
    Unicode NFKC, "1,000" -> "1000", and hyphens / slashes separate words ("t-shirt" -> "t shirt").
    """
    text = unicodedata.normalize("NFKC", str(text)).lower()
    text = _THOUSANDS.sub("", text)
    text = _SEPARATORS.sub(" ", text)
    text = _PUNCT.sub("", text)
    words = [w for w in text.split() if w not in _ARTICLES]
    if numbers:
        words = [_NUMBER_WORDS.get(w, w) for w in words]
    return " ".join(words)


def _references(answers: str | Iterable[str]) -> list[str]:
    return [answers] if isinstance(answers, str) else list(answers)


def exact_match(prediction: str, answers: str | Iterable[str]) -> bool:
    """True when the normalised prediction equals a normalised reference (any of several)."""
    pred = normalise_answer(prediction)
    return any(pred == normalise_answer(a) for a in _references(answers))


def contains_answer(prediction: str, answers: str | Iterable[str]) -> bool:
    """Lenient match: a normalised reference occurs as whole words inside the normalised prediction
    ("the bar moves left" contains "left"). Lenient indeed: "not left" or "left or right" count too."""
    pred = f" {normalise_answer(prediction)} "
    return any(ref and f" {ref} " in pred for ref in (normalise_answer(a) for a in _references(answers)))


# ---------------------------------------------------------------------------------------------
# items and readers
# ---------------------------------------------------------------------------------------------
@dataclass
class QAItem:
    """One question: ``video`` is a path or name relative to the media root (see
    :func:`resolve_video_path`); ``candidates`` is set for multiple choice, with ``answer`` the
    text of the right one; ``meta`` keeps extra fields (question type, task, ...)."""

    question_id: str
    video: str
    question: str
    answer: str
    candidates: list[str] | None = None
    meta: dict = field(default_factory=dict)

    @property
    def answer_index(self) -> int | None:
        return None if self.candidates is None else self.candidates.index(self.answer)


def _load_json_rows(path: str) -> list:
    with open(path, encoding="utf-8") as fh:
        text = fh.read()
    try:
        data = json.loads(text)
    except json.JSONDecodeError as first:
        try:
            data = [json.loads(line) for line in text.splitlines() if line.strip()]
        except json.JSONDecodeError:
            raise ValueError(f"{path}: not valid JSON or JSON Lines ({first.msg} at line {first.lineno})") from None
    if isinstance(data, Mapping):  # {"questions": [...]} / {"data": [...]}
        lists = [v for v in data.values() if isinstance(v, list)]
        if len(lists) != 1:
            raise ValueError(f"{path}: expected a JSON list of questions, got an object with keys {sorted(data)[:6]}")
        data = lists[0]
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list, got {type(data).__name__}")
    return data


def _field(row: Mapping, keys: Sequence[str], where: str, what: str, required: bool = True) -> Any:
    for key in keys:
        if key in row and row[key] is not None and str(row[key]).strip() != "":
            return row[key]
    if required:
        raise ValueError(f"{where}: missing {what} (expected one of the keys {list(keys)}), got keys {sorted(row)}")
    return None


def _id_or(value: Any, default: int) -> str:
    return str(default) if value is None else str(value)


def _unique_ids(items: list[QAItem], source: str) -> list[QAItem]:
    """Question ids must be unique (they key the resumable output): repeats get ``#2``, ``#3``..."""
    seen: dict[str, int] = {}
    for item in items:
        n = seen.get(item.question_id, 0) + 1
        seen[item.question_id] = n
        if n > 1:
            item.question_id = f"{item.question_id}#{n}"
    repeated = sum(1 for v in seen.values() if v > 1)
    if repeated:
        logger.warning("%s: %d question id(s) occur more than once; suffixed with #2, #3, ...", source, repeated)
    return items


def read_qa_pairs(question_file: str | os.PathLike, answer_file: str | os.PathLike, *,
                  video_prefix: str = "") -> list[QAItem]:
    """Video-ChatGPT / Video-LLaVA ``test_q.json`` + ``test_a.json`` (see the module docstring).

    ``video_prefix`` is put in front of every ``video_name`` that does not start with it already.
    """
    qfile, afile = os.fspath(question_file), os.fspath(answer_file)
    questions, answers = _load_json_rows(qfile), _load_json_rows(afile)
    for i, a in enumerate(answers):
        if not isinstance(a, Mapping) or "answer" not in a:
            raise ValueError(f"{afile}: entry {i}: expected an object with 'answer', got {a!r:.80}")
    by_id = all("question_id" in a for a in answers)
    if by_id:
        answer_of: dict[str, Mapping] = {}
        for i, a in enumerate(answers):
            qid = str(a["question_id"])
            if qid in answer_of:
                raise ValueError(f"{afile}: entry {i}: question_id {qid!r} is answered twice")
            answer_of[qid] = a
    elif len(answers) != len(questions):
        raise ValueError(f"{afile}: answers carry no question_id, so they are matched by position, but there are "
                         f"{len(answers)} answers for {len(questions)} questions in {qfile}")
    items = []
    for i, q in enumerate(questions):
        where = f"{qfile}: entry {i}"
        if not isinstance(q, Mapping):
            raise ValueError(f"{where}: expected an object with video_name/question/question_id, got {q!r:.80}")
        qid = _id_or(_field(q, ("question_id", "id"), where, "the question id", required=by_id), i)
        video = str(_field(q, ("video_name", "video", "video_id"), where, "the video"))
        question = str(_field(q, ("question",), where, "the question"))
        if by_id:
            if qid not in answer_of:
                raise ValueError(f"{where}: question_id {qid!r} has no answer in {afile}")
            a = answer_of[qid]
        else:
            a = answers[i]
        if video_prefix and not video.startswith(video_prefix):
            video = video_prefix + video
        meta = {k: v for k, v in a.items() if k not in ("answer", "question_id")}
        items.append(QAItem(qid, video, question, str(a["answer"]), meta=meta))
    return _unique_ids(items, qfile)


def read_activitynet_qa(question_file: str | os.PathLike, answer_file: str | os.PathLike) -> list[QAItem]:
    """ActivityNet-QA ``*_q.json`` / ``*_a.json`` (MILVLG release, also Video-ChatGPT's copy);
    ``video`` is ``v_<video_name>``, the ActivityNet file name."""
    return read_qa_pairs(question_file, answer_file, video_prefix="v_")


def read_msrvtt_qa(path: str | os.PathLike, answer_file: str | os.PathLike | None = None) -> list[QAItem]:
    """MSRVTT-QA: the original ``*_qa.json`` (``video`` = ``video<video_id>``), or the Video-LLaVA
    ``test_q.json`` / ``test_a.json`` pair when ``answer_file`` is given."""
    if answer_file is not None:
        return read_qa_pairs(path, answer_file)
    path = os.fspath(path)
    items = []
    for i, row in enumerate(_load_json_rows(path)):
        where = f"{path}: entry {i}"
        if not isinstance(row, Mapping):
            raise ValueError(f"{where}: expected an object with id/video_id/question/answer, got {row!r:.80}")
        video = str(_field(row, ("video_id", "video", "video_name"), where, "the video"))
        if video.isdigit():
            video = f"video{video}"
        qid = _id_or(_field(row, ("id", "question_id"), where, "the question id", required=False), i)
        meta = {k: v for k, v in row.items() if k not in ("id", "question_id", "video_id", "question", "answer")}
        items.append(QAItem(qid, video, str(_field(row, ("question",), where, "the question")),
                            str(_field(row, ("answer",), where, "the answer")), meta=meta))
    return _unique_ids(items, path)


def _read_table(path: str) -> list[dict]:
    with open(path, encoding="utf-8", newline="") as fh:
        head = fh.readline()
        fh.seek(0)
        delimiter = "\t" if "\t" in head else ","
        rows = list(csv.DictReader(fh, delimiter=delimiter))
    if not rows:
        raise ValueError(f"{path}: no rows below the header")
    return rows


def _candidate_columns(row: Mapping) -> list[str]:
    columns = sorted((int(m.group(1)), k) for k in row if (m := re.fullmatch(r"a(\d+)", str(k))))
    return [k for _, k in columns]


def _answer_index(answer: Any, candidates: list[str], where: str) -> int:
    if isinstance(answer, bool):
        raise ValueError(f"{where}: answer {answer!r} is neither a candidate, an index nor a letter")
    if isinstance(answer, int):
        index = answer
    else:
        text = str(answer).strip()
        if text in candidates:
            return candidates.index(text)
        normalised = [normalise_answer(c) for c in candidates]
        if normalise_answer(text) in normalised and normalised.count(normalise_answer(text)) == 1:
            return normalised.index(normalise_answer(text))
        letter = re.fullmatch(r"\(?([A-Z])\)?[.:]?", text) or re.fullmatch(r"\(([A-Z])\)\s.*", text)
        if text.lstrip("-").isdigit():
            index = int(text)
        elif letter:
            index = ord(letter.group(1).upper()) - ord("A")
        else:
            raise ValueError(f"{where}: answer {text!r} is none of the candidates {candidates}")
    if not 0 <= index < len(candidates):
        raise ValueError(f"{where}: answer index {index} is out of range for {len(candidates)} candidates "
                         "(numeric answers are 0-based)")
    return index


def _mc_item(row: Mapping, index: int, where: str) -> QAItem:
    qid = _id_or(_field(row, ("question_id", "qid", "id", "vid_id", "key"), where, "the question id",
                        required=False), index)
    video = str(_field(row, ("video", "video_name", "video_path", "video_id", "gif_name", "vid"), where, "the video"))
    question = str(_field(row, ("question",), where, "the question"))
    candidates = _field(row, ("candidates", "options", "choices"), where, "the candidates", required=False)
    if candidates is None:
        columns = _candidate_columns(row)
        candidates = [row[k] for k in columns if row[k] is not None and str(row[k]).strip() != ""]
    if isinstance(candidates, str) or not isinstance(candidates, Sequence) or len(candidates) < 2:
        raise ValueError(f"{where}: expected at least two candidates ('candidates' / 'options' / 'choices' or "
                         f"columns a0.. / a1..), got {candidates!r:.80}")
    candidates = [str(c).strip() for c in candidates]
    answer = _field(row, ("answer", "answer_idx", "answer_index", "label", "correct_answer"), where, "the answer")
    correct = _answer_index(answer, candidates, where)
    known = {"question_id", "qid", "id", "question", "candidates", "options", "choices", "answer", "answer_idx",
             "answer_index", "label", "correct_answer", "video", "video_name", "video_path", "video_id", "gif_name",
             "vid", *_candidate_columns(row)}
    meta = {k: v for k, v in row.items() if k not in known}
    return QAItem(qid, video, question, candidates[correct], candidates, meta)


def read_multiple_choice(path: str | os.PathLike) -> list[QAItem]:
    """Multiple-choice questions from JSON, JSON Lines, CSV or TSV (see the module docstring)."""
    path = os.fspath(path)
    rows = _read_table(path) if path.lower().endswith((".csv", ".tsv")) else _load_json_rows(path)
    items = []
    for i, row in enumerate(rows):
        where = f"{path}: entry {i}"
        if not isinstance(row, Mapping):
            raise ValueError(f"{where}: expected an object, got {row!r:.80}")
        items.append(_mc_item(row, i, where))
    return _unique_ids(items, path)


def read_tgif_qa(path: str | os.PathLike, answer_file: str | os.PathLike | None = None) -> list[QAItem]:
    """TGIF-QA: an original ``Test_*_question.csv`` (FrameQA / Count open-ended, Action /
    Transition multiple choice), or the Video-LLaVA ``test_q.json`` / ``test_a.json`` pair when
    ``answer_file`` is given. ``meta["task"]`` is frameqa / count / action / transition."""
    if answer_file is not None:
        return read_qa_pairs(path, answer_file)
    path = os.fspath(path)
    rows = _read_table(path)
    items = []
    for i, row in enumerate(rows):
        where = f"{path}: row {i + 2}"
        task = re.sub(r"\d+$", "", str(row.get("vid_id") or "")).lower() or None
        if _candidate_columns(row):
            item = _mc_item(row, i, where)
        else:
            item = QAItem(_id_or(_field(row, ("vid_id", "key"), where, "the question id", required=False), i),
                          str(_field(row, ("gif_name",), where, "the GIF name")),
                          str(_field(row, ("question",), where, "the question")),
                          str(_field(row, ("answer",), where, "the answer")),
                          meta={k: v for k, v in row.items()
                                if k in ("type", "key", "description") and v not in (None, "")})
        if task:
            item.meta["task"] = task
        items.append(item)
    return _unique_ids(items, path)


QA_FORMATS: dict[str, Callable[..., list[QAItem]]] = {
    "pairs": read_qa_pairs,
    "msvd": read_qa_pairs,
    "activitynet": read_activitynet_qa,
    "msrvtt": read_msrvtt_qa,
    "tgif": read_tgif_qa,
    "multiple_choice": read_multiple_choice,
}


def read_qa(fmt: str, path: str | os.PathLike, answer_file: str | os.PathLike | None = None) -> list[QAItem]:
    """Dispatch to a reader by name (:data:`QA_FORMATS`)."""
    if fmt not in QA_FORMATS:
        raise ValueError(f"unknown QA format {fmt!r}; expected one of {sorted(QA_FORMATS)}")
    reader = QA_FORMATS[fmt]
    if reader in (read_qa_pairs, read_activitynet_qa):
        if answer_file is None:
            raise ValueError(f"QA format {fmt!r} needs an answer file (the test_a.json next to {path})")
        return reader(path, answer_file)
    if reader is read_multiple_choice:
        if answer_file is not None:
            raise ValueError("multiple-choice files carry their answers; got an answer_file as well")
        return reader(path)
    return reader(path, answer_file)


def resolve_video_path(media_root: str | os.PathLike, video: str) -> str:
    """``media_root/video``, or with the first of :data:`VIDEO_SUFFIXES` that exists (annotation
    files often give names without extension); the plain join when nothing exists."""
    base = os.path.join(os.fspath(media_root), video)
    if os.path.exists(base):
        return base
    for suffix in VIDEO_SUFFIXES:
        if os.path.exists(base + suffix):
            return base + suffix
    return base


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
def _device(model: Any) -> torch.device:
    device = getattr(model, "device", None)
    if isinstance(device, torch.device):
        return device
    try:
        return next(model.parameters()).device
    except (AttributeError, StopIteration, TypeError):
        return torch.device("cpu")


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
    max_new_tokens: int = 32,
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
    device = _device(model)
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
    device = _device(model)
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
