"""`agentrl report`: a real run folder (a 2-step GRPO run on the tiny model, trajectories from
the real collector and sandbox) rendered to HTML and driven in a real headless Chromium."""
from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest

from agentrl.cli import main
from agentrl.collector import Collector, CollectorConfig
from agentrl.engines.base import Completion
from agentrl.engines.hf import HFEngine
from agentrl.model import cached_tiny_model
from agentrl.types import Trajectory

TRAIN_OVERRIDES = ["model.init_if_missing=null", "run.progress=false", "run.tensorboard=false",
                   "rollout.tasks_per_step=2", "rollout.group_size=2", "rollout.max_new_tokens_per_turn=12",
                   "rollout.max_total_tokens=200", "env.kwargs.max_turns=2", "run.steps=2", "run.save_every=2"]
ENV_KWARGS = {"max_turns": 2, "dataset": "package:mul2_test.jsonl"}
TASKS = [json.loads(line) for line in open("agentrl/data/mul2_test.jsonl")][:3]
# Model text that would run script if the page ever put it into the DOM as HTML.
HOSTILE = '</script><script>window.pwned = 1</script><img src=x onerror="window.pwned = 2"> <b>bold?</b>'


class OracleEngine:
    """The real tokenizer; the policy's text is agentrl demo's scripted solver (code first, then
    the interpreter's output as the answer: reward 1), or a fixed ``text``; the question
    ``wrong_on`` gets a wrong answer."""

    def __init__(self, tokenizer, text: str | None = None, wrong_on: str | None = None):
        self.tokenizer, self.text, self.wrong_on = tokenizer, text, wrong_on

    def generate(self, prompts, sampling):
        out = []
        for ids in prompts:
            seen = self.tokenizer.decode(ids)
            question = re.search(r"What is (\d+) \* (\d+)\?", seen)
            a, b = question.groups()  # (the system prompt mentions <interpreter></interpreter> too)
            printed = re.findall(r"<interpreter>\s*(.*?)\s*</interpreter>", seen[question.end():], re.S)
            text = self.text or (f"<answer>{printed[-1]}</answer>" if printed
                                 else f"<think>Compute it.</think>\n<code>\n```python\nprint({a} * {b})\n```\n</code>")
            if question.group(0) == self.wrong_on:
                text = "<answer>7</answer>"
            reply = self.tokenizer.encode(text, add_special_tokens=False)[: sampling.max_new_tokens]
            out += [Completion(reply, [0.0] * len(reply), "stop") for _ in range(sampling.n)]
        return out


def _collect(engine, group_size=2, tasks=TASKS[:2]) -> list[Trajectory]:
    collector = Collector("agentrl/PythonTool-v0", engine, CollectorConfig(max_total_tokens=400, max_new_tokens_per_turn=96),
                          env_kwargs=ENV_KWARGS)
    try:
        return collector.collect(tasks, group_size=group_size, seed=0)
    finally:
        collector.close()


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A real training run folder (metrics.jsonl, config.yaml, trajectories.jsonl, checkpoints)
    plus rewarded and hostile trajectories from the real collector and eval/ keys on the last
    step (the trainer's periodic eval is not wired in yet; its values come from real episodes)."""
    out = tmp_path_factory.mktemp("run")
    overrides = [f"model.path={cached_tiny_model()}", f"run.output_dir={out}", *TRAIN_OVERRIDES]
    assert main(["train", "configs/retool_tiny_cpu.yaml", *overrides]) == 0
    assert (out / "config.yaml").is_file() and (out / "trajectories.jsonl").is_file()
    checkpoint = sorted((out / "checkpoints").iterdir())[-1]
    policy = HFEngine(str(checkpoint), num_threads=1)
    tok = policy.tokenizer
    by_step = {1: _collect(OracleEngine(tok)), 2: _collect(policy) + _collect(OracleEngine(tok, HOSTILE), 1, TASKS[:1])}
    with open(out / "trajectories.jsonl", "a") as f:
        for step, trajs in by_step.items():
            for t in trajs:
                f.write(json.dumps({**t.to_dict(), "step": step}) + "\n")
    rewards = np.array([t.reward for t in _collect(OracleEngine(tok), 2, TASKS)]).reshape(len(TASKS), 2)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    rows[-1].update({"eval/mul2_test/avg@2": rewards.mean(), "eval/mul2_test/pass@2": (rewards > 0).any(1).mean()})
    (out / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return out


@pytest.fixture(scope="module")
def eval_dir(tmp_path_factory):
    """A real `agentrl eval` run folder (agentrl.eval's run_suite and writer) of the oracle
    policy on three questions, k = 2; it answers the last question wrong."""
    from agentrl.eval.config import EvalSuite
    from agentrl.eval.run import run_suite

    out = tmp_path_factory.mktemp("eval")
    tok = HFEngine(str(cached_tiny_model()), num_threads=1).tokenizer
    suite = EvalSuite(name="mul2_fast", k=2, limit=len(TASKS), max_new_tokens_per_turn=96, max_total_tokens=400,
                      bootstrap=200, datasets=[{"name": "mul2_test", "path": "package:mul2_test.jsonl",
                                                "env": "agentrl/PythonTool-v0", "env_kwargs": {"max_turns": 2}}])
    run_suite(suite, OracleEngine(tok, wrong_on=TASKS[-1]["question"]), out_dir=out, progress=False)
    return out


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium (Debian's chromium + chromium-driver) through Selenium; skips with the
    browser's own error where it cannot start."""
    try:
        from selenium import webdriver
        from selenium.common.exceptions import WebDriverException
        from selenium.webdriver.chrome.options import Options
        from selenium.webdriver.chrome.service import Service
    except ImportError as e:
        pytest.skip(f"selenium is not installed: {e}")
    binary, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    if not binary or not driver_path:
        pytest.skip("chromium / chromedriver not found (apt-get install chromium chromium-driver; .ci/run does)")
    options = Options()
    options.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1400,1000"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    try:  # an explicit driver path: Selenium Manager downloads nothing
        driver = webdriver.Chrome(options=options, service=Service(driver_path))
    except WebDriverException as e:
        pytest.skip(f"chromium cannot start: {e.msg}")
    yield driver
    driver.quit()


def _page(browser, path, fragment=""):
    browser.get(path.resolve().as_uri() + fragment)
    return browser


def _errors(browser) -> list[dict]:
    return [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]


def _data(page: str) -> list[dict]:
    m = re.search(r'<script type="application/json" id="trajectory-data">(.*?)</script>', page, re.S)
    return json.loads(m.group(1)) if m else []


def _report(tmp_path, run, *args) -> str:
    out = tmp_path / "sub" / "report.html"
    assert main(["report", str(run), "--out", str(out), *args]) == 0
    return out.read_text()


def test_report_in_headless_chromium(run_dir, browser, tmp_path):
    from selenium.webdriver.common.by import By

    page = _report(tmp_path, run_dir)
    assert not re.search(r"https?://", page), "the page must not reference anything outside itself"
    data = _data(page)
    # the trainer's own sample of each step comes first, then the fixture's
    rows = [json.loads(line) for line in (run_dir / "trajectories.jsonl").read_text().splitlines()]
    n, n_rewarded = len(rows), sum(r["reward"] > 0 for r in rows)
    oracle = next(i for i, r in enumerate(rows) if r["reward"] > 0 and "print(" in r["turns"][0]["action"])
    hostile = next(i for i, r in enumerate(rows) if HOSTILE in r["turns"][0]["action"])
    assert len(data) == n and n_rewarded >= 4 and all(t["decoded"] for t in data)

    b = _page(browser, tmp_path / "sub" / "report.html")
    assert _errors(b) == []
    assert b.execute_script("return document.getElementById('plots').naturalWidth") > 0
    eval_table = b.find_element(By.ID, "eval-table").text
    assert "mul2_test" in eval_table and "avg@2" in eval_table and "pass@2" in eval_table and "step 2" in eval_table
    metrics_table = b.find_element(By.ID, "metrics-table").text
    for key in ("reward/mean", "rollout/tool_calls_per_episode", "train/entropy", "train/clip_frac"):
        assert key in metrics_table
    assert "retool_tiny_cpu" in b.find_element(By.ID, "config").text

    items = b.find_elements(By.CSS_SELECTOR, "#traj-list li")
    assert len(items) == n and b.find_element(By.ID, "traj-count").text == f"{n} of {n} shown"
    items[oracle].click()  # an oracle episode of step 1: code, interpreter output, answer
    detail = b.find_element(By.ID, "detail")
    task = next(t for t in TASKS if t["id"] == rows[oracle]["task_id"])
    assert f"#{oracle} step 1" in detail.text and "turn 2" in detail.text and "tool call: python" in detail.text
    assert task["question"] in detail.text and f"<answer>{task['answer']}</answer>" in detail.text
    trained = [s.text for s in detail.find_elements(By.CSS_SELECTOR, "span.t")]
    masked = "".join(s.text for s in detail.find_elements(By.CSS_SELECTOR, "span.m"))
    assert any("print(" in s for s in trained) and "<interpreter>" in masked and task["question"] in masked
    assert "<interpreter>" not in "".join(trained)  # tool output is never shown as trained on
    assert b.current_url.endswith(f"#t{oracle}")

    b.find_element(By.CSS_SELECTOR, "#filters button[data-filter=pos]").click()
    shown = b.find_elements(By.CSS_SELECTOR, "#traj-list li")
    assert len(shown) == n_rewarded and all(re.search(r" · reward (1|0\.\d*[1-9])", li.text) for li in shown)
    b.find_element(By.CSS_SELECTOR, "#filters button[data-filter=zero]").click()
    shown = b.find_elements(By.CSS_SELECTOR, "#traj-list li")
    assert len(shown) == n - n_rewarded and b.find_element(By.ID, "traj-count").text == f"{n - n_rewarded} of {n} shown"
    next(li for li in shown if li.get_attribute("data-index") == str(hostile)).click()  # hostile text stays text
    assert HOSTILE in b.find_element(By.ID, "detail").text
    assert b.execute_script("return window.pwned") is None
    assert b.find_elements(By.CSS_SELECTOR, "#detail img, #detail script, #detail pre b") == []
    assert _errors(b) == []

    b = _page(browser, tmp_path / "sub" / "report.html", "#t3")  # a link opens that trajectory
    assert b.find_element(By.CSS_SELECTOR, "#detail h3").text.startswith(f"#3 step {rows[3].get('step')}")


def test_eval_folder_report_shows_intervals_and_samples(eval_dir, browser, tmp_path):
    from selenium.webdriver.common.by import By

    _report(tmp_path, eval_dir)
    metrics = json.loads((eval_dir / "metrics.json").read_text())["mul2_test"]["avg@2"]
    assert metrics["value"] == pytest.approx(2 / 3) and metrics["ci_low"] < metrics["value"] < metrics["ci_high"]
    b = _page(browser, tmp_path / "sub" / "report.html")
    assert _errors(b) == []
    row = b.find_element(By.CSS_SELECTOR, "#eval-table tbody tr").text
    assert row == f"eval mul2_test avg@2 {metrics['value']:.3f} [{metrics['ci_low']:.3f}, {metrics['ci_high']:.3f}] 3"
    assert "mul2_fast" in b.find_element(By.ID, "config").text
    assert b.find_element(By.CSS_SELECTOR, "#eval-table tbody td b").text == "avg@2"  # the headline metric
    assert "not recorded" in b.find_element(By.ID, "metrics-none").text
    items = b.find_elements(By.CSS_SELECTOR, "#traj-list li")
    assert len(items) == 6
    items[-1].click()
    detail = b.find_element(By.ID, "detail").text
    assert "eval mul2_test" in detail and f"answer: 7 · gold: {TASKS[-1]['answer']}" in detail
    assert "<answer>7</answer>" in detail  # the turn's text, beside the parsed answer
    b.find_element(By.CSS_SELECTOR, "#filters button[data-filter=pos]").click()
    assert len(b.find_elements(By.CSS_SELECTOR, "#traj-list li")) == 4


def test_tokenizer_found_given_or_absent(run_dir, tmp_path):
    bare = tmp_path / "bare"  # a run folder without checkpoints or config: nothing says which tokenizer
    bare.mkdir()
    shutil.copy(run_dir / "trajectories.jsonl", bare)
    page = _report(tmp_path, bare)
    data = _data(page)
    assert not any(t["decoded"] for t in data) and "no tokenizer found" in page
    assert data[0]["turns"][0]["action"][0][0] == 1 and data[0]["turns"][0]["observation"][0][0] == 0
    page = _report(tmp_path, bare, "--model", str(cached_tiny_model()))
    decoded = _data(page)
    assert all(t["decoded"] for t in decoded) and "<|im_start|>" in decoded[0]["prompt"][0][1]
    # decoded ids and the recorded turn texts tell the same story
    assert decoded[0]["turns"][0]["action"][0][1] == data[0]["turns"][0]["action"][0][1] and "decodes" not in page

    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    other = Tokenizer(models.WordLevel(unk_token="[UNK]"))  # another model's tokenizer
    other.pre_tokenizer = pre_tokenizers.Whitespace()
    other.train_from_iterator(["a small other vocabulary"] * 4, trainers.WordLevelTrainer(special_tokens=["[UNK]"]))
    PreTrainedTokenizerFast(tokenizer_object=other, unk_token="[UNK]").save_pretrained(tmp_path / "other")
    page = _report(tmp_path, bare, "--model", str(tmp_path / "other"))
    assert f"decodes {len(data)} of {len(data)} trajectories to other text than the collector recorded" in page


def test_max_trajectories_spreads_over_steps(run_dir, tmp_path):
    page = _report(tmp_path, run_dir, "--max-trajectories", "2")
    data = _data(page)
    n = len((run_dir / "trajectories.jsonl").read_text().splitlines())
    assert [t["source"] for t in data] == ["step 1", "step 2"] and f"showing 2 of {n} trajectories" in page
    assert "traj-none" in _report(tmp_path, run_dir, "--max-trajectories", "0")


def test_missing_and_broken_inputs(tmp_path, run_dir, capsys):
    assert main(["report", str(tmp_path / "nope"), "--out", str(tmp_path / "a.html")]) == 2
    assert "is not a folder" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / "empty"), "--out", str(tmp_path / "a.html")]) == 2
    assert "holds none of" in capsys.readouterr().err and not (tmp_path / "a.html").exists()
    assert main(["report", str(run_dir), "--model", str(tmp_path / "empty"), "--out", str(tmp_path / "a.html")]) == 2
    assert "no tokenizer there" in capsys.readouterr().err

    broken = tmp_path / "broken"
    broken.mkdir()
    good = (run_dir / "trajectories.jsonl").read_text().splitlines()[0]
    (broken / "trajectories.jsonl").write_text(good + '\n{"input_ids": [1]}\n[1, 2]\n{"step": 3, "reward": 1')
    (broken / "metrics.jsonl").write_text('{"step": 1, "reward/mean": NaN, "train/kl": 0.1}\n{"step": 2, "rew')
    (broken / "metrics.json").write_text("not json")
    (broken / "config.yaml").write_text("model: [unclosed")
    page = _report(tmp_path, broken, "--model", str(cached_tiny_model()))
    assert len(_data(page)) == 1
    for note in ("skipped a row that is not a trajectory", "skipped 2 line(s)", "metrics.json: not JSON"):
        assert note in page
    assert "train/kl" in page and "eval-none" in page


def test_eval_folders_inside_a_run_folder(run_dir, eval_dir, tmp_path):
    run = tmp_path / "run"  # `agentrl eval --out RUN_DIR/eval/final` after training
    shutil.copytree(run_dir, run, ignore=shutil.ignore_patterns("checkpoints"))
    shutil.copytree(eval_dir, run / "eval" / "final")
    page = _report(tmp_path, run, "--model", str(cached_tiny_model()))
    table = re.sub(r"<[^>]+>", " ", re.search(r'<table id="eval-table">.*?</table>', page, re.S).group(0))
    assert "step 2" in table and "eval/final" in table and "pass@2" in table
    sources = [t["source"] for t in _data(page)]
    assert sources.count("eval/final mul2_test") == 6 and sources[0].startswith("step ")
