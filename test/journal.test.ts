// Issue 24, item 2: a resume journal (generate's answers) carries a fingerprint of what produced it:
// the prompts, the sampling settings, the model's and the data's files and the command's options. A
// journal made by anything else is refused with the differences named, never reused; the same run
// resumes it to the same bytes. docs/reliability.md ("Journals").
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { randomBytes, randomInt } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { CpuBackend } from '../src/backend/cpu/cpu_backend.js';
import { answerPrompts, JournalMismatchError } from '../src/generate/answers.js';
import { initLlama } from '../src/model/init.js';
import { LlamaDecoder } from '../src/model/decoder.js';
import { LlamaModel } from '../src/model/llama.js';
import { tokenizePair } from '../src/spin/batch.js';
import { referenceStage } from '../src/spin/self_play.js';
import { writeByteTokenizer } from '../src/text/byte_tokenizer.js';
import { loadTokenizer } from '../src/text/tokenizer.js';
import { withSeed } from './helpers/random.js';
import { tinyConfig } from './helpers/tiny_model.js';

const BIN = new URL('../bin/spinlm.js', import.meta.url).pathname;
const env = { ...process.env, SPINLM_NUM_THREADS: '1' };
const spinlm = (args: string[], cwd: string) =>
  spawnSync(process.execPath, [BIN, ...args], { cwd, encoding: 'utf8', timeout: 300_000, env });
const word = () => randomBytes(3).toString('hex');
const jsonl = (rows: unknown[]) => rows.map((r) => JSON.stringify(r)).join('\n') + '\n';
const lines = (file: string) => readFileSync(file, 'utf8').trim().split('\n');

let dir = '';
const be = new CpuBackend();

before(async () => {
  dir = mkdtempSync(join(tmpdir(), 'spinlm-journal-'));
  for (const name of ['a', 'b']) {
    mkdirSync(join(dir, name));
    await writeByteTokenizer(join(dir, name));
    const m = initLlama(be, tinyConfig({ vocab: 260 }), { seed: randomInt(1000), std: 0.05 });
    await m.save(join(dir, name));
    m.weights.free();
  }
  const rows = Array.from({ length: 48 }, (_, i) => ({ prompt: `prompt ${i} ${word()}`, completion: word() }));
  writeFileSync(join(dir, 'data.jsonl'), jsonl(rows));
  writeFileSync(join(dir, 'shuffled.jsonl'), jsonl([...rows.slice(24), ...rows.slice(0, 24)]));
});
after(() => rmSync(dir, { recursive: true, force: true }));

const genArgs = (out: string, extra: string[] = []) => [
  'generate',
  '--model',
  'a',
  '--data',
  'data.jsonl',
  '--out',
  out,
  '--max_new_tokens',
  '24',
  '--temperature',
  '0.7',
  '--seed',
  '1',
  '--generation_batch_size',
  '1',
  '--quiet',
  ...extra,
];

/** Runs generate and kills it (SIGKILL) once its journal holds a few answers, as a killed run leaves it. */
async function killedGenerate(out: string): Promise<string> {
  const journal = join(dir, `${out}.partial.jsonl`);
  const child = spawn(process.execPath, [BIN, ...genArgs(out)], { cwd: dir, env, stdio: 'ignore' });
  const exited = new Promise<number | null>((r) => child.on('exit', (code) => r(code)));
  for (;;) {
    if (existsSync(journal) && lines(journal).length >= 4) break;
    if (child.exitCode !== null) assert.fail(`generate ended (${child.exitCode}) before it could be killed`);
    await new Promise((r) => setTimeout(r, 5));
  }
  child.kill('SIGKILL');
  await exited;
  const n = lines(journal).length - 1;
  assert.ok(n >= 3 && n < 48, `${n} answers journaled before the kill`);
  return journal;
}

describe('2. a journal is reused only by the run that wrote it', () => {
  test('generate: another model, temperature and seed, or reshuffled data, are refused naming them; the same run resumes to the same bytes', async () => {
    const straight = `straight-${word()}.jsonl`;
    assert.equal(spinlm(genArgs(straight), dir).status, 0);
    const out = `killed-${word()}.jsonl`;
    const journal = await killedGenerate(out);
    const kept = readFileSync(journal);

    let r = spinlm(
      genArgs(out).map((a, i, all) =>
        all[i - 1] === '--model' ? 'b' : all[i - 1] === '--temperature' ? '1' : all[i - 1] === '--seed' ? '7' : a,
      ),
      dir,
    );
    assert.equal(r.status, 2, r.stderr);
    assert.equal(r.stderr.trim().split('\n').length, 1, r.stderr);
    for (const named of [/--model \(files differ: model\.safetensors\)/, /--temperature \(was 0\.7, now 1\)/, /--seed \(was 1, now 7\)/])
      assert.match(r.stderr, named);
    assert.match(r.stderr, /delete .*partial\.jsonl to start over/);
    assert.ok(!existsSync(join(dir, out)), 'no output from a mixed journal');

    r = spinlm(
      genArgs(out).map((a) => (a === 'data.jsonl' ? 'shuffled.jsonl' : a)),
      dir,
    );
    assert.equal(r.status, 2, r.stderr);
    assert.match(r.stderr, /--data \(file content differs\); the prompts differ/);
    assert.ok(readFileSync(journal).equals(kept), 'a refused journal is left as it was');

    r = spinlm(genArgs(out), dir);
    assert.equal(r.status, 0, r.stderr);
    assert.ok(readFileSync(join(dir, out)).equals(readFileSync(join(dir, straight))), 'resumed = uninterrupted, byte for byte');
    assert.ok(!existsSync(journal));
  });

  test('answerPrompts: reordered prompts, other settings or a journal without a fingerprint are refused', () =>
    withSeed(async (rng) => {
      const d = mkdtempSync(join(dir, 'answers-'));
      const tok = await loadTokenizer(join(dir, 'a'));
      const model = await LlamaModel.load(be, join(dir, 'a'));
      try {
        const prompts = Array.from({ length: 6 }, () => `q ${rng.int(0, 1000)}`);
        const o = { temperature: 1, topK: 0, topP: 1, maxNewTokens: 4, seed: 3, batchSize: 2 };
        const journal = join(d, 'j');
        const first = await answerPrompts(new LlamaDecoder(model), tok, prompts, { ...o, journal });
        const refused = (p: Promise<unknown>, what: RegExp) =>
          assert.rejects(p, (e: Error) => e instanceof JournalMismatchError && what.test(e.message));
        await refused(answerPrompts(new LlamaDecoder(model), tok, [...prompts].reverse(), { ...o, journal }), /the prompts differ/);
        await refused(answerPrompts(new LlamaDecoder(model), tok, prompts, { ...o, journal, topK: 5 }), /top_k \(was 0, now 5\)/);
        // the same settings: every answer comes from the journal
        assert.deepEqual(await answerPrompts(new LlamaDecoder(model), tok, prompts, { ...o, journal }), first);
        // a journal of an earlier spinlm (answers only): refused, unless its run directory vouches for it
        writeFileSync(journal, lines(journal).slice(1).join('\n') + '\n');
        await refused(answerPrompts(new LlamaDecoder(model), tok, prompts, { ...o, journal }), /no fingerprint/);
        assert.deepEqual(await answerPrompts(new LlamaDecoder(model), tok, prompts, { ...o, journal, adoptUnmarkedJournal: true }), first);
      } finally {
        model.weights.free();
      }
    }));

  test('reference log-probs: a file of other pairs or another compute dtype is refused, naming them; the same pairs reuse it', () =>
    withSeed(async (rng) => {
      const d = mkdtempSync(join(dir, 'ref-'));
      const tok = await loadTokenizer(join(dir, 'a'));
      const model = await LlamaModel.load(be, join(dir, 'a'));
      try {
        const trunc = { maxLength: 48, maxPromptLength: 24 };
        const rows = Array.from({ length: 4 }, () => [`q${rng.int(0, 99)}`, `r${rng.int(0, 99)}`, `g${rng.int(0, 99)}`]);
        const pairs = rows.map(([p, r, g]) => tokenizePair(tok, p, r, g, trunc));
        const loop = { microBatchSize: 2, seed: 1 };
        const file = join(d, 'ref_logps.json');
        const first = await referenceStage(model, pairs, tok, loop, file);
        assert.ok(existsSync(join(d, 'ref_logps.fingerprint.json')));
        assert.deepEqual(await referenceStage(model, pairs, tok, loop, file), first);
        const swapped = rows.map(([p, r, g]) => tokenizePair(tok, p, g, r, trunc)); // real and generated exchanged
        await assert.rejects(
          referenceStage(model, swapped, tok, loop, file),
          /ref_logps\.json: reference log-probs of another run: the pairs differ/,
        );
        // computed in f32: refused for a bf16 (mixed-precision) run, whose first step would not reproduce them
        await assert.rejects(
          referenceStage(model, pairs, tok, { ...loop, computeDtype: 'bf16' }, file),
          /reference log-probs of another run: compute_dtype \(was f32, now bf16\); delete it and .*ref_logps\.fingerprint\.json to recompute/,
        );
        // 'auto' on the CPU is f32: the file is reused
        assert.deepEqual(await referenceStage(model, pairs, tok, { ...loop, computeDtype: 'auto' }, file), first);
      } finally {
        model.weights.free();
      }
    }));
});
