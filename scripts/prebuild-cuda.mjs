// The second half of `npm run prebuild` on linux-x64: prebuildify has built the CPU-only addon with
// node-gyp and named it (prebuilds/linux-x64/*.node); where nvcc exists, this rebuilds the addon with
// cmake-js (CMakeLists.txt) with the CUDA kernels for sm_80/86/89/90 + compute_90 PTX, cudart linked
// statically and OpenBLAS statically (SPINLM_OPENBLAS=static), stripped, and puts it in place of
// prebuildify's file. The result needs no CUDA toolkit: only the driver (libcuda, which the static
// cudart opens at run time) and cuBLAS (opened with dlopen when the backend starts). Without nvcc
// the prebuilt binary stays CPU-only and this says so.
import { execFileSync } from 'node:child_process';
import { existsSync, readdirSync } from 'node:fs';
import { join } from 'node:path';

const root = new URL('..', import.meta.url).pathname;
if (process.platform !== 'linux' || process.arch !== 'x64') process.exit(0);
const nvcc = ['nvcc', '/usr/local/cuda/bin/nvcc'].find((c) => {
  try {
    execFileSync(c, ['--version'], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
});
if (!nvcc) {
  console.log('spinlm prebuild: no nvcc here: the linux-x64 prebuilt binary is CPU-only');
  process.exit(0);
}
const dir = join(root, 'prebuilds', 'linux-x64');
const files = existsSync(dir) ? readdirSync(dir).filter((f) => f.endsWith('.node')) : [];
if (files.length !== 1) {
  console.error(`spinlm prebuild: expected prebuildify's one binary in ${dir}, found ${files.length}`);
  process.exit(1);
}
const out = join(root, 'build-prebuild');
const env = { ...process.env, PATH: `${process.env.PATH}:/usr/local/cuda/bin` };
execFileSync(
  process.execPath,
  [
    join(root, 'node_modules', 'cmake-js', 'bin', 'cmake-js'),
    'rebuild',
    '--out',
    out,
    '--CDSPINLM_OPENBLAS=static',
    '--CDSPINLM_CUDA_EMU_ADDON=OFF',
    '--CDSPINLM_HIDDEN=ON',
  ],
  { cwd: root, env, stdio: ['ignore', 'inherit', 'inherit'] },
);
execFileSync('strip', ['--strip-unneeded', '-o', join(dir, files[0]), join(out, 'Release', 'spinlm.node')], { stdio: 'inherit' });
console.log(
  `spinlm prebuild: ${join('prebuilds', 'linux-x64', files[0])} now holds the CUDA kernels (cmake-js, cudart and OpenBLAS static)`,
);
