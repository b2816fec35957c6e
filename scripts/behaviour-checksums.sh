#!/usr/bin/env bash
# Checksums of what the CLI writes on fixed seeds and the shipped tiny θ0, for refactors that must not
# change behaviour: run it before and after, on each device, and compare the lines.
#   bash scripts/behaviour-checksums.sh cpu > before-cpu.txt
#   bash scripts/behaviour-checksums.sh webgpu > before-webgpu.txt
# Covers score, train (2 steps), generate (greedy and sampled), run (1 iteration) and sweep (2 arms x 1 seed).
# Only deterministic outputs are hashed (no wall-clock fields: metrics' time columns are dropped).
set -euo pipefail
DEV="${1:-cpu}"
cd "$(dirname "$0")/.."
S="node bin/spinlm.js"
D="$(mktemp -d)"
trap 'rm -rf "$D"' EXIT
M=assets/theta0
q=(--quiet --device "$DEV")

$S synthetic --out "$D/tasks.jsonl" --size 24 --seed 3 >/dev/null 2>&1
$S generate --model $M --data "$D/tasks.jsonl" --out "$D/greedy.jsonl" --max_new_tokens 24 "${q[@]}" 2>/dev/null
$S generate --model $M --data "$D/tasks.jsonl" --out "$D/sampled.jsonl" --max_new_tokens 24 --temperature 1 --top_p 0.9 --seed 7 \
  "${q[@]}" 2>/dev/null
$S score --model $M --data "$D/sampled.jsonl" --out "$D/scores.jsonl" "${q[@]}" 2>/dev/null
$S train --model $M --data "$D/sampled.jsonl" --out "$D/train" --per_device_train_batch_size 8 --gradient_accumulation_steps 1 \
  --num_train_epochs 1 --learning_rate 1e-4 --seed 5 "${q[@]}" >/dev/null 2>&1
$S run --model $M --data "$D/tasks.jsonl" --out "$D/run" --iterations 1 --per_device_train_batch_size 8 \
  --gradient_accumulation_steps 1 --num_train_epochs 1 --learning_rate 1e-4 --max_new_tokens 16 --seed 5 "${q[@]}" >/dev/null 2>&1
cat >"$D/sweep.yaml" <<'EOF'
base:
  iterations: 1
  prompts: 24
  eval_tasks: 16
  options: { per_device_train_batch_size: 8, gradient_accumulation_steps: 1, num_train_epochs: 1, max_new_tokens: 16 }
seeds: [1]
baseline: sft
arms:
  - name: spin
    options: { loss_type: sigmoid, beta: 0.1 }
  - name: sft
    options: { objective: sft }
EOF
$S sweep "$D/sweep.yaml" --out "$D/sweep" "${q[@]}" >/dev/null 2>&1

# metrics lines without their wall-clock fields
strip() { node -e '
  const fs = require("fs");
  for (const l of fs.readFileSync(process.argv[1], "utf8").split("\n").filter(Boolean)) {
    const r = JSON.parse(l);
    for (const k of Object.keys(r)) if (/time|sec|per_s\b|per_s$|elapsed|tok\/s|date/i.test(k)) delete r[k];
    console.log(JSON.stringify(r));
  }' "$1" | sha256sum | cut -c1-16; }
h() { sha256sum "$1" | cut -c1-16; }
echo "device $DEV"
echo "generate greedy $(h "$D/greedy.jsonl")"
echo "generate sampled $(h "$D/sampled.jsonl")"
echo "score $(h "$D/scores.jsonl")"
echo "train model $(h "$D/train/model/model.safetensors")"
echo "train metrics $(strip "$D/train/metrics.jsonl")"
for f in $(cd "$D/run" && find . -name model.safetensors -o -name generated.json -o -name ref_logps.json | sort); do
  echo "run $f $(h "$D/run/$f")"
done
echo "run metrics $(strip "$D/run/metrics.jsonl")"
for f in $(cd "$D/sweep" && find . -name model.safetensors -o -name eval.json -o -name generated.json | sort); do
  echo "sweep $f $(h "$D/sweep/$f")"
done
