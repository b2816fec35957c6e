#!/usr/bin/env bash
# System packages the tests and benchmarks add on Debian 12 to those of scripts/install-deps.sh:
# cmake (the cmake-js build), PyTorch and numpy (the test oracle and the benchmark peer), and the
# Vulkan loader with Mesa 25's lavapipe from bookworm-backports (the WebGPU backend's tests run on it).
# Run scripts/install-deps.sh too: the tests build and load the addon.
set -euo pipefail
exec bash "$(dirname "$0")/install-deps.sh" --test
