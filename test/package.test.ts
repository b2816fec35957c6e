// The npm package: `npm run prebuild` + `npm pack` give a tarball that installs and runs on a machine
// with no compiler (the prebuilt binary in prebuilds/linux-x64 is what loads), and when no binary can
// load, one error says what was looked for, what was found and the command that fixes it.
// Works in a copy of the package so the repo's own build/ is never touched while tests use it.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { cpSync, existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { packageRoot } from '../src/backend/cpu/addon.js';

const work = mkdtempSync(join(tmpdir(), 'spinlm-pack-'));
const pkg = join(work, 'pkg');
const app = join(work, 'app');
let tarball = '';

/** A PATH holding only node, npm, npx and sh (npm runs install scripts with it): no python, make, cc or g++. */
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
    throw new Error(`${cmd} ${args.join(' ')} failed in ${cwd}:\n${e.stdout ?? ''}\n${e.stderr ?? e.message}`);
  }
}

before(() => {
  for (const entry of ['package.json', 'package-lock.json', 'binding.gyp', 'CMakeLists.txt', 'tsconfig.json', 'tsconfig.build.json', 'README.md', 'bin', 'native', 'src']) {
    cpSync(join(packageRoot, entry), join(pkg, entry), { recursive: true });
  }
  symlinkSync(join(packageRoot, 'node_modules'), join(pkg, 'node_modules'));
  run('npm', ['run', 'prebuild'], pkg);
  run('npm', ['pack', '--pack-destination', work], pkg);
  tarball = readdirSync(work).find((f) => f.endsWith('.tgz')) ?? '';
  assert.ok(tarball, 'npm pack wrote no tarball');
});

after(() => rmSync(work, { recursive: true, force: true }));

test('the tarball carries the prebuilt binary, the compiled library and the sources to rebuild', () => {
  const list = run('tar', ['-tzf', join(work, tarball)], work);
  for (const f of ['package/prebuilds/linux-x64/', 'package/dist/index.js', 'package/dist/backend/cpu/cpu_backend.js', 'package/bin/spinlm.js', 'package/binding.gyp', 'package/native/addon.cc']) {
    assert.ok(list.includes(f), `${f} missing from the tarball:\n${list}`);
  }
  assert.ok(!list.includes('package/build/'), 'build outputs must not ship');
  assert.ok(!list.includes('package/test/'), 'tests must not ship');
});

test('installs and runs with no compiler on the PATH, loading the prebuilt binary', () => {
  mkdirSync(app, { recursive: true });
  writeFileSync(join(app, 'package.json'), JSON.stringify({ name: 'app', version: '1.0.0', type: 'module', private: true }));
  const env = { ...process.env, PATH: compilerFreePath(), npm_config_nodedir: undefined };
  run('npm', ['install', '--no-audit', '--no-fund', '--prefer-offline', join(work, tarball)], app, env);
  const script = `
    import { cpuBackend } from 'spinlm';
    import { createRequire } from 'node:module';
    const be = cpuBackend();
    const z = be.upload({ dtype: 'f32', data: new Float32Array([0, Math.log(3)]) }, [1, 2]);
    const { logp } = be.logprobGather(z, be.upload({ dtype: 'i32', data: new Int32Array([1]) }, [1]));
    const require = createRequire(import.meta.url);
    const root = require.resolve('spinlm/package.json').replace(/package\\.json$/, '');
    console.log(JSON.stringify({ logp: (await be.read(logp))[0], binary: require('node-gyp-build').path(root) }));
  `;
  writeFileSync(join(app, 'check.mjs'), script);
  const out = JSON.parse(run('node', ['check.mjs'], app, env).trim());
  assert.ok(Math.abs(out.logp - Math.log(0.75)) < 1e-6, `logp ${out.logp}`);
  assert.match(out.binary, /prebuilds\/linux-x64\//);
  const cli = run(join(app, 'node_modules', '.bin', 'spinlm'), ['info'], app, env);
  assert.match(cli, /spinlm 0\.1\.0/);
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
