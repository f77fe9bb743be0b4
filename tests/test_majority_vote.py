"""Label-free majority-vote rewards (TTRL): classes, ties, no-answer episodes, QA, metrics, a real run."""
from __future__ import annotations

import json

import pytest

from agentrl.config import ConfigError, load_config
from agentrl.envs.python_tool import PythonToolEnv
from agentrl.model import cached_tiny_model
from agentrl.pseudo_labels import answer_classes, apply_majority_vote, majority_vote, ttrl_metrics
from agentrl.trainer import GRPOTrainer
from agentrl.types import StopReason, Trajectory, TurnRecord


def episode(answer, group, correct=None, fmt=0.0, tool=0.0):
    """A finished episode as the collector builds it: ``correct`` is the env's gold score (None: no gold)."""
    turns = [TurnRecord(action="x", observation="", reward=tool, info={"answer": answer})]
    components = ({} if correct is None else {"correct": float(correct)}) | ({"format": fmt} if fmt else {})
    return Trajectory(input_ids=[1, 2, 3], loss_mask=[0, 1, 1], logprobs=[0.0] * 3, prompt_len=1, turns=turns,
                      reward=sum(components.values()) + tool, reward_components=components,
                      stop_reason=StopReason.ANSWER if answer is not None else StopReason.MAX_TURNS,
                      truncated=False, group_id=group)


# -- the vote -----------------------------------------------------------------------------------
def test_math_equivalent_answers_are_one_class():
    answers = ["1/2", "0.5", "\\frac{1}{2}", "3", "\\boxed{\\frac12}", "12", "1200"]
    assert answer_classes(answers, "math") == [[0, 1, 2, 4], [3], [5], [6]]  # 12 and 1200 apart: no percent rule
    vote = majority_vote(answers, "math")
    assert vote.label == "1/2" and vote.members == {0, 1, 2, 4} and vote.ratio == pytest.approx(4 / 7)


def test_ties_go_to_the_class_seen_first():
    assert majority_vote(["7", "1/2", "0.5", "7"], "math").label == "7"
    assert majority_vote(["0.5", "7", "7", "1/2"], "math").label == "0.5"
    assert majority_vote(["a", "b"], "qa").members == {0}


def test_unanswered_episodes_do_not_vote_but_count_in_the_ratio():
    vote = majority_vote([None, "5", None, "6", "5"], "math")
    assert vote.label == "5" and vote.members == {1, 4} and vote.ratio == pytest.approx(2 / 5)
    nobody = majority_vote([None, None], "math")
    assert nobody.label is None and nobody.members == frozenset() and nobody.ratio == 0.0


def test_qa_answers_are_pooled_after_squad_normalisation():
    vote = majority_vote(["London", "The Paris", "paris!", "  PARIS "], "qa")
    assert vote.label == "The Paris" and vote.members == {1, 2, 3}
    assert answer_classes(["1/2", "0.5"], "qa") == [[0], [1]]  # no math equivalence for QA


# -- rewards and metrics on hand-made batches -----------------------------------------------------
def test_pseudo_rewards_replace_the_correctness_component_only():
    tasks = [{"answer": "408"}, {"answer": "12"}]
    trajs = [episode("408", 0, correct=1, fmt=0.1), episode("408.0", 0, correct=1), episode("400", 0, correct=0, tool=0.2),
             episode(None, 0, correct=0, fmt=0.0),
             episode("7", 1, correct=0), episode("7", 1, correct=0), episode("12", 1, correct=1), episode(None, 1, correct=0)]
    sums = apply_majority_vote(trajs, tasks, "math", "correct")
    assert [t.reward_components["correct"] for t in trajs] == [1, 1, 0, 0, 1, 1, 0, 0]
    assert [t.reward_components["_gold_correct"] for t in trajs] == [1, 1, 0, 0, 0, 0, 1, 0]
    # format (0.1) and the tool turn reward (0.2) stay as the env gave them
    assert [t.reward for t in trajs] == pytest.approx([1.1, 1.0, 0.2, 0.0, 1.0, 1.0, 0.0, 0.0])
    m = ttrl_metrics(sums)
    assert m["ttrl/label_accuracy"] == 0.5  # group 0's label 408 is right, group 1's 7 is wrong
    assert m["ttrl/majority_ratio"] == pytest.approx((2 / 4 + 2 / 4) / 2)
    assert m["ttrl/reward_vs_gold_agreement"] == pytest.approx(5 / 8)  # group 1: three of four disagree
    assert m["ttrl/gold_reward_mean"] == pytest.approx(3 / 8)


def test_tasks_without_gold_are_voted_on_and_left_out_of_the_gold_metrics():
    tasks = [{"question": "q0"}, {"question": "q1", "answer": "5"}]
    trajs = [episode("3", 0), episode("3", 0), episode("4", 0), episode("5", 1, correct=1), episode("6", 1, correct=0)]
    m = ttrl_metrics(apply_majority_vote(trajs, tasks, "math", "correct"))
    assert [t.reward for t in trajs] == [1.0, 1.0, 0.0, 1.0, 0.0]
    assert "_gold_correct" not in trajs[0].reward_components
    assert m["ttrl/gold_groups"] == 1 and m["ttrl/label_accuracy"] == 1.0 and m["ttrl/reward_vs_gold_agreement"] == 1.0
    unlabelled = ttrl_metrics(apply_majority_vote([episode("3", 0), episode("4", 0)], [{}], "math", "correct"))
    assert set(unlabelled) == {"ttrl/majority_ratio", "ttrl/gold_groups"}  # nothing to check against


def test_greedy_baselines_are_scored_against_their_groups_label():
    greedy = episode("0.50", 0, correct=0)  # gold 1/3: wrong, but it agrees with the (wrong) label 1/2
    apply_majority_vote([episode("1/2", 0, correct=0), episode("1/3", 0, correct=1), episode("0.5", 0, correct=0)],
                        [{"answer": "1/3"}], "math", "correct", greedy=[greedy])
    assert greedy.reward == 1.0 and greedy.reward_components["_gold_correct"] == 0.0


def test_a_component_the_env_does_not_give_is_a_clear_error():
    with pytest.raises(ValueError, match="reward.replaces='em'.*set reward.replaces"):
        apply_majority_vote([episode("1", 0, correct=1), episode("1", 0, correct=1)], [{"answer": "1"}], "math", "em")


def test_an_episode_ended_by_an_infrastructure_error_is_scored_without_gold():
    broken = episode(None, 0)
    broken.stop_reason = StopReason.ERROR  # env.step raised: no answer, and the env never scored it
    m = ttrl_metrics(apply_majority_vote([episode("5", 0, correct=1), broken], [{"answer": "5"}], "math", "correct"))
    assert broken.reward == 0.0 and "_gold_correct" not in broken.reward_components
    assert m["ttrl/reward_vs_gold_agreement"] == 1.0  # over the one episode the env scored


def test_qa_label_accuracy_uses_exact_match_against_any_gold():
    tasks = [{"answers": ["Paris", "City of Light"]}]
    trajs = [episode("the paris", 0, correct=1), episode("Paris.", 0, correct=1), episode("Rome", 0, correct=0)]
    assert ttrl_metrics(apply_majority_vote(trajs, tasks, "qa", "correct"))["ttrl/label_accuracy"] == 1.0


# -- missing gold: env and config -----------------------------------------------------------------
def test_python_tool_accepts_rows_without_answer_only_when_told(tmp_path):
    path = tmp_path / "unlabelled.jsonl"
    path.write_text('{"id": "u0", "question": "What is 12 * 34?"}\n')
    with pytest.raises(ValueError, match="lacks field"):
        PythonToolEnv(dataset=str(path), sandbox="local")
    env = PythonToolEnv(dataset=str(path), sandbox="local", require_answer=False, format_reward=0.5)
    try:
        env.reset(options={"task_index": 0})
        _, reward, terminated, _, info = env.step("<answer>408</answer>")
    finally:
        env.close()
    assert terminated and info["reward_components"] == {"format": 0.5} and reward == 0.5


def test_config_refuses_votes_of_one_and_gold_rewards_without_gold():
    with pytest.raises(ConfigError, match="majority_vote votes within a group"):
        load_config("configs/ttrl_learn_cpu.yaml", ["rollout.group_size=1", "algorithm.advantage=remax"])
    with pytest.raises(ConfigError, match="require_answer: false lets rows without gold in"):
        load_config("configs/retool_learn_cpu.yaml", ["env.kwargs.require_answer=false"])
    with pytest.raises(ConfigError, match="reward.source: must be one of"):
        load_config("configs/ttrl_learn_cpu.yaml", ["reward.source=vote"])
    assert load_config("configs/ttrl_learn_cpu.yaml").reward.source == "majority_vote"


# -- a real run -----------------------------------------------------------------------------------
def tiny_cfg(tmp_path, *overrides):
    return load_config("configs/ttrl_learn_cpu.yaml", [
        f"model.path={cached_tiny_model()}", f"run.output_dir={tmp_path / 'run'}", "run.progress=false",
        "run.tensorboard=false", "rollout.tasks_per_step=2", "rollout.group_size=3", "rollout.max_new_tokens_per_turn=12",
        "rollout.max_total_tokens=200", "env.kwargs.max_turns=2", *overrides])


def test_a_mixed_dataset_without_some_gold_trains_and_logs_the_ttrl_metrics(tmp_path):
    rows = [{"id": f"q{i}", "question": f"What is {a} * {b}?", **({"answer": str(a * b)} if i < 2 else {})}
            for i, (a, b) in enumerate([(12, 34), (56, 78), (23, 45), (67, 89)])]
    data = tmp_path / "mixed.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(ValueError, match="set env.kwargs.require_answer: false"):
        GRPOTrainer(tiny_cfg(tmp_path, f"env.dataset={data}"))
    trainer = GRPOTrainer(tiny_cfg(tmp_path, f"env.dataset={data}", "env.kwargs.require_answer=false", "run.steps=2"))
    try:
        history = trainer.train()
    finally:
        trainer.close()
    assert len(history) == 2
    for record in history:
        assert 0.0 <= record["ttrl/majority_ratio"] <= 1.0 and "train/loss" in record
        assert record["ttrl/gold_groups"] == 1  # seed 0 draws rows 2, 0 then 1, 3: one with gold per step
        assert 0.0 <= record["ttrl/label_accuracy"] <= 1.0 and 0.0 <= record["ttrl/reward_vs_gold_agreement"] <= 1.0
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all("ttrl/majority_ratio" in x and "ttrl/label_accuracy" in x for x in lines)
