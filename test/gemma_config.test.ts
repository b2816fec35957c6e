// Gemma 2 / Gemma 3 config.json (src/model/gemma_config.ts through parseConfig): the published files of
// transformers 4.x and the shapes transformers 5 writes, HF's class defaults, refusals by name, round
// trips, the per-layer window / RoPE / scale, and the HF tensor names (issue 29).
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { ConfigError, configToJson, expectedTensors, parseConfig } from '../src/model/config.js';
import { attentionScale, layerRope, layerWindow } from '../src/model/gemma_config.js';
import {
  GEMMA2_27B,
  GEMMA2_2B,
  GEMMA3_1B,
  GEMMA3_270M,
  GEMMA3_4B_MULTIMODAL,
  GEMMA3_4B_TEXT,
  gemma2V5,
  gemma3V5,
  tinyGemma,
} from './helpers/gemma_configs.js';
import { PHI3_CONFIG, QWEN3_CONFIG } from './helpers/tiny_model.js';

const FILE = '/models/g/config.json';
const S = 'sliding_attention';
const F = 'full_attention';

function expectError(fn: () => unknown, field: string, re: RegExp): void {
  assert.throws(fn, (err: unknown) => {
    assert.ok(err instanceof ConfigError, `expected a ConfigError, got ${String(err)}`);
    assert.ok(err.message.includes(`"${field}"`), `message names field ${field}: ${err.message}`);
    assert.match(err.message, re);
    return true;
  });
}

const roundTrip = (c: ReturnType<typeof parseConfig>) => parseConfig(JSON.parse(JSON.stringify(configToJson(c))), FILE);

describe('Gemma 2 config.json', () => {
  test('gemma-2-2b (transformers 4.42): GeGLU, (1 + w) norms, sandwich norms, sqrt(H) embedding, softcaps, every other layer sliding', () => {
    const c = parseConfig(GEMMA2_2B, FILE);
    assert.equal(c.modelType, 'gemma2');
    assert.deepEqual([c.hiddenSize, c.intermediateSize, c.numLayers, c.numHeads, c.numKvHeads, c.headDim], [2304, 9216, 26, 8, 4, 256]);
    assert.equal(c.hiddenActivation, 'gelu_tanh');
    assert.equal(c.normUnitOffset, true);
    assert.equal(c.sandwichNorms, true);
    assert.equal(c.embedScale, Math.sqrt(2304)); // 48
    assert.equal(c.queryPreAttnScalar, 256);
    assert.equal(attentionScale(c), 1 / 16);
    assert.equal(c.attnSoftcap, 50);
    assert.equal(c.finalSoftcap, 30);
    assert.equal(c.slidingWindow, 4096);
    assert.equal(c.layerTypes!.length, 26);
    // HF Gemma2Config: "sliding_attention" if bool((i + 1) % 2): layers 0, 2, 4, ... slide
    assert.deepEqual(c.layerTypes!.slice(0, 4), [S, F, S, F]);
    assert.deepEqual(
      [0, 1, 2, 25].map((i) => layerWindow(c, i)),
      [4096, 0, 4096, 0],
    );
    assert.equal(c.ropeTheta, 10000);
    assert.equal(c.ropeScaling, null);
    assert.equal(c.ropeLocalTheta, null);
    assert.deepEqual(
      [layerRope(c, 0), layerRope(c, 1)],
      [
        { theta: 10000, scaling: null },
        { theta: 10000, scaling: null },
      ],
    );
    assert.equal(c.tieWordEmbeddings, true);
    assert.deepEqual([c.qkvBias, c.oBias, c.qkNorm], [false, false, false]);
    assert.deepEqual([c.bosTokenId, c.eosTokenIds, c.torchDtype], [2, [1], 'float32']);
    assert.deepEqual(roundTrip(c), c);
  });

  test('gemma-2-27b: query_pre_attn_scalar 144 is not head_dim 128', () => {
    const c = parseConfig(GEMMA2_27B, FILE);
    assert.equal(c.headDim, 128);
    assert.equal(c.queryPreAttnScalar, 144);
    assert.equal(attentionScale(c), 144 ** -0.5);
    assert.deepEqual(roundTrip(c), c);
  });

  test('transformers 5 (rope_parameters, layer_types, dtype) parses to the same config as 4.x', () => {
    const v5 = parseConfig(gemma2V5(), FILE);
    const v4 = parseConfig(GEMMA2_2B, FILE);
    assert.deepEqual({ ...v5, ropeJson: null }, { ...v4, ropeJson: null });
    assert.deepEqual(roundTrip(v5), v5);
  });

  test("HF's class defaults for absent fields; an explicit null soft-cap is none", () => {
    const {
      head_dim: _h,
      query_pre_attn_scalar: _q,
      attn_logit_softcapping: _a,
      final_logit_softcapping: _f,
      sliding_window: _s,
      rope_theta: _r,
      ...j
    } = GEMMA2_2B;
    const { tie_word_embeddings: _t, num_key_value_heads: _k, hidden_activation: _ha, ...bare } = { ...j, tie_word_embeddings: undefined };
    const c = parseConfig(bare, FILE);
    assert.deepEqual(
      [c.headDim, c.queryPreAttnScalar, c.attnSoftcap, c.finalSoftcap, c.slidingWindow, c.ropeTheta, c.tieWordEmbeddings, c.numKvHeads],
      [256, 256, 50, 30, 4096, 10000, true, 4],
    );
    const n = parseConfig({ ...GEMMA2_2B, attn_logit_softcapping: null, final_logit_softcapping: null }, FILE);
    assert.deepEqual([n.attnSoftcap, n.finalSoftcap], [null, null]);
    assert.deepEqual(roundTrip(n), n);
    assert.equal(parseConfig({ ...GEMMA2_2B, tie_word_embeddings: false }, FILE).tieWordEmbeddings, false);
    const lt = parseConfig({ ...GEMMA2_2B, num_hidden_layers: 3, layer_types: [F, F, S] }, FILE);
    assert.deepEqual(
      [0, 1, 2].map((i) => layerWindow(lt, i)),
      [0, 0, 4096],
      'layer_types wins over the pattern',
    );
    assert.equal(
      parseConfig({ ...GEMMA2_2B, sliding_window: 8192 }, FILE).slidingWindow,
      null,
      'a window >= max_position_embeddings is none',
    );
  });
});

describe('Gemma 3 (text) config.json', () => {
  test('gemma-3-1b-it (transformers 4.50): q/k norms, local RoPE 10k on sliding layers, every 6th layer global, no softcaps', () => {
    const c = parseConfig(GEMMA3_1B, FILE);
    assert.equal(c.modelType, 'gemma3_text');
    assert.deepEqual([c.hiddenSize, c.numHeads, c.numKvHeads, c.headDim, c.vocabSize], [1152, 4, 1, 256, 262144]);
    assert.equal(c.qkNorm, true);
    assert.deepEqual([c.hiddenActivation, c.normUnitOffset, c.sandwichNorms], ['gelu_tanh', true, true]);
    assert.equal(c.embedScale, Math.sqrt(1152));
    assert.deepEqual([c.attnSoftcap, c.finalSoftcap], [null, null]);
    assert.equal(c.slidingWindow, 512);
    // HF Gemma3TextConfig: "sliding_attention" if bool((i + 1) % sliding_window_pattern): layers 5, 11, 17, 23 global
    const globals = c.layerTypes!.flatMap((t, i) => (t === F ? [i] : []));
    assert.deepEqual(globals, [5, 11, 17, 23]);
    assert.deepEqual(layerRope(c, 0), { theta: 10000, scaling: null });
    assert.deepEqual(layerRope(c, 5), { theta: 1e6, scaling: null });
    assert.deepEqual([layerWindow(c, 4), layerWindow(c, 5)], [512, 0]);
    assert.deepEqual(c.eosTokenIds, [1, 106]);
    assert.deepEqual(roundTrip(c), c);
  });

  test('gemma-3-4b text config: linear RoPE scaling x8 on the global layers only', () => {
    const c = parseConfig(GEMMA3_4B_TEXT, FILE);
    assert.deepEqual(c.ropeScaling, { type: 'linear', factor: 8 });
    assert.deepEqual(layerRope(c, 5), { theta: 1e6, scaling: { type: 'linear', factor: 8 } });
    assert.deepEqual(layerRope(c, 0), { theta: 10000, scaling: null });
    assert.equal(c.slidingWindow, 1024);
    assert.deepEqual(roundTrip(c), c);
  });

  test('transformers >= 4.53 layer_types; transformers 5 rope_parameters per layer type parse to the same configs', () => {
    const c = parseConfig(GEMMA3_270M, FILE);
    assert.deepEqual(
      c.layerTypes!.flatMap((t, i) => (t === F ? [i] : [])),
      [5, 11, 17],
    );
    const v4 = parseConfig(GEMMA3_1B, FILE);
    const v5 = parseConfig(gemma3V5(), FILE);
    assert.deepEqual({ ...v5, ropeJson: null }, { ...v4, ropeJson: null });
    assert.deepEqual(roundTrip(v5), v5);
    const v5s = parseConfig(gemma3V5(GEMMA3_4B_TEXT, { rope_type: 'linear', factor: 8.0 }), FILE);
    assert.deepEqual({ ...v5s, ropeJson: null }, { ...parseConfig(GEMMA3_4B_TEXT, FILE), ropeJson: null });
    assert.deepEqual(roundTrip(v5s), v5s);
    // a rope_theta missing from rope_parameters comes from rope_theta / rope_local_base_freq, else 1e6 / 1e4
    const partial = parseConfig(
      { ...gemma3V5(), rope_parameters: { full_attention: { rope_type: 'default' } }, rope_local_base_freq: 5000 },
      FILE,
    );
    assert.deepEqual([partial.ropeTheta, partial.ropeLocalTheta], [1e6, 5000]);
    const { rope_theta: _t, rope_local_base_freq: _l, sliding_window_pattern: _p, ...bare } = GEMMA3_1B;
    const d = parseConfig(bare, FILE);
    assert.deepEqual([d.ropeTheta, d.ropeLocalTheta, d.layerTypes![5]], [1e6, 10000, F]);
    const p3 = parseConfig({ ...GEMMA3_1B, num_hidden_layers: 6, sliding_window_pattern: 3 }, FILE);
    assert.deepEqual(p3.layerTypes, [S, S, F, S, S, F]);
  });

  test('the multimodal "gemma3" wrapper is refused by name, pointing at the text-only model type', () => {
    expectError(() => parseConfig(GEMMA3_4B_MULTIMODAL, FILE), 'model_type', /"gemma3" is the multimodal Gemma 3.*"gemma3_text"/);
  });
});

describe('Gemma refusals name the field', () => {
  test('bidirectional attention, other activations, Gemma 3 attention soft-cap, bad layer_types, bad rope_parameters, dropout', () => {
    expectError(
      () => parseConfig({ ...GEMMA3_270M, use_bidirectional_attention: true }, FILE),
      'use_bidirectional_attention',
      /not supported/,
    );
    expectError(() => parseConfig({ ...GEMMA2_2B, hidden_activation: 'gelu' }, FILE), 'hidden_activation', /only "gelu_pytorch_tanh"/);
    expectError(() => parseConfig({ ...GEMMA3_1B, attn_logit_softcapping: 50 }, FILE), 'attn_logit_softcapping', /ignores it/);
    expectError(() => parseConfig({ ...GEMMA3_270M, layer_types: [S, F] }, FILE), 'layer_types', /18/);
    expectError(
      () => parseConfig({ ...GEMMA3_270M, layer_types: [...GEMMA3_270M.layer_types.slice(1), 'chunked_attention'] }, FILE),
      'layer_types[17]',
      /"chunked_attention"/,
    );
    expectError(
      () => parseConfig({ ...gemma3V5(), rope_parameters: { rope_type: 'default', rope_theta: 1e6 } }, FILE),
      'rope_parameters.rope_type',
      /one rope_parameters object per layer type/,
    );
    const linearLocal = { full_attention: { rope_type: 'default' }, sliding_attention: { rope_type: 'linear', factor: 2 } };
    expectError(
      () => parseConfig({ ...gemma3V5(), rope_parameters: linearLocal }, FILE),
      'rope_parameters.sliding_attention.rope_type',
      /not supported/,
    );
    expectError(
      () => parseConfig({ ...gemma3V5(), rope_scaling: { rope_type: 'linear', factor: 8 } }, FILE),
      'rope_scaling',
      /one of them/,
    );
    expectError(() => parseConfig({ ...gemma3V5(GEMMA3_1B, { rope_type: 'ntk' }) }, FILE), 'rope_parameters.full_attention', /ntk/);
    expectError(() => parseConfig({ ...GEMMA2_2B, attention_dropout: 0.1 }, FILE), 'attention_dropout', /dropout/);
    expectError(() => parseConfig({ ...GEMMA2_2B, final_logit_softcapping: 0 }, FILE), 'final_logit_softcapping', /positive number/);
  });
});

describe('the other families are unchanged', () => {
  test('neutral Gemma fields; layerWindow / layerRope / attentionScale give what llama.ts uses today', () => {
    const q = parseConfig({ ...QWEN3_CONFIG, use_sliding_window: true, sliding_window: 64, max_window_layers: 1 }, FILE);
    const p = parseConfig(PHI3_CONFIG, FILE);
    for (const c of [q, p]) {
      assert.deepEqual(
        [
          c.hiddenActivation,
          c.normUnitOffset,
          c.sandwichNorms,
          c.embedScale,
          c.queryPreAttnScalar,
          c.attnSoftcap,
          c.finalSoftcap,
          c.layerTypes,
          c.ropeLocalTheta,
        ],
        ['silu', false, false, 1, c.headDim, null, null, null, null],
      );
      assert.equal(attentionScale(c), 1 / Math.sqrt(c.headDim));
      for (let i = 0; i < c.numLayers; i++) {
        assert.equal(layerWindow(c, i), c.slidingWindow !== null && i >= c.firstSlidingLayer ? c.slidingWindow : 0);
        assert.deepEqual(layerRope(c, i), { theta: c.ropeTheta, scaling: c.ropeScaling });
      }
      assert.throws(() => configToJson({ ...c, normUnitOffset: true }), /normUnitOffset is a Gemma field/);
    }
    assert.deepEqual(
      [0, 1].map((i) => layerWindow(q, i)),
      [0, 64],
    );
  });
});

describe('Gemma tensor names (modeling_gemma2.py / modeling_gemma3.py)', () => {
  const layer = (i: number, qk: boolean) => {
    const p = `model.layers.${i}`;
    return [
      [`${p}.input_layernorm.weight`, [4]],
      [`${p}.self_attn.q_proj.weight`, [8, 4]],
      [`${p}.self_attn.k_proj.weight`, [4, 4]],
      [`${p}.self_attn.v_proj.weight`, [4, 4]],
      [`${p}.self_attn.o_proj.weight`, [4, 8]],
      ...(qk
        ? [
            [`${p}.self_attn.q_norm.weight`, [4]],
            [`${p}.self_attn.k_norm.weight`, [4]],
          ]
        : []),
      [`${p}.post_attention_layernorm.weight`, [4]],
      [`${p}.pre_feedforward_layernorm.weight`, [4]],
      [`${p}.mlp.gate_proj.weight`, [3, 4]],
      [`${p}.mlp.up_proj.weight`, [3, 4]],
      [`${p}.mlp.down_proj.weight`, [4, 3]],
      [`${p}.post_feedforward_layernorm.weight`, [4]],
    ];
  };
  test('gemma2: four norms per layer, no biases, tied head (no lm_head.weight)', () => {
    const c = parseConfig(tinyGemma(GEMMA2_2B), FILE);
    const got = expectedTensors(c).map((s) => [s.name, s.shape]);
    assert.deepEqual(got, [['model.embed_tokens.weight', [7, 4]], ...layer(0, false), ...layer(1, false), ['model.norm.weight', [4]]]);
    const untied = expectedTensors(parseConfig(tinyGemma(GEMMA2_2B, { tie_word_embeddings: false }), FILE));
    assert.deepEqual(untied[untied.length - 1], { name: 'lm_head.weight', shape: [7, 4] });
  });
  test('gemma3_text: q_norm and k_norm of [head_dim] as well', () => {
    const c = parseConfig(tinyGemma(GEMMA3_1B), FILE);
    const got = expectedTensors(c).map((s) => [s.name, s.shape]);
    assert.deepEqual(got, [['model.embed_tokens.weight', [7, 4]], ...layer(0, true), ...layer(1, true), ['model.norm.weight', [4]]]);
  });
});
