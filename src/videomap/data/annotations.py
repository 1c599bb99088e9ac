"""Headerless annotation lists in the VideoMAE / VideoMamba formats.

One sample per line, fields separated by a delimiter:

* ``"video"``:  ``path<d>label``                   (Kinetics-400, SSv2 videos, Breakfast, COIN)
* ``"frames"``: ``path<d>total_frames<d>label``    (SSv2 frame folders)
* ``"lvu"``:    ``path<d>label<d>duration``        (LVU)

The delimiter defaults to per-line auto-detection (a comma when the line contains one, otherwise
any run of whitespace). Paths may contain spaces only with a non-space delimiter, because a
whitespace split cannot tell a space in a path from a field separator. Blank lines and lines
starting with ``#`` are skipped. Errors name the file and 1-based line number so a broken list
fails at start-up, not hours into an epoch.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

__all__ = [
    "AnnotationEntry", "LIST_FORMATS", "ListFormat", "VIDEO_EXTENSIONS", "parse_annotation_line", "read_annotations",
    "read_video_paths",
]

ListFormat = Literal["auto", "video", "frames", "lvu"]

LIST_FORMATS = {
    "video": ("path", "label"),
    "frames": ("path", "total_frames", "label"),
    "lvu": ("path", "label", "duration"),
}

VIDEO_EXTENSIONS = (".mp4", ".avi", ".webm", ".mkv", ".mov", ".m4v", ".flv", ".mpg", ".mpeg", ".wmv", ".3gp")


@dataclass(frozen=True)
class AnnotationEntry:
    """One sample of a list; ``path`` already has ``root`` applied, ``line`` is 1-based."""

    path: str
    label: int | float
    total_frames: int | None = None
    duration: float | None = None
    line: int = 0


def _split(text: str, delimiter: str | None) -> list[str]:
    if delimiter is None:
        delimiter = "," if "," in text else " "
    if delimiter.isspace():
        return text.split()
    return [field.strip() for field in text.split(delimiter)]


def _layout(fmt: str, delimiter: str | None) -> str:
    d = "," if delimiter is None else ("<space>" if delimiter.isspace() else delimiter)
    return d.join(LIST_FORMATS[fmt])


def _guess_format(fields: list[str]) -> str:
    if len(fields) == 3:
        # Both three-column layouts exist; LVU rows point at video files, SSv2 rows at folders.
        return "lvu" if fields[0].lower().endswith(VIDEO_EXTENSIONS) else "frames"
    return "video"


def parse_annotation_line(
    text: str,
    fmt: str = "video",
    delimiter: str | None = None,
    root: str | os.PathLike = "",
    where: str = "<string>",
    line: int = 0,
) -> AnnotationEntry:
    """Parse one list line; ``ValueError`` messages start with ``where:line:`` and say what was expected."""
    if fmt not in LIST_FORMATS:
        raise ValueError(f"unknown list format {fmt!r}; expected one of {sorted(LIST_FORMATS)}")
    names = LIST_FORMATS[fmt]
    fields = _split(text.strip(), delimiter)
    prefix = f"{where}:{line}"
    if len(fields) != len(names) or any(f == "" for f in fields):
        hint = ""
        if len(fields) > len(names) and (delimiter is None or delimiter.isspace()) and "," not in text:
            hint = " (paths containing spaces need a non-space delimiter such as ',')"
        raise ValueError(
            f"{prefix}: expected {len(names)} fields '{_layout(fmt, delimiter)}' "
            f"but found {len(fields)}: {text.strip()!r}{hint}"
        )
    values = dict(zip(names, fields))

    def as_int(name: str) -> int:
        try:
            value = int(values[name])
        except ValueError:
            header = " (lists are headerless)" if line == 1 else ""
            raise ValueError(
                f"{prefix}: expected an integer {name} in '{_layout(fmt, delimiter)}', "
                f"got {values[name]!r}{header}"
            ) from None
        if value < 0:
            raise ValueError(f"{prefix}: {name} must be >= 0, got {value}")
        return value

    if fmt == "lvu":  # LVU regression targets (e.g. view counts, ratios) may be real-valued
        try:
            label = float(values["label"])
            label = int(label) if label.is_integer() and "." not in values["label"] else label
        except ValueError:
            raise ValueError(
                f"{prefix}: expected a numeric label in '{_layout(fmt, delimiter)}', got {values['label']!r}"
            ) from None
    else:
        label = as_int("label")
    total = as_int("total_frames") if "total_frames" in values else None
    duration = None
    if "duration" in values:
        try:
            duration = float(values["duration"])
        except ValueError:
            raise ValueError(
                f"{prefix}: expected a numeric duration in '{_layout(fmt, delimiter)}', "
                f"got {values['duration']!r}"
            ) from None
    path = values["path"]
    if root:
        path = os.path.join(os.fspath(root), path)
    return AnnotationEntry(path=path, label=label, total_frames=total, duration=duration, line=line)


def _data_lines(list_file: str) -> Iterator[tuple[int, str]]:
    """(1-based line number, stripped text) of every line that is neither blank nor a ``#`` comment."""
    with open(list_file, encoding="utf-8") as fh:
        lines = fh.read().splitlines()
    for number, raw in enumerate(lines, start=1):
        text = raw.strip()
        if text and not text.startswith("#"):
            yield number, text


def read_annotations(
    list_file: str | os.PathLike,
    root: str | os.PathLike = "",
    delimiter: str | None = None,
    fmt: str = "auto",
) -> list[AnnotationEntry]:
    """Read a whole list file.

    ``fmt="auto"`` decides from the first data line: two fields mean "video"; three fields mean
    "lvu" when the path has a video extension and "frames" otherwise. ``root`` is joined in front of
    every relative path.
    """
    list_file = os.fspath(list_file)
    entries: list[AnnotationEntry] = []
    for number, text in _data_lines(list_file):
        if fmt == "auto":
            fmt = _guess_format(_split(text, delimiter))
        entries.append(parse_annotation_line(text, fmt, delimiter, root, where=list_file, line=number))
    if not entries:
        raise ValueError(f"{list_file}: annotation list has no samples")
    return entries


def read_video_paths(
    list_file: str | os.PathLike,
    root: str | os.PathLike = "",
    delimiter: str | None = None,
) -> list[str]:
    """The video paths of a list whose lines are just a path, or ``path<d>label...`` (extra fields ignored).

    For feature extraction, where labels are not needed. Fields are split like every other list
    (see the module docstring: a path containing spaces needs a non-space ``delimiter``), blank
    and ``#`` lines are skipped and ``root`` is joined in front of relative paths. Errors name the
    file and 1-based line number.
    """
    list_file = os.fspath(list_file)
    if not os.path.isfile(list_file):
        raise FileNotFoundError(f"{list_file}: video list not found")
    paths: list[str] = []
    for number, text in _data_lines(list_file):
        fields = _split(text, delimiter)
        if not fields or not fields[0]:
            raise ValueError(f"{list_file}:{number}: expected a video path first on the line, got {text!r}")
        path = fields[0]
        paths.append(os.path.join(os.fspath(root), path) if root else path)
    if not paths:
        raise ValueError(f"{list_file}: video list has no entries")
    return paths
