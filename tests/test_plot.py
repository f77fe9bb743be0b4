"""`agentrl plot`: the PNG, the summary figures, and bad input."""
from __future__ import annotations

import json

from agentrl.cli import main
from agentrl.plot import read_metrics, summarize


def _write_run(path, rewards, tools):
    with open(path, "w") as f:
        for step, (r, t) in enumerate(zip(rewards, tools), 1):
            f.write(json.dumps({"step": step, "reward/mean": r, "rollout/tool_calls_per_episode": t, "time/step_s": 2.0}) + "\n")
        f.write('{"step": 99, "reward/me')  # a run killed mid-write


def test_summary_and_png(tmp_path, capsys):
    run = tmp_path / "metrics.jsonl"
    _write_run(run, [0.0, 0.1, 0.2] + [0.5] * 7 + [0.9] * 10, [0.5] * 10 + [1.0] * 10)
    rows = read_metrics(run)
    assert len(rows) == 20
    s = summarize(rows)
    assert abs(s["reward_start"] - 0.1) < 1e-9 and abs(s["reward_end"] - 0.9) < 1e-9
    assert abs(s["reward_rise"] - 0.8) < 1e-9 and s["tool_calls_end"] == 1.0 and s["s_per_step"] == 2.0
    assert s["reward_step1"] == 0.0 and s["generation_s_per_step"] != s["generation_s_per_step"]  # NaN: not logged
    out = tmp_path / "reward.png"
    assert main(["plot", f"with tool={run}", "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "+0.800" in capsys.readouterr().out


def test_missing_file_is_a_clear_error(tmp_path, capsys):
    assert main(["plot", str(tmp_path / "none.jsonl"), "--out", str(tmp_path / "x.png")]) == 2
    assert "no metrics file" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()
