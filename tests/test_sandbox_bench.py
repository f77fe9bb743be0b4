"""``agentrl bench sandbox --server``, tiny: both real servers start, the table and JSON come out."""
from __future__ import annotations

import json
import sys

import pytest

from agentrl.cli import main

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="the server runs a LocalSandbox")


@pytest.mark.timeout(180)
def test_bench_sandbox_server_small(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["bench", "sandbox", "--server", "--clients", "1,4", "--requests", "30", "--seconds", "3",
                 "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    rows = report["results"]
    assert {(r["clients"], r["snippet"], r["backend"]) for r in rows} == {
        (c, s, b) for c in (1, 4) for s in ("print(1+1)", "numpy")
        for b in ("agentrl serve sandbox", "naive python -c server")}
    for r in rows:
        assert r["errors"] == 0, r["error_examples"]
        assert 0 < r["calls"] <= 30 and r["p50_ms"] <= r["p99_ms"] and r["wall_s"] < 3 + 60
        assert r["server_cpu_ms_per_call"] > 0 and r["cpu_bound_calls_per_s"] > 0
    assert report["meta"]["cpus"] >= 1
    table = capsys.readouterr().out
    assert "| clients | snippet" in table and "x naive" in table and "CPU ms/call" in table


@pytest.mark.timeout(180)
def test_bench_sandbox_sessions_compares_forked_and_execed_workers(tmp_path, capsys):
    out = tmp_path / "sessions.json"
    assert main(["bench", "sandbox", "--sessions", "3", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert [r["workers"] for r in report["rows"]] == ["exec", "forked"]
    for r in report["rows"]:
        assert r["ok"] and r["sessions"] == 3 and r["pss_mb"] > 0 and r["start_s"] > 0
    assert report["ratios"]["pss_mb"] == pytest.approx(report["rows"][1]["pss_mb"] / report["rows"][0]["pss_mb"])
    assert "forked / exec" in capsys.readouterr().out
