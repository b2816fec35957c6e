// What a model directory holds beside its weights, end to end through the CLI (issue 24 items 7-8,
// issue 23 item 4): a vocabulary padded past the tokenizer is never sampled, a tokenizer with more ids
// than the model is refused naming both files, a tokenizer whose ids have gaps loads and generates,
// and every model spinlm writes carries its source's side files (tokenizer, chat template, generation
// config) byte for byte, with config.json changed only where spinlm changed something.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { randomBytes, randomInt } from 'node:crypto';
import { existsSync, lstatSync, mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { CpuBackend } from '../src/backend/cpu/cpu_backend.js';
import { initLlama } from '../src/model/init.js';
import { ZEPHYR_CHAT_TEMPLATE, writeByteTokenizer } from '../src/text/byte_tokenizer.js';
import { tinyConfig } from './helpers/tiny_model.js';

const BIN = new URL('../bin/spinlm.js', import.meta.url).pathname;
const spinlm = (args: string[], cwd: string) =>
  spawnSync(process.execPath, [BIN, ...args], {
    cwd,
    encoding: 'utf8',
    timeout: 300_000,
    env: { ...process.env, SPINLM_NUM_THREADS: '2' },
  });
const word = () => randomBytes(3).toString('hex');
const jsonl = (rows: unknown[]) => rows.map((r) => JSON.stringify(r)).join('\n') + '\n';
const readJsonl = (f: string) =>
  readFileSync(f, 'utf8')
    .trim()
    .split('\n')
    .map((l) => JSON.parse(l) as Record<string, unknown>);
const oneLine = (stderr: string) => assert.equal(stderr.trim().split('\n').length, 1, `expected one line, got:\n${stderr}`);

const be = new CpuBackend();
/** The allow-list as docs/design.md states it (src/model/side_files.ts SIDE_FILES). */
const SIDE_FILES = [
  'tokenizer.json',
  'tokenizer_config.json',
  'special_tokens_map.json',
  'added_tokens.json',
  'tokenizer.model',
  'spiece.model',
  'sentencepiece.bpe.model',
  'vocab.json',
  'vocab.txt',
  'merges.txt',
  'chat_template.jinja',
  'chat_template.json',
  'generation_config.json',
];
let dir = '';

/** A byte-tokenizer model of `vocab` rows (random weights) in a new directory. */
async function makeModel(name: string, vocab: number, std = 0.05): Promise<string> {
  const d = join(dir, name);
  mkdirSync(d);
  await writeByteTokenizer(d);
  const m = initLlama(be, tinyConfig({ vocab }), { seed: randomInt(1000), std, randomizeAll: true });
  await m.save(d);
  m.weights.free();
  return d;
}

before(() => {
  dir = mkdtempSync(join(tmpdir(), 'spinlm-model-files-'));
  writeFileSync(join(dir, 'prompts.jsonl'), jsonl(Array.from({ length: 8 }, () => ({ prompt: `say ${word()}`, completion: word() }))));
  const chat = (p: string, a: string) => [
    { role: 'user', content: p },
    { role: 'assistant', content: a },
  ];
  writeFileSync(
    join(dir, 'pairs.jsonl'),
    jsonl(
      Array.from({ length: 4 }, () => {
        const p = word();
        return { prompt: p, real: chat(p, word()), generated: chat(p, word()) };
      }),
    ),
  );
});
after(() => rmSync(dir, { recursive: true, force: true }));

const gen = (model: string, out: string) => [
  'generate',
  '--model',
  model,
  '--data',
  'prompts.jsonl',
  '--out',
  out,
  '--max_new_tokens',
  '16',
  '--temperature',
  '1',
  '--quiet',
];

describe('a model vocabulary that differs from the tokenizer (issue 24 item 7)', () => {
  test('vocab_size padded past the tokenizer (as Qwen2): generation never samples the padding and finishes', async () => {
    // 40 of 300 ids have no token: 8 prompts x 16 sampled tokens from near-uniform logits would draw
    // one with probability 1 - (260/300)^128 > 0.99999999 (before: "decode: ids[i] = 2xx is not a token id")
    const m = await makeModel(`padded-${word()}`, 300, 0.02);
    const r = spinlm(gen(m, 'padded.jsonl'), dir);
    assert.equal(r.status, 0, r.stderr);
    const rows = readJsonl(join(dir, 'padded.jsonl'));
    assert.equal(rows.length, 8);
  });

  test('a tokenizer with more ids than the model is refused by score, train and generate, naming both files', async () => {
    const m = await makeModel(`short-${word()}`, 200);
    for (const args of [
      ['score', '--model', m, '--data', 'pairs.jsonl', '--out', `s-${word()}.jsonl`, '--quiet'],
      ['train', '--model', m, '--data', 'pairs.jsonl', '--out', `t-${word()}`, '--quiet'],
      gen(m, `g-${word()}.jsonl`),
    ]) {
      const r = spinlm(args, dir);
      assert.equal(r.status, 1, `${args[0]}: ${r.stderr}`);
      oneLine(r.stderr);
      assert.ok(r.stderr.includes(join(m, 'tokenizer.json')) && r.stderr.includes(join(m, 'config.json')), r.stderr);
      assert.match(r.stderr, /ids up to 259, but the model's vocab_size is 200/);
    }
  });
});

describe('tokenizer ids with gaps (issue 24 item 8)', () => {
  test('an added token at id 5000 of a 260-token vocabulary: loads, generates without sampling a gap, scores', async () => {
    // a model of 5001 rows: 4740 ids (260..4999) have no token; before, loading the tokenizer failed
    // with "Cannot read properties of undefined (reading 'length')"
    const m = await makeModel(`gaps-${word()}`, 5001, 0.02);
    const file = join(m, 'tokenizer.json');
    const tj = JSON.parse(readFileSync(file, 'utf8')) as { added_tokens: { id: number; content: string }[] };
    tj.added_tokens.push({ ...tj.added_tokens[0], id: 5000, content: '<extra>' });
    writeFileSync(file, JSON.stringify(tj));
    let r = spinlm(gen(m, 'gaps.jsonl'), dir);
    assert.equal(r.status, 0, r.stderr);
    assert.equal(readJsonl(join(dir, 'gaps.jsonl')).length, 8);
    r = spinlm(['score', '--model', m, '--data', 'pairs.jsonl', '--out', `gs-${word()}.jsonl`, '--quiet'], dir);
    assert.equal(r.status, 0, r.stderr);
  });
});

describe('outputs carry the model side files (issue 23 item 4)', () => {
  const quick = [
    '--per_device_train_batch_size',
    '4',
    '--gradient_accumulation_steps',
    '1',
    '--num_train_epochs',
    '1',
    '--learning_rate',
    '1e-3',
    '--max_length',
    '64',
    '--max_prompt_length',
    '32',
    '--quiet',
  ];
  const allowed = ['special_tokens_map.json', 'added_tokens.json', 'tokenizer.model', 'chat_template.jinja', 'generation_config.json'];
  const refused = ['modeling_custom.py', 'pytorch_model.bin', 'training_args.bin', 'optimizer.pt', 'rng_state.pkl', 'README.md'];
  let base = '';
  let sourceConfig: Record<string, unknown> = {};

  before(async () => {
    base = await makeModel('base', 260);
    // the chat template only in chat_template.jinja (transformers' newer layout), the rest as published
    writeFileSync(join(base, 'chat_template.jinja'), ZEPHYR_CHAT_TEMPLATE);
    writeFileSync(
      join(base, 'generation_config.json'),
      JSON.stringify({ bos_token_id: 1, eos_token_id: [2], do_sample: true, temperature: 0.6 }, null, 2),
    );
    writeFileSync(join(base, 'special_tokens_map.json'), JSON.stringify({ eos_token: '</s>', bos_token: '<s>' }));
    writeFileSync(join(base, 'added_tokens.json'), '{}');
    writeFileSync(join(base, 'tokenizer.model'), randomBytes(1000));
    for (const f of refused) writeFileSync(join(base, f), f.endsWith('.py') ? 'import os\nos.system("echo pwned")\n' : randomBytes(64));
    // config.json as transformers writes it: fields spinlm does not read, and a dtype spinlm will change
    const cfg = JSON.parse(readFileSync(join(base, 'config.json'), 'utf8')) as Record<string, unknown>;
    sourceConfig = {
      ...cfg,
      torch_dtype: 'bfloat16',
      initializer_range: 0.02,
      pad_token_id: 0,
      use_cache: true,
      transformers_version: '4.46.0',
    };
    writeFileSync(join(base, 'config.json'), JSON.stringify(sourceConfig, null, 2));
  });

  /** The side files are byte-identical, nothing else is copied, config.json is the source's but for the dtype spinlm wrote. */
  function checkCarried(out: string, files = SIDE_FILES): void {
    for (const f of files)
      if (existsSync(join(base, f)))
        assert.ok(readFileSync(join(out, f)).equals(readFileSync(join(base, f))), `${out}: ${f} differs from the source's`);
    for (const f of ['tokenizer.json', 'tokenizer_config.json', ...allowed])
      if (files.includes(f)) assert.ok(existsSync(join(out, f)), `${out}: ${f} missing`);
    for (const f of refused) assert.ok(!existsSync(join(out, f)), `${out}: ${f} was copied`);
    const cfg = JSON.parse(readFileSync(join(out, 'config.json'), 'utf8')) as Record<string, unknown>;
    // the weights are f32 (the source's safetensors are): torch_dtype says so, nothing else changed
    assert.deepEqual(cfg, { ...sourceConfig, torch_dtype: 'float32' });
    assert.deepEqual(Object.keys(cfg), Object.keys(sourceConfig), 'the fields keep their order');
  }

  /** Scores of `model` under a --template choice (the file's text). */
  function score(model: string, template: string): string {
    const out = `score-${word()}.jsonl`;
    const r = spinlm(
      ['score', '--model', model, '--data', 'pairs.jsonl', '--out', out, '--template', template, '--max_length', '64', '--quiet'],
      dir,
    );
    assert.equal(r.status, 0, `${template}: ${r.stderr}`);
    return readFileSync(join(dir, out), 'utf8');
  }

  test('sft, train and run write models with the side files; --template auto picks the chat template on them as on the source', () => {
    const outs: string[] = [];
    let r = spinlm(['sft', '--model', base, '--data', 'prompts.jsonl', '--out', 'sft-out', ...quick], dir);
    assert.equal(r.status, 0, r.stderr);
    outs.push(join(dir, 'sft-out'));
    r = spinlm(['train', '--model', base, '--data', 'pairs.jsonl', '--out', 'train-out', ...quick], dir);
    assert.equal(r.status, 0, r.stderr);
    outs.push(join(dir, 'train-out', 'model'));
    r = spinlm(
      ['run', '--model', base, '--data', 'prompts.jsonl', '--out', 'run-out', '--iterations', '2', '--max_new_tokens', '4', ...quick],
      dir,
    );
    assert.equal(r.status, 0, r.stderr);
    outs.push(join(dir, 'run-out', 'iter-0', 'model'), join(dir, 'run-out', 'iter-1', 'model'));
    for (const out of outs) checkCarried(out);
    // auto = chat on the source and on every output (before: instruction on the outputs, and
    // --template chat refused: "the tokenizer ... has no chat_template")
    assert.equal(score(base, 'auto'), score(base, 'chat'));
    for (const out of [outs[1], outs[3]]) {
      const auto = score(out, 'auto');
      assert.equal(auto, score(out, 'chat'), `${out}: --template auto is the chat template`);
      assert.notEqual(auto, score(out, 'instruction'), 'the templates give different scores');
    }
  });

  test('sft --init_config --tokenizer: the tokenizer files and the config file, no generation_config.json', () => {
    writeFileSync(join(dir, 'fresh.json'), JSON.stringify(sourceConfig, null, 2));
    const r = spinlm(
      ['sft', '--init_config', 'fresh.json', '--tokenizer', base, '--data', 'prompts.jsonl', '--out', 'fresh-out', ...quick],
      dir,
    );
    assert.equal(r.status, 0, r.stderr);
    const out = join(dir, 'fresh-out');
    checkCarried(
      out,
      SIDE_FILES.filter((f) => f !== 'generation_config.json'),
    );
    assert.ok(!existsSync(join(out, 'generation_config.json')));
  });
});

describe('side files: the rule in pieces (src/model/side_files.ts)', () => {
  test("config.json: transformers 5's dtype field, a config spinlm changed, symlinks, non-regular files", async () => {
    const { copySideFiles, keepSourceConfig } = await import('../src/model/side_files.js');
    const src = await makeModel(`rule-src-${word()}`, 260);
    const cfg = JSON.parse(readFileSync(join(src, 'config.json'), 'utf8')) as Record<string, unknown>;
    const { torch_dtype: _, ...noTorchDtype } = cfg;
    // transformers 5 names the field dtype: it is the one updated, torch_dtype is not added
    writeFileSync(join(src, 'config.json'), JSON.stringify({ ...noTorchDtype, dtype: 'bfloat16', pad_token_id: 0 }));
    const out = await makeModel(`rule-out-${word()}`, 260);
    assert.equal(await keepSourceConfig(out, join(src, 'config.json')), true);
    assert.deepEqual(JSON.parse(readFileSync(join(out, 'config.json'), 'utf8')), { ...noTorchDtype, dtype: 'float32', pad_token_id: 0 });
    // a source whose configuration differs from the saved model's (another hidden size): spinlm's own is kept
    const other = await makeModel(`rule-other-${word()}`, 300);
    const before = readFileSync(join(other, 'config.json'), 'utf8');
    assert.equal(await keepSourceConfig(other, join(src, 'config.json')), false);
    assert.equal(readFileSync(join(other, 'config.json'), 'utf8'), before);
    // symlinked side files (a Hugging Face cache snapshot) are copied as files; a directory under a listed name is refused by name
    const blob = join(dir, `blob-${word()}`);
    writeFileSync(blob, randomBytes(100));
    symlinkSync(blob, join(src, 'generation_config.json'));
    const dst = mkdtempSync(join(dir, 'dst-'));
    assert.deepEqual(await copySideFiles(src, dst), ['tokenizer.json', 'tokenizer_config.json', 'generation_config.json']);
    assert.ok(
      lstatSync(join(dst, 'generation_config.json')).isFile() &&
        readFileSync(join(dst, 'generation_config.json')).equals(readFileSync(blob)),
    );
    mkdirSync(join(src, 'tokenizer.model'));
    await assert.rejects(
      copySideFiles(src, dst),
      (e: Error) => e.message.includes(join(src, 'tokenizer.model')) && /not a regular file/.test(e.message),
    );
    await assert.rejects(copySideFiles(src, dst, ['model.py']), /not on the side-file allow-list/);
  });
});
