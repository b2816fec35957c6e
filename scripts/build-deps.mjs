#!/usr/bin/env node
// What building the native addon needs, found before node-gyp runs, so a missing piece is one line
// that says what to install instead of a pkg-config or gyp stack trace.
//
//   node scripts/build-deps.mjs            check the build tools and OpenBLAS; exit 1 with one line if any is missing
//                                          (package.json's install script runs it through node-gyp-build, only
//                                          when no prebuilt or built binary loads)
//   node scripts/build-deps.mjs --cflags   compiler flags for OpenBLAS (binding.gyp)
//   node scripts/build-deps.mjs --libs     linker flags for OpenBLAS (binding.gyp)
//
// SPINLM_OPENBLAS=static (set by `npm run prebuild`) links OpenBLAS's position-independent static archive
// (libopenblas.a next to the shared library, shipped by Debian's libopenblas-dev) into the addon, keeps
// its symbols local (--exclude-libs,ALL) and drops unused sections, so the prebuilt binary needs only
// glibc, libstdc++ and libgcc_s on the user's machine. The default (shared) links libopenblas.so.
import { execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { delimiter, join } from 'node:path';

const DEBIAN = 'sudo apt-get install';

function onPath(tool) {
  if (tool.includes('/')) return existsSync(tool);
  return (process.env.PATH ?? '').split(delimiter).some((dir) => dir && existsSync(join(dir, tool)));
}

function pkgConfig(...args) {
  try {
    return execFileSync('pkg-config', args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim();
  } catch {
    return undefined;
  }
}

/** What is missing to find OpenBLAS: [] when pkg-config finds openblas.pc. Entries: [what, Debian package]. */
function missingOpenBlas() {
  if (!onPath('pkg-config'))
    return [
      ['pkg-config', 'pkg-config'],
      ['OpenBLAS', 'libopenblas-dev'],
    ];
  if (pkgConfig('--exists', 'openblas') === undefined) return [['OpenBLAS (pkg-config finds no openblas.pc)', 'libopenblas-dev']];
  return [];
}

function fail(missing) {
  const what = missing.map(([w]) => w).join(', ');
  const pkgs = [...new Set(missing.map(([, p]) => p))].join(' ');
  const pcHint = missing.some(([w]) => w.includes('openblas.pc')) ? ', or set PKG_CONFIG_PATH to the folder holding openblas.pc' : '';
  process.stderr.write(
    `spinlm: cannot build the native addon, missing: ${what}. Install ${missing.length > 1 ? 'them' : 'it'} ` +
      `(Debian/Ubuntu: ${DEBIAN} ${pkgs}; from a checkout: bash scripts/install-deps.sh)${pcHint}, then install again.\n`,
  );
  process.exit(1);
}

function openBlasFlags(kind) {
  const missing = missingOpenBlas();
  if (missing.length) fail(missing);
  if (kind === '--cflags') return pkgConfig('--cflags', 'openblas') ?? '';
  const mode = process.env.SPINLM_OPENBLAS ?? 'shared';
  if (mode === 'shared') return pkgConfig('--libs', 'openblas') ?? '';
  if (mode !== 'static') {
    process.stderr.write(`spinlm: SPINLM_OPENBLAS=${mode}: expected 'static' or 'shared'.\n`);
    process.exit(1);
  }
  const libdir = pkgConfig('--variable=libdir', 'openblas') ?? '';
  const archive = join(libdir, 'libopenblas.a');
  if (!existsSync(archive)) {
    process.stderr.write(
      `spinlm: SPINLM_OPENBLAS=static needs OpenBLAS's static archive and ${archive} does not exist ` +
        `(Debian/Ubuntu: ${DEBIAN} libopenblas-dev ships it), or build with SPINLM_OPENBLAS=shared.\n`,
    );
    process.exit(1);
  }
  return [archive, '-lpthread', '-lm', '-Wl,--exclude-libs,ALL', '-Wl,--gc-sections'].join(' ');
}

const arg = process.argv[2];
if (arg === '--cflags' || arg === '--libs') {
  process.stdout.write(`${openBlasFlags(arg)}\n`);
} else if (arg === undefined) {
  const missing = missingOpenBlas();
  const cxx = (process.env.CXX ?? 'g++').trim().split(/\s+/)[0];
  if (!onPath(cxx)) missing.push([`a C++ compiler (${cxx})`, 'g++']);
  if (!onPath('make')) missing.push(['make', 'make']);
  if (!process.env.PYTHON && !process.env.npm_config_python && !onPath('python3') && !onPath('python')) {
    missing.push(['python3 (node-gyp runs gyp with it)', 'python3']);
  }
  if (missing.length) fail(missing);
} else {
  process.stderr.write(`spinlm: scripts/build-deps.mjs: unknown argument ${arg}; expected --cflags, --libs or nothing.\n`);
  process.exit(2);
}
