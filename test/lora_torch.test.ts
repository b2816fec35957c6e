// A SPIN step of a LoRA model against PyTorch 1.13 (test/oracle/lora_torch.py: PEFT's lora.Linear written
// by hand over the plain models of llama_torch.py / gemma_torch.py, float64, frozen base): logits, S(theta, y),
// the loss and the gradient of every adapter tensor, for several families (Phi-3's fused qkv_proj /
// gate_up_proj, a Gemma 2 and a Gemma 3 config) with a random (nonzero) B so every path carries a signal.
// The base gets no gradient. Tolerances (normwise relative, as test/llama_torch.test.ts): f32 base 1e-4,
// bf16 base 2e-2.
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import { LlamaModel } from '../src/model/llama.js';
import { isAdapterName, type LoraConfig } from '../src/model/lora.js';
import { writeSafetensors } from '../src/model/safetensors_write.js';
import { collateSpinBatch } from '../src/spin/batch.js';
import type { Tensor } from '../src/tensor/tensor.js';
import * as ops from '../src/ops/index.js';
import { testBackends } from './helpers/backends.js';
import { GEMMA2_SMALL, GEMMA3_SMALL } from './helpers/gemma_configs.js';
import { relErr } from './helpers/loss_ref.js';
import { runPython } from './helpers/python.js';
import { randn, withSeed } from './helpers/random.js';
import { oraclePairs, spinlmSpinCase, writeSpinRequest } from './helpers/spin_oracle_case.js';
import { PHI3_CONFIG } from './helpers/tiny_model.js';

const LLAMA_ORACLE = new URL('./oracle/llama_torch.py', import.meta.url).pathname;
const LORA_ORACLE = new URL('./oracle/lora_torch.py', import.meta.url).pathname;
const EOS = 2;
const base = {
  hidden_size: 64,
  intermediate_size: 96,
  num_hidden_layers: 2,
  num_attention_heads: 4,
  rms_norm_eps: 1e-5,
  vocab_size: 97,
  max_position_embeddings: 256,
  bos_token_id: 1,
  eos_token_id: 2,
  hidden_act: 'silu',
};

interface Case {
  name: string;
  config: Record<string, unknown>;
  dtype: 'f32' | 'bf16';
  lora: Partial<LoraConfig>;
}

const CASES: Case[] = [
  {
    name: 'llama, GQA 4/2, all-linear',
    config: { ...base, model_type: 'llama', num_key_value_heads: 2 },
    dtype: 'f32',
    lora: { targetModules: 'all-linear' },
  },
  {
    name: 'qwen2 (q/k/v biases, tied), q_proj + v_proj (the default), rsLoRA',
    config: { ...base, model_type: 'qwen2', num_key_value_heads: 2, tie_word_embeddings: true },
    dtype: 'f32',
    lora: { targetModules: ['q_proj', 'v_proj'], useRslora: true },
  },
  {
    name: 'mistral, bf16 base, o_proj + down_proj',
    config: { ...base, model_type: 'mistral', num_key_value_heads: 1, sliding_window: null },
    dtype: 'bf16',
    lora: { targetModules: ['o_proj', 'down_proj'] },
  },
  {
    name: "phi3: PEFT's fused qkv_proj, gate_up_proj (all-linear)",
    config: PHI3_CONFIG,
    dtype: 'f32',
    lora: { targetModules: 'all-linear' },
  },
  {
    name: 'gemma2 (soft-capped, sandwich norms, GeGLU), all-linear',
    config: GEMMA2_SMALL,
    dtype: 'f32',
    lora: { targetModules: 'all-linear' },
  },
  {
    name: 'gemma3_text (q/k norms, local/global rope), gate_proj + up_proj + k_proj',
    config: GEMMA3_SMALL,
    dtype: 'f32',
    lora: { targetModules: ['k_proj', 'gate_proj', 'up_proj'] },
  },
];

for (const be of await testBackends())
  describe(`LoRA SPIN step vs PyTorch on backend ${be.name}`, () => {
    for (const c of CASES)
      test(`adapter gradients match PyTorch: ${c.name}`, () =>
        withSeed(async (rng) => {
          const dir = mkdtempSync(join(tmpdir(), 'spinlm-lora-torch-'));
          try {
            const modelDir = join(dir, 'model');
            mkdirSync(modelDir);
            runPython(LLAMA_ORACLE, ['make', modelDir, JSON.stringify(c.config), String(rng.int(0, 1e6)), c.dtype]);
            const model = await LlamaModel.load(be, modelDir);
            const lc: LoraConfig = { r: 8, alpha: 12, dropout: 0, targetModules: 'all-linear', useRslora: false, ...c.lora };
            const lora = model.weights.addLora(model.cfg, lc, rng.int(0, 1e9));
            // B = 0 at init: a random B so that dA and the LoRA path's share of everything are not zero
            const adapters = [...model.weights.params].filter(([n]) => isAdapterName(n));
            for (const [n, t] of adapters)
              if (n.endsWith('lora_B.weight')) ops.write(t as Tensor<'f32'>, { dtype: 'f32', data: randn(rng, t.numel, 0.3) });
            const adapterFile = join(dir, 'adapters.safetensors');
            const host = await Promise.all(adapters.map(async ([, t]) => (await ops.read(t)) as Float32Array));
            await writeSafetensors(
              adapterFile,
              adapters.map(([name, t], i) => ({ name, dtype: 'f32' as const, shape: t.shape, data: host[i] })),
            );
            model.weights.enableTraining();
            const ps = oraclePairs(rng, 3, EOS);
            const batch = collateSpinBatch(ps, EOS, 0);
            const ref = Float32Array.from({ length: 6 }, () => -60 + rng.normal() * 5);
            const beta = 0.3;
            const { logits, seq, loss } = await spinlmSpinCase(be, model, batch, ref, beta);
            const req = writeSpinRequest(dir, batch, ref, { beta, loss_type: 'sigmoid', pairs: 3, scaling: lora.scaling });
            runPython(LORA_ORACLE, ['run', modelDir, adapterFile, req]);
            const read = (p: string) => {
              const b = readFileSync(join(req, p));
              return new Float32Array(b.buffer, b.byteOffset, b.byteLength / 4);
            };
            const tol = c.dtype === 'f32' ? 1e-4 : 2e-2;
            const check = (what: string, got: ArrayLike<number>, want: ArrayLike<number>) => {
              const e = relErr(got, want);
              assert.ok(e <= tol, `${what}: relative error ${e} > ${tol}`);
            };
            check('logits', logits, read('logits.out.bin'));
            check('S(theta, y)', seq, read('seq.out.bin'));
            const torchLoss = JSON.parse(readFileSync(join(req, 'loss.json'), 'utf8')).loss;
            assert.ok(Math.abs(loss - torchLoss) <= tol * Math.abs(torchLoss), `loss ${loss} vs torch ${torchLoss}`);
            for (const [name] of adapters)
              check(`grad ${name}`, (await ops.read(model.weights.grad(name))) as Float32Array, read(join('grad', `${name}.bin`)));
            assert.deepEqual(
              [...model.weights.grads.keys()].sort(),
              adapters.map(([n]) => n).sort(),
              'gradients exist for the adapters only',
            );
            model.weights.free();
          } finally {
            rmSync(dir, { recursive: true, force: true });
          }
        }));
  });
