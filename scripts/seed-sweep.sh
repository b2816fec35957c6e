#!/usr/bin/env bash
# Runs every randomized test file (those that draw their inputs through withSeed) once per seed, on
# the backends SPINLM_TEST_BACKENDS names (default: the CPU), and lists the seeds that failed.
# A randomized test must pass for every seed; this is how that is checked before a change lands.
#   bash scripts/seed-sweep.sh [count=50] [first-seed=random] [test files...]
# Writes one line per seed to $SEED_SWEEP_LOG (default seed-sweep.log: seed, result, seconds, and what
# failed); exit 1 if any seed failed.
set -uo pipefail
cd "$(dirname "$0")/.."
count=${1:-50}
first=${2:-$(( (RANDOM << 15 | RANDOM) ))}
shift 2 2>/dev/null || shift $#
files=("$@")
if [ ${#files[@]} -eq 0 ]; then mapfile -t files < <(grep -l withSeed test/*.test.ts); fi
export SPINLM_TEST_BACKENDS=${SPINLM_TEST_BACKENDS:-cpu}
log=${SEED_SWEEP_LOG:-seed-sweep.log}
: > "$log"
failed=0
echo "seed sweep: $count seeds from $first on ${SPINLM_TEST_BACKENDS}, ${#files[@]} files" | tee -a "$log"
for ((k = 0; k < count; k++)); do
  seed=$(( (first + k * 7919) % 4294967296 ))
  t0=$(date +%s)
  if out=$(SPINLM_TEST_SEED=$seed node --import tsx --test --test-concurrency=1 "${files[@]}" 2>&1); then
    echo "$seed ok $(( $(date +%s) - t0 ))s" | tee -a "$log"
  else
    failed=$((failed + 1))
    echo "$seed FAILED $(( $(date +%s) - t0 ))s" | tee -a "$log"
    # each failing test's name and the first lines of its error
    echo "$out" | grep -A6 -E "^\s*not ok" | grep -vE "^\s*(---|duration_ms|location|failureType|type:|--$)" | head -24 >> "$log"
  fi
done
echo "seed sweep: $failed of $count seeds failed" | tee -a "$log"
[ "$failed" -eq 0 ]
