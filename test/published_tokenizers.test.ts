// Published tokenizers (test/helpers/published_tokenizers.ts) through spinlm: known ids, round trips,
// load time, and `spinlm score / train / generate` per family on a tiny random-weight model carrying
// the real tokenizer (vocabularies of 32k-262k ids, hidden size 16), with the chat template; and
// generation stopping at an eos_token_id list's <|eot_id|> (a hand-set model that says it first).
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { CpuBackend } from '../src/backend/cpu/cpu_backend.js';
import { expectedTensors, parseConfig } from '../src/model/config.js';
import { initLlama } from '../src/model/init.js';
import { LlamaModel } from '../src/model/llama.js';
import { Weights } from '../src/model/weights.js';
import * as ops from '../src/ops/index.js';
import { loadTokenizer } from '../src/text/tokenizer.js';
import { FAMILIES, type Family, publishedDir, tokenizerDirWith, ZEPHYR_TEMPLATE } from './helpers/published_tokenizers.js';
import { withSeed } from './helpers/random.js';

const BIN = new URL('../bin/spinlm.js', import.meta.url).pathname;
const spinlm = (args: string[], cwd: string) =>
  spawnSync(process.execPath, [BIN, ...args], { cwd, encoding: 'utf8', env: { ...process.env, SPINLM_NUM_THREADS: '2' } });

let root = '';
before(async () => {
  root = await mkdtemp(join(tmpdir(), 'spinlm-published-'));
});
after(() => rm(root, { recursive: true, force: true }));

/** A config.json as the model cards write one, shrunk: hidden 16, one layer, the tokenizer's vocabulary. */
function tinyJson(vocab: number, eos: number | number[], bos: number | null) {
  return {
    architectures: ['LlamaForCausalLM'],
    model_type: 'llama',
    hidden_size: 16,
    intermediate_size: 32,
    num_hidden_layers: 1,
    num_attention_heads: 2,
    num_key_value_heads: 1,
    rms_norm_eps: 1e-5,
    rope_theta: 500000,
    vocab_size: vocab,
    max_position_embeddings: 256,
    tie_word_embeddings: false,
    bos_token_id: bos,
    eos_token_id: eos,
    hidden_act: 'silu',
    torch_dtype: 'float32',
  };
}

const KNOWN: Record<Family, { text: string; ids: number[] }> = {
  llama3: { text: 'Hello world', ids: [9906, 1917] },
  llama3_1: { text: 'Hello world', ids: [9906, 1917] },
  qwen3: { text: 'Hello world', ids: [9707, 1879] },
  mistral: { text: 'Hello world', ids: [22557, 1526] },
  gemma3: { text: 'Hello world', ids: [9259, 1902] },
};
const SPECIAL: Record<Family, [string, number][]> = {
  llama3: [
    ['<|begin_of_text|>', 128000],
    ['<|end_of_text|>', 128001],
    ['<|eot_id|>', 128009],
  ],
  llama3_1: [['<|eot_id|>', 128009]],
  qwen3: [
    ['<|endoftext|>', 151643],
    ['<|im_start|>', 151644],
    ['<|im_end|>', 151645],
  ],
  mistral: [
    ['<s>', 1],
    ['</s>', 2],
  ],
  gemma3: [
    ['<bos>', 2],
    ['<start_of_turn>', 105],
    ['<end_of_turn>', 106],
  ],
};
const PIECES = ['Hello', ' world', '!', '  ', '\n\n', 'é', '中文', '😀', ' 2+2=4', '"q"', '\t', 'ﬁ', 'İ', ' {x}', '...', '\u00a0'];

describe('published tokenizers: ids, round trips, load time', () => {
  for (const f of FAMILIES) {
    test(f, () =>
      withSeed(async (rng) => {
        const t0 = performance.now();
        const tok = await loadTokenizer(publishedDir(f));
        const ms = performance.now() - t0;
        process.stderr.write(`# ${f}: loadTokenizer ${ms.toFixed(0)} ms, ${tok.vocabSize} ids\n`);
        assert.deepEqual(tok.encode(KNOWN[f].text), KNOWN[f].ids);
        for (const [s, id] of SPECIAL[f]) {
          assert.equal(tok.tokenToId(s), id, s);
          assert.deepEqual(tok.encode(s), [id], s);
        }
        for (let k = 0; k < 40; k++) {
          let s = '';
          for (let n = rng.int(1, 12); n > 0; n--) s += PIECES[rng.int(0, PIECES.length - 1)];
          // SentencePiece vocabularies (mistral, gemma3) decode as they encode; byte-level ones too
          assert.equal(tok.decode(tok.encode(s), { cleanUpSpaces: false }), s, `${f}: ${JSON.stringify(s)}`);
        }
      }),
    );
  }
});

describe('score, train and generate per family with the real tokenizer (tiny random model, chat template)', () => {
  for (const f of FAMILIES) {
    test(f, async () => {
      const dir = join(root, f);
      const model = join(dir, 'model');
      await tokenizerDirWith(f, model, f === 'mistral' ? ZEPHYR_TEMPLATE : undefined);
      const tok = await loadTokenizer(model);
      const cfg = tinyJson(tok.vocabSize, tok.eosId, tok.bosId);
      await initLlama(new CpuBackend(), parseConfig(cfg, 'tiny'), { seed: 3, std: 0.05 }).save(model);
      await writeFile(join(model, 'config.json'), JSON.stringify(cfg));
      const rows = [
        {
          messages: [
            { role: 'system', content: 'Be brief.' },
            { role: 'user', content: 'Name a fruit.' },
            { role: 'assistant', content: 'Apple.' },
            { role: 'user', content: 'Another?' },
            { role: 'assistant', content: 'Pear.' },
          ],
        },
        {
          messages: [
            { role: 'user', content: 'Hi!' },
            { role: 'assistant', content: 'Hello.' },
          ],
        },
      ];
      // gemma3's template has no system role of its own: it folds the system text into the first user turn
      await writeFile(join(dir, 'sft.jsonl'), rows.map((r) => JSON.stringify(r)).join('\n') + '\n');
      const common = ['--template', 'chat', '--template_date', '2026-01-02', '--quiet'];
      let r = spinlm(
        ['generate', '--model', model, '--data', 'sft.jsonl', '--out', 'pairs.jsonl', '--max_new_tokens', '4', ...common],
        dir,
      );
      assert.equal(r.status, 0, r.stderr);
      const pairs = (await readFile(join(dir, 'pairs.jsonl'), 'utf8'))
        .trim()
        .split('\n')
        .map((l) => JSON.parse(l));
      assert.equal(pairs.length, 2);
      // the multi-turn row keeps its system turn and first round before the generated answer
      assert.deepEqual(pairs[0].generated.slice(0, 4), rows[0].messages.slice(0, 4));
      assert.equal(pairs[0].real[4].content, 'Pear.');
      r = spinlm(['score', '--model', model, '--data', 'pairs.jsonl', '--out', 'scores.jsonl', ...common], dir);
      assert.equal(r.status, 0, r.stderr);
      const scores = (await readFile(join(dir, 'scores.jsonl'), 'utf8'))
        .trim()
        .split('\n')
        .map((l) => JSON.parse(l));
      for (const s of scores) assert.ok(Number.isFinite(s.logps_real) && s.logps_real < 0 && s.tokens_real >= 2, JSON.stringify(s));
      r = spinlm(
        [
          'train',
          '--model',
          model,
          '--data',
          'pairs.jsonl',
          '--out',
          'trained',
          '--per_device_train_batch_size',
          '2',
          '--gradient_accumulation_steps',
          '1',
          '--num_train_epochs',
          '1',
          '--learning_rate',
          '1e-3',
          ...common,
        ],
        dir,
      );
      assert.equal(r.status, 0, r.stderr);
      const fp = JSON.parse(await readFile(join(dir, 'trained', 'fingerprint.json'), 'utf8'));
      assert.equal(fp.template_date, '2026-01-02');
    });
  }
});

describe("generation stops at every eos id and at the chat template's end of turn", () => {
  const CASES = [
    {
      name: "a Llama 3 Instruct-style model that ends its turn with <|eot_id|> (128009) stops there (config.json's eos list)",
      family: 'llama3' as const,
      eos: '<|end_of_text|>', // as the base files have it
      config: { eos: [128001, 128009], bos: 128000 },
      stop: 128009,
      other: 9906, // "Hello"
      template: [] as string[],
    },
    {
      name: "Gemma 3 Instruct (tokenizer eos <eos>, config.json eos 1 only) stops at the chat template's <end_of_turn> (106)",
      family: 'gemma3' as const,
      eos: '<eos>', // google/gemma-3-*-it's tokenizer_config.json
      config: { eos: [1], bos: 2 },
      stop: 106,
      other: 9259, // "Hello"
      template: ['--template', 'chat'],
    },
  ];
  for (const c of CASES)
    test(c.name, async () => {
      const dir = join(root, `stop-${c.family}`);
      const model = join(dir, 'model');
      await tokenizerDirWith(c.family, model, undefined, { eos_token: c.eos });
      const tok = await loadTokenizer(model);
      const cfg = parseConfig(tinyJson(tok.vocabSize, c.config.eos, c.config.bos), 'stop');
      // hand-set weights: attention and MLP write nothing, so the last position's hidden state is its
      // token's embedding: every token but the stop embeds to e0, which predicts the stop; the stop
      // embeds to e1, which predicts "Hello". A run that does not stop there writes "HelloHello..."
      const be = new CpuBackend();
      const w = new Weights(be, 'f32');
      const H = cfg.hiddenSize;
      for (const spec of expectedTensors(cfg)) {
        const n = spec.shape.reduce((a, b) => a * b, 1);
        const data = new Float32Array(n);
        if (spec.name.endsWith('norm.weight')) data.fill(1);
        else if (spec.name === 'model.embed_tokens.weight') {
          for (let v = 0; v < cfg.vocabSize; v++) data[v * H + (v === c.stop ? 1 : 0)] = 1;
        } else if (spec.name === 'lm_head.weight') {
          data[c.stop * H + 0] = 10;
          data[c.other * H + 1] = 10;
        } else if (!/o_proj|down_proj/.test(spec.name)) data.fill(0.01);
        w.params.set(spec.name, ops.upload(be, { dtype: 'f32', data }, spec.shape));
      }
      await new LlamaModel(cfg, w).save(model);
      await writeFile(join(dir, 'sft.jsonl'), JSON.stringify({ prompt: 'Hi', completion: 'Hello.' }) + '\n');
      const r = spinlm(
        ['generate', '--model', model, '--data', 'sft.jsonl', '--out', 'pairs.jsonl', '--max_new_tokens', '6', '--quiet', ...c.template],
        dir,
      );
      assert.equal(r.status, 0, r.stderr);
      const [row] = (await readFile(join(dir, 'pairs.jsonl'), 'utf8'))
        .trim()
        .split('\n')
        .map((l) => JSON.parse(l));
      assert.equal(row.generated[row.generated.length - 1].content, '');
    });
});
