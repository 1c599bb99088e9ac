"""Tests for videomap.engine: optimizer groups, schedule, accumulation, NaN guard, logging,
crash-safe checkpoints with exact resumption, and 2-process DDP/FSDP on CPU."""

from __future__ import annotations

import json
import logging
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from tests.engine_scripts import toy
from videomap.engine import (
    NonFiniteLossError,
    ShardedEvalSampler,
    TrainConfig,
    Trainer,
    build_optimizer,
    capture_rng_state,
    cosine_schedule,
    find_latest_checkpoint,
    is_complete_checkpoint,
    list_checkpoints,
    load_latest_train_state,
    load_train_state,
    resolve_amp,
    restore_rng_state,
    scale_lr,
)
from videomap.engine.checkpoint import MARKER_FILE, MODEL_FILE, STATE_FILE
from videomap.io import load_safetensors, save_safetensors

SCRIPTS = Path(__file__).resolve().parent / "engine_scripts"
REPO = Path(__file__).resolve().parents[1]


def _cfg(tmp_path: Path, **kw) -> TrainConfig:
    base = dict(
        epochs=2, batch_size=4, lr=5e-3, min_lr=1e-4, warmup_steps=2, weight_decay=0.05,
        output_dir=str(tmp_path), seed=3, log_every=2, plot=False, tensorboard=False, distributed="none",
    )
    base.update(kw)
    return TrainConfig(**base)


def _quiet_fit(trainer: Trainer, capsys=None, **kw):
    out = trainer.fit(**kw)
    if capsys is not None:
        capsys.readouterr()
    return out


def _subprocess_env() -> dict[str, str]:
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = "1"
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), env.get("PYTHONPATH", "")])
    return env


# --------------------------------------------------------------------------- optimizer / schedule


class _GroupsModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.pos_embed = nn.Parameter(torch.zeros(1, 4, 8))
        self.temporal_pos_embedding = nn.Parameter(torch.zeros(1, 2, 8))
        self.cls_token = nn.Parameter(torch.zeros(1, 1, 8))
        self.mask_token = nn.Parameter(torch.zeros(1, 1, 8))
        self.mixer = nn.Module()
        self.mixer.A_log = nn.Parameter(torch.zeros(8, 4))
        self.mixer.A_b_log = nn.Parameter(torch.zeros(8, 4))
        self.mixer.A_log._no_weight_decay = True  # flagged where created, as the Mamba mixer does
        self.mixer.A_b_log._no_weight_decay = True
        self.mixer.A_unflagged = nn.Parameter(torch.zeros(8, 4))  # the engine matches no names: decays
        self.mixer.D = nn.Parameter(torch.ones(8))
        self.mixer.D_b = nn.Parameter(torch.ones(8))
        self.mixer.D_proj = nn.Linear(8, 8)  # 'D_proj.weight' must still decay
        self.Dense = nn.Linear(8, 8)  # 'Dense.weight' must still decay
        self.norm = nn.LayerNorm(8)
        self.special = nn.Parameter(torch.zeros(3, 3))
        self.frozen = nn.Parameter(torch.zeros(3, 3), requires_grad=False)
        self.head = nn.Linear(8, 2)

    def no_weight_decay(self):
        return {"special", "pos_embed", "temporal_pos_embedding", "cls_token", "mask_token"}


class _LayeredModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(4, 4)
        self.blocks = nn.ModuleList([nn.Linear(4, 4) for _ in range(3)])
        self.head = nn.Linear(4, 2)
        self.modes_asked: set[str] = set()

    def num_lr_layers(self) -> int:
        return 5

    def lr_layer_id(self, name: str, mode: str = "per_block") -> int:
        self.modes_asked.add(mode)
        if mode == "released" and not name.startswith("embed"):
            return 4  # a stand-in grouping: only the embedding decays
        if name.startswith("embed"):
            return 0
        if name.startswith("blocks."):
            return int(name.split(".")[1]) + 1
        return 4


def _group_of(opt: torch.optim.Optimizer, name: str) -> dict:
    return next(g for g in opt.param_groups if name in g["param_names"])


def test_no_decay_groups():
    opt = build_optimizer(_GroupsModel(), lr=1e-3, weight_decay=0.1)
    no_decay = {n for g in opt.param_groups if g["weight_decay"] == 0.0 for n in g["param_names"]}
    decay = {n for g in opt.param_groups if g["weight_decay"] == 0.1 for n in g["param_names"]}
    assert no_decay == {
        "pos_embed", "temporal_pos_embedding", "cls_token", "mask_token", "mixer.A_log", "mixer.A_b_log",
        "mixer.D", "mixer.D_b", "mixer.D_proj.bias", "Dense.bias", "norm.weight", "norm.bias", "special",
        "head.bias",
    }
    assert decay == {"mixer.D_proj.weight", "Dense.weight", "head.weight", "mixer.A_unflagged"}
    assert "frozen" not in no_decay | decay
    assert all(g["lr_scale"] == 1.0 and g["lr"] == 1e-3 for g in opt.param_groups)


def test_layer_decay_scaling_and_missing_methods():
    model = _LayeredModel()
    opt = build_optimizer(model, lr=1e-3, weight_decay=0.05, layer_decay=0.5, layer_decay_mode="per_block")
    assert model.modes_asked == {"per_block"}
    expected = [("embed.weight", 0), ("blocks.0.weight", 1), ("blocks.2.bias", 3), ("head.weight", 4)]
    for name, layer in expected:
        g = _group_of(opt, name)
        assert g["lr_scale"] == pytest.approx(0.5 ** (4 - layer))
        assert g["base_lr"] == pytest.approx(1e-3 * 0.5 ** (4 - layer))
    # the mode is the model's business: the engine passes it on (default: the released grouping)
    model = _LayeredModel()
    opt = build_optimizer(model, lr=1e-3, weight_decay=0.05, layer_decay=0.5)
    assert model.modes_asked == {"released"}
    assert _group_of(opt, "blocks.0.weight")["lr_scale"] == 1.0 and _group_of(opt, "embed.weight")["lr_scale"] == 0.5**4
    with pytest.raises(ValueError, match="layer_decay_mode"):
        build_optimizer(_LayeredModel(), lr=1e-3, layer_decay=0.5, layer_decay_mode="per_layer")
    with pytest.raises(ValueError, match="layer_decay_mode"):
        TrainConfig(layer_decay_mode="per_layer")
    with pytest.raises(ValueError, match="lr_layer_id"):
        build_optimizer(nn.Linear(3, 3), lr=1e-3, layer_decay=0.75)


def test_cosine_schedule_values(tmp_path):
    total, warm = 100, 10
    assert cosine_schedule(0, total, warm) == 0.0
    assert cosine_schedule(5, total, warm) == pytest.approx(0.5)
    assert cosine_schedule(warm, total, warm) == pytest.approx(1.0)
    assert cosine_schedule(total, total, warm, min_factor=0.1) == pytest.approx(0.1)
    assert cosine_schedule(total - 1, total, warm, min_factor=0.1) == pytest.approx(0.1, abs=1e-3)
    assert cosine_schedule(0, total, 0) == 1.0
    assert scale_lr(1.5e-4, 512) == pytest.approx(3e-4)

    # Through the trainer: per-group lr = base_lr * lr_scale * factor, ending near min_lr.
    cfg = _cfg(tmp_path, epochs=1, batch_size=4, lr=1e-2, min_lr=1e-4, warmup_steps=3, layer_decay=0.5)
    model = _LayeredModel()
    ds = torch.utils.data.TensorDataset(torch.randn(40, 4), torch.randint(0, 2, (40,)))
    trainer = Trainer(model, lambda m, b: nn.functional.cross_entropy(m.head(m.embed(b[0])), b[1]), ds, cfg)
    sched = trainer.scheduler
    assert model.modes_asked == {"released"}  # the trainer passes train.layer_decay_mode on
    assert trainer.total_steps == 10
    assert sched.apply(0) == 0.0
    assert sched.apply(3) == pytest.approx(1.0)
    head, embed = _group_of(trainer.optimizer, "head.weight"), _group_of(trainer.optimizer, "embed.weight")
    assert head["lr"] == pytest.approx(1e-2) and embed["lr"] == pytest.approx(1e-2 * 0.5**4)
    sched.apply(10)
    assert head["lr"] == pytest.approx(1e-4) and embed["lr"] == pytest.approx(1e-4 * 0.5**4)


def test_scale_lr_and_amp_fallback():
    with pytest.warns(UserWarning, match="fp16"):
        assert resolve_amp("fp16", torch.device("cpu")) == (None, False)
    assert resolve_amp("bf16", torch.device("cpu")) == (torch.bfloat16, False)
    assert resolve_amp("none", torch.device("cpu")) == (None, False)
    with pytest.raises(ValueError):
        TrainConfig(amp="fp8")


# --------------------------------------------------------------------------- training loop


def test_grad_accumulation_matches_large_batch(tmp_path, capsys):
    ds = toy.NoisyDataset(48)
    results = []
    for name, bs, accum in [("big", 8, 1), ("accum", 4, 2)]:
        cfg = _cfg(tmp_path / name, batch_size=bs, accum_steps=accum, clip_grad=0.5, max_steps=8)
        trainer = Trainer(toy.make_model(dropout=0.0), toy.loss_fn, ds, cfg)
        _quiet_fit(trainer, capsys)
        assert trainer.global_step == 8
        results.append(trainer.unwrapped_model.state_dict())
    for k in results[0]:
        torch.testing.assert_close(results[0][k], results[1][k], rtol=0, atol=1e-5)


def test_nan_guard_names_step_and_writes_no_checkpoint(tmp_path, capsys):
    calls = 0

    def loss_fn(model, batch):
        nonlocal calls
        calls += 1
        loss, metrics = toy.loss_fn(model, batch)
        return (loss * float("nan") if calls == 6 else loss), metrics  # step 3, micro-batch 1

    cfg = _cfg(tmp_path, batch_size=4, accum_steps=2, save_every_steps=1, keep_last=None)
    trainer = Trainer(toy.make_model(), loss_fn, toy.NoisyDataset(48), cfg)
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss \(nan\) at global step 3") as info:
        _quiet_fit(trainer, capsys)
    assert info.value.step == 3
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint-1", "checkpoint-2"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp")]
    assert (tmp_path / "latest.txt").read_text().strip() == "checkpoint-2"
    # The surviving checkpoint holds finite weights.
    weights, _ = load_train_state(tmp_path / "checkpoint-2")
    assert all(torch.isfinite(t).all() for t in weights.values())


def test_metrics_files_and_plot(tmp_path, caplog):
    cfg = _cfg(tmp_path, epochs=2, plot=True, log_every=3, ema_decay=0.5, amp="bf16")
    trainer = Trainer(toy.make_model(0.1), toy.loss_fn, toy.NoisyDataset(48), cfg,
                      evaluate_fn=lambda m: {"accuracy": 0.25 + 0.1 * trainer.epoch})
    with caplog.at_level(logging.INFO, logger="videomap"):
        summary = trainer.fit()
    printed = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("videomap.engine"))
    assert "[train] epoch 1/2 step 3/24" in printed and "clips/s" in printed and "eta" in printed
    assert summary["eval"]["accuracy"] == pytest.approx(0.45) and "ema_accuracy" in summary["eval"]
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["split"] == "train"]
    evals = [r for r in records if r["split"] == "eval"]
    assert [r["step"] for r in train] == [3, 6, 9, 12, 15, 18, 21, 24]
    assert all(math.isfinite(r["loss"]) and r["lr"] > 0 for r in train)
    assert [r["step"] for r in evals] == [12, 24]
    header = (tmp_path / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"split", "step", "loss", "lr", "acc", "accuracy", "ema_accuracy"} <= set(header)
    png = tmp_path / "curves.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000


# --------------------------------------------------------------------------- checkpoints


def test_safetensors_tied_and_non_contiguous(tmp_path):
    w = torch.randn(4, 6)
    sd = {"emb.weight": w, "head.weight": w, "t": torch.randn(6, 4).t(), "slice": w[1:3],
          "b": torch.arange(3)}
    save_safetensors(sd, tmp_path / "w.safetensors")
    back = load_safetensors(tmp_path / "w.safetensors")
    assert set(back) == set(sd)
    for k in sd:
        assert torch.equal(back[k], sd[k])
    assert back["emb.weight"] is back["head.weight"]


def test_rng_state_roundtrip_weights_only(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    np.random.normal()  # leave a cached gaussian in the NumPy state
    state = capture_rng_state()
    expected = (random.random(), np.random.normal(), torch.rand(2))
    torch.save(state, tmp_path / "rng.pt")
    restore_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    got = (random.random(), np.random.normal(), torch.rand(2))
    assert got[0] == expected[0] and got[1] == expected[1] and torch.equal(got[2], expected[2])


def test_partial_and_corrupted_checkpoints_are_never_loaded(tmp_path, capsys, caplog):
    cfg = _cfg(tmp_path, epochs=1, save_every_steps=2, keep_last=None, max_steps=4)
    Trainer(toy.make_model(), toy.loss_fn, toy.NoisyDataset(48), cfg).fit()
    capsys.readouterr()
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint-2", "checkpoint-4"]
    good = tmp_path / "checkpoint-4"

    # A save killed while writing: hidden temp dir with a truncated file.
    partial = tmp_path / ".tmp-checkpoint-6-12345"
    partial.mkdir()
    (partial / MODEL_FILE).write_bytes((good / MODEL_FILE).read_bytes()[:100])
    # A directory with both files but without the completion marker.
    shutil.copytree(good, tmp_path / "checkpoint-9")
    (tmp_path / "checkpoint-9" / MARKER_FILE).unlink()
    # A truncated state file (size no longer matches the marker).
    shutil.copytree(good, tmp_path / "checkpoint-8")
    with open(tmp_path / "checkpoint-8" / STATE_FILE, "r+b") as f:
        f.truncate(50)
    # Same size as recorded, but garbage bytes: only detectable by failing to load.
    shutil.copytree(good, tmp_path / "checkpoint-7")
    size = (good / STATE_FILE).stat().st_size
    (tmp_path / "checkpoint-7" / STATE_FILE).write_bytes(b"\x00garbage" * (size // 8) + b"x" * (size % 8))
    (tmp_path / "latest.txt").write_text("checkpoint-9\n")

    assert not is_complete_checkpoint(tmp_path / "checkpoint-9")
    assert not is_complete_checkpoint(tmp_path / "checkpoint-8")
    assert find_latest_checkpoint(tmp_path).name == "checkpoint-7"
    with pytest.warns(UserWarning, match="checkpoint-7"):
        path, _, state = load_latest_train_state(tmp_path)
    assert path == good and state["global_step"] == 4

    cfg2 = _cfg(tmp_path, epochs=1, save_every_steps=2, keep_last=None, max_steps=6)
    trainer = Trainer(toy.make_model(), toy.loss_fn, toy.NoisyDataset(48), cfg2)
    with pytest.warns(UserWarning, match="skipping unreadable"), caplog.at_level(logging.INFO, logger="videomap"):
        trainer.fit(resume=True)
    assert trainer.resumed_from == good and trainer.global_step == 6
    assert any("resumed from" in r.getMessage() for r in caplog.records)
    assert not partial.exists()  # leftovers of interrupted saves are cleaned up
    assert (tmp_path / "latest.txt").read_text().strip() == "checkpoint-6"
    # A fresh (non-resume) run refuses to mix its checkpoints with an existing run's.
    with pytest.raises(FileExistsError, match="resume=True"):
        Trainer(toy.make_model(), toy.loss_fn, toy.NoisyDataset(48), cfg2).fit()


# --------------------------------------------------------------------------- exact resume after SIGKILL


def _tensors_equal(a: dict, b: dict) -> None:
    assert set(a) == set(b)
    for k in a:
        if isinstance(a[k], dict):
            _tensors_equal(a[k], b[k])
        elif isinstance(a[k], torch.Tensor):
            assert torch.equal(a[k], b[k]), k


def _reference_run(out: Path, **kw) -> Trainer:
    """In-process run of the launched script's recipe, single-threaded like the script."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        trainer = Trainer(toy.make_model(kw.pop("dropout")), toy.loss_fn, toy.NoisyDataset(48),
                          toy.make_config(str(out), **kw), evaluate_fn=toy.make_eval_fn(11))
        trainer.fit()
    finally:
        torch.set_num_threads(threads)
    return trainer


def test_sigkill_then_resume_matches_uninterrupted_run(tmp_path, capsys):
    script = [sys.executable, str(SCRIPTS / "train_toy.py"), "--epochs", "3", "--batch", "4", "--accum", "2",
              "--save-every", "4", "--dropout", "0.2", "--ema", "0.9"]
    ref_dir, run_dir = tmp_path / "ref", tmp_path / "run"
    run_dir.mkdir()
    env = _subprocess_env()
    # 48 samples / (4 x 2) = 6 steps per epoch; the victim blocks inside step 10 (epoch 1, between
    # two accumulation micro-batches), after checkpoint-8 was written, and is then SIGKILLed.
    victim = subprocess.Popen([*script, "--out", str(run_dir), "--stall-after-calls", "19"], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        _reference_run(ref_dir, dropout=0.2, epochs=3, batch=4, accum=2, save_every=4, ema=0.9)
        capsys.readouterr()
        deadline = time.monotonic() + 90
        while not (run_dir / "stalled").exists():
            assert victim.poll() is None, victim.stdout.read()
            assert time.monotonic() < deadline, "victim run never reached the stall point"
            time.sleep(0.05)
        assert (run_dir / "latest.txt").read_text().strip() == "checkpoint-8"
        victim.send_signal(signal.SIGKILL)
    finally:
        victim.kill()
        victim.wait()
    assert victim.returncode == -signal.SIGKILL
    resumed = subprocess.run([*script, "--out", str(run_dir), "--resume"], env=env,
                             capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "resumed from" in resumed.stdout and "at step 8 (epoch 1, step 2 of the epoch)" in resumed.stdout

    w_ref, s_ref = load_train_state(ref_dir / "checkpoint-18")
    w_run, s_run = load_train_state(run_dir / "checkpoint-18")
    _tensors_equal(w_ref, w_run)
    _tensors_equal(s_ref["ema"], s_run["ema"])
    _tensors_equal(s_ref["optimizer"]["state"], s_run["optimizer"]["state"])
    assert s_ref["rng"][0]["torch"].equal(s_run["rng"][0]["torch"])
    assert [g["lr"] for g in s_ref["optimizer"]["param_groups"]] == \
        [g["lr"] for g in s_run["optimizer"]["param_groups"]]

    # The killed run's extra log lines were dropped: the metrics describe one trajectory.
    def train_steps(d: Path) -> list[int]:
        recs = [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()]
        return [r["step"] for r in recs if r["split"] == "train"]

    assert train_steps(run_dir) == train_steps(ref_dir) == [5, 10, 15, 18]


# --------------------------------------------------------------------------- distributed


@pytest.mark.parametrize(("n", "world"), [(0, 2), (1, 2), (5, 2), (11, 2), (11, 3), (13, 4), (8, 4)])
def test_eval_sampler_counts_each_sample_once(n, world):
    shards = [list(ShardedEvalSampler(n, num_replicas=world, rank=r)) for r in range(world)]
    flat = [i for s in shards for i in s]
    assert sorted(flat) == list(range(n))
    assert max(len(s) for s in shards) - min(len(s) for s in shards) <= 1
    lengths = [len(ShardedEvalSampler(n, num_replicas=world, rank=r)) for r in range(world)]
    assert lengths == [len(s) for s in shards]


def test_torchrun_ddp_and_fsdp_match_single_process(tmp_path, capsys):
    torchrun = Path(sys.executable).with_name("torchrun")
    if not torchrun.exists():
        pytest.skip("torchrun not found next to the interpreter")
    out = tmp_path / "dist"
    cmd = [str(torchrun), "--standalone", "--nproc-per-node=2", str(SCRIPTS / "train_toy.py"),
           "--out", str(out), "--modes", "ddp,fsdp,ddp:0.3", "--epochs", "2", "--batch", "2", "--accum", "2",
           "--dropout", "0", "--ema", "0", "--resume-check", "8"]
    proc = subprocess.Popen(cmd, env=_subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)

    # Meanwhile, the single-process reference: global batch 8 = 1 process x batch 8.
    ref = _reference_run(tmp_path / "single", dropout=0.0, epochs=2, batch=8, accum=1, ema=0.0)
    capsys.readouterr()
    ref_state = ref.unwrapped_model.state_dict()

    log, _ = proc.communicate(timeout=240)
    assert proc.returncode == 0, log
    for mode in ("ddp", "fsdp", "ddp_drop0.3"):
        weights, first = load_train_state(out / mode / "checkpoint-12")
        if "drop" not in mode:  # with dropout the ranks draw different masks than one process would
            assert set(weights) == set(ref_state)
            for k, v in ref_state.items():
                torch.testing.assert_close(weights[k], v, rtol=0, atol=1e-5, msg=f"{mode}: {k}")
        evals = [json.loads(x) for x in (out / mode / "metrics.jsonl").read_text().splitlines()]
        evals = [r for r in evals if r["split"] == "eval"]
        assert evals and all(r["seen_min"] == 1 and r["seen_max"] == 1 and r["seen_sum"] == 11 for r in evals)
        # Resuming from step 8 reproduces step 12 exactly (per-rank RNG states are restored).
        w_again, again = load_train_state(out / f"{mode}-resumed" / "checkpoint-12")
        _tensors_equal(weights, w_again)
        _tensors_equal(first["optimizer"]["state"], again["optimizer"]["state"])
        assert len(first["rng"]) == 2


def test_worker_processes_do_not_change_the_trajectory(tmp_path, capsys):
    states = []
    for workers in (0, 2):
        cfg = _cfg(tmp_path / f"w{workers}", epochs=2, num_workers=workers, max_steps=14)
        trainer = Trainer(toy.make_model(0.2), toy.loss_fn, toy.NoisyDataset(48), cfg)
        _quiet_fit(trainer, capsys)
        states.append(trainer.unwrapped_model.state_dict())
    _tensors_equal(states[0], states[1])
