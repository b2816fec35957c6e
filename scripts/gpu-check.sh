#!/usr/bin/env bash
# The GPU kit: every check of the CUDA backend on a GPU box, in order of value, from a bundle brought
# along (scripts/gpu-kit/pack.sh writes it in .gpu/: node, the node_modules the steps load, the addon
# with sm_90 kernels + PTX, each xz-compressed). docs/cuda.md, "The GPU kit", says how to run it and what it writes.
#
#   bash scripts/gpu-check.sh [--out DIR] [--only STEPS] [--plan] [--emu]
#     --out DIR     results go to DIR (default: $OUT, else ./gpu-check): gpu-check.md (one results file),
#                   logs.txt (every step's whole log), rows.jsonl (each measurement as it is made);
#                   all three are rewritten after every step, so a time-out loses only the step it cut
#     --only STEPS  comma list of step names or groups (a-f) to (re)run, e.g. --only c,bench
#     --plan        prints every step with its time budget, the bundle's size and whether it is complete
#                   and current; runs nothing (no GPU needed)
#     --emu         the dry run: the same steps at tiny shapes on the CUDA emulator (build-cmake's
#                   spinlm_cuda_emu.node), sanitizer steps reported as skipped; CI runs it
# Without a GPU (and without --emu or --plan) it says so and exits 0.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
KIT=.gpu
OUTDIR="${OUT:-gpu-check}"
ONLY=""
PLAN=0
EMU=0
while [ $# -gt 0 ]; do
  case "$1" in
    --out) OUTDIR="$2"; shift 2 ;;
    --only) ONLY="$2"; shift 2 ;;
    --plan) PLAN=1; shift ;;
    --emu) EMU=1; shift ;;
    *) echo "gpu-check: unknown argument $1 (see the head of scripts/gpu-check.sh)" >&2; exit 2 ;;
  esac
done

# name|group|budget on a GPU (s)|budget in the dry run (s)|what it shows
STEPS=(
  "versions|a|15|60|GPU, driver, nvcc, PyTorch, transformers, compute-sanitizer, node"
  "info|a|5|15|spinlm info: the backend, cuBLAS, driver and runtime versions"
  "smoke|a|10|120|every op once on tiny shapes, SPINLM_CUDA_SYNC=1 (a fault names its kernel)"
  "ops|b|50|1800|op tests on the device against float64 and the CPU backend"
  "model|b|60|1800|model tests: Llama family vs the float64 oracle, decoder, generation"
  "families|c|30|180|each family's logits, S, SPIN loss and gradients vs transformers"
  "memcheck|d|20|5|compute-sanitizer memcheck over the smoke run"
  "racecheck|d|20|5|compute-sanitizer racecheck over the smoke run"
  "synccheck|d|20|5|compute-sanitizer synccheck over the smoke run"
  "bench|e|70|300|bench/gpu.bench.ts: attention, GEMMs, decode, head, SPIN step, generation, loss vs PyTorch and the roofline, rows streamed"
  "webgpu|f|60|5|op tests on WebGPU through the GPU's Vulkan driver, if time is left"
)
field() { echo "$1" | cut -d'|' -f"$2"; }
budget() { if [ $EMU = 1 ]; then field "$1" 4; else field "$1" 3; fi; }
selected() {  # selected NAME GROUP
  [ -z "$ONLY" ] && return 0
  local x
  for x in ${ONLY//,/ }; do [ "$x" = "$1" ] || [ "$x" = "$2" ] && return 0; done
  return 1
}

human() { numfmt --to=iec --suffix=B "$1" 2>/dev/null || echo "$1 B"; }
bundle_report() {  # prints the bundle's files and sizes; returns 1 when something is missing or stale
  local ok=0 f tree
  tree=$(git ls-files -z | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1)
  echo "source tree (tracked files): $(human "$tree")"
  for f in node.xz modules.tar.xz spinlm.node.xz MANIFEST.json; do
    if [ -f "$KIT/$f" ]; then echo "  $KIT/$f: $(human "$(stat -c %s "$KIT/$f")")"; else echo "  $KIT/$f: MISSING"; ok=1; fi
  done
  local total=$((tree + $(cat "$KIT"/node.xz "$KIT"/modules.tar.xz "$KIT"/spinlm.node.xz 2>/dev/null | wc -c)))
  echo "bundle + source tree: $(human "$total") (limit 60 MiB)"
  [ "$total" -le $((60 * 1024 * 1024)) ] || { echo "  over the 60 MiB limit"; ok=1; }
  if [ -f "$KIT/MANIFEST.json" ]; then
    local want have
    want=$(node -p 'require(process.argv[1]).addon.sources' "$ROOT/$KIT/MANIFEST.json" 2>/dev/null)
    have="$(bash scripts/gpu-kit/sources-hash.sh "$(node -p 'require(process.argv[1]).addon.arch' "$ROOT/$KIT/MANIFEST.json")")"
    if [ "$want" = "$have" ]; then echo "  addon built from these native sources (commit $(node -p 'require(process.argv[1]).commit.slice(0,10)' "$ROOT/$KIT/MANIFEST.json"))"
    else echo "  addon STALE: native/ changed since it was built (bash scripts/gpu-kit/pack.sh)"; ok=1; fi
    for f in node.xz modules.tar.xz spinlm.node.xz; do
      [ -f "$KIT/$f" ] || continue
      [ "$(sha256sum "$KIT/$f" | cut -c1-64)" = "$(node -p "require(process.argv[1])['${f%%.*}'.replace('spinlm','addon')].sha256" "$ROOT/$KIT/MANIFEST.json")" ] \
        || { echo "  $KIT/$f does not match MANIFEST.json"; ok=1; }
    done
  fi
  return $ok
}

if [ $PLAN = 1 ]; then
  total_a_e=0
  printf '%-10s %-5s %8s %8s  %s\n' step group "GPU s" "dry s" "what it shows"
  for s in "${STEPS[@]}"; do
    printf '%-10s %-5s %8s %8s  %s\n' "$(field "$s" 1)" "$(field "$s" 2)" "$(field "$s" 3)" "$(field "$s" 4)" "$(field "$s" 5)"
    case "$(field "$s" 2)" in a|b|c|d|e) total_a_e=$((total_a_e + $(field "$s" 3))) ;; esac
  done
  echo "steps a-e on a GPU: at most ${total_a_e} s (goal <= 300 s: a rerun of the failed steps fits in a 15-minute lease); setup (unpacking) ~10 s"
  bundle_report; rc=$?
  [ $rc = 0 ] && echo "bundle: complete and current" || echo "bundle: INCOMPLETE (bash scripts/gpu-kit/pack.sh)"
  exit $rc
fi

if [ $EMU = 0 ] && { [ ! -e /proc/driver/nvidia/version ] || ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; }; then
  echo "gpu-check: no NVIDIA GPU here (no driver loaded, or nvidia-smi sees no device): nothing to check; the CUDA kernels are tested through the emulator (bash scripts/gpu-check.sh --emu)."
  exit 0
fi

mkdir -p "$OUTDIR"
OUTDIR="$(cd "$OUTDIR" && pwd)"
RESULTS="$OUTDIR/gpu-check.md"
LOGS="$OUTDIR/logs.txt"
ROWS="$OUTDIR/rows.jsonl"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
[ -n "$ONLY" ] && [ -f "$RESULTS" ] || : > "$RESULTS"   # --only appends to the earlier results
[ -n "$ONLY" ] && [ -f "$LOGS" ] || : > "$LOGS"
[ -n "$ONLY" ] && [ -f "$ROWS" ] || : > "$ROWS"
say() { echo "$*" | tee -a "$RESULTS"; }
setup_t0=$SECONDS

# ---- Node: $NODE, else the bundle's, else PATH's
if [ -z "${NODE:-}" ] && [ -f "$KIT/node.xz" ]; then
  NODE="$WORK/node"
  xz -dc "$KIT/node.xz" > "$NODE" && chmod +x "$NODE" || { echo "gpu-check: cannot unpack $KIT/node.xz" >&2; exit 2; }
fi
NODE="${NODE:-$(command -v node || true)}"
[ -n "$NODE" ] || { echo "gpu-check: no Node.js: set NODE=/path/to/node or bring $KIT/node.xz (bash scripts/gpu-kit/pack.sh)" >&2; exit 2; }
export PATH="$(dirname "$NODE"):/usr/local/cuda/bin:$PATH"
# ---- node_modules: the tree's, else the bundle's (unpacked beside it; a link is made only where none exists)
if [ ! -d node_modules/tsx ]; then
  if [ -f "$KIT/modules.tar.xz" ] && [ ! -e node_modules ]; then
    mkdir -p "$KIT/unpacked" && xz -dc "$KIT/modules.tar.xz" | tar -xf - -C "$KIT/unpacked" && ln -s "$KIT/unpacked/node_modules" node_modules
  fi
  [ -d node_modules/tsx ] || { echo "gpu-check: no node_modules/tsx: run npm ci, or bring $KIT/modules.tar.xz (bash scripts/gpu-kit/pack.sh)" >&2; exit 2; }
fi
# ---- Python with torch: the PATH's python3 first (GPU boxes keep torch in a virtual environment)
for py in python3 /usr/bin/python3; do
  if command -v "$py" >/dev/null 2>&1 && "$py" -c 'import torch' 2>/dev/null; then export SPINLM_PYTHON="$(command -v "$py")"; break; fi
done
# ---- the addon: the bundle's prebuilt one; if it cannot run the GPU, a build into build-gpu (never
# deleting what was brought); the dry run uses the emulator's module
if [ $EMU = 1 ]; then
  BACKEND=cuda-emu
  export SPINLM_TEST_BACKENDS=cuda-emu
  [ -f build-cmake/Release/spinlm_cuda_emu.node ] || { echo "gpu-check --emu: build the emulator first (npx cmake-js rebuild --out build-cmake)" >&2; exit 2; }
else
  BACKEND=cuda
  export SPINLM_TEST_BACKENDS=cuda
  cuda_ok() { SPINLM_ADDON="$1" "$NODE" --import tsx -e "import('./src/backend/cuda/cuda_backend.ts').then(m=>process.exit(m.cudaStatus().available?0:1))" >/dev/null 2>&1; }
  if [ -n "${SPINLM_ADDON:-}" ] && cuda_ok "$SPINLM_ADDON"; then :
  elif [ -f "$KIT/spinlm.node.xz" ] && xz -dc "$KIT/spinlm.node.xz" > "$WORK/spinlm.node" && cuda_ok "$WORK/spinlm.node"; then
    export SPINLM_ADDON="$WORK/spinlm.node"
  else
    echo "gpu-check: the brought addon cannot run the GPU here; building one into build-gpu (cmake-js, CUDA_ARCH=${CUDA_ARCH:-90})" | tee -a "$RESULTS"
    timeout 300 "$NODE" node_modules/cmake-js/bin/cmake-js build --out build-gpu --CDCMAKE_CUDA_ARCHITECTURES="${CUDA_ARCH:-90}" \
      -p "$(nproc)" > "$WORK/build.log" 2>&1
    { echo "===== build (fallback)"; cat "$WORK/build.log"; } >> "$LOGS"
    if cuda_ok "$ROOT/build-gpu/Release/spinlm.node"; then export SPINLM_ADDON="$ROOT/build-gpu/Release/spinlm.node"
    else say "gpu-check: no addon that runs the GPU (fallback build: see logs.txt); the steps below will fail"; fi
  fi
fi
status=0
say "# spinlm gpu-check $(date -u +%FT%TZ) on $BACKEND$([ $EMU = 1 ] && echo ' (dry run: tiny shapes, the CUDA emulator)')"
say "commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown); addon ${SPINLM_ADDON:-emulator}; setup $((SECONDS - setup_t0)) s"

step() {  # step NAME GROUP COMMAND...: under its budget; results, logs and rows written when it ends
  local name="$1" group="$2" spec="" s; shift 2
  for s in "${STEPS[@]}"; do [ "$(field "$s" 1)" = "$name" ] && spec="$s"; done
  selected "$name" "$group" || return 0
  local limit; limit=$(budget "$spec")
  local start=$SECONDS log="$WORK/$name.log"
  say ""
  say "## $name ($group, budget ${limit} s): $(field "$spec" 5)"
  timeout --kill-after=5 "$limit" "$@" > "$log" 2>&1
  local rc=$?
  [ $rc -eq 124 ] || [ $rc -eq 137 ] && say "-- $name: stopped at its budget of $limit s"
  { echo '```'; tail -n "${TAIL:-20}" "$log"; echo '```'; } >> "$RESULTS"
  { echo "===== $name (exit $rc, $((SECONDS - start)) s)"; cat "$log"; } >> "$LOGS"
  say "-- $name: $([ $rc -eq 0 ] && echo ok || echo "FAILED (exit $rc)") in $((SECONDS - start)) s"
  [ $rc -eq 0 ] || status=1
}
skip() {  # skip NAME GROUP WHY
  selected "$1" "$2" || return 0
  say ""; say "## $1 ($2): skipped: $3"
}

TSX=("$NODE" --import tsx)
TEST=("${TSX[@]}" --test --test-concurrency=1)
OPS=(test/loss_kernels.test.ts test/head.test.ts test/bf16.test.ts test/model_ops.test.ts test/gemma_layers.test.ts test/attention_window.test.ts test/attention_softcap.test.ts test/rope_scaling.test.ts test/optimizer.test.ts test/native_errors.test.ts
  test/attention_spans.test.ts test/attention_spans_cuda.test.ts test/flash_attention_cuda.test.ts test/flash_attention_backward_cuda.test.ts
  test/bf16_matmul.test.ts test/mixed_precision.test.ts test/sample_tokens.test.ts test/column_reductions.test.ts)
MODEL=(test/loss_torch.test.ts test/llama.test.ts test/llama_torch.test.ts test/families.test.ts test/decoder.test.ts test/generate.test.ts)
versions() {
  if [ $EMU = 0 ]; then nvidia-smi --query-gpu=name,compute_cap,memory.total,driver_version --format=csv; fi
  command -v nvcc >/dev/null && nvcc --version | tail -1 || echo "nvcc: not here"
  echo "node $("$NODE" --version)"
  "${SPINLM_PYTHON:-python3}" bench/peer/hf_families.py versions || echo "python: no torch"
  command -v compute-sanitizer >/dev/null && compute-sanitizer --version | tail -1 || echo "compute-sanitizer: not here"
  command -v ncu >/dev/null && echo "ncu: $(ncu --version | tail -1)" || echo "ncu: not here"
}
export -f versions 2>/dev/null
step versions a bash -c "$(declare -f versions); EMU=$EMU NODE='$NODE' versions"
step info a "$NODE" bin/spinlm.js info
step smoke a env SPINLM_CUDA_SYNC=1 "${TSX[@]}" bench/gpu_smoke.ts --backend "$BACKEND" --jsonl "$ROWS"
step ops b "${TEST[@]}" "${OPS[@]}"
step model b "${TEST[@]}" "${MODEL[@]}"
step families c "${TSX[@]}" bench/gpu_families.ts --backend "$BACKEND" --jsonl "$ROWS"
for tool in memcheck racecheck synccheck; do
  if [ $EMU = 1 ]; then skip "$tool" d "compute-sanitizer needs a GPU (dry run on the emulator, whose own checks run in the smoke and test steps)"
  elif ! command -v compute-sanitizer >/dev/null 2>&1; then skip "$tool" d "compute-sanitizer is not installed on this box"
  else
    step "$tool" d compute-sanitizer --tool "$tool" --error-exitcode 1 --target-processes all "${TSX[@]}" bench/gpu_smoke.ts --backend cuda
  fi
done
if [ $EMU = 1 ]; then
  TAIL=30 step bench e "${TSX[@]}" bench/gpu.bench.ts --backend cuda-emu --size tiny --steps 2 --jsonl "$ROWS"
else
  TAIL=30 step bench e "${TSX[@]}" bench/gpu.bench.ts --steps 2 --jsonl "$ROWS" --json "$OUTDIR/gpu-bench.json"
fi
if [ $EMU = 1 ]; then skip webgpu f "the dry run does not repeat the WebGPU tests (npm test runs them on lavapipe)"
elif ldconfig -p 2>/dev/null | grep -q libvulkan.so.1 && [ -d node_modules/webgpu ]; then
  step webgpu f env SPINLM_TEST_BACKENDS=webgpu "${TEST[@]}" test/loss_kernels.test.ts test/model_ops.test.ts
else skip webgpu f "no Vulkan loader (libvulkan.so.1) or no webgpu package here (docs/webgpu.md says how to bring them)"
fi
say ""
say "gpu-check: $([ $status -eq 0 ] && echo passed || echo FAILED); results $RESULTS, logs $LOGS, rows $ROWS"
exit $status
