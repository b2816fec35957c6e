#!/usr/bin/env bash
# Prints the ptxas resource table (registers, spills, shared memory) of every CUDA kernel for one
# architecture (default sm_90) as Markdown: the table in docs/cuda.md. Needs nvcc; no GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
ARCH=${1:-90}
NVCC=${NVCC:-$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
echo "| file | kernel | registers | spill stores / loads (bytes) | static smem (bytes) |"
echo "| --- | --- | ---: | --- | ---: |"
for f in native/cuda/*.cu; do
  "$NVCC" -std=c++17 -O3 --Werror all-warnings -Xptxas -v -gencode "arch=compute_${ARCH},code=sm_${ARCH}" -Inative -c "$f" -o "$tmp/x.o" 2>"$tmp/log"
  awk -v file="$(basename "$f")" '
    /Compiling entry function/ { match($0, /\x27[^\x27]+\x27/); name = substr($0, RSTART + 1, RLENGTH - 2) }
    /spill stores/ { split($0, a, ","); st = a[2]; ld = a[3]; gsub(/[^0-9]/, "", st); gsub(/[^0-9]/, "", ld) }
    /Used [0-9]+ registers/ {
      match($0, /Used [0-9]+ registers/); regs = substr($0, RSTART + 5, RLENGTH - 15)
      smem = 0; if (match($0, /[0-9]+ bytes smem/)) smem = substr($0, RSTART, RLENGTH - 11)
      cmd = "c++filt \"" name "\""; cmd | getline dem; close(cmd)
      sub(/^void /, "", dem); sub(/^spinlm::cuda::\(anonymous namespace\)::/, "", dem); sub(/\(.*$/, "", dem)
      printf "| %s | `%s` | %s | %s / %s | %s |\n", file, dem, regs, st, ld, smem
    }' "$tmp/log"
done
