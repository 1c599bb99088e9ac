"""Progress lines, metrics files (JSONL + CSV), optional TensorBoard, and end-of-run plots.

Progress is one plain line per log window (rate and ETA included), emitted through ``logging``
by the trainer: readable in CI logs and in files captured from ``torchrun``, and silenced or
redirected by a library caller like any other logger. Only rank 0 should construct a
:class:`MetricsWriter`.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import os
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from ..io import atomic_write

JSONL_FILE = "metrics.jsonl"
CSV_FILE = "metrics.csv"
PLOT_FILE = "curves.png"


class AverageMeter:
    """Running sum/count since the last :meth:`reset` (one log window)."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.total = 0.0
        self.count = 0

    def update(self, value: float, n: int = 1) -> None:
        self.total += float(value) * n
        self.count += n

    @property
    def avg(self) -> float:
        return self.total / self.count if self.count else float("nan")


class MeterGroup:
    """Named :class:`AverageMeter` s, created on first use."""

    def __init__(self) -> None:
        self.meters: dict[str, AverageMeter] = defaultdict(AverageMeter)

    def update(self, values: dict[str, float], n: int = 1) -> None:
        for k, v in values.items():
            self.meters[k].update(v, n)

    def averages(self) -> dict[str, float]:
        return {k: m.avg for k, m in sorted(self.meters.items()) if m.count}

    def reset(self) -> None:
        for m in self.meters.values():
            m.reset()


def format_seconds(seconds: float) -> str:
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}"


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e4):
            return f"{value:.3e}"
        return f"{value:.4f}"
    return str(value)


def progress_line(
    step: int,
    total_steps: int,
    epoch: int,
    epochs: int,
    metrics: dict[str, float],
    lr: float,
    clips_per_s: float,
    eta_s: float,
) -> str:
    """One log line: position, loss first, then the other metrics, lr, throughput and ETA."""
    pct = 100.0 * step / max(1, total_steps)
    parts = [f"[train] epoch {epoch + 1}/{epochs} step {step}/{total_steps} ({pct:.0f}%)"]
    if "loss" in metrics:
        parts.append(f"loss {_fmt(metrics['loss'])}")
    parts += [f"{k} {_fmt(v)}" for k, v in metrics.items() if k != "loss"]
    parts += [f"lr {lr:.3e}", f"clips/s {clips_per_s:.1f}", f"eta {format_seconds(eta_s)}"]
    return "  ".join(parts)


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Records of a run's ``metrics.jsonl`` (``path`` is the file or the run directory); [] if none.

    A last line cut short by a crash is skipped.
    """
    path = Path(path)
    if path.is_dir():
        path = path / JSONL_FILE
    records: list[dict[str, Any]] = []
    if not path.exists():
        return records
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut short by a crash
                continue
    return records


class MetricsWriter:
    """Appends records to ``metrics.jsonl`` and mirrors them into ``metrics.csv`` (and TensorBoard).

    On resume, records logged after the checkpoint's step (by the run that crashed) are dropped
    so that the files and plots describe one consistent trajectory.
    """

    def __init__(
        self, output_dir: str | os.PathLike, resume_step: int | None = None, tensorboard: bool = True
    ) -> None:
        self.dir = Path(output_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.jsonl_path = self.dir / JSONL_FILE
        self.csv_path = self.dir / CSV_FILE
        if resume_step is None:
            self.records: list[dict[str, Any]] = []
        else:
            self.records = [r for r in read_metrics(self.jsonl_path) if int(r.get("step", 0)) <= resume_step]
        self._fields: list[str] = []
        for r in self.records:
            self._add_fields(r)
        self._rewrite_jsonl()
        self._rewrite_csv()
        self._tb = None
        if tensorboard and importlib.util.find_spec("tensorboard") is not None:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(self.dir / "tensorboard"), purge_step=resume_step)

    def _add_fields(self, record: dict[str, Any]) -> bool:
        new = [k for k in record if k not in self._fields]
        self._fields.extend(new)
        return bool(new)

    def _rewrite_jsonl(self) -> None:
        with atomic_write(self.jsonl_path) as f:
            for r in self.records:
                f.write(json.dumps(r) + "\n")

    def _rewrite_csv(self) -> None:
        with atomic_write(self.csv_path, newline="") as f:
            writer = csv.DictWriter(f, fieldnames=self._fields)
            writer.writeheader()
            writer.writerows(self.records)

    def write(self, record: dict[str, Any]) -> None:
        """Log one record; must contain ``step`` and ``split`` ("train" / "eval")."""
        record = {k: (float(v) if hasattr(v, "item") else v) for k, v in record.items()}
        self.records.append(record)
        with open(self.jsonl_path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self._add_fields(record):
            self._rewrite_csv()  # new column: rewrite so every row has the full header
        else:
            with open(self.csv_path, "a", newline="") as f:
                csv.DictWriter(f, fieldnames=self._fields).writerow(record)
        if self._tb is not None:
            split = record.get("split", "train")
            for k, v in record.items():
                if k not in ("step", "split", "epoch") and isinstance(v, (int, float)):
                    self._tb.add_scalar(f"{split}/{k}", v, int(record["step"]))

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def plot_curves(
    records: list[dict[str, Any]],
    path: str | os.PathLike,
    lr_schedule: list[float] | None = None,
) -> Path | None:
    """Loss, lr and every eval metric against the optimizer step, one panel each, as a PNG.

    ``lr_schedule[s]`` (the lr of optimizer step ``s + 1``) draws the whole schedule, warm-up
    included, which the sparse logged points would miss. ``ema_<name>`` eval metrics share the
    panel of ``<name>``. Uses the Agg canvas directly so no global matplotlib backend is changed.
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:  # pragma: no cover - matplotlib is a dependency, but keep training alive
        return None
    train = [r for r in records if r.get("split") == "train"]
    evals = [r for r in records if r.get("split") == "eval"]
    eval_keys = sorted({k for r in evals for k, v in r.items()
                        if k not in ("step", "epoch", "split", "time") and isinstance(v, (int, float))})
    panels: list[tuple[str, list[tuple[str, list[dict[str, Any]], str]]]] = []
    if any("loss" in r for r in train):
        panels.append(("train loss", [("loss", train, "loss")]))
    if lr_schedule or any("lr" in r for r in train):
        panels.append(("learning rate", [("logged", train, "lr")]))
    for k in eval_keys:
        if k.startswith("ema_") and k[4:] in eval_keys:
            continue
        lines = [(k, evals, k)]
        if f"ema_{k}" in eval_keys:
            lines.append((f"ema_{k}", evals, f"ema_{k}"))
        panels.append((f"eval {k}", lines))
    if not panels:
        return None
    cols = min(3, len(panels))
    rows = (len(panels) + cols - 1) // cols
    fig = Figure(figsize=(4.5 * cols, 3.2 * rows))
    FigureCanvasAgg(fig)
    for i, (title, lines) in enumerate(panels):
        ax = fig.add_subplot(rows, cols, i + 1)
        if title == "learning rate" and lr_schedule:
            ax.plot(range(1, len(lr_schedule) + 1), lr_schedule, label="schedule", color="0.6")
        for label, rs, key in lines:
            pts = [(r["step"], r[key]) for r in rs if isinstance(r.get(key), (int, float))]
            xs, ys = [p[0] for p in pts], [p[1] for p in pts]
            ax.plot(xs, ys, marker="o" if len(xs) < 30 else None, markersize=3, label=label)
            if key == "loss" and ys and min(ys) > 0 and max(ys) / min(ys) > 50:
                ax.set_yscale("log")
        if len(lines) > 1 or (title == "learning rate" and lr_schedule):
            ax.legend(fontsize=8)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    return path


class Timer:
    """Wall time since construction, for throughput and ETA."""

    def __init__(self) -> None:
        self.start = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.start
