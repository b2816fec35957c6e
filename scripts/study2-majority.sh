#!/usr/bin/env bash
# The second study's majority-of-8 measure (docs/science.md, "Second study"): `spinlm eval` of θ0 and of
# every (arm, seed) run's last model on the first N held-out problems, 8 solutions sampled at T 0.7
# (final-answer accuracy of their most frequent final answer), then the table: mean over seeds, and the
# difference to the baseline arm paired by seed with its standard error (the sweep's own statistics,
# src/spin/sweep.ts). The sweep's table has greedy accuracy for every iteration; this adds the vote for
# the last one (8 generations per problem: too dear for every iteration).
#   bash scripts/study2-majority.sh STUDY_DIR [N=200] [--table]
# STUDY_DIR holds theta0/, heldout.jsonl and sweep/ (examples/study2.yaml's layout); results go to
# STUDY_DIR/majority/ (theta0.json, ARM-seed-S.json: `spinlm eval`'s JSON). Finished files are kept, so
# a rerun resumes; the runs it waits for are those the sweep has not finished. --table only prints.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
dir=${1:?usage: study2-majority.sh STUDY_DIR [N] [--table]}
n=${2:-200}
sweep="$dir/sweep"
# the sweep's own record: its arms, seeds, last iteration (0-based) and baseline, one per line
{ read -r arms; read -r seeds; read -r last; read -r baseline; } < <(node -e '
const r = require(process.argv[1]);
console.log([r.arms.map((a) => a.name).join(" "), r.seeds.join(" "), r.iterations - 1, r.baseline].join("\n"));
' "$(realpath "$sweep/sweep.resolved.json")")
mkdir -p "$dir/majority"
if [ "${3:-}" != "--table" ]; then
  head -n "$n" "$dir/heldout.jsonl" > "$dir/majority/heldout-$n.jsonl"
  ev() { # MODEL OUT
    [ -f "$2" ] && return 0
    SPINLM_NUM_THREADS=${SPINLM_NUM_THREADS:-1} node "$root/bin/spinlm.js" eval --model "$1" --data "$dir/majority/heldout-$n.jsonl" \
      --template instruction --max_new_tokens 128 --majority_samples 8 --majority_temperature 0.7 --seed 1 --device cpu \
      --out "$2.partial" --quiet
    mv "$2.partial" "$2"
  }
  ev "$dir/theta0" "$dir/majority/theta0.json"
  for s in $seeds; do for a in $arms; do
    d="$sweep/$a/seed-$s/iter-$last"
    until [ -f "$d/eval.json" ]; do sleep 30; done
    ev "$d/model" "$dir/majority/$a-seed-$s.json"
  done; done
fi
# the table: greedy and majority-of-8 accuracy on the same N problems, mean ± SE over seeds, Δ vs the baseline ± paired SE
cd "$root" && node --import tsx -e '
import { readFileSync, existsSync } from "node:fs";
import { meanSe, pairedDifference } from "./src/spin/sweep.ts";
const [dir, arms, seeds, baseline] = process.argv.slice(1);
const read = (f) => (existsSync(f) ? JSON.parse(readFileSync(f, "utf8")) : null);
const t0 = read(`${dir}/majority/theta0.json`);
const per = (arm, key) => Object.fromEntries(seeds.split(" ").flatMap((s) => { const e = read(`${dir}/majority/${arm}-seed-${s}.json`); return e ? [[s, e[key]]] : []; }));
const fx = (x, d = 3) => (x == null ? "-" : x.toFixed(d));
const sx = (x, d = 3) => (x == null ? "-" : `${x >= 0 ? "+" : ""}${x.toFixed(d)}`);
const cell = (arm, key) => {
  const v = per(arm, key);
  if (!Object.keys(v).length) return ["-", "-"];
  const m = meanSe(v);
  const d = arm === baseline ? null : pairedDifference(v, per(baseline, key));
  return [`${fx(m.mean)} ± ${fx(m.se)}`, d ? `${sx(d.mean)} ± ${fx(d.se)}` : "(baseline)"];
};
console.log(`| arm | seeds | greedy accuracy | Δ vs ${baseline} | majority of 8 (T 0.7) | Δ vs ${baseline} |`);
console.log("| --- | --- | --- | --- | --- | --- |");
if (t0) console.log(`| θ0 | - | ${fx(t0.exact_match)} | | ${fx(t0.majority_at_8)} | |`);
for (const a of arms.split(" ")) console.log(`| ${a} | ${Object.keys(per(a, "exact_match")).length} | ${cell(a, "exact_match").join(" | ")} | ${cell(a, "majority_at_8").join(" | ")} |`);
' "$(realpath "$dir")" "$arms" "$seeds" "$baseline"
