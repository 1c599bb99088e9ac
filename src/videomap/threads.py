"""CPU thread policy: how many compute threads, and how idle OpenMP threads wait.

Two things make a CPU job collapse when it shares the machine (with its own data-loader workers,
an evaluation process, another user):

* OpenMP's default wait policy spins: a thread that reaches a barrier early burns its core for a
  while instead of sleeping. When a neighbour holds one of "our" cores, every parallel region
  waits for the descheduled thread while the others spin against the neighbour. Passive waiting
  (``OMP_WAIT_POLICY=PASSIVE``) makes them sleep instead. libgomp reads the variable once, when
  it is loaded, so it has to be in the environment before ``import torch``.
* More compute threads than free cores: the count should come from the CPUs this process may
  run on (``os.sched_getaffinity``, which respects ``taskset`` and container CPU sets, unlike
  ``os.cpu_count``), less the cores the data-loader workers keep busy.

Passive waiting is not free: alone on the machine, spinning threads train about a quarter faster
here (docs/performance.md). So the ``videomap`` command measures, before anything imports torch,
whether other work already keeps CPUs busy and only then sets ``OMP_WAIT_POLICY=PASSIVE``
(:func:`set_wait_policy`); a neighbour that starts later is not seen. It calls
:func:`configure_threads` for each job. Library users (and the benchmarks) call
:func:`set_wait_policy` or export the variable themselves before ``import torch``, then call
:func:`configure_threads`. Explicit settings win: an ``OMP_WAIT_POLICY`` / ``OMP_NUM_THREADS``
already in the environment, or ``train.threads`` in a job.

This module imports no torch (and sits outside ``engine/``, whose package imports torch), so
the wait policy can be chosen before the OpenMP runtime is loaded.
"""

from __future__ import annotations

import logging
import os
import time

log = logging.getLogger(__name__)


def busy_cpus(interval: float = 0.2) -> float:
    """How many CPUs other work keeps busy right now (from /proc/stat over ``interval``); 0 where
    that cannot be read. Reads no torch, so it can run before OpenMP is loaded."""
    def snapshot() -> tuple[int, int]:
        with open("/proc/stat") as f:
            vals = [int(v) for v in f.readline().split()[1:]]
        return sum(vals), vals[3] + (vals[4] if len(vals) > 4 else 0)  # total, idle + iowait

    try:
        total0, idle0 = snapshot()
        time.sleep(interval)
        total1, idle1 = snapshot()
    except (OSError, ValueError, IndexError):
        return 0.0
    return (1.0 - (idle1 - idle0) / max(1, total1 - total0)) * (os.cpu_count() or 1)


def set_wait_policy() -> str:
    """Pick OpenMP's wait policy before torch loads it (it is read once, at start-up).

    Spinning threads are fastest on an idle machine but collapse next to a busy neighbour
    (docs/performance.md measures both), so: ``PASSIVE`` when other work already keeps at least
    half a CPU busy, the runtime's default otherwise. A value the user exported wins. A neighbour
    that starts later is not seen."""
    if "OMP_WAIT_POLICY" not in os.environ and busy_cpus() >= 0.5:
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    return os.environ.get("OMP_WAIT_POLICY", "default")


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask), not the machine's count."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return max(1, os.cpu_count() or 1)


def default_threads(num_workers: int = 0) -> int:
    """Compute threads for a job with ``num_workers`` data-loader processes: this process's share
    of the available CPUs (``torchrun`` starts ``LOCAL_WORLD_SIZE`` of them per machine), less one
    per worker (decoding keeps a worker's core busy), at least one."""
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
    return max(1, available_cpus() // max(1, local) - max(0, num_workers))


def configure_threads(num_workers: int = 0, requested: int | None = None) -> int:
    """Set torch's intra-op threads (also used by the C scan kernel) and return the count.

    ``requested`` (a job's ``train.threads``) wins; then ``OMP_NUM_THREADS`` if the user exported
    it; otherwise :func:`default_threads`.
    """
    import torch

    if requested is not None and requested > 0:
        n, why = requested, "train.threads"
    elif os.environ.get("OMP_NUM_THREADS", "").isdigit():
        n, why = int(os.environ["OMP_NUM_THREADS"]), "OMP_NUM_THREADS"
    else:
        n = default_threads(num_workers)
        why = f"{available_cpus()} available CPUs, {num_workers} data-loader workers"
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    log.info("compute threads: %d (%s); OpenMP wait policy %s", n, why, os.environ.get("OMP_WAIT_POLICY", "default"))
    return n
