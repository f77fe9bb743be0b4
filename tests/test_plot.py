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


def _rows(rewards, eval_every=None, kl=False):
    rows = []
    for step, r in enumerate(rewards, 1):
        row = {"step": step, "reward/mean": r, "reward/correct": r, "rollout/tool_calls_per_episode": 1.0,
               "rollout/response_tokens": 30.0 + step, "train/entropy": 2.0 / step, "train/clip_frac": 0.01}
        if kl:
            row["train/kl"] = 0.001 * step
        if eval_every and step % eval_every == 0:
            row.update({"eval/mul2_test/avg@4": r + 0.05, "eval/mul2_test/avg@4_ci_low": r, "eval/mul2_test/avg@4_ci_high": r + 0.1})
        rows.append(row)
    return rows


def test_run_folders_overlaid_with_eval_points(tmp_path, capsys):
    import matplotlib.pyplot as plt

    from agentrl.plot import PANELS, figure, resolve_runs

    for parent, kl in (("a", True), ("b", False)):
        (tmp_path / parent / "grpo").mkdir(parents=True)
        (tmp_path / parent / "grpo" / "metrics.jsonl").write_text(
            "".join(json.dumps(r) + "\n" for r in _rows([0.1, 0.3, 0.5, 0.7], eval_every=2, kl=kl)))
    runs = resolve_runs([str(tmp_path / "a" / "grpo"), str(tmp_path / "b" / "grpo"), f"mine={tmp_path / 'a' / 'grpo'}"])
    assert [label for label, _ in runs] == ["a/grpo", "b/grpo", "mine"]  # same folder names stay apart
    assert all(path.name == "metrics.jsonl" for _, path in runs)

    fig = figure([(label, read_metrics(path)) for label, path in runs])
    axes = {ax.get_title(): ax for ax in fig.axes if ax.get_visible()}
    assert list(axes) == [title for title, _ in PANELS] + ["eval"]
    assert len(axes["reward"].get_lines()) == 3 + 3 * 2  # a curve per run and a dotted line per eval step
    assert len(axes["KL"].get_lines()) == 2 + 3 * 2  # run b logged no KL: only a and mine
    eval_lines = axes["eval"].get_lines()  # the interval bounds are not points of their own
    assert len(eval_lines) == 3 and list(eval_lines[0].get_xdata()) == [2, 4]
    assert list(eval_lines[0].get_ydata()) == [0.35, 0.75]
    plt.close(fig)

    out = tmp_path / "plots.png"
    assert main(["plot", str(tmp_path / "a" / "grpo"), str(tmp_path / "b" / "grpo"), "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "a/grpo" in capsys.readouterr().out


def test_panels_a_run_did_not_log_say_so():
    import matplotlib.pyplot as plt

    from agentrl.plot import figure

    fig = figure([("run", _rows([0.2, 0.4]))])
    kl = next(ax for ax in fig.axes if ax.get_title() == "KL")
    assert [t.get_text() for t in kl.texts] == ["not recorded"] and not kl.get_lines()
    assert "eval" not in [ax.get_title() for ax in fig.axes if ax.get_visible()]
    plt.close(fig)
