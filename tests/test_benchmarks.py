"""The benchmarks run end to end in their quick modes (tiny sizes)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import yaml

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "sample_efficiency.py"


def test_sample_efficiency_quick(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("sample_efficiency", BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    arms = ["frame", "token", "video", "scratch", "frame:loss_on=target_hidden,cls_weight=0",
            "frame:attn_wiring=branch"]
    args = ["--quick", "--fractions", "0.25", "1.0", "--ablation-fractions", "0.25", "--out", str(tmp_path)]
    assert mod.main(args + ["--arms", *arms]) == 0
    res = json.loads((tmp_path / "sample_efficiency.json").read_text())
    assert res["counts"] == [30, 120] and list(res["results"]) == arms
    for arm, by_n in res["results"].items():
        assert set(map(int, by_n)) == ({30} if ":" in arm else {30, 120})
        assert all(len(v) == 1 and 0 <= v[0] <= 100 for v in by_n.values())
    assert (tmp_path / "sample_efficiency.png").stat().st_size > 1000
    assert "| frame |" in capsys.readouterr().out
    # the settings reached the runs they name
    pre = yaml.safe_load((tmp_path / "pre_frame_loss_on-target_hidden_cls_weight-0_s0" / "config.yaml").read_text())
    assert pre["pretrain"]["loss_on"] == "target_hidden" and pre["pretrain"]["cls_weight"] == 0
    ft = yaml.safe_load((tmp_path / "ft_frame_attn_wiring-branch_n30_s0" / "config.yaml").read_text())
    assert ft["model"]["overrides"]["attn_wiring"] == "branch"
    # finished work is kept: a rerun with one more arm only runs that arm
    lines = (tmp_path / "results.jsonl").read_text().splitlines()
    assert mod.main(args + ["--arms", "frame", "scratch:attn_wiring=branch"]) == 0
    new = (tmp_path / "results.jsonl").read_text().splitlines()
    assert new[:len(lines)] == lines and len(new) == len(lines) + 1
    with pytest.raises(SystemExit, match="objective must be one of"):
        mod.main(["--quick", "--arms", "frame-wise", "--out", str(tmp_path)])


def test_vs_videomae_quick(tmp_path, capsys):
    """The VideoMAE side-by-side runs its cases (each in its own process) and reports them."""
    pytest.importorskip("transformers")
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "vs_videomae.py"
    spec = importlib.util.spec_from_file_location("vs_videomae", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    models = ["videomae_base", "videomap_middle"]
    assert mod.main(["--quick", "--models", *models, "--precisions", "fp32", "--out", str(tmp_path)]) == 0
    res = json.loads((tmp_path / "vs_videomae.json").read_text())
    cases = {(r["model"], r["mode"], r["precision"]) for r in res["rows"]}
    assert cases == {(m, mode, "fp32") for m in models for mode in ("inference", "training")}
    assert all(r["seconds"] > 0 and r["peak_mib"] >= 0 and r["params_m"] > 0 for r in res["rows"])
    assert (tmp_path / "vs_videomae.png").stat().st_size > 1000
    assert {r["model"]: r["tokens"] for r in res["rows"]} == {"videomae_base": 2 * 4, "videomap_middle": 4 * 4 + 1}
    out = capsys.readouterr().out
    assert "| videomae_base |" in out and "fastest" in out
    # a finished run re-renders from its JSON without measuring again
    assert mod.main(["--from-json", str(tmp_path / "vs_videomae.json"), "--out", str(tmp_path / "again")]) == 0
    assert json.loads((tmp_path / "again" / "vs_videomae.json").read_text())["rows"] == res["rows"]
    assert "| videomap_middle | " in capsys.readouterr().out
    with pytest.raises(SystemExit, match="unknown model"):
        mod.main(["--quick", "--models", "videomae_huge", "--out", str(tmp_path)])


def test_train_memory_quick(tmp_path, capsys):
    """The training-memory benchmark runs every case (each in its own process) and reports them."""
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "train_memory.py"
    spec = importlib.util.spec_from_file_location("train_memory", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.main(["--quick", "--out", str(tmp_path)]) == 0
    res = json.loads((tmp_path / "train_memory.json").read_text())
    cases = {(r["spec"], r["path"]) for r in res["memory"]}
    assert cases == {case for pair in mod.PAIRS.values() for case in pair}
    assert all(r["added_mib"] > 0 for r in res["memory"])
    assert set(res["time"]["step_s"]) == {"new", "old"} and res["time"]["ratio"] > 0
    assert (tmp_path / "train_memory.png").stat().st_size > 1000
    out = capsys.readouterr().out
    assert "| tiny | " in out and "| middle | " in out and "step time of videomamba_tiny" in out
    with pytest.raises(SystemExit):
        mod.main(["--quick", "--write-doc", "--out", str(tmp_path)])
