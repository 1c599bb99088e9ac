"""The sample-efficiency benchmark runs end to end in its quick mode (tiny sizes, one seed)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "sample_efficiency.py"


def test_sample_efficiency_quick(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("sample_efficiency", BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.main(["--quick", "--fractions", "0.25", "1.0", "--out", str(tmp_path)]) == 0
    res = json.loads((tmp_path / "sample_efficiency.json").read_text())
    assert res["counts"] == [30, 120] and set(res["results"]) == {"frame", "token", "video", "scratch"}
    for by_n in res["results"].values():
        assert all(len(v) == 1 and 0 <= v[0] <= 100 for v in by_n.values())
    assert (tmp_path / "sample_efficiency.png").stat().st_size > 1000
    assert "| frame |" in capsys.readouterr().out
