// The npm package: `npm run prebuild` + `npm pack` give a tarball that installs (from the npm cache when it can) into an empty
// directory and runs on a machine with no compiler and no OpenBLAS (the prebuilt binary in
// prebuilds/linux-x64 links OpenBLAS statically and needs only glibc, libstdc++ and libgcc_s); when no
// binary can load, one error says what was looked for, what was found, which library is missing and the
// command that fixes it; and building from source without OpenBLAS stops with one line saying what to
// install. Works in copies of the package so the repo's own build/ is never touched while tests use it.
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import {
  cpSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  statSync,
  symlinkSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { packageRoot } from '../src/backend/native/addon.js';
import { CpuBackend } from '../src/backend/cpu/cpu_backend.js';
import { describeDlopenError } from '../src/backend/native/load_error.js';
import { initLlama } from '../src/model/init.js';
import { writeByteTokenizer } from '../src/text/byte_tokenizer.js';
import { Rng } from '../src/util/rng.js';
import { testSeed } from './helpers/random.js';
import { tinyConfig } from './helpers/tiny_model.js';

const work = mkdtempSync(join(tmpdir(), 'spinlm-pack-'));
const pkg = join(work, 'pkg');
const app = join(work, 'app');
const model = join(work, 'model');
const seed = testSeed();
let tarball = '';

/** Libraries every Linux machine with Node has: glibc's parts and the dynamic loader, libstdc++, libgcc_s. */
const BASE_LIBS =
  /^(?:libc\.so\.6|libm\.so\.6|libpthread\.so\.0|libdl\.so\.2|librt\.so\.1|ld-linux-x86-64\.so\.2|libstdc\+\+\.so\.6|libgcc_s\.so\.1)$/;

/** A PATH holding only node, npm, npx and sh (npm runs install scripts with it): no python, make, cc, g++ or pkg-config. */
function compilerFreePath(): string {
  const bin = join(work, 'bin');
  mkdirSync(bin, { recursive: true });
  const nodeDir = join(process.execPath, '..');
  for (const tool of ['node', 'npm', 'npx']) if (!existsSync(join(bin, tool))) symlinkSync(join(nodeDir, tool), join(bin, tool));
  if (!existsSync(join(bin, 'sh'))) symlinkSync('/bin/sh', join(bin, 'sh'));
  return bin;
}

function run(cmd: string, args: string[], cwd: string, env: NodeJS.ProcessEnv = process.env): string {
  try {
    return execFileSync(cmd, args, { cwd, env, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], timeout: 600_000 });
  } catch (err) {
    const e = err as { stdout?: string; stderr?: string; message: string };
    throw new Error(`${cmd} ${args.join(' ')} failed in ${cwd}:\n${e.stdout ?? ''}\n${e.stderr ?? e.message}`, { cause: err });
  }
}

/** Whether nvcc is here: then `npm run prebuild` puts the CUDA kernels in the prebuilt binary. */
function nvccHere(): boolean {
  return ['nvcc', '/usr/local/cuda/bin/nvcc'].some((c) => spawnSync(c, ['--version'], { stdio: 'ignore' }).status === 0);
}

function neededLibraries(binary: string): string[] {
  const dyn = run('readelf', ['-d', binary], work);
  return [...dyn.matchAll(/\(NEEDED\)\s+Shared library: \[([^\]]+)\]/g)].map((m) => m[1]);
}

function prebuiltBinary(root: string): string {
  const dir = join(root, 'prebuilds', 'linux-x64');
  const files = readdirSync(dir).filter((f) => f.endsWith('.node'));
  assert.equal(files.length, 1, `one prebuilt binary expected in ${dir}: ${files.join(', ')}`);
  return join(dir, files[0]);
}

/** The app's lockfile: spinlm from the tarball, its dependencies at the versions and hashes of the repo's lockfile. */
function appLockfile(tgz: string): object {
  const repo = JSON.parse(readFileSync(join(packageRoot, 'package-lock.json'), 'utf8'));
  const root = repo.packages[''];
  const packages: Record<string, unknown> = {
    '': { name: 'app', version: '1.0.0', dependencies: { spinlm: `file:${tgz}` } },
    'node_modules/spinlm': {
      version: root.version,
      resolved: `file:${tgz}`,
      hasInstallScript: true,
      license: root.license,
      dependencies: root.dependencies,
      optionalDependencies: root.optionalDependencies,
      bin: root.bin,
      engines: root.engines,
    },
  };
  // what an install of spinlm needs: the closure of its dependencies and optional dependencies (an
  // entry a dev tool shares with an optional one is marked devOptional in the repo's lockfile)
  type Entry = { dependencies?: Record<string, string>; optionalDependencies?: Record<string, string> };
  const all = repo.packages as Record<string, Entry>;
  const todo = [...Object.keys(root.dependencies ?? {}), ...Object.keys(root.optionalDependencies ?? {})];
  while (todo.length > 0) {
    const path = `node_modules/${todo.pop()}`;
    if (packages[path] || !all[path]) continue;
    packages[path] = all[path];
    todo.push(...Object.keys(all[path].dependencies ?? {}), ...Object.keys(all[path].optionalDependencies ?? {}));
  }
  // packages nested under an included one (a second version of a dependency) come with it
  for (const [path, entry] of Object.entries(all)) {
    if (!packages[path] && Object.keys(packages).some((p) => p.startsWith('node_modules/') && path.startsWith(`${p}/node_modules/`)))
      packages[path] = entry;
  }
  return { name: 'app', version: '1.0.0', lockfileVersion: 3, requires: true, packages };
}

/** Random printable text: prompts and answers of the pair file. */
function words(rng: Rng, n: number): string {
  const alphabet = 'abcdefghijklmnopqrstuvwxyz0123456789';
  return Array.from({ length: n }, () =>
    Array.from({ length: rng.int(1, 6) }, () => alphabet[rng.int(0, alphabet.length - 1)]).join(''),
  ).join(' ');
}

before(async () => {
  for (const entry of [
    'package.json',
    'package-lock.json',
    'binding.gyp',
    'CMakeLists.txt',
    'tsconfig.json',
    'tsconfig.build.json',
    'README.md',
    'bin',
    'native',
    'scripts',
    'src',
  ]) {
    cpSync(join(packageRoot, entry), join(pkg, entry), { recursive: true });
  }
  symlinkSync(join(packageRoot, 'node_modules'), join(pkg, 'node_modules'));
  run('npm', ['run', 'prebuild'], pkg);
  run('npm', ['pack', '--pack-destination', work], pkg);
  tarball = readdirSync(work).find((f) => f.endsWith('.tgz')) ?? '';
  assert.ok(tarball, 'npm pack wrote no tarball');

  mkdirSync(model);
  await writeByteTokenizer(model);
  await initLlama(new CpuBackend(), tinyConfig({ vocab: 260 }), { seed, std: 0.05 }).save(model);
  const rng = new Rng(seed);
  const rows = Array.from({ length: rng.int(3, 7) }, () => {
    const prompt = words(rng, rng.int(2, 8));
    const turn = (answer: string) => [
      { role: 'user', content: prompt },
      { role: 'assistant', content: answer },
    ];
    return JSON.stringify({ real: turn(words(rng, rng.int(1, 8))), generated: turn(words(rng, rng.int(1, 8))) });
  });
  writeFileSync(join(work, 'pairs.jsonl'), `${rows.join('\n')}\n`);
});

after(() => rmSync(work, { recursive: true, force: true }));

test('the tarball carries the prebuilt binary, the compiled library and the sources to rebuild', () => {
  const list = run('tar', ['-tzf', join(work, tarball)], work);
  for (const f of [
    'package/prebuilds/linux-x64/',
    'package/dist/index.js',
    'package/dist/backend/cpu/cpu_backend.js',
    'package/bin/spinlm.js',
    'package/binding.gyp',
    'package/native/addon.cc',
    'package/scripts/build-deps.mjs',
    'package/scripts/comm-deps.mjs', // binding.gyp runs it: a source build fails at configure without it
  ]) {
    assert.ok(list.includes(f), `${f} missing from the tarball:\n${list}`);
  }
  assert.ok(!list.includes('package/build/'), 'build outputs must not ship');
  assert.ok(!list.includes('package/test/'), 'tests must not ship');
  assert.ok(!list.includes('package/scripts/install-deps.sh'), 'checkout scripts must not ship');
});

test('the prebuilt binary links OpenBLAS statically: it needs only glibc, libstdc++ and libgcc_s, and exports no BLAS symbol', (t) => {
  const binary = prebuiltBinary(pkg);
  const needed = neededLibraries(binary);
  assert.ok(needed.includes('libc.so.6'), `readelf found no NEEDED entries: ${needed.join(', ')}`);
  assert.deepEqual(
    needed.filter((lib) => /cuda|cublas/i.test(lib)),
    [],
    'cudart is linked statically and cuBLAS opened at run time',
  );
  const extra = needed.filter((lib) => !BASE_LIBS.test(lib));
  assert.deepEqual(extra, [], `the prebuilt binary needs libraries a clean machine lacks: ${extra.join(', ')}`);
  const exported = run('nm', ['-D', '--defined-only', binary], work).split('\n');
  const blas = exported.filter((line) => /blas|sgemm|gotoblas/i.test(line));
  assert.deepEqual(blas, [], 'OpenBLAS symbols must stay local to the addon');
  t.diagnostic(
    `prebuilt binary: ${statSync(binary).size} bytes, tarball: ${statSync(join(work, tarball)).size} bytes, NEEDED: ${needed.join(' ')}`,
  );
});

test('installs into an empty directory with no compiler and runs spinlm info and spinlm score there', () => {
  mkdirSync(app, { recursive: true });
  cpSync(join(work, tarball), join(app, tarball));
  writeFileSync(
    join(app, 'package.json'),
    JSON.stringify({ name: 'app', version: '1.0.0', type: 'module', private: true, dependencies: { spinlm: `file:${tarball}` } }),
  );
  writeFileSync(join(app, 'package-lock.json'), JSON.stringify(appLockfile(tarball), null, 2));
  const env = { ...process.env, PATH: compilerFreePath(), npm_config_nodedir: undefined, SPINLM_NUM_THREADS: '2' };
  run('npm', ['ci', '--prefer-offline', '--no-audit', '--no-fund'], app, env);
  // the WebGPU backend reads its WGSL kernels from beside its compiled module
  for (const f of ['common', 'memory', 'elementwise', 'loss', 'optim', 'sample', 'gemm', 'attention']) {
    assert.ok(existsSync(join(app, 'node_modules', 'spinlm', 'dist', 'backend', 'webgpu', `${f}.wgsl`)), `${f}.wgsl is in the package`);
  }
  const script = `
    import { cpuBackend, ops } from 'spinlm';
    import { createRequire } from 'node:module';
    const be = cpuBackend();
    const z = ops.upload(be, { dtype: 'f32', data: new Float32Array([0, Math.log(3)]) }, [1, 2]);
    const { logp } = ops.logprobGather(z, ops.upload(be, { dtype: 'i32', data: new Int32Array([1]) }, [1]));
    const require = createRequire(import.meta.url);
    const root = require.resolve('spinlm/package.json').replace(/package\\.json$/, '');
    console.log(JSON.stringify({ logp: (await ops.read(logp))[0], binary: require('node-gyp-build').path(root) }));
  `;
  writeFileSync(join(app, 'check.mjs'), script);
  const out = JSON.parse(run('node', ['check.mjs'], app, env).trim());
  assert.ok(Math.abs(out.logp - Math.log(0.75)) < 1e-6, `logp ${out.logp}`);
  assert.match(out.binary, /prebuilds\/linux-x64\//);
  const spinlm = join(app, 'node_modules', '.bin', 'spinlm');
  const info = run(spinlm, ['info'], app, env);
  assert.match(info, /spinlm 0\.1\.0/);
  // Prebuilt where nvcc exists (scripts/prebuild-cuda.mjs), the binary carries the CUDA kernels with
  // cudart linked statically: it loads without a driver, and the cuda backend says why it cannot run.
  const cudaLine = /^cuda: .*$/m.exec(info)?.[0] ?? '';
  if (nvccHere()) assert.match(cudaLine, /^cuda: (available|not available: no (driver|device|usable device))/, info);
  else assert.match(cudaLine, /^cuda: not available: not compiled in/, info);

  // The installed package scores the tiny model as the checkout does.
  const args = (out: string) => [
    'score',
    '--model',
    model,
    '--data',
    join(work, 'pairs.jsonl'),
    '--out',
    out,
    '--max_length',
    '96',
    '--max_prompt_length',
    '64',
    '--quiet',
  ];
  run(spinlm, args(join(app, 'scores.jsonl')), app, env);
  run(process.execPath, [join(packageRoot, 'bin', 'spinlm.js'), ...args(join(work, 'scores.checkout.jsonl'))], work, {
    ...process.env,
    SPINLM_NUM_THREADS: '2',
  });
  const read = (f: string) =>
    readFileSync(f, 'utf8')
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as Record<string, unknown>);
  const got = read(join(app, 'scores.jsonl'));
  const want = read(join(work, 'scores.checkout.jsonl'));
  assert.equal(got.length, readFileSync(join(work, 'pairs.jsonl'), 'utf8').trim().split('\n').length);
  assert.equal(got.length, want.length);
  for (let i = 0; i < got.length; i++) {
    assert.deepEqual(Object.keys(got[i]).sort(), Object.keys(want[i]).sort());
    assert.ok((got[i].logps_real as number) < 0, `row ${i}: logps_real ${got[i].logps_real}`);
    for (const [key, value] of Object.entries(want[i])) {
      if (typeof value === 'number') {
        const g = got[i][key] as number;
        assert.ok(
          Math.abs(g - value) <= 1e-5 * Math.max(1, Math.abs(value)),
          `row ${i} ${key}: installed ${g}, checkout ${value} (seed ${seed})`,
        );
      } else {
        assert.deepEqual(got[i][key], value, `row ${i} ${key}`);
      }
    }
  }
});

test('a binary that needs a library the machine lacks: the load error names the library', () => {
  const installed = join(app, 'node_modules', 'spinlm');
  const binary = prebuiltBinary(installed);
  const original = readFileSync(binary);
  const lib = neededLibraries(binary).find((l) => l !== 'libc.so.6');
  assert.ok(lib, 'the prebuilt binary needs no library besides libc');
  // A copy whose NEEDED entry names a library that does not exist: same length, so the ELF layout holds.
  const bogus = `${'libmissing'.padEnd(lib.length - 3, 'x').slice(0, lib.length - 3)}.so`;
  const patched = Buffer.from(original);
  const from = Buffer.from(`${lib}\0`);
  let at = patched.indexOf(from);
  assert.ok(at >= 0);
  for (; at >= 0; at = patched.indexOf(from, at + 1)) patched.write(`${bogus}\0`, at, 'latin1');
  writeFileSync(binary, patched);
  try {
    assert.ok(neededLibraries(binary).includes(bogus));
    writeFileSync(join(app, 'missing.mjs'), `import { cpuBackend } from 'spinlm'; cpuBackend();`);
    const r = spawnSync(process.execPath, ['missing.mjs'], {
      cwd: app,
      encoding: 'utf8',
      env: { ...process.env, PATH: compilerFreePath() },
    });
    assert.notEqual(r.status, 0);
    assert.match(r.stderr, /could not load its native addon/);
    assert.ok(r.stderr.includes(`Missing shared library: ${bogus};`), r.stderr);
    assert.match(r.stderr, /Fix: .*node-gyp rebuild/);
  } finally {
    writeFileSync(binary, original);
  }
});

test('dlopen messages: missing libraries, library versions and symbols are named; other failures add nothing', () => {
  const rng = new Rng(seed);
  const lib = `lib${words(rng, 1).replace(/\W/g, '')}.so.${rng.int(0, 9)}`;
  assert.match(
    describeDlopenError(`${lib}: cannot open shared object file: No such file or directory`) ?? '',
    new RegExp(`^Missing shared library: ${lib.replace(/\./g, '\\.')};`),
  );
  assert.match(
    describeDlopenError('libopenblas.so.0: cannot open shared object file: No such file or directory') ?? '',
    /sudo apt-get install libopenblas0/,
  );
  const glibc = `GLIBC_2.${rng.int(30, 60)}`;
  assert.match(
    describeDlopenError(`/lib/x86_64-linux-gnu/libc.so.6: version \`${glibc}' not found (required by /x/spinlm.node)`) ?? '',
    new RegExp(`^Missing library version: ${glibc.replace('.', '\\.')} of libc\\.so\\.6`),
  );
  const symbol = `cblas_${words(rng, 1)}`;
  assert.match(describeDlopenError(`/x/spinlm.node: undefined symbol: ${symbol}`) ?? '', new RegExp(`^Missing symbol: ${symbol} `));
  assert.equal(describeDlopenError('/x/spinlm.node: invalid ELF header'), undefined);
  assert.equal(describeDlopenError('/x/spinlm.node: cannot open shared object file: No such file or directory'), undefined);
});

test('with no loadable binary, one error names what was looked for, what was found and the fix', () => {
  const installed = join(app, 'node_modules', 'spinlm');
  rmSync(join(installed, 'prebuilds'), { recursive: true, force: true });
  mkdirSync(join(installed, 'build', 'Release'), { recursive: true });
  writeFileSync(join(installed, 'build', 'Release', 'spinlm.node'), 'not a shared object');
  const env = { ...process.env, PATH: compilerFreePath() };
  writeFileSync(join(app, 'fail.mjs'), `import { cpuBackend } from 'spinlm'; cpuBackend();`);
  let message = '';
  try {
    run('node', ['fail.mjs'], app, env);
  } catch (err) {
    message = (err as Error).message;
  }
  assert.match(message, /could not load its native addon/);
  assert.match(message, /Looked for: .*prebuilds\/linux-x64/);
  assert.match(message, /Found: .*build\/Release\/spinlm\.node/);
  assert.match(message, /Fix: .*node-gyp rebuild/);
});

test('building without OpenBLAS or the build tools stops with one line that says what to install', () => {
  const empty = join(work, 'no-pkgconfig');
  mkdirSync(empty, { recursive: true });
  const check = (env: NodeJS.ProcessEnv) =>
    spawnSync(process.execPath, [join(packageRoot, 'scripts', 'build-deps.mjs')], { cwd: work, encoding: 'utf8', env });
  const ok = check(process.env);
  assert.equal(ok.status, 0, ok.stderr);

  const noBlas = check({ ...process.env, PKG_CONFIG_LIBDIR: empty, PKG_CONFIG_PATH: '' });
  assert.equal(noBlas.status, 1);
  assert.equal(noBlas.stderr.trim().split('\n').length, 1, noBlas.stderr);
  assert.match(noBlas.stderr, /^spinlm: cannot build the native addon, missing: OpenBLAS .*apt-get install libopenblas-dev/);

  const noTools = check({ ...process.env, PATH: compilerFreePath(), PYTHON: '', npm_config_python: '' });
  assert.equal(noTools.status, 1);
  assert.equal(noTools.stderr.trim().split('\n').length, 1, noTools.stderr);
  assert.match(noTools.stderr, /missing: pkg-config, OpenBLAS, a C\+\+ compiler \(g\+\+\), make, python3/);
  assert.match(noTools.stderr, /apt-get install pkg-config libopenblas-dev g\+\+ make python3/);

  // npm ci in a checkout on a machine without OpenBLAS: the install script stops before gyp runs.
  const checkout = join(work, 'checkout');
  for (const entry of ['package.json', 'package-lock.json', 'binding.gyp', 'native', 'scripts', 'bin']) {
    cpSync(join(packageRoot, entry), join(checkout, entry), { recursive: true });
  }
  const ci = spawnSync('npm', ['ci', '--prefer-offline', '--no-audit', '--no-fund'], {
    cwd: checkout,
    encoding: 'utf8',
    env: { ...process.env, PKG_CONFIG_LIBDIR: empty, PKG_CONFIG_PATH: '' },
    timeout: 600_000,
  });
  const output = `${ci.stdout}\n${ci.stderr}`;
  assert.notEqual(ci.status, 0, output);
  const ours = output.split('\n').filter((l) => l.startsWith('spinlm: '));
  assert.equal(ours.length, 1, output);
  assert.match(ours[0], /missing: OpenBLAS .*libopenblas-dev/);
  assert.doesNotMatch(output, /gyp (?:info|ERR!)|pkg-config: not found|Traceback|\n\s+at /, output);
});
