"""``agentrl eval`` end to end: scripted oracle / wrong policies through the real environments,
sandbox, index and collector (100% and 0%), the tiny model with the ready configs' fast variants,
the OpenAI-compatible engine against ``agentrl serve engine`` on loopback, ``eval compare``, and
the trainer's ``periodic_eval``."""
from __future__ import annotations

import json
import re

import pytest

from agentrl.cli import main as agentrl_main
from agentrl.engines.base import Completion
from agentrl.eval.compare import compare_runs
from agentrl.eval.config import EvalConfig, EvalSuite
from agentrl.eval.outputs import read_run
from agentrl.eval.run import periodic_eval, run_suite
from agentrl.model import cached_tiny_model

MUL2 = {"name": "mul2", "path": "package:mul2_test.jsonl", "env": "agentrl/PythonTool-v0", "env_kwargs": {"max_turns": 3}}


class ScriptedPolicy:
    """A rollout engine whose policy is a function of the text so far: ``turn(context) -> text``.
    The text is emitted as token ids, cut after the first stop string, as a sampler would."""

    def __init__(self, tokenizer, turn):
        self.tokenizer, self.turn, self.sampling = tokenizer, turn, []

    def generate(self, prompts, sampling):
        self.sampling.append(sampling)
        out = []
        for i, ids in enumerate(prompts):
            text = self.turn(self.tokenizer.decode(ids))
            ends = [text.find(s) + len(s) for s in sampling.stop if s in text]
            text = text[: min(ends)] if ends else text
            tokens = self.tokenizer.encode(text, add_special_tokens=False)[: sampling.max_new_tokens]
            out += [Completion(tokens, [0.0] * len(tokens), "stop" if ends else "eos", prompt_index=i)] * sampling.n
        return out

    def update_weights(self, state_dict) -> None:
        pass


def mul2_policy(right: bool):
    """Oracle: compute a*b with the interpreter, then copy its output. Wrong: answer a*b + 1 at once."""
    def turn(context: str) -> str:
        a, b = map(int, re.findall(r"What is (\d+) \* (\d+)\?", context)[-1])
        if not right:
            return f"<answer>{a * b + 1}</answer>"
        outputs = re.findall(r"<interpreter>\n(.*?)\n</interpreter>", context, re.S)
        if not outputs:
            return f"Let me compute.<code>```python\nprint({a} * {b})\n```</code>"
        return f"<answer>\\boxed{{{outputs[-1].strip()}}}</answer>"
    return turn


def qa_policy(golds: dict[str, str], right: bool):
    """Oracle: search the question, then refine and answer with the gold; wrong: a fixed guess."""
    def turn(context: str) -> str:
        question = re.findall(r"Question: (.*)\n", context)[-1]
        if "Doc 1(Title:" not in context:  # no search results yet (the prompt names the tags itself)
            return f"<think>search first</think><search>{question}</search>"
        answer = golds[question.rstrip("?")] if right else "certainly not this"
        return f"<refine>{answer}</refine><answer>{answer}</answer>"
    return turn


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(cached_tiny_model())


def test_oracle_scores_100_and_wrong_scores_0_on_math(tokenizer, tmp_path):
    suite = EvalSuite(name="mul2", datasets=[MUL2], k=2, limit=6, batch_questions=4, temperature=0.7, top_p=0.9, top_k=5,
                      max_new_tokens_per_turn=40, max_total_tokens=400, bootstrap=200)
    oracle, wrong = ScriptedPolicy(tokenizer, mul2_policy(True)), ScriptedPolicy(tokenizer, mul2_policy(False))
    good = run_suite(suite, oracle, out_dir=tmp_path / "good", progress=False)
    bad = run_suite(suite, wrong, out_dir=tmp_path / "bad", progress=False)
    g, b = good.metrics["mul2"], bad.metrics["mul2"]
    assert g["avg@2"]["value"] == g["pass@2"]["value"] == g["maj@2"]["value"] == 1.0 and g["avg@2"]["headline"]
    assert b["avg@2"]["value"] == b["pass@2"]["value"] == b["maj@2"]["value"] == 0.0
    assert g["avg@2"]["n"] == 6 and (g["avg@2"]["ci_low"], g["avg@2"]["ci_high"]) == (1.0, 1.0)
    # The oracle really used the sandbox: one call per episode, no errors, two turns.
    assert g["tool_calls"]["value"] == g["tool_use"]["value"] == 1.0 and g["tool_error_rate"]["value"] == 0.0
    assert g["turns"]["value"] == 2.0 and g["tool_latency_s"]["value"] > 0 and g["tool_latency_s"]["n"] == 12
    assert b["tool_calls"]["value"] == 0.0 and "tool_latency_s" not in b and b["turns"]["value"] == 1.0
    # Sampling options reach the engine; batch_questions=4 over 6 questions = 2 collect calls.
    sp = oracle.sampling[0]
    assert (sp.temperature, sp.top_p, sp.top_k, sp.max_new_tokens) == (0.7, 0.9, 5, 40)
    assert len(wrong.sampling) == 2 and len(oracle.sampling) == 4  # two rounds per batch for the oracle
    # The run folder.
    metrics, rows, config = read_run(tmp_path / "good")
    assert metrics == json.loads(json.dumps(good.metrics)) and len(rows) == 6 and config["info"]["k"] == 2
    row = rows[0]
    assert row["id"] == "mul2-test-0" and row["gold"] == "2214" and row["kind"] == "math" and row["scores"]["avg@2"] == [1.0, 1.0]
    s = row["samples"][0]
    assert s["answer"] == "\\boxed{2214}" and s["scores"] == {"correct": 1.0} and s["reward"] == 1.0
    assert s["components"] == {"correct": 1.0} and s["stop_reason"] == "answer" and s["response_tokens"] > 0
    assert s["turns"][0]["calls"] == [{"name": "python", "arguments": {"code": "print(27 * 82)"}}]
    assert "2214" in s["turns"][0]["observation"] and s["turns"][1]["text"].endswith("</answer>")
    report = (tmp_path / "good" / "report.md").read_text()
    assert "## mul2 (avg@2 1.000)" in report and "| **avg@2** | 1.000 | [1.000, 1.000] | 6 |" in report

    # eval compare: the paired difference is -1 on every question, outside its interval.
    table = {(r["dataset"], r["metric"]): r for r in compare_runs(str(tmp_path / "good"), str(tmp_path / "bad"), n_boot=200)}
    avg = table[("mul2", "avg@2")]
    assert (avg["a"], avg["b"], avg["diff"], avg["ci_low"], avg["ci_high"], avg["significant"], avg["n"]) == (1.0, 0.0, -1.0, -1.0, -1.0, True, 6)
    assert not table[("mul2", "response_tokens")]["significant"] or table[("mul2", "response_tokens")]["diff"] != 0


def test_k_changes_the_samples_per_question(tokenizer):
    for k in (1, 3):
        res = run_suite(EvalSuite(datasets=[MUL2], k=k, limit=2, bootstrap=100), ScriptedPolicy(tokenizer, mul2_policy(False)),
                        progress=False)
        assert all(len(r["samples"]) == k for r in res.rows) and f"maj@{k}" in res.metrics["mul2"]


def test_oracle_and_wrong_on_multihop_qa(tokenizer, shared_data, bm25_index, tmp_path):
    specs = [{"name": name, "path": str(shared_data / "qa" / f"{name}.jsonl"), "env": env, "env_kwargs": {"max_turns": 3}}
             for name, env in (("hotpotqa", "agentrl/AutoRefine-v0"), ("bamboogle", "agentrl/Search-v0"))]
    suite = EvalSuite(name="qa", datasets=specs, limit=3, retrieval={"index_dir": str(bm25_index)}, temperature=0.0,
                      max_new_tokens_per_turn=160, max_total_tokens=2048, bootstrap=200)
    from agentrl.eval.run import load_dataset

    golds = {r["question"].rstrip("?"): r["answers"][0] for spec in suite.datasets for r in load_dataset(spec, 3)[0]}
    good = run_suite(suite, ScriptedPolicy(tokenizer, qa_policy(golds, True)), out_dir=tmp_path / "good", progress=False)
    bad = run_suite(suite, ScriptedPolicy(tokenizer, qa_policy(golds, False)), out_dir=tmp_path / "bad", progress=False)
    for name in ("hotpotqa", "bamboogle", "average"):
        for metric in ("em", "f1", "cover_em"):
            assert good.metrics[name][metric]["value"] == 1.0 and bad.metrics[name][metric]["value"] == 0.0
        assert good.metrics[name]["tool_calls"]["value"] == 1.0
    assert good.metrics["hotpotqa"]["em"]["headline"] and good.metrics["average"]["em"]["n"] == 6
    _, rows, _ = read_run(tmp_path / "good")
    assert {r["dataset"] for r in rows} == {"hotpotqa", "bamboogle"} and all(r["kind"] == "qa" for r in rows)
    assert isinstance(rows[0]["gold"], list) and rows[0]["samples"][0]["turns"][0]["observation"].lstrip().startswith(("<documents>", "<information>"))
    assert all(r["id"].startswith(("hotpotqa-", "bamboogle-")) for r in rows)


def test_periodic_eval_for_the_trainer(tokenizer, tmp_path):
    cfg = EvalConfig(every=5, suite={"datasets": [MUL2], "k": 2, "bootstrap": 100}, limit=3, out_dir=str(tmp_path))
    flat = periodic_eval(cfg, ScriptedPolicy(tokenizer, mul2_policy(True)), step=10)
    assert flat["eval/mul2/avg@2"] == 1.0 and flat["eval/mul2/pass@1"] == 1.0 and flat["eval/mul2/tool_calls"] == 1.0
    assert all(isinstance(v, float) for v in flat.values()) and flat["eval/seconds"] > 0
    assert len(read_run(tmp_path / "step10")[1]) == 3  # limit: a held-out subset of 3 questions


def test_cli_fast_configs_with_the_tiny_model(shared_data, bm25_index, tmp_path, capsys):
    model = str(cached_tiny_model())
    assert agentrl_main(["eval", "configs/eval/aime24.yaml", "--fast", "--model", model, "--out", str(tmp_path / "aime"),
                         "--no-progress"]) == 0
    metrics, rows, config = read_run(tmp_path / "aime")
    assert len(rows) == 4 and all(len(r["samples"]) == 2 for r in rows) and metrics["aime24"]["avg@2"]["n"] == 4
    assert config["info"]["engine"] == "hf" and config["suite"]["top_p"] == 0.7 and (tmp_path / "aime" / "report.md").is_file()
    assert agentrl_main(["eval", "configs/eval/multihop_qa.yaml", f"retrieval.index_dir={bm25_index}", "retrieval.corpus=null",
                         "limit=1", "--fast", "--model", model, "--out", str(tmp_path / "qa"), "--no-progress"]) == 0
    metrics, rows, _ = read_run(tmp_path / "qa")
    assert len(rows) == 7 and set(metrics) == {"nq", "triviaqa", "popqa", "hotpotqa", "2wiki", "musique", "bamboogle", "average"}
    assert "em" in capsys.readouterr().out
    # compare on the CLI prints the side-by-side table.
    assert agentrl_main(["eval", "compare", str(tmp_path / "qa"), str(tmp_path / "qa"), "--bootstrap", "100"]) == 0
    out = capsys.readouterr().out
    assert "B - A" in out and "hotpotqa" in out and "+0.000" in out


def test_cli_errors_are_clear(tmp_path, capsys):
    assert agentrl_main(["eval", "configs/eval/aime24.yaml"]) == 2
    assert "needs model" in capsys.readouterr().out
    assert agentrl_main(["eval", "--dataset", str(tmp_path / "absent.jsonl"), "--model", "m"]) == 2
    assert "file not found" in capsys.readouterr().out
    assert agentrl_main(["eval", "--dataset", "package:mul2_test.jsonl", "--model", "m", "--env-kwargs", "{bad"]) == 2
    assert "--env-kwargs is not valid JSON" in capsys.readouterr().out
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="not a finished `agentrl eval` run folder"):
        compare_runs(str(tmp_path / "empty"), str(tmp_path / "empty"))


def test_url_engine_against_agentrl_serve_engine(tmp_path):
    from agentrl.engines.hf import HFEngine
    from agentrl.engines.serve import ServerThread, make_app

    model = str(cached_tiny_model())
    with ServerThread(make_app(HFEngine(model, num_threads=1), "tiny")) as server:
        assert agentrl_main(["eval", "--dataset", "package:mul2_test.jsonl", "--url", server.url, "--tokenizer", model,
                             "--limit", "2", "-k", "2", "--max-new-tokens", "24", "--max-total-tokens", "256",
                             "--temperature", "0.6", "--out", str(tmp_path / "served"), "--no-progress"]) == 0
    metrics, rows, config = read_run(tmp_path / "served")
    assert config["info"]["engine"] == "openai" and config["info"]["model"] == server.url and config["suite"]["temperature"] == 0.6
    assert len(rows) == 2 and all(len(r["samples"]) == 2 for r in rows) and metrics["mul2_test"]["avg@2"]["n"] == 2
    assert all(s["response_tokens"] > 0 for r in rows for s in r["samples"])


def test_retrieval_options(tokenizer, shared_data, bm25_index, tmp_path):
    """retrieval.corpus builds the index on first use; retrieval.url reads a server instead;
    max_observation_tokens cuts what the policy reads."""
    from agentrl.data import write_jsonl
    from agentrl.retrieval.index import load_retriever
    from agentrl.retrieval.server import BackgroundServer, create_app

    rows = [{"id": "q1", "question": "Who was Chief of Protocol", "answers": ["Shirley Temple"]}]
    corpus = tmp_path / "corpus.jsonl"
    write_jsonl(corpus, [{"id": f"d{i}", "title": "Shirley Temple", "text": "Shirley Temple was Chief of Protocol. " * 20}
                         for i in range(3)])
    write_jsonl(tmp_path / "qa.jsonl", rows)
    contexts: list[str] = []
    oracle = qa_policy({"Who was Chief of Protocol": "Shirley Temple"}, True)
    policy = ScriptedPolicy(tokenizer, lambda c: contexts.append(c) or oracle(c))
    spec = {"name": "qa", "path": str(tmp_path / "qa.jsonl"), "env": "agentrl/Search-v0"}
    built = EvalSuite(datasets=[spec], retrieval={"index_dir": str(tmp_path / "index"), "corpus": str(corpus)},
                      max_observation_tokens=32, max_new_tokens_per_turn=64, bootstrap=100)
    assert run_suite(built, policy, progress=False).metrics["qa"]["em"]["value"] == 1.0
    assert (tmp_path / "index" / "manifest.json").is_file() and "...[observation truncated]..." in contexts[-1]
    with BackgroundServer(create_app(load_retriever(bm25_index))) as server:
        served = EvalSuite(datasets=[spec], retrieval={"url": server.url}, max_new_tokens_per_turn=64, bootstrap=100)
        res = run_suite(served, ScriptedPolicy(tokenizer, oracle), progress=False)
    assert res.metrics["qa"]["em"]["value"] == 1.0 and res.rows[0]["samples"][0]["turns"][0]["observation"].count("Doc ") == 3


def test_seed_and_engine_options_with_the_tiny_model(tmp_path):
    from agentrl.eval.cli import make_eval_engine
    from agentrl.eval.config import EvalRunConfig

    run = lambda seed: run_suite(EvalSuite(datasets=[MUL2], k=2, limit=2, seed=seed, max_new_tokens_per_turn=16,  # noqa: E731
                                           max_total_tokens=200, bootstrap=100), engine, progress=False)
    cfg = EvalRunConfig(datasets=[MUL2], model=str(tmp_path / "new-model"), init_if_missing="tiny",
                        engine_options={"dtype": "bfloat16"})
    engine = make_eval_engine(cfg)  # init_if_missing built it; engine_options reached HFEngine
    assert (tmp_path / "new-model" / "config.json").is_file() and str(engine.model.dtype) == "torch.bfloat16"
    texts = lambda res: [t["text"] for r in res.rows for s in r["samples"] for t in s["turns"]]  # noqa: E731
    assert texts(run(0)) == texts(run(0)) and texts(run(0)) != texts(run(1))
