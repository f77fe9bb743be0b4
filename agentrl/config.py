"""Typed run configs: YAML + ``key=value`` overrides, validated by pydantic.

Unknown keys are errors, and so are combinations that would be silently ignored: a config
either means what it says or is refused with a message that says what to change.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from agentrl.eval.config import EvalConfig  # noqa: E402  (imports agentrl.config lazily: no cycle)


class ConfigError(ValueError):
    pass


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class RunConfig(_Strict):
    name: str = "run"
    output_dir: str = "runs/run"
    seed: int = 0
    steps: int = Field(20, ge=1)
    save_every: int = Field(10, ge=1, description="checkpoint interval in steps")
    keep_checkpoints: int = Field(2, ge=1)
    report_to: list[Literal["jsonl", "tensorboard", "wandb"]] = Field(default_factory=lambda: ["jsonl", "tensorboard"])
    """Where metrics go: ``output_dir/metrics.jsonl`` (what ``agentrl plot`` / ``report`` read),
    TensorBoard (``output_dir/tensorboard``), Weights & Biases (``pip install 'agentrl[wandb]'``;
    ``WANDB_MODE=offline`` keeps it on the machine). Same metric names everywhere. The older
    ``tensorboard: false`` still works: it means ``[jsonl]``."""
    wandb_project: str | None = None
    """W&B project; None: ``$WANDB_PROJECT``, else ``agentrl``. The W&B run is named ``name``."""
    log_trajectories_every: int = Field(10, ge=1)
    """With ``wandb``: the step's saved trajectories (``save_trajectories`` of them) as a table
    every this many steps."""
    progress: bool = True
    save_trajectories: int = Field(4, ge=0)
    """Trajectories of each step appended to ``output_dir/trajectories.jsonl`` (for reports); 0: none."""

    @property
    def tensorboard(self) -> bool:
        """The older switch, read-only now: whether ``report_to`` lists tensorboard."""
        return "tensorboard" in self.report_to

    @model_validator(mode="before")
    @classmethod
    def _tensorboard_switch_into_report_to(cls, data: Any) -> Any:
        """``report_to: wandb`` means ``[wandb]``; ``tensorboard: false`` (older configs) still
        turns TensorBoard off, by becoming ``report_to: [jsonl]``."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        if isinstance(data.get("report_to"), str):
            data["report_to"] = [data["report_to"]]
        if "tensorboard" not in data:
            return data
        tb = data.pop("tensorboard")
        if not isinstance(tb, bool):
            raise ValueError(f"run.tensorboard must be true or false, got {tb!r} (or list tensorboard in run.report_to)")
        report_to = data.setdefault("report_to", ["jsonl"] + (["tensorboard"] if tb else []))
        if isinstance(report_to, (list, tuple)) and tb != ("tensorboard" in report_to):
            raise ValueError(f"run.tensorboard: {str(tb).lower()} contradicts run.report_to: {list(report_to)}; "
                             "run.tensorboard is the older switch: drop it and list (or leave out) "
                             "tensorboard in run.report_to")
        return data

    @model_validator(mode="after")
    def _report_to_is_usable(self) -> "RunConfig":
        if len(set(self.report_to)) != len(self.report_to):
            raise ValueError(f"run.report_to lists a backend twice: {self.report_to}")
        if "wandb" in self.report_to:
            import importlib.util

            if importlib.util.find_spec("wandb") is None:
                raise ValueError("run.report_to lists wandb but the wandb package is not installed: "
                                 "pip install 'agentrl[wandb]' (or pip install wandb)")
        return self


class LoraSettings(_Strict):
    """LoRA through peft (``pip install 'agentrl[lora]'``): only the adapters train and are
    checkpointed; the KL reference is the base model with the adapters off; rollout engines get
    merged weights. Names as peft's ``LoraConfig`` / verl's ``lora_rank``, ``lora_alpha``,
    ``target_modules``."""

    r: int = Field(8, ge=1, description="adapter rank")
    alpha: float = Field(16.0, gt=0, description="scaling alpha / r (peft lora_alpha)")
    dropout: float = Field(0.0, ge=0, lt=1)
    """On the adapter input in the update's forwards only (rollouts, old and reference log-probs
    run in eval mode); 0 keeps the first PPO ratio exactly 1."""
    target_modules: list[str] | Literal["all-linear"] = "all-linear"
    """Module names (suffixes, e.g. [q_proj, v_proj]) or every linear layer but the LM head."""

    @model_validator(mode="after")
    def _peft_is_installed(self) -> "LoraSettings":
        import importlib.util

        if importlib.util.find_spec("peft") is None:
            raise ValueError("model.lora needs the peft package: pip install 'agentrl[lora]' (or pip install peft)")
        return self


class ModelConfig(_Strict):
    path: str = "runs/tiny-model"
    init_if_missing: Literal["tiny", "small"] | None = "tiny"
    """Build a local tiny model at ``path`` when it does not exist (CPU demos); None for checkpoints."""
    dtype: Literal["float32", "bfloat16"] = "float32"
    """Compute dtype of training and rollouts. ``engine: torch`` keeps float32 parameters (the
    master weights) and runs bf16 under autocast; DeepSpeed keeps its own fp32 master copy
    (``deepspeed.bf16``); vLLM samples in this dtype."""
    reference_path: str | None = None
    """Frozen reference model for KL; defaults to the initial policy weights when kl_coef > 0."""
    lora: LoraSettings | None = None
    """None: full fine-tuning. Else LoRA adapters on ``path`` (see :class:`LoraSettings`)."""


class EnvConfig(_Strict):
    id: str = "agentrl/PythonTool-v0"
    kwargs: dict[str, Any] = Field(default_factory=dict)
    dataset: str | None = None
    """Training tasks (JSONL path); None uses the env's own default dataset."""
    limit: int | None = None


class RolloutConfig(_Strict):
    engine: Literal["hf", "vllm"] = "hf"
    tasks_per_step: int = Field(8, ge=1)
    group_size: int = Field(8, ge=1)
    temperature: float = Field(1.0, gt=0)
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int = Field(0, ge=0)
    max_new_tokens_per_turn: int = Field(128, ge=1)
    max_total_tokens: int = Field(1024, ge=8)
    max_observation_tokens: int = Field(256, ge=8)
    tool_workers: int = Field(16, ge=1)
    num_threads: int = Field(1, ge=1, description="torch threads on CPU rollout paths")
    share_prefix: bool = True
    """``engine: hf``: the prefill computes identical prompts once and the prefix all prompts of a
    batch share (system prompt, tool schemas) once, as vLLM's prefix caching does; the same
    completions to float rounding. False: every prompt prefilled in full (``optim.share_prefix``
    is the update's counterpart)."""
    vllm: dict[str, Any] | None = None
    """Options for VLLMEngine and vLLM's LLM(...) (gpu_memory_utilization, enforce_eager, ...); only with
    engine: vllm. ``weight_sync: memory`` (default: weight pushes through shared memory) or ``file``
    (through safetensors files, the fallback)."""
    mode: Literal["sync", "async"] = "sync"
    """``sync``: each step samples its batch with the current weights, then trains on it. ``async``
    (``agentrl.async_rollout``, docs/async_rollouts.md): a rollout worker process samples the next
    batches while the trainer updates on this one; weights reach it through shared memory after
    every optimiser step (with ``max_staleness`` <= 1 its module is that shared copy). Async defaults the off-policy correction to
    the decoupled objective (``algorithm.old_logprobs: recompute``, ``tis: token``) unless set."""
    max_staleness: int = Field(1, ge=0)
    """``async`` only: the trainer never trains at step t on a batch sampled with weights older than
    version t - max_staleness (AReaL's ``max_head_offpolicyness``). 1: one-step-off (verl's recipe);
    0: no overlap, the same batches, seeds and updates as ``sync``."""
    train_threads: int | None = Field(None, ge=1)
    """``async`` on CPU only: the trainer's torch threads while the worker generates on
    ``num_threads``. None: the cores the worker does not use (at least 1). More than that
    oversubscribes the cores (with ``OMP_WAIT_POLICY=PASSIVE`` the trainer then also gets the
    worker's core while the worker waits for its next request or runs tools)."""


class AlgorithmConfig(_Strict):
    advantage: Literal["grpo", "drgrpo", "rloo", "reinforce_pp", "remax", "gae"] = "grpo"
    """``remax``: each prompt also gets one greedy rollout (temperature 0, same env and limits, not
    trained on) whose reward is the baseline: A = r - r_greedy (ReMax, verl's
    ``compute_remax_outcome_advantage``); its cost is logged as ``remax/greedy_*``."""
    turn_level: bool = False
    """Densify: each turn's tokens get the group-normalised return from that turn on."""
    gamma: float = Field(1.0, ge=0, le=1)
    """``gae`` only (PPO with a learned critic, ``critic:``): the discount per action token. GAE runs over
    the policy's own tokens; a tool observation is the transition between two actions, not a step."""
    lambda_policy: float | Literal["length_adaptive"] = 1.0
    """``gae``: the GAE lambda of the policy's advantages; ``length_adaptive``: VAPO's
    1 - 1 / (lambda_alpha * l), l = the episode's action tokens (clamped to [0, 1])."""
    lambda_critic: float = Field(1.0, ge=0, le=1)
    """``gae``: the GAE lambda of the critic's targets (VAPO's decoupled GAE: 1.0, Monte-Carlo returns)."""
    lambda_alpha: float = Field(0.05, gt=0)
    """``gae`` with ``lambda_policy: length_adaptive``: VAPO's alpha."""
    positive_nll_coef: float = Field(0.0, ge=0)
    """VAPO's positive-example LM loss: + coef * token-mean NLL of the action tokens of episodes with
    reward > 0 (any estimator; VAPO: 0.1)."""
    clip_low: float = Field(0.2, ge=0)
    clip_high: float = Field(0.28, ge=0)
    dual_clip: float | None = Field(None, gt=1)
    loss_agg: Literal["token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"] = "token_mean"
    kl_coef: float = Field(0.0, ge=0)
    kl_kind: Literal["k1", "k2", "k3"] = "k3"
    kl_in_reward: bool = False
    """Apply KL as a reward penalty instead of a loss term."""
    entropy_coef: float = 0.0
    dynamic_sampling: bool = False
    max_sampling_tries: int = Field(3, ge=1)
    overlong: Literal["none", "mask", "penalty"] = "mask"
    overlong_cache: int = Field(64, ge=1, description="soft-penalty ramp length in tokens")
    overlong_penalty: float = 1.0
    epochs: int = Field(1, ge=1)
    minibatches: int = Field(1, ge=1)
    old_logprobs: Literal["engine", "recompute"] = "engine"
    """The behaviour log-probs in the PPO ratio. ``engine``: the rollout engine's, as sampled
    (verl's bypass mode; free). ``recompute``: the trainer's own forward before the first update
    (micro-batched, no grad), so the first ratio is exactly 1 whatever kernels/dtype the engine
    used; with one optimiser step per batch (``epochs: 1``, ``minibatches: 1``, no
    ``mismatch_mask``) it is the update's own forward, detached (no extra pass; verl's
    ``on_policy``). Engine log-probs are always log_softmax(logits / T) of the *untruncated* distribution
    for ``hf``; vLLM's with top_p < 1 or top_k > 0 are of the truncated, renormalised one."""
    tis: Literal["none", "token", "sequence"] = "none"
    """Truncated importance sampling on the trainer-to-engine ratio pi_old / pi_engine (needs
    ``old_logprobs: recompute``): each token's loss is weighted by min(ratio, tis_cap), per token
    or with the sequence's product of ratios (verl ``rollout_is``)."""
    tis_cap: float = Field(2.0, gt=0)
    mismatch_mask: Literal["none", "token", "sequence"] = "none"
    """Drop tokens (or whole sequences) whose trainer-to-engine ratio lies outside
    [1 / mismatch_threshold, mismatch_threshold] from the loss (verl ``rollout_rs``); needs
    ``old_logprobs: recompute``."""
    mismatch_threshold: float = Field(2.0, gt=1)


class CriticConfig(_Strict):
    """The value model of ``algorithm.advantage: gae`` (``agentrl.critic``): its own optimiser and phases."""

    model_path: str | None = None
    """Backbone of the value model (same tokenizer as the policy); None: a copy of ``model.path``."""
    lr: float = Field(1e-5, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    grad_clip: float = Field(1.0, gt=0)
    cliprange_value: float = Field(0.5, gt=0)
    """verl's value clip: the new value stays within +-cliprange_value of the rollout-time value."""
    pretrain_steps: int = Field(0, ge=0)
    """VAPO value pretraining: the first N of ``run.steps`` fit the critic to Monte-Carlo returns
    (lambda 1) of the starting policy's rollouts; the policy does not move."""
    warmup_steps: int = Field(0, ge=0)
    """Then N more critic-only steps (targets with ``lambda_critic``) before the policy moves."""


class RewardConfig(_Strict):
    """Where the episode's correctness reward comes from (any estimator can use either)."""

    source: Literal["gold", "majority_vote"] = "gold"
    """``gold``: the env scores against the task's ``answer`` / ``answers`` (every row needs one).
    ``majority_vote`` (TTRL): the group's majority answer is the pseudo-label and replaces the
    env's ``replaces`` component (1 in the majority class, else 0); rows need no gold, and where
    one exists the pseudo-label is checked against it (``ttrl/label_accuracy``)."""
    equivalence: Literal["math", "qa"] = "math"
    """How answers are pooled into classes: the math grader, or SQuAD-normalised strings (QA)."""
    replaces: str = "correct"
    """The env's reward component the pseudo-label reward stands in for (PythonTool: ``correct``;
    Search / ToolUse: ``em``); its gold value is reported as ``_gold_<replaces>``."""


class OptimConfig(_Strict):
    lr: float = Field(1e-5, gt=0)
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = Field(0, ge=0)
    schedule: Literal["constant", "cosine"] = "constant"
    grad_clip: float = Field(1.0, gt=0)
    micro_batch_size: int = Field(8, ge=1)
    """Sequences per forward/backward; also the batch of reference and old-log-prob forwards."""
    logprob_chunk_tokens: int = Field(1024, ge=1)
    """LM-head rows per chunk when computing log-probs and entropy (peak memory ~ chunk x vocab)."""
    sort_by_length: bool = True
    """Group episodes of similar length into micro-batches (less padding; same gradient)."""
    share_prefix: bool = True
    """Sequences of a micro-batch that begin with the same prompt (a GRPO group) run as one packed
    row, the prompt computed once (agentrl.prefix_sharing, Prefix Grouper): the same log-probs
    and gradient to float rounding. Only with sdpa / eager attention (flash-attention: off)."""
    gradient_checkpointing: bool = False
    """Recompute each decoder layer's activations in backward instead of keeping them: less memory
    for ~1/3 more compute (TRL's GRPOConfig turns it on by default)."""


class GuardConfig(_Strict):
    """Collapse guard: a bad step is undone (last good checkpoint) and the LR lowered."""

    enabled: bool = True
    max_grad_norm: float = 1e4
    min_entropy: float | None = None
    min_reward: float | None = None
    lr_decay: float = Field(0.5, gt=0, le=1)
    max_restores: int = 3
    inject_nan_at_step: int | None = None
    """Testing hook: make the loss NaN at this step to exercise the guard."""


class DeepSpeedConfig(_Strict):
    zero_stage: Literal[1, 2, 3] = 2
    offload: bool = False
    bf16: bool = False


class TrainConfig(_Strict):
    run: RunConfig = Field(default_factory=RunConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    env: EnvConfig = Field(default_factory=EnvConfig)
    rollout: RolloutConfig = Field(default_factory=RolloutConfig)
    algorithm: AlgorithmConfig = Field(default_factory=AlgorithmConfig)
    reward: RewardConfig = Field(default_factory=RewardConfig)
    critic: CriticConfig = Field(default_factory=CriticConfig)
    """The learned critic; only with ``algorithm.advantage: gae``."""
    optim: OptimConfig = Field(default_factory=OptimConfig)
    guard: GuardConfig = Field(default_factory=GuardConfig)
    engine: Literal["torch", "deepspeed"] = "torch"
    deepspeed: DeepSpeedConfig | None = None
    eval: EvalConfig | None = None
    """Held-out evaluation every ``eval.every`` steps with the rollout engine; its metrics
    (``eval/<dataset>/<metric>``) are logged beside the training metrics; run folders go to
    ``eval.out_dir`` (default ``run.output_dir/eval``)."""

    @model_validator(mode="after")
    def _no_silently_ignored_options(self) -> "TrainConfig":
        a, r = self.algorithm, self.rollout
        self._async_rollouts()
        if a.dynamic_sampling and r.group_size < 2:
            raise ValueError("algorithm.dynamic_sampling needs rollout.group_size >= 2 (a group of one is never informative)")
        self._gae_options_need_gae()
        if a.advantage not in ("reinforce_pp", "remax", "gae") and r.group_size < 2:
            raise ValueError(f"algorithm.advantage={a.advantage} is group-relative: set rollout.group_size >= 2")
        if a.advantage == "remax" and a.dynamic_sampling:
            raise ValueError("algorithm.dynamic_sampling keeps groups whose sampled rewards differ, but under "
                             "advantage: remax a group whose rewards are all equal still learns when the greedy "
                             "baseline's reward differs (A = r - r_greedy): the filter would drop useful groups. "
                             "Turn dynamic_sampling off with remax")
        if a.advantage == "remax" and a.turn_level:
            raise ValueError("algorithm.turn_level is not implemented for advantage: remax (the greedy baseline is "
                             "one episode reward): set turn_level: false")
        if self.reward.source == "gold" and self.env.kwargs.get("require_answer") is False:
            raise ValueError("env.kwargs.require_answer: false lets rows without gold in, but reward.source is gold: "
                             "they would all score 0. Set reward.source: majority_vote or drop require_answer")
        if self.reward.source == "majority_vote" and r.group_size < 2:
            raise ValueError("reward.source: majority_vote votes within a group: with rollout.group_size 1 every "
                             "answer is its own majority (reward 1). Set rollout.group_size >= 2")
        if a.kl_in_reward and a.kl_coef == 0:
            raise ValueError("algorithm.kl_in_reward is set but algorithm.kl_coef is 0: set kl_coef > 0 or drop kl_in_reward")
        if self.model.reference_path and a.kl_coef == 0:
            raise ValueError("model.reference_path is set but algorithm.kl_coef is 0, so it would be ignored")
        if r.vllm is not None and r.engine != "vllm":
            raise ValueError("rollout.vllm options are set but rollout.engine is hf: set rollout.engine: vllm or remove rollout.vllm")
        if (r.vllm or {}).get("weight_sync", "memory") not in ("memory", "file"):
            raise ValueError(f"rollout.vllm.weight_sync must be memory or file, got {r.vllm['weight_sync']!r}")
        if self.deepspeed is not None and self.engine != "deepspeed":
            raise ValueError("deepspeed options are set but engine is torch: set engine: deepspeed or remove deepspeed")
        if r.max_new_tokens_per_turn > r.max_total_tokens:
            raise ValueError("rollout.max_new_tokens_per_turn exceeds rollout.max_total_tokens")
        if (a.tis != "none" or a.mismatch_mask != "none") and a.old_logprobs != "recompute":
            raise ValueError("algorithm.tis / mismatch_mask compare the trainer's log-probs with the engine's: "
                             "set algorithm.old_logprobs: recompute")
        if a.clip_high < a.clip_low:
            raise ValueError("algorithm.clip_high < clip_low: clip-higher means clip_high >= clip_low")
        return self


    def _async_rollouts(self) -> None:
        """What ``rollout.mode: async`` supports, and its off-policy defaults: the decoupled PPO
        objective (AReaL, arXiv:2505.24298): the PPO ratio against the proximal policy (the
        trainer's weights before the update, recomputed) and the behaviour policy (the worker's
        stale weights) only through truncated importance weights min(pi_prox / pi_behav, tis_cap)
        (verl ``rollout_is``). Set where the user left ``old_logprobs`` / ``tis`` unset; an explicit
        ``old_logprobs: engine`` is allowed (the trainer warns)."""
        a, r = self.algorithm, self.rollout
        if r.mode == "sync":
            if r.max_staleness != RolloutConfig().max_staleness:
                raise ValueError("rollout.max_staleness only applies with rollout.mode: async")
            if r.train_threads is not None:
                raise ValueError("rollout.train_threads only applies with rollout.mode: async (sync trains on the "
                                 "process's torch threads)")
            return
        refused = [(r.engine == "vllm", "rollout.engine: vllm (not yet: the worker runs an HF copy of the policy; "
                                       "use rollout.mode: sync with vllm)"),
                   (self.engine == "deepspeed", "engine: deepspeed (data-parallel ranks would each need a worker "
                                                "and agree on batches: not yet)"),
                   (a.dynamic_sampling, "algorithm.dynamic_sampling (its extra tries depend on the rewards of the "
                                        "batch just sampled, which a pipelined worker has not waited for)"),
                   (a.advantage == "remax", "algorithm.advantage: remax (its greedy baseline rollouts run on the "
                                            "trainer's weights, not the batch's behaviour weights)")]
        for bad, what in refused:
            if bad:
                raise ValueError(f"rollout.mode: async does not support {what}; set rollout.mode: sync")
        if "old_logprobs" not in a.model_fields_set:
            a.old_logprobs = "recompute"
        if "tis" not in a.model_fields_set and a.old_logprobs == "recompute":
            a.tis = "token"

    def _gae_options_need_gae(self) -> None:
        # non-default values, not keys: a dumped config (run.output_dir/config.yaml) lists every key
        a, defaults = self.algorithm, AlgorithmConfig()
        gae_keys = [k for k in ("gamma", "lambda_policy", "lambda_critic", "lambda_alpha")
                    if getattr(a, k) != getattr(defaults, k)]
        if a.advantage != "gae":
            if gae_keys or self.critic != CriticConfig():
                raise ValueError(f"{', '.join(f'algorithm.{k}' for k in gae_keys) or 'critic'} only apply to "
                                 "algorithm.advantage: gae (a learned critic); set advantage: gae or remove them")
            return
        if self.engine == "deepspeed" and a.dynamic_sampling:
            raise ValueError("algorithm.advantage: gae under engine: deepspeed needs every rank to hold groups (the "
                             "critic's passes are collectives), which dynamic_sampling cannot promise: turn it off")
        if a.turn_level:
            raise ValueError("algorithm.turn_level is for critic-free estimators; gae already puts each turn's "
                             "reward at that turn's last action token: set turn_level: false")
        if isinstance(a.lambda_policy, float) and not 0.0 <= a.lambda_policy <= 1.0:
            raise ValueError(f"algorithm.lambda_policy must be in [0, 1] or length_adaptive, got {a.lambda_policy}")
        if a.lambda_alpha != defaults.lambda_alpha and a.lambda_policy != "length_adaptive":
            raise ValueError("algorithm.lambda_alpha only applies with lambda_policy: length_adaptive")
        c = self.critic
        if c.pretrain_steps + c.warmup_steps >= self.run.steps:
            raise ValueError(f"critic.pretrain_steps + warmup_steps ({c.pretrain_steps + c.warmup_steps}) leave no "
                             f"policy step in run.steps ({self.run.steps})")


def _set_dotted(tree: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = tree
    for k in keys[:-1]:
        node = node.setdefault(k, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {dotted}: {k} is not a section")
    node[keys[-1]] = value


def _format_error(e: ValidationError) -> str:
    lines = []
    for err in e.errors():
        where = ".".join(str(p) for p in err["loc"]) or "config"
        if err["type"] == "extra_forbidden":
            lines.append(f"unknown key {where!r}")
        elif err["type"] == "literal_error":
            lines.append(f"{where}: {err['msg'].replace('Input should be', 'must be one of')}, got {err['input']!r}")
        else:
            lines.append(f"{where}: {err['msg']}")
    return "invalid config:\n  " + "\n  ".join(lines)


def parse_config(tree: dict, overrides: list[str] = (), schema: type[BaseModel] = TrainConfig):
    tree = dict(tree or {})
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ConfigError(f"override {item!r} must look like key=value (e.g. optim.lr=1e-5)")
        _set_dotted(tree, key.strip(), yaml.safe_load(raw))
    try:
        return schema.model_validate(tree)
    except ValidationError as e:
        raise ConfigError(_format_error(e)) from None


def read_yaml_mapping(path: str | Path, kind: str = "config file") -> dict:
    """The YAML mapping in ``path``; a missing file, bad YAML or a non-mapping is a ConfigError."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{kind} not found: {p}")
    try:
        tree = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML: {e}") from None
    if not isinstance(tree, dict):
        raise ConfigError(f"{p}: top level must be a mapping of sections")
    return tree


def load_config(path: str | Path, overrides: list[str] = (), schema: type[BaseModel] = TrainConfig):
    return parse_config(read_yaml_mapping(path), overrides, schema)
