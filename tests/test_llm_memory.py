"""The vision-encoder memory benchmark: its quick mode end to end, the watchdog and the doc block."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "llm_memory.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("llm_memory", BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_quick_run_writes_table_json_and_plot(bench, tmp_path, capsys):
    assert bench.main(["--quick", "--device", "cpu", "--threads", "1", "--out", str(tmp_path)]) == 0
    res = json.loads((tmp_path / "llm_memory.json").read_text())
    rows = res["rows"]
    assert {(r["encoder"], r["frames"], r["mode"]) for r in rows} == {
        (e, t, m) for e in ("videomap_middle", "vit_base", "videomamba_middle") for t in (2, 4)
        for m in ("train", "inference")}
    for r in rows:
        assert r["status"] == "ok", r
        assert r["peak_bytes"] > 0 and r["weights_bytes"] > 0 and r["step_s"] > 0 and r["case_s"] > 0
        # the peak counts the weights (and, training, their gradients); small tensors may reuse heap
        # that the interpreter already holds, so only the order of magnitude is checked
        assert r["peak_bytes"] >= r["weights_bytes"] * (1.5 if r["mode"] == "train" else 0.8)
    by = {(r["encoder"], r["frames"], r["mode"]): r for r in rows}
    for (enc, t, mode), r in by.items():  # a backward stores activations and gradients
        if mode == "train":
            assert r["peak_bytes"] > by[(enc, t, "inference")]["peak_bytes"]
    # the attention encoders ran PyTorch's flash kernel, which the doc's reading relies on
    assert any("flash" in k for k in by[("vit_base", 2, "train")]["attention_kernels"])
    assert by[("videomamba_middle", 2, "train")]["attention_kernels"] == []
    assert res["setting"]["amp"] == "none" and res["setting"]["quick"] is True
    assert (tmp_path / "llm_memory.png").stat().st_size > 5000
    out = capsys.readouterr().out
    assert "| VideoMAP-M (`videomap_middle`) |" in out and "| T=2 | T=4 |" in out
    assert "VideoMAP-M / UMT-B peak memory" in out and "Largest frame count within 16 GiB" in out
    assert "| VideoMamba-M | 4 (all tried) | 4 (all tried) |" in out


def test_watchdog_stops_a_real_encoder_over_budget(bench, tmp_path, capsys):
    # UMT-B's fp32 weights alone are 0.32 GiB: a 0.1 GiB budget must be exceeded while it is built
    args = ["--encoders", "vit_base", "--frames", "8", "16", "--modes", "inference", "--device", "cpu",
            "--threads", "1", "--budget-gb", "0.1", "--out", str(tmp_path)]
    assert bench.main(args) == 0
    rows = {r["frames"]: r for r in json.loads((tmp_path / "llm_memory.json").read_text())["rows"]}
    assert rows[8]["status"] == "over_budget" and rows[8]["stopped"] is True
    assert rows[8]["seen_bytes"] > 0.1 * 2**30
    assert rows[16]["status"] == "skipped"  # larger clips of an encoder already over budget are not run
    out = capsys.readouterr().out
    assert "| UMT-B (`vit_base`) | – | > 0.1 | skipped |" in out
    assert "| UMT-B | none (8: over budget) |" in out


def test_math_attention_variant_is_a_separate_encoder(bench, tmp_path, capsys):
    args = ["--quick", "--device", "cpu", "--threads", "1", "--encoders", "videomap_middle", "vit_base@math",
            "--modes", "train", "--frames", "2", "--out", str(tmp_path)]
    assert bench.main(args) == 0
    rows = {r["encoder"]: r for r in json.loads((tmp_path / "llm_memory.json").read_text())["rows"]}
    assert rows["vit_base@math"]["attention_kernels"] == ["aten::_scaled_dot_product_attention_math"]
    assert "| train, UMT-B with math attention |" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="@math"):
        bench.main(["--quick", "--encoders", "vit_base@flash", "--out", str(tmp_path)])


def _fake_case(tmp_path: Path, alloc_mib: int) -> list[str]:
    """A child that reports its baseline, then allocates ``alloc_mib`` MiB slowly and prints JSON."""
    script = tmp_path / "child.py"
    script.write_text(
        "import json, time\n"
        "def rss():\n"
        "    return int(next(l for l in open('/proc/self/status') if l.startswith('VmRSS')).split()[1]) * 1024\n"
        "print('BASE', rss(), flush=True)\n"
        "hold = []\n"
        f"for _ in range({alloc_mib} // 8):\n"
        "    hold.append(bytearray(8 << 20)); time.sleep(0.01)\n"
        "print(json.dumps({'status': 'ok', 'peak_bytes': len(hold) * (8 << 20)}))\n")
    return [sys.executable, str(script)]


def test_watchdog_kills_on_budget_and_lets_small_cases_finish(bench, tmp_path):
    gib = 2**30
    big = bench.run_watched(_fake_case(tmp_path, 1024), {}, 0.1 * gib, 0, None)
    assert big["status"] == "over_budget" and big["stopped"] is True
    assert 0.1 * gib < big["seen_bytes"] < 0.5 * gib  # stopped soon after the budget, long before 1 GiB
    small = bench.run_watched(_fake_case(tmp_path, 16), {}, 0.1 * gib, 0, None)
    assert small["status"] == "ok" and small["stopped"] is False and small["peak_bytes"] == 16 << 20
    slow = bench.run_watched(_fake_case(tmp_path, 4000), {}, 100 * gib, 0, 0.3)
    assert slow["status"] == "timeout" and slow["case_s"] < 5


def test_doc_block_replaces_only_its_own_text(bench, tmp_path):
    doc = tmp_path / "llm.md"
    bench.write_doc_block("## Memory\n\nfirst", doc)
    assert doc.read_text().startswith("# Video LLM\n\n" + bench.BEGIN) and "first" in doc.read_text()
    doc.write_text("# Video LLM\n\nintro\n\n" + doc.read_text().split("\n\n", 1)[1] + "\n## Toy run\n\nkept\n")
    bench.write_doc_block("## Memory\n\nsecond", doc)
    text = doc.read_text()
    assert "first" not in text and "second" in text and "intro" in text and "## Toy run\n\nkept" in text
    assert text.count(bench.BEGIN) == 1 and text.count(bench.END) == 1
    other = tmp_path / "other.md"
    other.write_text("# Video LLM\n\nno block yet\n")
    bench.write_doc_block("third", other)
    assert other.read_text() == f"# Video LLM\n\nno block yet\n\n{bench.BEGIN}\nthird\n{bench.END}\n"
