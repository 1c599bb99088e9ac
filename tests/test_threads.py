"""CPU thread policy: thread counts from the affinity mask and workers; the OpenMP wait policy is
chosen (by the CLI and the benchmarks) before torch, and with it the OpenMP runtime, is loaded."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from videomap import threads


@pytest.fixture
def restore_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def test_default_threads_use_the_affinity_mask_less_workers_and_local_ranks(monkeypatch):
    monkeypatch.setattr(threads.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 4, 5, 6, 7})
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert threads.available_cpus() == 8
    assert threads.default_threads(0) == 8 and threads.default_threads(3) == 5 and threads.default_threads(20) == 1
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")  # two torchrun processes share the 8 CPUs
    assert threads.default_threads(1) == 3


def test_configure_threads_precedence(monkeypatch, restore_threads):
    monkeypatch.setattr(threads.os, "sched_getaffinity", lambda pid: {0, 1, 2})
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert threads.configure_threads(num_workers=1) == 2 and torch.get_num_threads() == 2
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert threads.configure_threads(num_workers=0) == 1
    assert threads.configure_threads(num_workers=0, requested=3) == 3 and torch.get_num_threads() == 3


def test_cli_imports_no_torch_before_choosing_the_wait_policy():
    code = ("import sys; import videomap.cli; assert 'torch' not in sys.modules, 'cli imported torch'; "
            "from videomap.cli import main; sys.exit(main(['models']))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr


def test_thread_policy_module_imports_no_torch():
    """The wait policy must be set before torch loads OpenMP, so its module may not import torch
    (``videomap.engine`` does, which is why the module is not in that package)."""
    code = ("import sys; import videomap.threads as t; assert 'torch' not in sys.modules, sorted(sys.modules); "
            "t.set_wait_policy(); t.default_threads(0); assert 'torch' not in sys.modules")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr


def test_benchmarks_do_not_import_the_cli():
    bench = Path(__file__).resolve().parent.parent / "benchmarks"
    assert not [p.name for p in sorted(bench.glob("*.py")) if "videomap.cli" in p.read_text(encoding="utf-8")]


def test_wait_policy_is_passive_only_next_to_busy_cpus(monkeypatch):
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    monkeypatch.setattr(threads, "busy_cpus", lambda interval=0.2: 0.1)
    assert threads.set_wait_policy() == "default" and "OMP_WAIT_POLICY" not in os.environ
    monkeypatch.setattr(threads, "busy_cpus", lambda interval=0.2: 1.0)
    assert threads.set_wait_policy() == "PASSIVE"
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")  # a value the user exported wins
    assert threads.set_wait_policy() == "ACTIVE"
    assert 0.0 <= threads.busy_cpus(0.05) <= (os.cpu_count() or 1)


def test_train_threads_is_validated():
    from videomap.config import load_config

    with pytest.raises(ValueError, match="threads"):
        load_config(None, ["task=finetune", "train.threads=0"])
