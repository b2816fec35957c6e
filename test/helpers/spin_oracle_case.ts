// One SPIN batch through spinlm and the request files a PyTorch reference reads (test/oracle/llama_torch.py
// `run`, bench/peer/hf_families.py `run`): shared by test/llama_torch.test.ts and the GPU kit's family
// check (bench/gpu_families.ts).
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Backend } from '../../src/backend/backend.js';
import { freeInput, freeLossRows, uploadInput, uploadLossRows } from '../../src/model/input.js';
import { checkpointLayout } from '../../src/model/config.js';
import type { LlamaModel } from '../../src/model/llama.js';
import { type SpinBatch, type TokenizedPair, tokenizePair } from '../../src/spin/batch.js';
import { freeSpinLossContext, spinLossDlogp, spinLossFromLogprobs, spinLossMetrics } from '../../src/spin/loss.js';
import * as ops from '../../src/ops/index.js';
import type { Rng } from '../../src/util/rng.js';

/** Writes a request for a reference's `run`: the batch's token arrays, the reference log-probs, the settings. */
export function writeSpinRequest(dir: string, batch: SpinBatch, ref: Float32Array, settings: Record<string, unknown>): string {
  const req = join(dir, 'req');
  mkdirSync(req);
  const put = (name: string, a: Int32Array | Float32Array) =>
    writeFileSync(join(req, `${name}.bin`), new Uint8Array(a.buffer, a.byteOffset, a.byteLength));
  put('input_ids', batch.inputIds);
  put('positions', batch.positions);
  put('attention_mask', batch.attentionMask);
  put('targets', batch.targets);
  put('segments', batch.segments);
  put('ref', ref);
  writeFileSync(join(req, 'request.json'), JSON.stringify({ rows: batch.rows, length: batch.length, ...settings }));
  return req;
}

/**
 * spinlm's side of one SPIN step on `batch` (pairs = ref.length / 2, the sigmoid loss): the logits of every
 * position (model.forward), then the step as training runs it (the loss rows through the fused head:
 * forwardLogprobs / backwardLogprobs): each sequence's S(theta, y) and the loss, read to the host; the
 * gradients stay in model.weights.grads (the model must have training enabled).
 */
export async function spinlmSpinCase(
  be: Backend,
  model: LlamaModel,
  batch: SpinBatch,
  ref: Float32Array,
  beta: number,
): Promise<{ logits: Float32Array; seq: Float32Array; loss: number }> {
  const pairs = ref.length / 2;
  const input = uploadInput(be, batch, model.cfg.vocabSize);
  const { logits } = model.forward(input);
  const logitsHost = Float32Array.from((await ops.read(logits)) as Float32Array);
  logits.free();
  const rows = uploadLossRows(be, batch.targets, batch.segments);
  const { logp, state } = model.forwardLogprobs(input, rows, { train: true });
  const ctx = spinLossFromLogprobs(logp, rows.segments!, ops.upload(be, { dtype: 'f32', data: ref }, [ref.length]), pairs, {
    beta,
    lossType: 'sigmoid',
  });
  const metrics = await spinLossMetrics(ctx);
  const seq = Float32Array.from((await ops.read(ctx.seqLogps)) as Float32Array);
  const dlogp = spinLossDlogp(ctx);
  model.backwardLogprobs(state!, dlogp);
  freeSpinLossContext(ctx);
  for (const t of [logp, dlogp]) t.free();
  freeLossRows(rows);
  freeInput(input);
  return { logits: logitsHost, seq, loss: metrics.loss };
}

/**
 * n random pairs over a character tokenizer (ids 3..96, EOS `eosId`), max_length 48 and
 * max_prompt_length 32; the first prompt is always long enough to be cut (keep_end truncation).
 */
export function oraclePairs(rng: Rng, n: number, eosId: number): TokenizedPair[] {
  const tok = { eosId, encode: (s: string) => [...s].map((c) => 3 + (c.charCodeAt(0) % 94)) };
  const text = (k: number) => Array.from({ length: k }, () => String.fromCharCode(97 + rng.int(0, 25))).join('');
  return Array.from({ length: n }, (_, i) =>
    tokenizePair(tok, text(i === 0 ? 60 : rng.int(3, 60)), text(rng.int(1, 12)), text(rng.int(1, 12)), {
      maxLength: 48,
      maxPromptLength: 32,
    }),
  );
}

/**
 * The model's gradients per checkpoint tensor, named as the HF file names them (what a reference that
 * reads the file differentiates): a fused phi3 tensor's gradient is its parts' gradients stacked.
 */
export async function* checkpointGrads(model: LlamaModel): AsyncGenerator<{ name: string; grad: Float32Array }> {
  for (const spec of checkpointLayout(model.cfg)) {
    const parts = await Promise.all(spec.parts.map(async (p) => (await ops.read(model.weights.grad(p.name))) as Float32Array));
    const grad = new Float32Array(parts.reduce((n, a) => n + a.length, 0));
    parts.reduce((off, a) => (grad.set(a, off), off + a.length), 0);
    yield { name: spec.name, grad };
  }
}
