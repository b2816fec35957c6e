#!/usr/bin/env bash
# System packages spinlm needs on Debian 12 (bookworm): a C++ toolchain for the native addon,
# OpenBLAS for the CPU matrix products, PyTorch (with OpenBLAS) as the test oracle and benchmark peer.
# Idempotent; run as root (or through sudo when available).
set -euo pipefail
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
PKGS=(build-essential python3 cmake pkg-config libopenblas-dev libopenblas0 python3-torch python3-numpy)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "install-deps: installing ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
else
  echo "install-deps: all system packages present"
fi
