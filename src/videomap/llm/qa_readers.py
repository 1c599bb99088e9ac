"""Video question answering annotations: one :class:`QAItem` per question, whatever the file layout.

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
"""

from __future__ import annotations

import csv
import json
import logging
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from ..data.annotations import VIDEO_EXTENSIONS
from .answers import normalise_answer

__all__ = [
    "QAFormat", "QAItem", "QA_FORMATS", "VIDEO_SUFFIXES", "read_activitynet_qa", "read_msrvtt_qa",
    "read_multiple_choice", "read_qa", "read_qa_pairs", "read_tgif_qa", "resolve_video_path",
]

logger = logging.getLogger(__name__)

# what an annotation's extension-less video name may be completed with: the library's video
# extensions, plus the GIFs of TGIF-QA
VIDEO_SUFFIXES = (*VIDEO_EXTENSIONS, ".gif")


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


# the formats a job file names (``llm.eval_format``)
QAFormat = Literal["msrvtt_qa", "activitynet_qa", "tgif_qa", "multiple_choice"]
QA_FORMATS: dict[str, Callable[..., list[QAItem]]] = {
    "pairs": read_qa_pairs,
    "msvd": read_qa_pairs,
    "activitynet": read_activitynet_qa,
    "activitynet_qa": read_activitynet_qa,
    "msrvtt": read_msrvtt_qa,
    "msrvtt_qa": read_msrvtt_qa,
    "tgif": read_tgif_qa,
    "tgif_qa": read_tgif_qa,
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


