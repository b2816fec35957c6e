#!/usr/bin/env bash
# The CUDA backend's checks on a Linux GPU box (driver, CUDA 12/13 toolkit with nvcc, cmake and
# compute-sanitizer, cuBLAS; Python with PyTorch for the peers). Node: $NODE, else .gpu/node.xz (an
# xz-compressed node binary carried with the tree, unpacked to a temporary file), else node on PATH;
# node_modules must be installed. Under 8 minutes (each step has a time limit):
#   1. builds the addon with the CUDA kernels for sm_90 (CUDA_ARCH=86 etc. for other GPUs);
#   2. runs the op and model tests on `cuda` (each compares with the float64 references and the CPU
#      backend; the PyTorch comparisons run where python3 has torch);
#   3. runs compute-sanitizer memcheck and racecheck over the loss-family tests;
#   4. runs the GPU benchmarks (bench/gpu.bench.ts: logprobGather vs copy bandwidth and PyTorch, the
#      1.1B SPIN step, generation) and appends their table;
# and writes one results file: $OUT/gpu-check.txt when OUT is set, else ./gpu-check.txt (the
# benchmarks' JSON beside it as gpu-bench.json).
# Without a GPU (no driver or no device) it says so and exits 0: there is nothing to check.
set -uo pipefail
cd "$(dirname "$0")/.."
RESULTS="${OUT:-.}/gpu-check.txt"

if [ ! -e /proc/driver/nvidia/version ] || ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
  echo "gpu-check: no NVIDIA GPU here (no driver loaded, or nvidia-smi sees no device): nothing to check; the CUDA kernels are tested through the emulator (SPINLM_TEST_BACKENDS=cuda-emu)."
  exit 0
fi
if [ -z "${NODE:-}" ] && [ -f .gpu/node.xz ]; then
  NODE="$(mktemp -d)/node"
  xz -dc .gpu/node.xz > "$NODE" && chmod +x "$NODE" || { echo "gpu-check: cannot unpack .gpu/node.xz" >&2; exit 2; }
fi
NODE="${NODE:-$(command -v node || true)}"
if [ -z "$NODE" ]; then
  echo "gpu-check: no Node.js (set NODE=/path/to/node, or carry .gpu/node.xz: see docs/cuda.md): the tests need it" >&2
  exit 2
fi
export PATH="$(dirname "$NODE"):/usr/local/cuda/bin:$PATH"
ARCH="${CUDA_ARCH:-90}"
status=0
{
  echo "spinlm gpu-check $(date -u +%FT%TZ)"
  nvidia-smi --query-gpu=name,compute_cap,memory.total,driver_version --format=csv
  nvcc --version | tail -1
} | tee "$RESULTS"

step() {  # step NAME SECONDS COMMAND...: runs under a time limit, records the last lines and the exit code
  local name="$1" limit="$2"; shift 2
  echo "== $name" | tee -a "$RESULTS"
  local start=$SECONDS
  timeout --kill-after=10 "$limit" "$@" > "/tmp/gpu-check-$name.log" 2>&1
  local rc=$?
  [ $rc -eq 124 ] && echo "-- $name: stopped at its limit of $limit s" >> "$RESULTS"
  tail -n "${TAIL:-15}" "/tmp/gpu-check-$name.log" >> "$RESULTS"
  echo "-- $name: exit $rc in $((SECONDS - start)) s" | tee -a "$RESULTS"
  [ $rc -eq 0 ] || status=1
}

step build 110 "$NODE" node_modules/cmake-js/bin/cmake-js rebuild --out build-cmake --CDCMAKE_CUDA_ARCHITECTURES="$ARCH" -p "$(nproc)"
export SPINLM_ADDON=build-cmake/Release/spinlm.node
OPS=(test/loss_kernels.test.ts test/bf16.test.ts test/model_ops.test.ts test/optimizer.test.ts test/native_errors.test.ts)
MODEL=(test/loss_torch.test.ts test/llama.test.ts test/llama_torch.test.ts test/decoder.test.ts test/generate.test.ts)
step info 15 "$NODE" bin/spinlm.js info
step ops 60 env SPINLM_TEST_BACKENDS=cuda "$NODE" --import tsx --test --test-concurrency=1 "${OPS[@]}"
step model 60 env SPINLM_TEST_BACKENDS=cuda "$NODE" --import tsx --test --test-concurrency=1 "${MODEL[@]}"
if command -v compute-sanitizer >/dev/null 2>&1; then
  for tool in memcheck racecheck; do
    step "sanitizer-$tool" 40 env SPINLM_TEST_BACKENDS=cuda compute-sanitizer --tool "$tool" --error-exitcode 1 --target-processes all \
      "$NODE" --import tsx --test --test-concurrency=1 test/loss_kernels.test.ts
  done
else
  echo "== compute-sanitizer not found: memcheck/racecheck skipped" | tee -a "$RESULTS"
  status=1
fi
TAIL=30 step bench 120 "$NODE" --import tsx bench/gpu.bench.ts --steps 2 --json "${OUT:-.}/gpu-bench.json"
echo "gpu-check: $([ $status -eq 0 ] && echo passed || echo FAILED); results in $RESULTS"
exit $status
