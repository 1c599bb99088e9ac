"""Answer normalisation and matching for open-ended video QA (exact match after normalisation).

Shared by the annotation readers (a multiple-choice answer given as text is matched to its
candidate) and the evaluation loops, which score predictions with it.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from typing import Any

__all__ = ["contains_answer", "exact_match", "normalise_answer"]


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


