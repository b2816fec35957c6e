#!/usr/bin/env bash
# Packs what the GPU kit (scripts/gpu-check.sh) brings to a GPU box, in .gpu/ (git-ignored; name it in
# what travels with the tree):
#   node.xz         this machine's node binary, xz-compressed (GPU boxes have no Node.js)
#   modules.tar.xz  the node_modules the kit's steps load (scripts/gpu-kit/modules.mjs): no npm there
#   spinlm.node.xz  the addon with the CUDA kernels for sm_90 plus compute_90 PTX (newer GPUs JIT it),
#                   cudart and OpenBLAS linked statically, stripped, xz-compressed (28.6 MB -> 2.3 MB):
#                   the box needs only its driver and cuBLAS (PyTorch's wheels carry it), no compiler,
#                   no OpenBLAS headers
#   MANIFEST.json   what each file is, its size and sha256, the commit and the sources' hash the addon
#                   was built from (gpu-check.sh --plan checks the bundle against it)
# Rebuilds only what changed: the addon when native/ or CMakeLists.txt changed (nvcc: minutes), node.xz
# when the node binary changed. CUDA_ARCH=90 by default (sm_90 + compute_90 PTX).
set -euo pipefail
cd "$(dirname "$0")/../.."
K=.gpu
mkdir -p "$K"
ARCH="${CUDA_ARCH:-90}"
NODE_BIN="$(command -v node)"
manifest_get() { [ -f "$K/MANIFEST.json" ] && node -e 'const m=require(process.argv[1]);const v=process.argv[2].split(".").reduce((o,k)=>o?.[k],m);process.stdout.write(v===undefined?"":String(v))' "$PWD/$K/MANIFEST.json" "$1" || true; }
src_hash="$(bash scripts/gpu-kit/sources-hash.sh "$ARCH")"
node_ver="$(node --version)"

if [ "$(manifest_get node.version)" != "$node_ver" ] || [ ! -f "$K/node.xz" ]; then
  echo "gpu-kit pack: node $node_ver -> $K/node.xz"
  xz -T0 -6 -c "$NODE_BIN" > "$K/node.xz.tmp" && mv "$K/node.xz.tmp" "$K/node.xz"
fi

echo "gpu-kit pack: node_modules subset -> $K/modules.tar.xz"
node scripts/gpu-kit/modules.mjs > "$K/modules.txt"
# -h: node_modules may be a link (a worktree); the archive holds the files
tar -chf - -T "$K/modules.txt" | xz -T0 -6 > "$K/modules.tar.xz.tmp" && mv "$K/modules.tar.xz.tmp" "$K/modules.tar.xz"

if [ "$(manifest_get addon.sources)" != "$src_hash" ] || [ ! -f "$K/spinlm.node.xz" ]; then
  NVCC="$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)"
  [ -x "$NVCC" ] || { echo "gpu-kit pack: no nvcc here: cannot build the addon's CUDA kernels (install the CUDA toolkit)" >&2; exit 2; }
  echo "gpu-kit pack: addon for sm_$ARCH (+ PTX), OpenBLAS and cudart static -> $K/spinlm.node.xz (nvcc: minutes)"
  PATH="$(dirname "$NVCC"):$PATH" npx cmake-js rebuild --out build-gpukit --CDCMAKE_CUDA_ARCHITECTURES="$ARCH" \
    --CDSPINLM_OPENBLAS=static --CDSPINLM_CUDA_EMU_ADDON=OFF --CDSPINLM_HIDDEN=ON > "$K/pack-build.log" 2>&1 \
    || { tail -30 "$K/pack-build.log" >&2; echo "gpu-kit pack: the addon build failed (log: $K/pack-build.log)" >&2; exit 1; }
  strip --strip-unneeded -o "$K/spinlm.node.tmp" build-gpukit/Release/spinlm.node
  xz -T0 -6 -c "$K/spinlm.node.tmp" > "$K/spinlm.node.xz" && rm -f "$K/spinlm.node.tmp" "$K/spinlm.node"
fi

node - "$K" "$src_hash" "$node_ver" "$ARCH" <<'JS'
const { createHash } = require('node:crypto');
const { readFileSync, statSync, writeFileSync } = require('node:fs');
const { execFileSync } = require('node:child_process');
const [K, sources, version, arch] = process.argv.slice(2);
const file = (f) => ({ bytes: statSync(`${K}/${f}`).size, sha256: createHash('sha256').update(readFileSync(`${K}/${f}`)).digest('hex') });
const commit = execFileSync('git', ['rev-parse', 'HEAD'], { encoding: 'utf8' }).trim();
const m = {
  commit,
  node: { version, ...file('node.xz') },
  modules: { ...file('modules.tar.xz'), packages: readFileSync(`${K}/modules.txt`, 'utf8').trim().split('\n').length },
  addon: { sources, arch, ...file('spinlm.node.xz') },
};
writeFileSync(`${K}/MANIFEST.json`, JSON.stringify(m, null, 2) + '\n');
JS
echo "gpu-kit pack: done; bash scripts/gpu-check.sh --plan shows the bundle and the steps"
ls -la "$K"
