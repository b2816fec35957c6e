#!/usr/bin/env node
// Whether and how to build spinlm_comm, the optional MPI module behind multi-process training (src/dist/).
// binding.gyp asks:
//   node scripts/comm-deps.mjs --found    1 when an MPI C compiler wrapper (mpicc) is on PATH, else 0
//   node scripts/comm-deps.mjs --cflags   its compile flags (include directories)
//   node scripts/comm-deps.mjs --libs     its link flags (-L... -lmpi)
// SPINLM_MPI=off builds without it (the prebuilt binary: `npm run prebuild` sets it, so the shipped
// addon never needs an MPI library). Debian/Ubuntu: apt-get install libopenmpi-dev openmpi-bin.
import { execFileSync } from 'node:child_process';

function showme(what) {
  try {
    return execFileSync(process.env.MPICC ?? 'mpicc', [`--showme:${what}`], {
      encoding: 'utf8',
      stdio: ['ignore', 'pipe', 'ignore'],
    }).trim();
  } catch {
    return undefined;
  }
}

const arg = process.argv[2];
const off = process.env.SPINLM_MPI === 'off' || process.env.SPINLM_MPI === '0';
if (arg === '--found') process.stdout.write(!off && showme('compile') !== undefined ? '1\n' : '0\n');
else if (arg === '--cflags') process.stdout.write(`${off ? '' : (showme('compile') ?? '')}\n`);
else if (arg === '--libs') process.stdout.write(`${off ? '' : (showme('link') ?? '')}\n`);
else {
  process.stderr.write('usage: node scripts/comm-deps.mjs --found | --cflags | --libs\n');
  process.exit(2);
}
