// src/model/config.ts: each model type, defaults, round trips through config.json, expected
// tensors, and one error per rule (each naming the file and the field).
import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import { ConfigError, type LlamaConfig, configToJson, expectedTensors, loadConfig, parseConfig, writeConfig } from '../src/model/config.js';
import type { Rng } from '../src/util/rng.js';
import { withSeed } from './helpers/random.js';

const FILE = '/models/x/config.json';

/** A random valid config.json of the given type (head_dim derived, GQA). */
function randomJson(rng: Rng, modelType: string): Record<string, unknown> {
  const nKV = rng.int(1, 4);
  const nH = nKV * rng.int(1, 4);
  const hd = 2 * rng.int(2, 16);
  const vocab = rng.int(300, 5000);
  return {
    model_type: modelType,
    hidden_size: nH * hd,
    intermediate_size: rng.int(1, 64) * 8,
    num_hidden_layers: rng.int(1, 6),
    num_attention_heads: nH,
    num_key_value_heads: nKV,
    rms_norm_eps: [1e-5, 1e-6][rng.int(0, 1)],
    vocab_size: vocab,
    max_position_embeddings: rng.int(64, 8192),
    bos_token_id: rng.int(0, vocab - 1),
    eos_token_id: rng.int(0, vocab - 1),
  };
}

function expectError(fn: () => unknown, field: string | null, re: RegExp): void {
  assert.throws(fn, (err: unknown) => {
    assert.ok(err instanceof ConfigError, `expected a ConfigError, got ${String(err)}`);
    assert.ok(err.message.includes(FILE), `message names the file: ${err.message}`);
    if (field !== null) assert.ok(err.message.includes(`"${field}"`), `message names field ${field}: ${err.message}`);
    assert.match(err.message, re);
    return true;
  });
}

describe('parseConfig: model types', () => {
  test('llama: fields and defaults', () =>
    withSeed((rng) => {
      const j = randomJson(rng, 'llama');
      const { num_key_value_heads: _, ...noKv } = j;
      const c = parseConfig(noKv, FILE);
      assert.equal(c.modelType, 'llama');
      assert.equal(c.hiddenSize, j.hidden_size);
      assert.equal(c.intermediateSize, j.intermediate_size);
      assert.equal(c.numLayers, j.num_hidden_layers);
      assert.equal(c.numHeads, j.num_attention_heads);
      assert.equal(c.numKvHeads, j.num_attention_heads, 'num_key_value_heads defaults to num_attention_heads');
      assert.equal(c.headDim, (j.hidden_size as number) / (j.num_attention_heads as number));
      assert.equal(c.rmsNormEps, j.rms_norm_eps);
      assert.equal(c.ropeTheta, 10000);
      assert.equal(c.ropeScaling, null);
      assert.equal(c.vocabSize, j.vocab_size);
      assert.equal(c.maxPositionEmbeddings, j.max_position_embeddings);
      assert.equal(c.tieWordEmbeddings, false);
      assert.equal(c.qkvBias, false);
      assert.equal(c.oBias, false);
      assert.equal(c.slidingWindow, null);
      assert.equal(c.bosTokenId, j.bos_token_id);
      assert.deepEqual(c.eosTokenIds, [j.eos_token_id]);
      assert.equal(c.torchDtype, null);
    }));

  test('llama: attention_bias puts biases on q, k, v and o; rope, dtype, eos list', () =>
    withSeed((rng) => {
      const j = randomJson(rng, 'llama');
      const eos = [rng.int(0, 299), rng.int(0, 299)];
      const c = parseConfig(
        {
          ...j,
          attention_bias: true,
          rope_theta: 500000,
          rope_scaling: { type: 'linear', factor: 4 },
          torch_dtype: 'bfloat16',
          eos_token_id: eos,
          num_key_value_heads: j.num_attention_heads,
        },
        FILE,
      );
      assert.equal(c.qkvBias, true);
      assert.equal(c.oBias, true);
      assert.equal(c.ropeTheta, 500000);
      assert.deepEqual(c.ropeScaling, { type: 'linear', factor: 4 });
      assert.equal(c.torchDtype, 'bfloat16');
      assert.deepEqual(c.eosTokenIds, eos);
      assert.equal(c.numKvHeads, c.numHeads);
      // rope_type spelling, "default" meaning none, newer "dtype" key, null head_dim = absent
      assert.deepEqual(parseConfig({ ...j, rope_scaling: { rope_type: 'linear', factor: 2.5 } }, FILE).ropeScaling, {
        type: 'linear',
        factor: 2.5,
      });
      assert.equal(parseConfig({ ...j, rope_scaling: { rope_type: 'default' } }, FILE).ropeScaling, null);
      assert.equal(parseConfig({ ...j, dtype: 'float16' }, FILE).torchDtype, 'float16');
      assert.equal(parseConfig({ ...j, head_dim: null }, FILE).headDim, c.headDim);
      const rp = parseConfig({ ...j, rope_parameters: { rope_type: 'default', rope_theta: 1e6 } }, FILE);
      assert.equal(rp.ropeTheta, 1e6);
      assert.equal(rp.ropeScaling, null);
    }));

  test('rope scaling types: llama3, yarn, longrope (and "su"), dynamic, partial_rotary_factor 1; written back unchanged', () =>
    withSeed((rng) => {
      const j = { ...randomJson(rng, 'llama'), hidden_size: 64, num_attention_heads: 4, num_key_value_heads: 2, head_dim: 16 };
      // Llama 3.1 as its model card publishes it
      const llama3 = {
        factor: 8.0,
        low_freq_factor: 1.0,
        high_freq_factor: 4.0,
        original_max_position_embeddings: 8192,
        rope_type: 'llama3',
      };
      const c3 = parseConfig({ ...j, max_position_embeddings: 131072, rope_theta: 500000.0, rope_scaling: llama3 }, FILE);
      assert.deepEqual(c3.ropeScaling, {
        type: 'llama3',
        factor: 8,
        lowFreqFactor: 1,
        highFreqFactor: 4,
        originalMaxPositionEmbeddings: 8192,
      });
      // transformers 5 spelling: rope_parameters carries theta and the scaling
      const c5 = parseConfig({ ...j, rope_parameters: { ...llama3, rope_theta: 500000.0 } }, FILE);
      assert.equal(c5.ropeTheta, 500000);
      assert.deepEqual(c5.ropeScaling, c3.ropeScaling);
      // Qwen2.5's yarn block: HF defaults for beta_fast / beta_slow / truncate, attention factor from factor
      const yarn = parseConfig(
        { ...randomJson(rng, 'qwen2'), rope_scaling: { factor: 4.0, original_max_position_embeddings: 32768, type: 'yarn' } },
        FILE,
      );
      assert.deepEqual(yarn.ropeScaling, {
        type: 'yarn',
        factor: 4,
        originalMaxPositionEmbeddings: 32768,
        attentionFactor: null,
        betaFast: 32,
        betaSlow: 1,
        mscale: null,
        mscaleAllDim: null,
        truncate: true,
      });
      // Phi-3 128k: original_max_position_embeddings at the top level, factor = max / original
      const short = Array.from({ length: 8 }, (_, i) => 1 + i / 10),
        long = Array.from({ length: 8 }, (_, i) => 1 + i);
      const phi = {
        ...j,
        max_position_embeddings: 131072,
        original_max_position_embeddings: 4096,
        rope_scaling: { type: 'longrope', short_factor: short, long_factor: long },
      };
      const lr = parseConfig(phi, FILE);
      assert.deepEqual(lr.ropeScaling, {
        type: 'longrope',
        shortFactor: short,
        longFactor: long,
        factor: 32,
        attentionFactor: null,
        originalMaxPositionEmbeddings: 4096,
      });
      assert.deepEqual(parseConfig({ ...phi, rope_scaling: { ...phi.rope_scaling, type: 'su' } }, FILE).ropeScaling, lr.ropeScaling);
      assert.deepEqual(parseConfig({ ...j, rope_scaling: { type: 'dynamic', factor: 2 } }, FILE).ropeScaling, {
        type: 'dynamic',
        factor: 2,
      });
      assert.equal(parseConfig({ ...j, partial_rotary_factor: 1.0 }, FILE).headDim, 16);
      // written back as read: the same keys and values (and Phi-3's top-level original length)
      for (const v of [
        { ...j, rope_scaling: llama3 },
        { ...j, rope_parameters: { ...llama3, rope_theta: 500000.0 } },
        phi,
        { ...j, rope_scaling: { type: 'yarn', factor: 2, beta_fast: 16, truncate: false, extra_key: 'kept' } },
      ]) {
        const out = configToJson(parseConfig(v, FILE));
        for (const k of ['rope_scaling', 'rope_parameters', 'original_max_position_embeddings'] as const)
          if (k in v) assert.deepEqual(out[k], (v as Record<string, unknown>)[k], k);
        assert.deepEqual(parseConfig(JSON.parse(JSON.stringify(out)), FILE), parseConfig(v, FILE));
      }
    }));

  test('mistral: explicit head_dim, sliding window recorded only when smaller than max positions, no biases', () =>
    withSeed((rng) => {
      const j = randomJson(rng, 'mistral');
      const maxPos = j.max_position_embeddings as number;
      const hd = 2 * rng.int(2, 40);
      const window = rng.int(1, maxPos - 1);
      const c = parseConfig(
        { ...j, head_dim: hd, hidden_size: (j.hidden_size as number) + 2, sliding_window: window, attention_bias: true },
        FILE,
      );
      assert.equal(c.headDim, hd);
      assert.equal(c.slidingWindow, window);
      assert.equal(c.firstSlidingLayer, 0);
      assert.equal(c.qkvBias, false, 'mistral has no attention biases whatever attention_bias says');
      assert.equal(c.oBias, false);
      assert.equal(parseConfig({ ...j, sliding_window: maxPos }, FILE).slidingWindow, null);
      assert.equal(parseConfig({ ...j, sliding_window: null }, FILE).slidingWindow, null);
    }));

  test('qwen2: q/k/v biases without o bias, tied embeddings, use_sliding_window', () =>
    withSeed((rng) => {
      const j = randomJson(rng, 'qwen2');
      const maxPos = j.max_position_embeddings as number;
      const window = rng.int(1, maxPos - 1);
      const c = parseConfig(
        { ...j, tie_word_embeddings: true, sliding_window: window, use_sliding_window: false, max_window_layers: 3 },
        FILE,
      );
      assert.equal(c.qkvBias, true);
      assert.equal(c.oBias, false);
      assert.equal(c.tieWordEmbeddings, true);
      assert.equal(c.slidingWindow, null, 'use_sliding_window false turns the window off');
      const s = parseConfig({ ...j, sliding_window: window, use_sliding_window: true, max_window_layers: 3 }, FILE);
      assert.equal(s.slidingWindow, window);
      assert.equal(s.firstSlidingLayer, 3);
    }));
});

describe('configToJson / writeConfig / loadConfig', () => {
  test('round trip for every model type and option', () =>
    withSeed(async (rng) => {
      const dir = await mkdtemp(join(tmpdir(), 'spinlm-config-'));
      try {
        const variants: Record<string, unknown>[] = [
          randomJson(rng, 'llama'),
          {
            ...randomJson(rng, 'llama'),
            attention_bias: true,
            tie_word_embeddings: true,
            rope_scaling: { type: 'linear', factor: 8 },
            torch_dtype: 'float32',
          },
          { ...randomJson(rng, 'mistral'), sliding_window: 32, max_position_embeddings: 4096, torch_dtype: 'bfloat16' },
          {
            ...randomJson(rng, 'qwen2'),
            use_sliding_window: true,
            sliding_window: 16,
            max_position_embeddings: 2048,
            max_window_layers: 1,
            eos_token_id: [5, 7],
          },
          { ...randomJson(rng, 'qwen2'), eos_token_id: null, bos_token_id: null },
        ];
        const arch = {
          llama: 'LlamaForCausalLM',
          mistral: 'MistralForCausalLM',
          qwen2: 'Qwen2ForCausalLM',
          qwen3: 'Qwen3ForCausalLM',
          phi3: 'Phi3ForCausalLM',
          gemma2: 'Gemma2ForCausalLM',
          gemma3_text: 'Gemma3ForCausalLM',
        } as const;
        for (const v of variants) {
          const c = parseConfig(v, FILE);
          const out = configToJson(c);
          assert.deepEqual(out.architectures, [arch[c.modelType]]);
          assert.deepEqual(parseConfig(JSON.parse(JSON.stringify(out)), FILE), c);
          await writeConfig(dir, c);
          assert.deepEqual(await loadConfig(dir), c);
          assert.deepEqual(JSON.parse(await readFile(join(dir, 'config.json'), 'utf8')), out);
        }
      } finally {
        await rm(dir, { recursive: true, force: true });
      }
    }));

  test('loadConfig: missing file and bad JSON name the file', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'spinlm-config-'));
    try {
      const file = join(dir, 'config.json');
      await assert.rejects(
        loadConfig(dir),
        (e: Error) => e instanceof ConfigError && e.message.includes(file) && /not found/.test(e.message),
      );
      await writeFile(file, '{"model_type": "llama",');
      await assert.rejects(
        loadConfig(dir),
        (e: Error) => e instanceof ConfigError && e.message.includes(file) && /not valid JSON/.test(e.message),
      );
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});

describe('expectedTensors', () => {
  function check(c: LlamaConfig): void {
    const specs = expectedTensors(c);
    const byName = new Map(specs.map((s) => [s.name, s.shape]));
    assert.equal(byName.size, specs.length, 'names are unique');
    const { hiddenSize: H, intermediateSize: I, vocabSize: V, numHeads: nH, numKvHeads: nKV, headDim: hd, numLayers: L } = c;
    const perLayer = 9 + (c.qkvBias ? 3 : 0) + (c.oBias ? 1 : 0);
    assert.equal(specs.length, 2 + L * perLayer + (c.tieWordEmbeddings ? 0 : 1));
    assert.deepEqual(byName.get('model.embed_tokens.weight'), [V, H]);
    assert.deepEqual(byName.get('model.norm.weight'), [H]);
    assert.deepEqual(byName.get('lm_head.weight'), c.tieWordEmbeddings ? undefined : [V, H]);
    for (let i = 0; i < L; i++) {
      const p = `model.layers.${i}`;
      assert.deepEqual(byName.get(`${p}.input_layernorm.weight`), [H]);
      assert.deepEqual(byName.get(`${p}.post_attention_layernorm.weight`), [H]);
      assert.deepEqual(byName.get(`${p}.self_attn.q_proj.weight`), [nH * hd, H]);
      assert.deepEqual(byName.get(`${p}.self_attn.k_proj.weight`), [nKV * hd, H]);
      assert.deepEqual(byName.get(`${p}.self_attn.v_proj.weight`), [nKV * hd, H]);
      assert.deepEqual(byName.get(`${p}.self_attn.o_proj.weight`), [H, nH * hd]);
      assert.deepEqual(byName.get(`${p}.self_attn.q_proj.bias`), c.qkvBias ? [nH * hd] : undefined);
      assert.deepEqual(byName.get(`${p}.self_attn.k_proj.bias`), c.qkvBias ? [nKV * hd] : undefined);
      assert.deepEqual(byName.get(`${p}.self_attn.v_proj.bias`), c.qkvBias ? [nKV * hd] : undefined);
      assert.deepEqual(byName.get(`${p}.self_attn.o_proj.bias`), c.oBias ? [H] : undefined);
      assert.deepEqual(byName.get(`${p}.mlp.gate_proj.weight`), [I, H]);
      assert.deepEqual(byName.get(`${p}.mlp.up_proj.weight`), [I, H]);
      assert.deepEqual(byName.get(`${p}.mlp.down_proj.weight`), [H, I]);
    }
  }

  test('names and shapes for llama, biased llama, tied qwen2, mistral with explicit head_dim', () =>
    withSeed((rng) => {
      check(parseConfig(randomJson(rng, 'llama'), FILE));
      check(parseConfig({ ...randomJson(rng, 'llama'), attention_bias: true }, FILE));
      check(parseConfig({ ...randomJson(rng, 'qwen2'), tie_word_embeddings: true }, FILE));
      check(parseConfig({ ...randomJson(rng, 'mistral'), head_dim: 2 * rng.int(2, 40) }, FILE));
    }));
});

describe('parseConfig: errors name the file and field', () => {
  test('each rule', () =>
    withSeed((rng) => {
      const j = randomJson(rng, 'llama');
      const nH = j.num_attention_heads as number;
      const vocab = j.vocab_size as number;
      expectError(() => parseConfig([], FILE), null, /expected a JSON object/);
      expectError(() => parseConfig({ ...j, model_type: 'gpt2' }, FILE), 'model_type', /"gpt2"/);
      expectError(() => parseConfig({ ...j, model_type: undefined }, FILE), 'model_type', /got nothing/);
      for (const field of [
        'hidden_size',
        'intermediate_size',
        'num_hidden_layers',
        'num_attention_heads',
        'vocab_size',
        'max_position_embeddings',
        'rms_norm_eps',
      ]) {
        expectError(() => parseConfig({ ...j, [field]: undefined }, FILE), field, /missing/);
        expectError(() => parseConfig({ ...j, [field]: '64' }, FILE), field, /expected a positive/);
        expectError(() => parseConfig({ ...j, [field]: 0 }, FILE), field, /expected a positive/);
        expectError(() => parseConfig({ ...j, [field]: -3 }, FILE), field, /expected a positive/);
      }
      expectError(() => parseConfig({ ...j, hidden_size: 64.5 }, FILE), 'hidden_size', /positive integer/);
      expectError(() => parseConfig({ ...j, num_key_value_heads: 0 }, FILE), 'num_key_value_heads', /positive integer/);
      expectError(() => parseConfig({ ...j, head_dim: -2 }, FILE), 'head_dim', /positive integer/);
      expectError(
        () => parseConfig({ ...j, num_attention_heads: nH + 1, num_key_value_heads: nH + 1, hidden_size: (nH + 1) * 8 + 1 }, FILE),
        'num_attention_heads',
        /does not divide hidden_size/,
      );
      expectError(
        () => parseConfig({ ...j, num_attention_heads: 6, num_key_value_heads: 4, hidden_size: 48 }, FILE),
        'num_key_value_heads',
        /does not divide num_attention_heads/,
      );
      expectError(() => parseConfig({ ...j, head_dim: 7 }, FILE), 'head_dim', /even/);
      expectError(() => parseConfig({ ...j, rope_theta: 'big' }, FILE), 'rope_theta', /positive number/);
      expectError(
        () => parseConfig({ ...j, rope_scaling: { rope_type: 'mrope', mrope_section: [2, 2] } }, FILE),
        'rope_scaling',
        /"mrope" is not supported \(spinlm supports "default", "linear", "dynamic", "llama3", "yarn", "longrope"/,
      );
      expectError(
        () => parseConfig({ ...j, rope_parameters: { rope_type: 'ntk', factor: 2 } }, FILE),
        'rope_parameters',
        /"ntk" is not supported/,
      );
      expectError(() => parseConfig({ ...j, rope_scaling: { factor: 2 } }, FILE), 'rope_scaling', /type nothing is not supported/);
      expectError(
        () => parseConfig({ ...j, rope_scaling: { rope_type: 'llama3', factor: 8 } }, FILE),
        'rope_scaling.low_freq_factor',
        /positive number/,
      );
      expectError(
        () =>
          parseConfig(
            {
              ...j,
              rope_scaling: {
                rope_type: 'llama3',
                factor: 8,
                low_freq_factor: 4,
                high_freq_factor: 1,
                original_max_position_embeddings: 8192,
              },
            },
            FILE,
          ),
        'rope_scaling.high_freq_factor',
        /must exceed low_freq_factor/,
      );
      expectError(
        () => {
          // one factor too many, whatever head_dim this draw has
          const half = parseConfig(j, FILE).headDim / 2;
          const wrong = Array.from({ length: half + 1 }, () => 1);
          return parseConfig({ ...j, rope_scaling: { type: 'longrope', short_factor: wrong, long_factor: wrong } }, FILE);
        },
        'rope_scaling.short_factor',
        /list of \d+ positive numbers \(head_dim \/ 2\)/,
      );
      expectError(
        () => parseConfig({ ...j, partial_rotary_factor: 0.75 }, FILE),
        'partial_rotary_factor',
        /partial rotary embeddings are not supported/,
      );
      expectError(
        () => parseConfig({ ...j, rope_parameters: { rope_type: 'default', rope_theta: 1e4, partial_rotary_factor: 0.5 } }, FILE),
        'rope_parameters.partial_rotary_factor',
        /not supported/,
      );
      expectError(() => parseConfig({ ...j, rope_scaling: { type: 'linear' } }, FILE), 'rope_scaling.factor', /positive number/);
      expectError(() => parseConfig({ ...j, rope_scaling: 'linear' }, FILE), 'rope_scaling', /null or an object/);
      expectError(() => parseConfig({ ...j, tie_word_embeddings: 'yes' }, FILE), 'tie_word_embeddings', /true or false/);
      expectError(() => parseConfig({ ...j, attention_bias: 1 }, FILE), 'attention_bias', /true or false/);
      expectError(() => parseConfig({ ...j, mlp_bias: true }, FILE), 'mlp_bias', /not supported/);
      expectError(() => parseConfig({ ...j, hidden_act: 'gelu' }, FILE), 'hidden_act', /"gelu"/);
      expectError(() => parseConfig({ ...j, eos_token_id: vocab }, FILE), 'eos_token_id', /token id/);
      expectError(() => parseConfig({ ...j, eos_token_id: [1, 'x'] }, FILE), 'eos_token_id[1]', /token id/);
      expectError(() => parseConfig({ ...j, bos_token_id: -1 }, FILE), 'bos_token_id', /token id/);
      expectError(() => parseConfig({ ...j, torch_dtype: 'float64' }, FILE), 'torch_dtype', /"float64"/);
      expectError(() => parseConfig({ ...j, model_type: 'mistral', sliding_window: 0 }, FILE), 'sliding_window', /positive integer/);
      expectError(() => parseConfig({ ...j, model_type: 'qwen2', use_sliding_window: 'no' }, FILE), 'use_sliding_window', /true or false/);
      expectError(
        () => parseConfig({ ...j, model_type: 'qwen2', max_window_layers: -1 }, FILE),
        'max_window_layers',
        /non-negative integer/,
      );
    }));
});
