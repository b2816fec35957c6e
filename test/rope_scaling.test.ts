// RoPE scaling (src/model/rope.ts): each rope type's fp32 inv_freq table and attention factor against
// transformers' equations run by PyTorch (test/oracle/llama_torch.py rope_params: the fp32 torch ops HF
// runs) and against a float64 reference (test/helpers/model_ref.ts ropeInvFreqRef); then the rope op of
// every backend with those tables (attention scale, positions up to 131071, the transpose) against
// ropeTableRef. Tolerances: tables within 2 ulp of torch's (torch's fp32 pow is Sleef's, 1 ulp; ours is
// correctly rounded in the cases checked) and attention factors within 1e-15; 2e-6 relative to float64
// (the fp32 roundings); the op 1e-5 normwise (as test/model_ops.test.ts), the round trip 1e-5.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { parseConfig } from '../src/model/config.js';
import { ropeTable } from '../src/model/rope.js';
import type { Tensor } from '../src/tensor/tensor.js';
import type { Rng } from '../src/util/rng.js';
import { relErr } from './helpers/loss_ref.js';
import { type RopeScalingJson, ropeInvFreqRef, ropeTableRef } from './helpers/model_ref.js';
import { runPython } from './helpers/python.js';
import { randn, withSeed } from './helpers/random.js';
import { testBackends } from './helpers/backends.js';
import * as ops from '../src/ops/index.js';

const ORACLE = new URL('./oracle/llama_torch.py', import.meta.url).pathname;

/** Published-shape configs (widths as the model cards have them; factors of longrope random). */
function configs(rng: Rng): Record<string, unknown>[] {
  const common = { model_type: 'llama', rms_norm_eps: 1e-5, vocab_size: 100, intermediate_size: 64, num_hidden_layers: 1 };
  const factors = (n: number, lo: number, hi: number) => Array.from({ length: n }, (_, i) => lo + ((hi - lo) * i) / n + rng.next() * 0.1);
  return [
    // Llama 3.1 8B and 3.2 1B
    {
      ...common,
      hidden_size: 4096,
      num_attention_heads: 32,
      max_position_embeddings: 131072,
      rope_theta: 500000,
      rope_scaling: { factor: 8, low_freq_factor: 1, high_freq_factor: 4, original_max_position_embeddings: 8192, rope_type: 'llama3' },
    },
    {
      ...common,
      hidden_size: 2048,
      num_attention_heads: 32,
      max_position_embeddings: 131072,
      rope_theta: 500000,
      rope_scaling: { factor: 32, low_freq_factor: 1, high_freq_factor: 4, original_max_position_embeddings: 8192, rope_type: 'llama3' },
    },
    // Qwen2.5 with the model card's yarn block; yarn with every option; DeepSeek-style mscale
    {
      ...common,
      model_type: 'qwen2',
      hidden_size: 3584,
      num_attention_heads: 28,
      max_position_embeddings: 32768,
      rope_theta: 1e6,
      rope_scaling: { factor: 4, original_max_position_embeddings: 32768, type: 'yarn' },
    },
    {
      ...common,
      hidden_size: 1024,
      num_attention_heads: 16,
      max_position_embeddings: 65536,
      rope_theta: 10000,
      rope_parameters: {
        rope_type: 'yarn',
        rope_theta: 10000,
        factor: 2.5,
        original_max_position_embeddings: 4096,
        beta_fast: 16,
        beta_slow: 2,
        truncate: false,
        attention_factor: 1.2,
      },
    },
    {
      ...common,
      hidden_size: 1024,
      num_attention_heads: 8,
      max_position_embeddings: 163840,
      rope_theta: 10000,
      rope_scaling: { type: 'yarn', factor: 40, original_max_position_embeddings: 4096, mscale: 1, mscale_all_dim: 0.707 },
    },
    // Phi-3-mini-128k's shape (head 96, original_max_position_embeddings at the top level), and "su"
    {
      ...common,
      hidden_size: 3072,
      num_attention_heads: 32,
      max_position_embeddings: 131072,
      original_max_position_embeddings: 4096,
      rope_theta: 10000,
      rope_scaling: { type: 'longrope', short_factor: factors(48, 1, 3), long_factor: factors(48, 1, 60) },
    },
    {
      ...common,
      hidden_size: 512,
      num_attention_heads: 8,
      max_position_embeddings: 16384,
      rope_theta: 10000,
      rope_scaling: {
        type: 'su',
        short_factor: factors(32, 1, 2),
        long_factor: factors(32, 1, 8),
        original_max_position_embeddings: 2048,
        attention_factor: 1.1,
      },
    },
    { ...common, hidden_size: 256, num_attention_heads: 4, max_position_embeddings: 2048, rope_scaling: { type: 'linear', factor: 3 } },
    { ...common, hidden_size: 256, num_attention_heads: 2, max_position_embeddings: 2048, rope_scaling: { type: 'dynamic', factor: 2 } },
    { ...common, hidden_size: 256, num_attention_heads: 2, max_position_embeddings: 2048, rope_theta: 1e6 },
  ];
}

function tableOf(json: Record<string, unknown>) {
  const c = parseConfig(json, 'config.json');
  return { c, ...ropeTable(c.ropeTheta, c.headDim, c.ropeScaling) };
}

describe('rope tables', () => {
  test('each type equals transformers fp32 computation run by PyTorch, and a float64 reference', () =>
    withSeed((rng) => {
      const cs = configs(rng);
      const want: { bits: number[]; attention_factor: number }[] = JSON.parse(runPython(ORACLE, ['ropetable', JSON.stringify(cs)]));
      cs.forEach((json, k) => {
        const { c, invFreq, attentionScale } = tableOf(json);
        const type = c.ropeScaling?.type ?? 'default';
        const bits = new Int32Array(invFreq.buffer);
        let worst = 0;
        for (let i = 0; i < bits.length; i++) worst = Math.max(worst, Math.abs(bits[i] - want[k].bits[i]));
        assert.ok(worst <= 2, `${type} (config ${k}): inv_freq ${worst} ulp from torch's`);
        assert.ok(
          Math.abs(attentionScale - want[k].attention_factor) <= 1e-15,
          `${type}: attention ${attentionScale} vs ${want[k].attention_factor}`,
        );
        const scaling = ((json.rope_scaling ?? json.rope_parameters ?? null) as RopeScalingJson | null) && {
          original_max_position_embeddings: json.original_max_position_embeddings,
          ...((json.rope_scaling ?? json.rope_parameters) as RopeScalingJson),
        };
        const ref = ropeInvFreqRef(c.ropeTheta, c.headDim, scaling, c.maxPositionEmbeddings);
        for (let i = 0; i < invFreq.length; i++) {
          const e = Math.abs(invFreq[i] - ref.invFreq[i]) / ref.invFreq[i];
          assert.ok(e <= 2e-6, `${type} (config ${k}): inv_freq[${i}] ${invFreq[i]} vs float64 ${ref.invFreq[i]}`);
        }
        assert.ok(Math.abs(attentionScale - ref.attn) <= 1e-12, `${type}: attention factor vs float64`);
        if (type === 'llama3' || type === 'yarn' || type === 'longrope') {
          const plain = ropeTable(c.ropeTheta, c.headDim, null).invFreq;
          assert.ok(
            invFreq.some((v, i) => v !== plain[i]),
            `${type} changes the table`,
          );
        }
      });
    }));
});

for (const be of await testBackends())
  describe(`on backend ${be.name}`, () => {
    const host = async (t: Tensor) => (await ops.read(t)) as Float32Array;
    test('rope op with each type table: attention scale, positions to 131071, transpose round trip', () =>
      withSeed(async (rng) => {
        for (const json of configs(rng)) {
          const { c, invFreq, attentionScale } = tableOf(json);
          const hd = c.headDim,
            t = rng.int(1, 12),
            heads = rng.int(1, 3);
          const x = randn(rng, t * heads * hd);
          const pos = Int32Array.from({ length: t }, () => (rng.next() < 0.5 ? rng.int(0, 300) : rng.int(8192, 131071)));
          const tx = ops.upload(be, { dtype: 'f32', data: x.slice() }, [t, heads, hd]);
          const tp = ops.upload(be, { dtype: 'i32', data: pos }, [t]);
          ops.rope(tx, tp, { invFreq, attentionScale });
          const want = ropeTableRef(x, pos, t, heads, hd, invFreq, attentionScale);
          const e = relErr(await host(tx), want);
          assert.ok(e <= 1e-5, `${c.ropeScaling?.type ?? 'default'} hd ${hd}: relative error ${e}`);
          // the transpose of a rotation times a is a^2 times its inverse
          ops.rope(tx, tp, { invFreq, attentionScale, inverse: true });
          const back = (await host(tx)).map((v) => v / attentionScale ** 2);
          const eb = relErr(back, x);
          assert.ok(eb <= 1e-5, `round trip: relative error ${eb}`);
          tx.free();
          tp.free();
        }
      }));
  });

describe('longrope length limit', () => {
  test('sequences past original_max_position_embeddings are refused by name in forward and generation', async () => {
    const { CpuBackend } = await import('../src/backend/cpu/cpu_backend.js');
    const { initLlama } = await import('../src/model/init.js');
    const { LlamaDecoder } = await import('../src/model/decoder.js');
    const { uploadInput, freeInput } = await import('../src/model/input.js');
    const be = new CpuBackend();
    const json = {
      model_type: 'llama',
      hidden_size: 32,
      intermediate_size: 32,
      num_hidden_layers: 1,
      num_attention_heads: 2,
      rms_norm_eps: 1e-5,
      vocab_size: 16,
      max_position_embeddings: 64,
      original_max_position_embeddings: 8,
      rope_scaling: { type: 'longrope', short_factor: Array(8).fill(1.5), long_factor: Array(8).fill(4) },
    };
    const model = initLlama(be, parseConfig(json, 'config.json'), { seed: 1, std: 0.2, dtype: 'f32' });
    assert.equal(model.maxPositions, 8);
    assert.equal(new LlamaDecoder(model).maxPositions, 8);
    const tokens = (L: number) => ({
      rows: 1,
      length: L,
      inputIds: new Int32Array(L).fill(3),
      positions: Int32Array.from({ length: L }, (_, i) => i),
      attentionMask: new Int32Array(L).fill(1),
    });
    const ok = uploadInput(be, tokens(8), 16);
    model.forward(ok).logits.free();
    freeInput(ok);
    const long = uploadInput(be, tokens(9), 16);
    assert.throws(() => model.forward(long), /sequence length 9 exceeds longrope's original_max_position_embeddings 8/);
    freeInput(long);
    assert.throws(() => new LlamaDecoder(model).newCache(1, 9), /cache length 9 must be in \[1, max_position_embeddings = 8\]/);
    model.weights.free();
  });
});
