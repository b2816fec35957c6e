#!/usr/bin/env bash
# The hash of what the kit's addon is built from: native/ and CMakeLists.txt as committed plus any
# uncommitted change to them, and the CUDA architecture. pack.sh records it in MANIFEST.json;
# gpu-check.sh --plan compares it to say whether the brought addon is current.
#   bash scripts/gpu-kit/sources-hash.sh ARCH
set -euo pipefail
cd "$(dirname "$0")/../.."
(git ls-files -s native CMakeLists.txt; git diff HEAD -- native CMakeLists.txt; echo "arch $1") | sha256sum | cut -c1-16
