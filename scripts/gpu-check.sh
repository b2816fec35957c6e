#!/usr/bin/env bash
# The CUDA backend's checks on a Linux GPU box (driver, CUDA 12/13 toolkit with nvcc and
# compute-sanitizer; Node through $NODE or on PATH). Under 8 minutes:
#   1. builds the addon with the CUDA kernels for sm_90 (CUDA_ARCH=86 etc. for other GPUs);
#   2. runs the op and model tests on `cuda` (each compares with the float64 references and the CPU
#      backend; the PyTorch comparisons run where python3 has torch);
#   3. runs compute-sanitizer memcheck and racecheck over the loss-family and attention tests;
# and writes one results file: $OUT/gpu-check.txt when OUT is set, else ./gpu-check.txt.
# Without a GPU (no driver or no device) it says so and exits 0: there is nothing to check.
set -uo pipefail
cd "$(dirname "$0")/.."
RESULTS="${OUT:-.}/gpu-check.txt"

if [ ! -e /proc/driver/nvidia/version ] || ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
  echo "gpu-check: no NVIDIA GPU here (no driver loaded, or nvidia-smi sees no device): nothing to check; the CUDA kernels are tested through the emulator (SPINLM_TEST_BACKENDS=cuda-emu)."
  exit 0
fi
NODE="${NODE:-$(command -v node || true)}"
if [ -z "$NODE" ]; then
  echo "gpu-check: no Node.js (set NODE=/path/to/node): the tests need it" >&2
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

step() {  # step NAME COMMAND...: runs, records the last lines and the exit code
  local name="$1"; shift
  echo "== $name" | tee -a "$RESULTS"
  local start=$SECONDS
  "$@" > "/tmp/gpu-check-$name.log" 2>&1
  local rc=$?
  tail -n 15 "/tmp/gpu-check-$name.log" >> "$RESULTS"
  echo "-- $name: exit $rc in $((SECONDS - start)) s" | tee -a "$RESULTS"
  [ $rc -eq 0 ] || status=1
}

step build npx cmake-js rebuild --out build-cmake --CDCMAKE_CUDA_ARCHITECTURES="$ARCH"
export SPINLM_ADDON=build-cmake/Release/spinlm.node
OPS=(test/loss_kernels.test.ts test/bf16.test.ts test/model_ops.test.ts test/optimizer.test.ts test/native_errors.test.ts)
MODEL=(test/loss_torch.test.ts test/llama.test.ts test/llama_torch.test.ts test/decoder.test.ts test/generate.test.ts)
step info "$NODE" bin/spinlm.js info
step ops env SPINLM_TEST_BACKENDS=cuda "$NODE" --import tsx --test --test-concurrency=1 "${OPS[@]}"
step model env SPINLM_TEST_BACKENDS=cuda "$NODE" --import tsx --test --test-concurrency=1 "${MODEL[@]}"
if command -v compute-sanitizer >/dev/null 2>&1; then
  for tool in memcheck racecheck; do
    step "sanitizer-$tool" env SPINLM_TEST_BACKENDS=cuda compute-sanitizer --tool "$tool" --error-exitcode 1 --target-processes all \
      "$NODE" --import tsx --test --test-concurrency=1 test/loss_kernels.test.ts test/model_ops.test.ts
  done
else
  echo "== compute-sanitizer not found: memcheck/racecheck skipped" | tee -a "$RESULTS"
  status=1
fi
echo "gpu-check: $([ $status -eq 0 ] && echo passed || echo FAILED); results in $RESULTS"
exit $status
