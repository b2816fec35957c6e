// Issue 24, items 1 and 9: spinlm writes only into a new or empty directory or one of its own, and
// --overwrite_output_dir removes only what spinlm wrote there, after every input is checked; a
// mistyped input leaves nothing behind. docs/reliability.md ("Ownership of output directories").
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { randomBytes, randomInt } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { CpuBackend } from '../src/backend/cpu/cpu_backend.js';
import { claimDir, clearOwned, OWNER_FILE, ownerOf } from '../src/cli/ownership.js';
import { initLlama } from '../src/model/init.js';
import { writeByteTokenizer } from '../src/text/byte_tokenizer.js';
import { tinyConfig } from './helpers/tiny_model.js';

const BIN = new URL('../bin/spinlm.js', import.meta.url).pathname;
const spinlm = (args: string[], cwd: string, timeout = 300_000) =>
  spawnSync(process.execPath, [BIN, ...args], { cwd, encoding: 'utf8', timeout, env: { ...process.env, SPINLM_NUM_THREADS: '2' } });

/** One line on stderr, no stack trace. */
function oneLine(stderr: string): void {
  const lines = stderr.trim().split('\n');
  assert.equal(lines.length, 1, `expected one line, got:\n${stderr}`);
  assert.doesNotMatch(stderr, /\n\s+at /);
}

const word = () => randomBytes(3).toString('hex');
const jsonl = (rows: unknown[]) => rows.map((r) => JSON.stringify(r)).join('\n') + '\n';

let dir = '';
let model = ''; // tiny byte-level model
let other = ''; // another one, standing for a user's model directory spinlm did not write
const be = new CpuBackend();

before(async () => {
  dir = mkdtempSync(join(tmpdir(), 'spinlm-owner-'));
  for (const name of ['model', 'other']) {
    const d = join(dir, name);
    mkdirSync(d);
    await writeByteTokenizer(d);
    const m = initLlama(be, tinyConfig({ vocab: 260 }), { seed: randomInt(1000), std: 0.05 });
    await m.save(d);
    m.weights.free();
  }
  [model, other] = [join(dir, 'model'), join(dir, 'other')];
  writeFileSync(join(dir, 'sft.jsonl'), jsonl(Array.from({ length: 8 }, () => ({ prompt: `say ${word()}`, completion: word() }))));
});
after(() => rmSync(dir, { recursive: true, force: true }));

const quick = ['--per_device_train_batch_size', '4', '--num_train_epochs', '1', '--learning_rate', '1e-3', '--max_length', '64'];
const runArgs = (out: string, extra: string[] = []) => [
  'run',
  '--model',
  model,
  '--data',
  'sft.jsonl',
  '--out',
  out,
  '--iterations',
  '2',
  '--max_new_tokens',
  '4',
  ...quick,
  '--quiet',
  ...extra,
];
const sftArgs = (out: string, extra: string[] = []) => [
  'sft',
  '--model',
  model,
  '--data',
  'sft.jsonl',
  '--out',
  out,
  ...quick,
  '--quiet',
  ...extra,
];
/** Every file under a directory with its bytes, for "left exactly as it was". */
function snapshot(d: string): Map<string, string> {
  const m = new Map<string, string>();
  for (const f of readdirSync(d, { recursive: true, withFileTypes: true }))
    if (f.isFile()) m.set(join(f.parentPath, f.name), readFileSync(join(f.parentPath, f.name)).toString('base64'));
  return m;
}

describe('1. spinlm writes only into a new or empty directory or one of its own', () => {
  test("sft --out another model's directory is refused in one line; its weights are untouched", () => {
    const before = snapshot(other);
    const r = spinlm(sftArgs(other), dir);
    assert.equal(r.status, 2, r.stderr);
    oneLine(r.stderr);
    assert.match(r.stderr, new RegExp(`--out ${other} is not empty and was not written by spinlm .*choose another --out`));
    assert.deepEqual(snapshot(other), before);
  });

  test('a first run into a non-empty directory of the user is refused, and nothing is written there', () => {
    const out = join(dir, `mine-${word()}`);
    mkdirSync(out);
    writeFileSync(join(out, 'README.md'), 'my notes\n');
    const r = spinlm(runArgs(out), dir);
    assert.equal(r.status, 2, r.stderr);
    oneLine(r.stderr);
    assert.match(r.stderr, /README\.md/);
    assert.deepEqual(readdirSync(out), ['README.md']);
    // --overwrite_output_dir does not make it spinlm's either
    assert.equal(spinlm(runArgs(out, ['--overwrite_output_dir']), dir).status, 2);
    assert.deepEqual(readdirSync(out), ['README.md']);
  });

  test("--overwrite_output_dir removes what spinlm wrote and keeps the user's files", () => {
    const out = join(dir, `owned-${word()}`);
    let r = spinlm(sftArgs(out), dir);
    assert.equal(r.status, 0, r.stderr);
    writeFileSync(join(out, 'NOTES.md'), 'kept\n');
    mkdirSync(join(out, 'data'));
    writeFileSync(join(out, 'data', 'x.jsonl'), '{}\n');
    r = spinlm(sftArgs(out, ['--learning_rate', '2e-3', '--overwrite_output_dir']), dir);
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stderr, /kept what spinlm did not write in .*: (NOTES\.md, data|data, NOTES\.md)/);
    assert.equal(readFileSync(join(out, 'NOTES.md'), 'utf8'), 'kept\n');
    assert.ok(existsSync(join(out, 'data', 'x.jsonl')));
    assert.deepEqual(JSON.parse(readFileSync(join(out, 'sft.resolved.json'), 'utf8')).learning_rate, [2e-3]);
    assert.ok(existsSync(join(out, OWNER_FILE)));
    assert.equal(ownerOf(out)?.command, 'sft');
  });

  test('--overwrite_output_dir with a missing --data deletes nothing: inputs are checked first', () => {
    const out = join(dir, `finished-${word()}`);
    let r = spinlm(runArgs(out), dir);
    assert.equal(r.status, 0, r.stderr);
    const before = snapshot(out);
    assert.ok(
      existsSync(join(out, 'iter-0', 'model', 'model.safetensors')) && existsSync(join(out, 'iter-1', 'model', 'model.safetensors')),
    );
    r = spinlm(
      runArgs(out, ['--overwrite_output_dir']).map((a) => (a === 'sft.jsonl' ? 'nonexist.jsonl' : a)),
      dir,
    );
    assert.notEqual(r.status, 0);
    oneLine(r.stderr);
    assert.match(r.stderr, /nonexist\.jsonl/);
    assert.deepEqual(snapshot(out), before, 'both iterations are still there');
  });

  test('a run directory of an earlier spinlm (no marker) still resumes and counts as spinlm’s', () => {
    const out = join(dir, `legacy-${word()}`);
    let r = spinlm(runArgs(out, ['--iterations', '1']), dir);
    assert.equal(r.status, 0, r.stderr);
    rmSync(join(out, OWNER_FILE), { force: true }); // as an earlier spinlm left it: fingerprint.json, run.resolved.json, iter-0/
    const model0 = readFileSync(join(out, 'iter-0', 'model', 'model.safetensors'));
    r = spinlm(runArgs(out), dir); // one more iteration on the same run
    assert.equal(r.status, 0, r.stderr);
    assert.ok(readFileSync(join(out, 'iter-0', 'model', 'model.safetensors')).equals(model0), 'iteration 0 is resumed, not redone');
    assert.ok(existsSync(join(out, 'iter-1', 'model', 'model.safetensors')));
    assert.equal(ownerOf(out)?.command, 'run', 'marked now');
  });

  test('demo into a non-empty directory of the user is refused before any work', () => {
    const out = join(dir, `demo-${word()}`);
    mkdirSync(out);
    writeFileSync(join(out, 'thesis.tex'), 'x\n');
    const r = spinlm(['demo', '--out', out, '--quick', '--quiet'], dir, 60_000);
    assert.equal(r.status, 2, r.stderr);
    oneLine(r.stderr);
    assert.deepEqual(readdirSync(out), ['thesis.tex']);
  });

  test('clearOwned: a sweep removes its arms and files, not a folder the user added', async () => {
    const out = mkdtempSync(join(dir, 'sweep-'));
    await claimDir('sweep', out, ['spin', 'sft']);
    for (const d of ['spin', 'sft', 'theta0', 'mine']) mkdirSync(join(out, d));
    for (const f of ['sweep.md', 'fingerprint.json', '.sweep.json.tmp-1-ab', 'paper.pdf']) writeFileSync(join(out, f), '{}');
    assert.deepEqual(clearOwned(out).sort(), ['mine', 'paper.pdf']);
    assert.deepEqual(readdirSync(out).sort(), ['mine', 'paper.pdf']);
  });
});

describe('9. a mistyped input leaves nothing behind', () => {
  for (const cmd of ['run', 'sft', 'train'] as const)
    test(`${cmd} with a missing --data creates nothing; the corrected rerun works`, () => {
      const out = join(dir, `typo-${cmd}-${word()}`);
      const args = cmd === 'run' ? runArgs(out, ['--iterations', '1']) : sftArgs(out);
      if (cmd === 'train') args[0] = 'train';
      const data = cmd === 'train' ? 'pairs.jsonl' : 'sft.jsonl';
      if (cmd === 'train' && !existsSync(join(dir, data))) {
        const chat = (p: string, a: string) => [
          { role: 'user', content: p },
          { role: 'assistant', content: a },
        ];
        writeFileSync(
          join(dir, data),
          jsonl(Array.from({ length: 4 }, () => ({ prompt: 'q', real: chat('q', word()), generated: chat('q', word()) }))),
        );
      }
      const typo = args.map((a) => (a === 'sft.jsonl' ? 'sft.jsnol' : a));
      let r = spinlm(typo, dir);
      assert.notEqual(r.status, 0);
      oneLine(r.stderr);
      assert.match(r.stderr, /sft\.jsnol/);
      assert.ok(!existsSync(out), `${out} was created`);
      r = spinlm(
        args.map((a) => (a === 'sft.jsonl' ? data : a)),
        dir,
      );
      assert.equal(r.status, 0, r.stderr);
    });
});
