#!/usr/bin/env bash
# System packages spinlm needs on Debian 12 (bookworm).
#   bash scripts/install-deps.sh          what building and running spinlm needs (`npm ci && npm run demo`):
#                                         a C++ toolchain and python3 for node-gyp, pkg-config and OpenBLAS
#   bash scripts/install-deps.sh --test   what only the tests and benchmarks add (scripts/install-test-deps.sh):
#                                         Open MPI for the multi-process tests (spinlm_comm is built when mpicc is found),
#                                         cmake for the cmake-js build, Boost.Context for the CUDA emulator, PyTorch and numpy as the test oracle
#                                         and benchmark peer
# Idempotent; run as root (or through sudo when available).
set -euo pipefail
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
case "${1:-}" in
  "") PART="runtime"; PKGS=(build-essential python3 pkg-config libopenblas-dev libopenblas0) ;;
  --test) PART="test"; PKGS=(cmake libboost-context-dev python3-torch python3-numpy libopenmpi-dev openmpi-bin) ;;
  *) echo "install-deps: unknown argument $1 (expected nothing or --test)" >&2; exit 2 ;;
esac
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "install-deps ($PART): installing ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
else
  echo "install-deps ($PART): all system packages present"
fi
