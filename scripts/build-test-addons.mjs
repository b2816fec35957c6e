#!/usr/bin/env node
// `npm test`'s pretest: builds the native modules the tests load beyond the one `npm ci` builds, so the
// README's test command passes on a fresh machine after its install command.
//   - build-cmake/Release/spinlm_cuda_emu.node, the CUDA kernels run on the CPU by the emulator
//     (test/cuda_emu.test.ts, SPINLM_TEST_BACKENDS=cuda-emu): `cmake-js build` when build-cmake is
//     configured (incremental: it keeps the configuration it has, nvcc or not, and deletes nothing),
//     else `cmake-js rebuild --CDSPINLM_CUDA=OFF` (the emulator needs no nvcc; README says how to
//     build the GPU kernels).
//   - build/Release/spinlm_comm.node, the MPI module of the multi-process tests, when mpicc is found
//     but `npm ci` ran before Open MPI was installed (the README's install command comes first).
// Each step says what it builds and why; a missing tool is one line naming the install script.
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const say = (s) => process.stderr.write(`pretest: ${s}\n`);

function onPath(tool) {
  return spawnSync('sh', ['-c', `command -v ${tool}`], { stdio: 'ignore' }).status === 0;
}

function run(cmd, args) {
  say(`${cmd} ${args.join(' ')}`);
  execFileSync(cmd, args, { cwd: root, stdio: ['ignore', 'ignore', 'inherit'] });
}

const npx = (...args) => run(process.platform === 'win32' ? 'npx.cmd' : 'npx', args);

// The MPI module: built by node-gyp with the main addon when mpicc was on PATH at `npm ci` time.
const commFound = execFileSync('node', [join(root, 'scripts/comm-deps.mjs'), '--found'], { encoding: 'utf8' }).trim() === '1';
if (commFound && !existsSync(join(root, 'build/Release/spinlm_comm.node'))) {
  say('building the MPI module (mpicc is installed now; it was not when the addon was built)');
  npx('node-gyp', 'rebuild');
}

// The CUDA emulator's module.
const emu = join(root, 'build-cmake/Release/spinlm_cuda_emu.node');
if (!onPath('cmake')) {
  say('cmake not found: the CUDA emulator tests need it (bash scripts/install-test-deps.sh)');
} else if (existsSync(join(root, 'build-cmake/CMakeCache.txt'))) {
  npx('cmake-js', 'build', '--out', 'build-cmake');
} else {
  say('building the CUDA emulator module (build-cmake, without nvcc; `npx cmake-js rebuild --out build-cmake` adds the GPU kernels)');
  npx('cmake-js', 'rebuild', '--out', 'build-cmake', '--CDSPINLM_CUDA=OFF');
}
if (onPath('cmake') && !existsSync(emu)) say(`${emu} was not built: install Boost.Context (bash scripts/install-test-deps.sh)`);
