#!/usr/bin/env bash
# System packages spinlm needs on Debian 12 (bookworm).
#   bash scripts/install-deps.sh          what building and running spinlm needs (`npm ci && npm run demo`):
#                                         a C++ toolchain and python3 for node-gyp, pkg-config and OpenBLAS
#   bash scripts/install-deps.sh --test   what only the tests and benchmarks add (scripts/install-test-deps.sh):
#                                         Open MPI for the multi-process tests (spinlm_comm is built when mpicc is found),
#                                         cmake for the cmake-js build, Boost.Context for the CUDA emulator, PyTorch and numpy as the test oracle
#                                         and benchmark peer, jinja2 (renders chat templates as transformers does: the chat
#                                         tests' oracle), the Vulkan loader and Mesa 25's lavapipe
#                                         (bookworm-backports) on which the WebGPU tests run
# Idempotent; run as root (or through sudo when available).
set -euo pipefail
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
case "${1:-}" in
  "") PART="runtime"; PKGS=(build-essential python3 pkg-config libopenblas-dev libopenblas0) ;;
  --test) PART="test"; PKGS=(cmake libboost-context-dev python3-torch python3-numpy python3-jinja2 libopenmpi-dev openmpi-bin libvulkan1) ;;
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
if [ "$PART" = test ]; then
  # The WebGPU tests run on Mesa's CPU Vulkan driver (lavapipe). Debian 12's own Mesa (22.3) is
  # refused by Dawn; Mesa 25 from bookworm-backports works (docs/toolchain.md, docs/webgpu.md).
  if [ ! -e /usr/share/vulkan/icd.d/lvp_icd.json ] || ! dpkg-query -W -f='${Version}' mesa-vulkan-drivers 2>/dev/null | grep -q bpo; then
    echo "install-deps (test): installing mesa-vulkan-drivers from bookworm-backports (lavapipe for the WebGPU tests)"
    if [ ! -e /etc/apt/sources.list.d/backports.sources ] && ! grep -rqs bookworm-backports /etc/apt/sources.list /etc/apt/sources.list.d/; then
      if [ -e /etc/apt/sources.list.d/debian.sources ]; then
        awk 'BEGIN{RS="";ORS="\n"} NR==1' /etc/apt/sources.list.d/debian.sources | grep -v '^#' \
          | sed 's/^Suites:.*/Suites: bookworm-backports/' | $SUDO tee /etc/apt/sources.list.d/backports.sources >/dev/null
      else
        echo 'deb http://deb.debian.org/debian bookworm-backports main' | $SUDO tee /etc/apt/sources.list.d/backports.list >/dev/null
      fi
    fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends -t bookworm-backports mesa-vulkan-drivers
  fi
fi
