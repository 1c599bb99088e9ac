"""Small helpers shared by the benchmark scripts: timing, machine description, peak memory,
and rewriting one section of docs/performance.md."""

from __future__ import annotations

import gc
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def median_time(fn: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    """Median wall time of ``fn()`` in seconds (medians resist the odd descheduled run)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(max(1, repeats)):
        gc.collect()
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def median_times(fns: dict[str, Callable[[], object]], repeats: int, warmup: int = 1,
                 pause: float = 0.0) -> dict[str, float]:
    """Median wall time of each ``fn()``, the functions taking turns in every repeat, so that a
    change of load on a shared machine hits all of them alike and their ratios stay meaningful.
    ``pause``: seconds of rest before each timed call (lets spinning thread pools go idle)."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(max(1, repeats)):
        for key, fn in fns.items():
            gc.collect()
            time.sleep(pause)
            t0 = time.perf_counter()
            fn()
            times[key].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def machine_summary() -> dict[str, str]:
    """CPU model, core count, OS, Python and torch versions (for the record next to numbers)."""
    import torch

    model = platform.processor() or platform.machine()
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=30).stdout
        m = re.search(r"^Model name:\s*(.+)$", out, re.M)
        if m:
            model = m.group(1).strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return {
        "cpu": model,
        "cores": str(os.cpu_count()),
        "torch_threads": str(torch.get_num_threads()),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "os": f"{platform.system()} {platform.release()}",
    }


def load_average() -> str:
    try:
        return " / ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def run_context(machine: dict[str, str], extra: str = "", load: str | None = None) -> str:
    """``(CPU, N cores, torch X[, extra], load average a / b / c)``: what a doc table was measured on
    (``load``: the average recorded when the run ended, if it is rendered later)."""
    parts = [machine["cpu"], f"{machine['cores']} cores", f"torch {machine['torch']}"] + ([extra] if extra else [])
    return "(" + ", ".join(parts) + f", load average after the run {load or load_average()})"


def run_json_case(cmd: list[str], env: dict[str, str], what: str) -> dict:
    """Run one benchmark case in a fresh process and return the JSON of its last stdout line."""
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        print(proc.stderr[-3000:], file=sys.stderr)
        raise SystemExit(f"case {what} failed (exit {proc.returncode})")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def reset_peak_rss() -> bool:
    """Reset this process's VmHWM to its current RSS (Linux >= 4.0); False if unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def rss_kib() -> tuple[int, int]:
    """(VmRSS, VmHWM) of this process in KiB, from /proc/self/status."""
    vals = {}
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(("VmRSS:", "VmHWM:")):
                key, val = line.split(":", 1)
                vals[key] = int(val.split()[0])
    return vals["VmRSS"], vals["VmHWM"]


def update_doc_section(path: Path, heading: str, body: str) -> None:
    """Replace the section that starts with ``heading`` (up to the next heading of the same or a
    higher level) in a Markdown file, or append it; other sections are left untouched."""
    level = len(heading) - len(heading.lstrip("#"))
    text = path.read_text() if path.exists() else "# Performance\n"
    section = f"{heading}\n\n{body.strip()}\n"
    lines = text.splitlines(keepends=True)
    start = next((i for i, ln in enumerate(lines) if ln.rstrip() == heading), None)
    if start is None:
        new = text.rstrip("\n") + "\n\n" + section
    else:
        end = len(lines)
        for j in range(start + 1, len(lines)):
            m = re.match(r"^(#+)\s", lines[j])
            if m and len(m.group(1)) <= level:
                end = j
                break
        tail = "".join(lines[end:])
        new = "".join(lines[:start]) + section + ("\n" + tail if tail else "")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(new)
