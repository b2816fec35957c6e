// Mixed precision (LlamaModel.computeDtype 'bf16', docs/numerics.md "Mixed precision") against PyTorch 1.13
// on the CPU (test/oracle/autocast_torch.py): one SPIN step's S(theta, y), loss and every gradient of a tiny
// f32 Llama, against three references:
//  - exact (float64, no rounding): within the bf16 bound TOL_BF16 derived below;
//  - rounded (float64 with bf16 rounding at exactly the places spinlm rounds: every GEMM's inputs, and
//    every GEMM's output gradient in the backward): within TIGHT, and the f32 path is at least FARTHER
//    times as far from it. (A single GEMM that skips its rounding moves a gradient by ~2e-3, as much as
//    a rounding that falls the other way in f32 than in float64 can: that is caught deterministically
//    by test/mixed_precision.test.ts's spy backend, not here.)
//  - autocast (torch.autocast('cpu', dtype=torch.bfloat16), Hugging Face's Llama under it): within
//    TOL_AUTOCAST, looser because autocast also rounds every GEMM's output (q, k, v, scores, P, the
//    projections, the logits) to bf16 where spinlm keeps them f32.
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import { LlamaModel } from '../src/model/llama.js';
import { collateSpinBatch } from '../src/spin/batch.js';
import { relErr } from './helpers/loss_ref.js';
import { checkpointGrads, oraclePairs, spinlmSpinCase, writeSpinRequest } from './helpers/spin_oracle_case.js';
import { runPython } from './helpers/python.js';
import { withSeed } from './helpers/random.js';
import { testBackends } from './helpers/backends.js';

const MAKE = new URL('./oracle/llama_torch.py', import.meta.url).pathname;
const ORACLE = new URL('./oracle/autocast_torch.py', import.meta.url).pathname;
const EOS = 2;
const CONFIG = {
  model_type: 'llama',
  hidden_size: 64,
  intermediate_size: 96,
  num_hidden_layers: 2,
  num_attention_heads: 4,
  num_key_value_heads: 2,
  rms_norm_eps: 1e-5,
  vocab_size: 97,
  max_position_embeddings: 256,
  bos_token_id: 1,
  eos_token_id: 2,
  hidden_act: 'silu',
};

// Tolerances (normwise relative error, per quantity: S(theta, y) of the 6 sequences, the loss, each
// parameter's gradient). A bf16 rounding moves a value by at most 2^-9 of it (8 significant bits, to nearest),
// so a GEMM of two rounded operands is off by at most 2^-8 per product and, the errors having random signs,
// by about 2^-8 normwise. The log-probs pass ~12 rounded GEMM inputs (2 layers x 5, the head's two) and a
// gradient also the backward's ~12 rounded dY and saved inputs: ~24 x 2^-9 ~ 0.05 for gradients; measured
// up to 0.06 (gradients), 0.002 (log-probs: sums over tokens average the errors out). Allowed:
const TOL_BF16 = 2 ** -3;
const TOL_BF16_SEQ = 2 ** -6;
// against float64 rounded exactly where spinlm rounds, what is left is f32 arithmetic (~1e-6) plus the odd
// rounding that falls the other way (a pre-rounding value within f32 noise of a bf16 midpoint), which
// then moves what follows it by ~2^-9: measured 1e-7 .. 9e-3
const TIGHT = 2e-2;
// mean error of f32 compute over that of bf16 compute against the rounded reference: measured >= 4
const FARTHER = 3;
// against autocast, which rounds every GEMM's output to bf16 too (spinlm keeps them f32): measured up to
// 0.066 (gradients), 0.004 (log-probs)
const TOL_AUTOCAST = 2 ** -3 * 1.25;
const TOL_AUTOCAST_SEQ = 2 ** -6;

interface Result {
  seq: Float32Array;
  loss: number;
  grads: Map<string, Float32Array>;
}

async function spinlmStep(model: LlamaModel, batch: ReturnType<typeof collateSpinBatch>, ref: Float32Array, beta: number): Promise<Result> {
  model.weights.enableTraining();
  const { seq, loss } = await spinlmSpinCase(model.backend, model, batch, ref, beta);
  const grads = new Map<string, Float32Array>();
  for await (const { name, grad } of checkpointGrads(model)) grads.set(name, grad);
  return { seq, loss, grads };
}

function readRef(req: string, mode: string): Result {
  const read = (p: string) => {
    const b = readFileSync(join(req, mode, p));
    return new Float32Array(b.buffer, b.byteOffset, b.byteLength / 4);
  };
  const loss = (JSON.parse(readFileSync(join(req, mode, 'loss.json'), 'utf8')) as { loss: number }).loss;
  const grads = new Map<string, Float32Array>();
  return {
    seq: read('seq.out.bin'),
    loss,
    get grads() {
      return new Proxy(grads, { get: (m, k) => (k === 'get' ? (n: string) => read(join('grad', `${n}.bin`)) : Reflect.get(m, k)) });
    },
  };
}

/**
 * The median over elements of |got - want| / rms(want): a GEMM that skips its rounding moves nearly every
 * element of the gradients after it by ~2^-9 of their size, while a rounding that falls the other way in
 * spinlm than in float64 (their pre-rounding values differ by f32 noise) moves few elements.
 */
function medianErr(got: ArrayLike<number>, want: ArrayLike<number>): number {
  let ss = 0;
  for (let i = 0; i < want.length; i++) ss += want[i] * want[i];
  const rms = Math.sqrt(ss / want.length);
  const e = Float64Array.from({ length: want.length }, (_, i) => Math.abs(got[i] - want[i]) / rms).sort();
  return e[e.length >> 1];
}

/** Normwise relative errors of got against want: S(theta, y), the loss, and each gradient by name. */
function errors(got: Result, want: Result): Map<string, number> {
  const e = new Map<string, number>([
    ['seq', relErr(got.seq, want.seq)],
    ['loss', Math.abs(got.loss - want.loss) / Math.abs(want.loss)],
  ]);
  for (const [name, g] of got.grads) e.set(`grad ${name}`, relErr(g, want.grads.get(name)!));
  return e;
}

function medians(got: Result, want: Result): Map<string, number> {
  const e = new Map<string, number>([['seq', medianErr(got.seq, want.seq)]]);
  for (const [name, g] of got.grads) e.set(`grad ${name}`, medianErr(g, want.grads.get(name)!));
  return e;
}

for (const be of await testBackends())
  describe(`on backend ${be.name}`, () => {
    test('one SPIN step with computeDtype bf16 against float64, float64 rounded where spinlm rounds, and torch bf16 autocast', async () =>
      withSeed(async (rng) => {
        const dir = mkdtempSync(join(tmpdir(), 'spinlm-autocast-torch-'));
        try {
          const modelDir = join(dir, 'model');
          mkdirSync(modelDir);
          runPython(MAKE, ['make', modelDir, JSON.stringify(CONFIG), String(rng.int(0, 1e6)), 'f32']);
          const batch = collateSpinBatch(oraclePairs(rng, 3, EOS), EOS, 0);
          const ref = Float32Array.from({ length: 6 }, () => -60 + rng.normal() * 5);
          const beta = 0.01;
          const bf16Model = await LlamaModel.load(be, modelDir);
          bf16Model.computeDtype = 'bf16';
          const bf16 = await spinlmStep(bf16Model, batch, ref, beta);
          bf16Model.weights.free();
          const f32Model = await LlamaModel.load(be, modelDir);
          const f32 = await spinlmStep(f32Model, batch, ref, beta);
          f32Model.weights.free();
          const req = writeSpinRequest(dir, batch, ref, { beta, loss_type: 'sigmoid', pairs: 3 });
          runPython(ORACLE, [modelDir, req], { threads: 1 });
          const [exact, rounded, autocast] = ['exact', 'rounded', 'autocast'].map((m) => readRef(req, m));
          const table = {
            bf16VsExact: errors(bf16, exact),
            bf16VsRounded: errors(bf16, rounded),
            f32VsRounded: errors(f32, rounded),
            bf16VsAutocast: errors(bf16, autocast),
            medBf16VsRounded: medians(bf16, rounded),
            medF32VsRounded: medians(f32, rounded),
          };
          const show = () =>
            Object.entries(table)
              .map(([k, v]) => `${k} ${JSON.stringify(Object.fromEntries([...v].map(([a, b]) => [a, +b.toPrecision(3)])))}`)
              .join('\n');
          const within = (errs: Map<string, number>, tol: (what: string) => number, vs: string) => {
            for (const [what, e] of errs) assert.ok(e <= tol(what), `${what} vs ${vs}: relative error ${e} > ${tol(what)}\n${show()}`);
          };
          within(table.bf16VsExact, (w) => (w.startsWith('grad') ? TOL_BF16 : TOL_BF16_SEQ), 'float64');
          within(table.bf16VsRounded, () => TIGHT, 'float64 rounded as spinlm rounds');
          within(table.bf16VsAutocast, (w) => (w.startsWith('grad') ? TOL_AUTOCAST : TOL_AUTOCAST_SEQ), 'torch bf16 autocast');
          // every rounding place matters: the f32 path is measurably farther from the rounded reference
          const mean = (m: Map<string, number>) => [...m.values()].reduce((a, b) => a + b, 0) / m.size;
          const [near, far] = [mean(table.bf16VsRounded), mean(table.f32VsRounded)];
          assert.ok(far >= FARTHER * near, `f32 is ${far / near}x as far from the rounded reference as bf16, < ${FARTHER}x\n${show()}`);
          console.log(show());
        } finally {
          rmSync(dir, { recursive: true, force: true });
        }
      }));
  });
