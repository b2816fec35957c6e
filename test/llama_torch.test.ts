// The Llama-family model against a plain PyTorch implementation (test/oracle/llama_torch.py, float64):
// logits, S(theta, y), the SPIN loss and the gradient of every parameter. Models come both ways: written
// by the torch fixture script and read by spinlm, and written by spinlm and read by torch.
// Tolerances (normwise relative): f32 weights 1e-4; bf16 weights 2e-2 (both compute from the same
// bf16 values, so in practice far tighter). qwen3 and phi3 come with config.json files shaped as the
// model cards publish them (Qwen3-0.6B, Phi-3-mini-4k-instruct; layers and widths shrunk): their
// gradients are compared per checkpoint tensor (phi3's fused qkv_proj / gate_up_proj joined from the
// model's split q/k/v and gate/up, as save writes them).
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import { initLlama } from '../src/model/init.js';
import { LlamaModel } from '../src/model/llama.js';
import { collateSpinBatch } from '../src/spin/batch.js';
import { relErr } from './helpers/loss_ref.js';
import { checkpointGrads, oraclePairs, spinlmSpinCase, writeSpinRequest } from './helpers/spin_oracle_case.js';
import { runPython } from './helpers/python.js';
import { withSeed } from './helpers/random.js';
import { GEMMA2_SMALL, GEMMA3_SMALL } from './helpers/gemma_configs.js';
import { PHI3_CONFIG, QWEN3_CONFIG } from './helpers/tiny_model.js';
import * as ops from '../src/ops/index.js';
import type { Tensor } from '../src/tensor/tensor.js';
import { emulated, testBackends } from './helpers/backends.js';

for (const be of await testBackends())
  describe(`on backend ${be.name}`, () => {
    const ORACLE = new URL('./oracle/llama_torch.py', import.meta.url).pathname;
    const EOS = 2;

    interface Case {
      name: string;
      config: Record<string, unknown>;
      dtype: 'f32' | 'bf16';
      writer: 'torch' | 'spinlm';
    }

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
    // RoPE scaling as the model cards publish it (src/model/rope.ts; widths and layers shrunk)
    const ROPE_CASES: { name: string; config: Record<string, unknown>; writer: 'torch' | 'spinlm' }[] = [
      {
        name: 'Llama 3.1 rope_scaling (llama3: factor 8, low/high 1/4, original 8192), written by torch',
        config: {
          ...base,
          model_type: 'llama',
          num_key_value_heads: 2,
          max_position_embeddings: 131072,
          rope_theta: 500000.0,
          rope_scaling: {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 8192,
            rope_type: 'llama3',
          },
        },
        writer: 'torch',
      },
      {
        name: 'Qwen2.5 with yarn (factor 4, original 32768), written by spinlm',
        config: {
          ...base,
          model_type: 'qwen2',
          num_key_value_heads: 1,
          max_position_embeddings: 32768,
          rope_theta: 1000000.0,
          rope_scaling: { factor: 4.0, original_max_position_embeddings: 32768, type: 'yarn' },
        },
        writer: 'spinlm',
      },
      {
        name: 'Phi-3-128k-shaped longrope (short/long factors, original 4096 at the top level), written by torch',
        config: {
          ...base,
          model_type: 'llama',
          num_key_value_heads: 4,
          max_position_embeddings: 131072,
          original_max_position_embeddings: 4096,
          rope_scaling: {
            type: 'longrope',
            short_factor: [1.0, 1.1, 1.3, 1.6, 2.0, 2.5, 3.0, 3.5],
            long_factor: [1.0, 2.0, 4.0, 8.0, 16.0, 24.0, 32.0, 48.0],
          },
        },
        writer: 'torch',
      },
    ];
    const [GEMMA2, GEMMA3] = [GEMMA2_SMALL, GEMMA3_SMALL];
    const CASES: Case[] = [
      {
        name: 'gemma2 (gemma-2-2b shape: soft-capped attention and logits, sandwich norms, GeGLU), written by torch',
        config: GEMMA2,
        dtype: 'f32',
        writer: 'torch',
      },
      { name: 'gemma2, bf16, written by spinlm', config: GEMMA2, dtype: 'bf16', writer: 'spinlm' },
      {
        name: 'gemma3_text (gemma-3-4b text shape: q/k norms, local/global rope, linear scaling 8), written by torch',
        config: GEMMA3,
        dtype: 'f32',
        writer: 'torch',
      },
      { name: 'gemma3_text, written by spinlm', config: GEMMA3, dtype: 'f32', writer: 'spinlm' },
      {
        name: 'llama, untied, GQA 4/2, f32, written by torch',
        config: { ...base, model_type: 'llama', num_key_value_heads: 2, tie_word_embeddings: false },
        dtype: 'f32',
        writer: 'torch',
      },
      {
        name: 'qwen2, tied, q/k/v biases, GQA 1, rope_theta 1e6, written by spinlm',
        config: { ...base, model_type: 'qwen2', num_key_value_heads: 4, tie_word_embeddings: true, rope_theta: 1e6 },
        dtype: 'f32',
        writer: 'spinlm',
      },
      {
        name: 'mistral, GQA 4/1, linear rope scaling 2, bf16 weights, written by torch',
        config: {
          ...base,
          model_type: 'mistral',
          num_key_value_heads: 1,
          tie_word_embeddings: false,
          rope_scaling: { type: 'linear', factor: 2 },
          sliding_window: null,
        },
        dtype: 'bf16',
        writer: 'torch',
      },
      {
        // sequences of up to 48 tokens: every query past position 6 loses keys to the window
        name: 'mistral, sliding_window 7 (shorter than the sequences), GQA 4/2, written by torch',
        config: { ...base, model_type: 'mistral', num_key_value_heads: 2, tie_word_embeddings: false, sliding_window: 7 },
        dtype: 'f32',
        writer: 'torch',
      },
      {
        // layer 0 full attention, layer 1 a window of 5 (HF Qwen2's layer_types)
        name: 'qwen2, use_sliding_window, sliding_window 5 from max_window_layers 1, written by spinlm',
        config: {
          ...base,
          model_type: 'qwen2',
          num_key_value_heads: 2,
          tie_word_embeddings: false,
          use_sliding_window: true,
          sliding_window: 5,
          max_window_layers: 1,
        },
        dtype: 'f32',
        writer: 'spinlm',
      },
      {
        name: 'llama with attention_bias (q/k/v/o biases), written by spinlm',
        config: { ...base, model_type: 'llama', num_key_value_heads: 2, attention_bias: true },
        dtype: 'f32',
        writer: 'spinlm',
      },
      {
        name: 'qwen3 (Qwen3-0.6B shape: head_dim 32 != hidden/heads 16, q/k norms, tied, GQA 4/2), written by torch',
        config: QWEN3_CONFIG,
        dtype: 'f32',
        writer: 'torch',
      },
      {
        name: 'qwen3 with attention_bias, untied, bf16, written by spinlm',
        config: { ...QWEN3_CONFIG, attention_bias: true, tie_word_embeddings: false },
        dtype: 'bf16',
        writer: 'spinlm',
      },
      {
        name: 'phi3 (Phi-3-mini-4k shape: fused qkv_proj / gate_up_proj, sliding_window 2047), written by torch',
        config: PHI3_CONFIG,
        dtype: 'f32',
        writer: 'torch',
      },
      {
        name: 'phi3 with GQA 4/2, written by spinlm',
        config: { ...PHI3_CONFIG, num_key_value_heads: 2 },
        dtype: 'f32',
        writer: 'spinlm',
      },
      ...ROPE_CASES.map((r) => ({ name: r.name, config: r.config, dtype: 'f32' as const, writer: r.writer })),
      {
        name: 'phi3 with sliding_window 6 (shorter than the sequences), written by spinlm',
        config: { ...PHI3_CONFIG, sliding_window: 6 },
        dtype: 'f32',
        writer: 'spinlm',
      },
    ];

    // On the emulator (a CPU running each CUDA thread as a fiber) the cases whose kernels another case here
    // already runs are skipped, with the reason; the cpu and webgpu runs keep every case (docs/cuda.md
    // "CI time on the emulator"). Rope scaling reaches the kernels only as the rope op's inverse
    // frequencies and attentionScale: longrope (training) and yarn (decode) carry both.
    const LLAMA3 = ROPE_CASES[0].name,
      YARN = ROPE_CASES[1].name,
      LONGROPE = ROPE_CASES[2].name;
    const EMU_COVERED: Record<string, string> = {
      'gemma3_text, written by spinlm': 'the same f32 gemma3_text kernels as the case written by torch',
      [LLAMA3]: 'rope scaling is the rope op with other inverse frequencies: the longrope case runs it with an attentionScale too',
      [YARN]: 'rope scaling is the rope op with other inverse frequencies: the longrope case runs it with an attentionScale too',
      [`greedy ${LLAMA3}`]: 'decode with scaled rope: the yarn greedy case runs it with an attentionScale too',
      [`greedy ${LONGROPE}`]: 'decode with scaled rope: the yarn greedy case runs it with an attentionScale too',
      'phi3 with GQA 4/2, written by spinlm': "phi3's kernels run in the phi3 case, GQA 4/2 in the llama one",
      'qwen2, use_sliding_window, sliding_window 5 from max_window_layers 1, written by spinlm':
        'windowed and full attention run in the mistral sliding_window 7 case and the others; which layer gets a window is model code',
      'phi3 with sliding_window 6 (shorter than the sequences), written by spinlm':
        'a window shorter than the sequences runs in the mistral sliding_window 7 case',
      'greedy phi3, sliding_window 5': 'decode past a window runs in the mistral sliding_window 4 greedy case',
    };
    const emuSkip = (key: string): string | false => (emulated(be) && EMU_COVERED[key] ? `cuda-emu: ${EMU_COVERED[key]}` : false);

    for (const c of CASES) {
      test(`matches PyTorch: ${c.name}`, { skip: emuSkip(c.name) }, async () =>
        withSeed(async (rng) => {
          const dir = mkdtempSync(join(tmpdir(), 'spinlm-llama-torch-'));
          try {
            const modelDir = join(dir, 'model');
            mkdirSync(modelDir);
            if (c.writer === 'torch') runPython(ORACLE, ['make', modelDir, JSON.stringify(c.config), String(rng.int(0, 1e6)), c.dtype]);
            else {
              const { parseConfig } = await import('../src/model/config.js');
              await initLlama(be, parseConfig(c.config, 'case'), {
                seed: rng.int(0, 1e9),
                std: 0.2,
                dtype: c.dtype,
                randomizeAll: true,
              }).save(modelDir);
            }
            const model = await LlamaModel.load(be, modelDir);
            assert.equal(model.weights.dtype, c.dtype);
            model.weights.enableTraining();
            const ps = oraclePairs(rng, 3, EOS);
            assert.ok(
              ps.some((p) => p.real.prompt.length === 32),
              'some prompts were truncated to max_prompt_length',
            );
            const batch = collateSpinBatch(ps, EOS, 0);
            const ref = Float32Array.from({ length: 6 }, () => -60 + rng.normal() * 5);
            const beta = 0.3;
            const { logits: logitsHost, seq, loss } = await spinlmSpinCase(be, model, batch, ref, beta);

            const req = writeSpinRequest(dir, batch, ref, { beta, loss_type: 'sigmoid', pairs: 3 });
            runPython(ORACLE, ['run', modelDir, req]);
            const read = (p: string) => {
              const b = readFileSync(join(req, p));
              return new Float32Array(b.buffer, b.byteOffset, b.byteLength / 4);
            };
            const tol = c.dtype === 'f32' ? 1e-4 : 2e-2;
            const check = (what: string, got: ArrayLike<number>, want: ArrayLike<number>) => {
              const e = relErr(got, want);
              assert.ok(e <= tol, `${what}: relative error ${e} > ${tol}`);
            };
            check('logits', logitsHost, read('logits.out.bin'));
            check('S(theta, y) of each sequence', seq, read('seq.out.bin'));
            const torchLoss = JSON.parse(readFileSync(join(req, 'loss.json'), 'utf8')).loss;
            assert.ok(Math.abs(loss - torchLoss) <= tol * Math.abs(torchLoss), `loss ${loss} vs torch ${torchLoss}`);
            // per checkpoint tensor: a fused phi3 tensor's gradient is its parts' gradients stacked
            for await (const { name, grad } of checkpointGrads(model)) check(`grad ${name}`, grad, read(join('grad', `${name}.bin`)));
            model.weights.free();
          } finally {
            rmSync(dir, { recursive: true, force: true });
          }
        }),
      );
    }

    const greedyTest = (config: Record<string, unknown>) =>
      withSeed(async (rng) => {
        const dir = mkdtempSync(join(tmpdir(), 'spinlm-greedy-torch-'));
        try {
          const modelDir = join(dir, 'model');
          mkdirSync(modelDir);
          runPython(ORACLE, ['make', modelDir, JSON.stringify(config), String(rng.int(0, 1e6)), 'f32']);
          const model = await LlamaModel.load(be, modelDir);
          const prompts = Array.from({ length: 4 }, () => Array.from({ length: rng.int(1, 9) }, () => rng.int(3, 96)));
          const { generate } = await import('../src/generate/generate.js');
          const { LlamaDecoder } = await import('../src/model/decoder.js');
          const gens = await generate(new LlamaDecoder(model), prompts, {
            temperature: 0,
            topK: 0,
            topP: 1,
            maxNewTokens: 12,
            eosIds: [EOS],
            seed: 0,
            batchSize: 3,
          });
          const req = join(dir, 'req');
          mkdirSync(req);
          writeFileSync(join(req, 'request.json'), JSON.stringify({ prompts, max_new_tokens: 12, eos_id: EOS }));
          runPython(ORACLE, ['greedy', modelDir, req]);
          const want: number[][] = JSON.parse(readFileSync(join(req, 'greedy.json'), 'utf8'));
          assert.deepEqual(
            gens.map((g) => g.tokens),
            want,
          );
          model.weights.free();
        } finally {
          rmSync(dir, { recursive: true, force: true });
        }
      });
    const GREEDY: [string, Record<string, unknown>][] = [
      ['llama', { ...base, model_type: 'llama', num_key_value_heads: 2 }],
      ['qwen3', QWEN3_CONFIG],
      ['phi3', PHI3_CONFIG],
      // prompts of 1-8 tokens + 12 new ones: decode runs past the window of 4 (continuous batching:
      // 4 prompts in 3 slots)
      ['mistral, sliding_window 4', { ...base, model_type: 'mistral', num_key_value_heads: 2, sliding_window: 4 }],
      ['phi3, sliding_window 5', { ...PHI3_CONFIG, sliding_window: 5 }],
      ['gemma2 (capped logits)', GEMMA2],
      ['gemma3_text', GEMMA3],
    ];
    for (const [family, config] of GREEDY)
      test(
        `greedy generation with the KV cache equals PyTorch greedy decoding by full recompute: ${family}`,
        { skip: emuSkip(`greedy ${family}`) },
        () => greedyTest(config),
      );
    for (const r of ROPE_CASES)
      test(`greedy generation with the KV cache equals PyTorch's: ${r.name}`, { skip: emuSkip(`greedy ${r.name}`) }, () =>
        greedyTest(r.config),
      );

    /**
     * One adaptive optimizer step's update (new - old) per element against torch's, within what the gradient
     * error allows: |ours - torch| <= lr eps / (c|g| + eps)^2 x gradTol + 1e-6 |update| + 4 x 2^-23 |p| (the step's
     * f32 arithmetic against torch's float64: the f32 decay factor 1 - lr wd, p x decay, p - step, and the final
     * rounding of both sides), where g is
     * torch's (clipped) gradient and gradTol = 1e-4 x max |g| of the tensor (the gradient tolerance of the
     * model test above). Elements with |g| >> eps are held to ~1e-4 of their update; noise-level ones are
     * free, as they should be.
     */
    function checkUpdate(
      name: string,
      old: Float32Array,
      got: Float32Array,
      want: Float32Array,
      g: Float32Array,
      o: { lr: number; eps: number; c: number },
    ): void {
      let gmax = 0;
      for (const x of g) gmax = Math.max(gmax, Math.abs(x));
      const gradTol = 1e-4 * gmax;
      let worst = 0;
      for (let j = 0; j < got.length; j++) {
        const ours = got[j] - old[j],
          theirs = want[j] - old[j];
        const sens = (o.lr * o.eps) / (o.c * Math.abs(g[j]) + o.eps) ** 2;
        const allowed = sens * gradTol + 1e-6 * Math.abs(theirs) + 4 * 2 ** -23 * Math.max(Math.abs(old[j]), Math.abs(want[j]));
        worst = Math.max(worst, Math.abs(ours - theirs) / allowed);
        assert.ok(
          Math.abs(ours - theirs) <= allowed,
          `${name}[${j}]: update ${ours} vs torch ${theirs} (|g| ${Math.abs(g[j])}, allowed ${allowed})`,
        );
      }
      assert.ok(worst <= 1, `${name}: worst update error ${worst} of its allowance`);
    }

    for (const optim of ['rmsprop', 'adamw'] as const) {
      test(`one SPIN optimizer step (${optim}, clipping 0.5) on the model matches torch.optim`, async () =>
        withSeed(async (rng) => {
          const dir = mkdtempSync(join(tmpdir(), 'spinlm-step-torch-'));
          try {
            const modelDir = join(dir, 'model');
            mkdirSync(modelDir);
            runPython(ORACLE, [
              'make',
              modelDir,
              JSON.stringify({ ...base, model_type: 'qwen2', num_key_value_heads: 2 }),
              String(rng.int(0, 1e6)),
              'f32',
            ]);
            const model = await LlamaModel.load(be, modelDir);
            const ps = oraclePairs(rng, 3, EOS);
            const ref = Float32Array.from({ length: 6 }, () => -60 + rng.normal() * 5);
            const before = new Map<string, Float32Array>();
            for (const [n, t] of model.weights.params) before.set(n, Float32Array.from((await ops.read(t)) as Float32Array));
            const { SpinObjective } = await import('../src/spin/objectives.js');
            const { runTrainingLoop } = await import('../src/spin/train_loop.js');
            // The optimizer's own defaults (eps 1e-8). An adaptive first step moves an element by
            // ~lr g / (c|g| + eps) (AdamW: c = 1; RMSprop: c = sqrt(1 - alpha)), so an element whose gradient
            // sits at f32 noise level can move anywhere in [-lr/c, lr/c] on either side: its update is not
            // determined by a correct gradient. What the step must get right is therefore measured against
            // its sensitivity to the gradient: each element's update may differ from torch's by at most
            // d(update)/dg x (the gradient error the model test allows) + rounding (checkUpdate below).
            const lr = 1e-4;
            const eps = 1e-8;
            const hyper =
              optim === 'rmsprop'
                ? { type: 'rmsprop' as const, alpha: 0.99, eps, weightDecay: 0 }
                : { type: 'adamw' as const, beta1: 0.9, beta2: 0.999, eps, weightDecay: 0.01 };
            // one step over the 3 pairs in one micro-batch; torch is then given them in the order the loop used
            const obj = new SpinObjective(model, ps, ref, {
              beta: 0.3,
              lossType: 'sigmoid',
              nllAlpha: 0,
              dropIdentical: false,
              eosId: EOS,
              padId: 0,
            });
            const order: number[][] = [];
            const spy = {
              metricNames: obj.metricNames,
              microStep: (idx: readonly number[], weight: number, metrics: Tensor<'f32'>) => {
                order.push([...idx]);
                return obj.microStep(idx, weight, metrics);
              },
            };
            await runTrainingLoop(model, 3, spy, {
              learningRate: lr,
              optim: hyper,
              lrSchedulerType: 'constant',
              warmupRatio: 0,
              microBatchSize: 3,
              gradientAccumulationSteps: 1,
              numTrainEpochs: 1,
              maxGradNorm: 0.5,
              seed: 1,
              saveSteps: 0,
            });
            // torch gets the same pairs in the order the loop used
            const ordered = order[0].map((i) => ps[i]);
            const b2 = collateSpinBatch(ordered, EOS, 0);
            const ref2 = new Float32Array([...order[0].map((i) => ref[i]), ...order[0].map((i) => ref[3 + i])]);
            const o =
              optim === 'rmsprop'
                ? { type: 'rmsprop', lr, alpha: 0.99, eps, weight_decay: 0, clip: 0.5 }
                : { type: 'adamw', lr, beta1: 0.9, beta2: 0.999, eps, weight_decay: 0.01, clip: 0.5 };
            const req = writeSpinRequest(dir, b2, ref2, { beta: 0.3, loss_type: 'sigmoid', pairs: 3, optimizer: o });
            runPython(ORACLE, ['run', modelDir, req]);
            for (const [name, t] of model.weights.params) {
              const b = readFileSync(join(req, 'updated', `${name}.bin`));
              const want = new Float32Array(b.buffer, b.byteOffset, b.byteLength / 4);
              const got = (await ops.read(t)) as Float32Array;
              const gb = readFileSync(join(req, 'grad', `${name}.bin`));
              checkUpdate(name, before.get(name)!, got, want, new Float32Array(gb.buffer, gb.byteOffset, gb.byteLength / 4), {
                lr,
                eps,
                c: optim === 'rmsprop' ? Math.sqrt(1 - 0.99) : 1,
              });
            }
            model.weights.free();
          } finally {
            rmSync(dir, { recursive: true, force: true });
          }
        }));
    }
  });
