// What one micro-batch computes, for SPIN and for supervised fine-tuning (SFT).
import { type Backend, SPIN_LOSS_MEANS, type SpinLossType } from '../backend/backend.js';
import { freeInput, uploadInput } from '../model/input.js';
import type { LlamaModel } from '../model/llama.js';
import { collateSequences, collateSpinBatch, IGNORE_INDEX, type TokenBatch, type TokenizedPair, type TokenizedSequence } from './batch.js';
import type { Tensor } from '../tensor/tensor.js';
import { freeSpinLossContext, spinLossBackward, spinLossForward } from './loss.js';
import { scoreBatch } from './score.js';
import type { Objective } from './train_loop.js';
import { epochOrder } from './train_loop.js';
import * as ops from '../ops/index.js';
import type { ProcessGroup } from '../dist/process_group.js';
import { shardByItem } from '../dist/shard.js';

export interface SpinObjectiveConfig {
  beta: number;
  lossType: SpinLossType;
  /** Weight of an NLL term on the real answer (0 = the official SPIN loss). */
  nllAlpha: number;
  /** Give pairs whose generated answer equals the real one no weight. */
  dropIdentical: boolean;
  /** Divide each answer's log-prob (policy and reference) by its token count. */
  lengthNormalized?: boolean;
  eosId: number;
  padId: number;
}

function uploadTargets(be: Backend, b: TokenBatch) {
  return {
    targets: ops.upload(be, { dtype: 'i32', data: b.targets }, [b.targets.length]),
    segments: ops.upload(be, { dtype: 'i32', data: b.segments }, [b.segments.length]),
  };
}

/** Tokens that are not padding (for tokens/s). */
function nonPaddingTokens(b: TokenBatch): number {
  let n = 0;
  for (let i = 0; i < b.inputIds.length; i++) if (b.attentionMask[i] || b.targets[i] !== IGNORE_INDEX) n++;
  return n;
}

/**
 * S(ref, .) of every pair, computed once per iteration with the model before training, micro-batch
 * by micro-batch in the first epoch's order: the first training step then sees bit-identical
 * policy log-probs and u = 0 exactly. Returns [2N]: real answers, then generated.
 *
 * With a process group (data parallel, docs/distributed.md) the micro-batches are sharded across
 * the ranks (micro-batch k on rank k mod N: the same batches, so the same values as one process)
 * and every rank gets all values back. Every rank of the group must call it.
 */
export async function referenceLogps(
  model: LlamaModel,
  pairs: readonly TokenizedPair[],
  opts: {
    microBatchSize: number;
    seed: number;
    eosId: number;
    padId: number;
    onProgress?: (done: number, total: number) => void;
    group?: ProcessGroup;
  },
): Promise<Float32Array> {
  const n = pairs.length;
  const out = new Float32Array(2 * n);
  const order = epochOrder(n, opts.seed, 0);
  const batches: number[][] = [];
  for (let i = 0; i < n; i += opts.microBatchSize) batches.push(order.slice(i, i + opts.microBatchSize));
  const size = opts.group?.size ?? 1;
  let done = 0;
  // scores travel as the bytes of their f32 values (exact, NaN and infinities included)
  const score = async (mine: number[][]): Promise<string[]> => {
    const res: string[] = [];
    for (const idx of mine) {
      const s = await scoreBatch(
        model,
        collateSpinBatch(
          idx.map((j) => pairs[j]),
          opts.eosId,
          opts.padId,
        ),
      );
      res.push(Buffer.from(s.buffer, s.byteOffset, s.byteLength).toString('base64'));
      // this rank's share of the work, scaled to the whole (every rank scores about 1/N of it)
      done += idx.length;
      opts.onProgress?.(Math.min(done * size, n), n);
    }
    return res;
  };
  const scores = opts.group && size > 1 ? await shardByItem(opts.group, batches, score) : await score(batches);
  batches.forEach((idx, b) => {
    const bytes = Buffer.from(scores[b], 'base64');
    const s = new Float32Array(bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength));
    idx.forEach((j, k) => {
      out[j] = s[k];
      out[n + j] = s[idx.length + k];
    });
  });
  opts.onProgress?.(n, n);
  return out;
}

export class SpinObjective implements Objective {
  readonly metricNames = SPIN_LOSS_MEANS;

  constructor(
    readonly model: LlamaModel,
    readonly pairs: readonly TokenizedPair[],
    /** [2N] from referenceLogps. */
    readonly ref: Float32Array,
    readonly cfg: SpinObjectiveConfig,
  ) {
    if (ref.length !== 2 * pairs.length) throw new RangeError(`reference log-probs: ${ref.length} values for ${pairs.length} pairs`);
  }

  microStep(indices: readonly number[], weight: number, metrics: Tensor<'f32'>): number {
    const be = this.model.backend;
    const n = this.pairs.length;
    const b = indices.length;
    const batch = collateSpinBatch(
      indices.map((i) => this.pairs[i]),
      this.cfg.eosId,
      this.cfg.padId,
      { dropIdentical: this.cfg.dropIdentical },
    );
    const input = uploadInput(be, batch, this.model.cfg.vocabSize);
    const { targets, segments } = uploadTargets(be, batch);
    // length-normalized: c = 1 / answer tokens per sequence [2B] (an empty answer counts as 1 token)
    const norm = this.cfg.lengthNormalized ?? false;
    const c = Float32Array.from(batch.targetCounts.subarray(0, 2 * b), (x) => (norm ? 1 / Math.max(1, x) : 1));
    const refHost = new Float32Array(2 * b);
    indices.forEach((i, k) => {
      refHost[k] = this.ref[i] * c[k];
      refHost[b + k] = this.ref[n + i] * c[b + k];
    });
    const ref = ops.upload(be, { dtype: 'f32', data: refHost }, [2 * b]);
    const pairMask = ops.upload(be, { dtype: 'f32', data: batch.pairMask }, [b]);
    // the NLL term is -S_real / tokens: a normalized S_real already is per token
    const counts = norm ? new Float32Array(b).fill(1) : batch.targetCounts.slice(0, b);
    const answerTokens = ops.upload(be, { dtype: 'f32', data: counts }, [b]);
    let seqScale: Tensor<'f32'> | undefined;
    if (norm) {
      const diag = new Float32Array(4 * b * b); // diag(c), [2B, 2B]
      for (let i = 0; i < 2 * b; i++) diag[i * 2 * b + i] = c[i];
      seqScale = ops.upload(be, { dtype: 'f32', data: diag }, [2 * b, 2 * b]);
    }
    const { logits, state } = this.model.forward(input, { train: true });
    const ctx = spinLossForward(logits, targets, segments, ref, b, {
      beta: this.cfg.beta,
      lossType: this.cfg.lossType,
      pairMask,
      nllAlpha: this.cfg.nllAlpha,
      answerTokens,
      gradScale: weight,
      seqScale,
    });
    ops.accumulate(metrics, ctx.means, weight);
    const dlogits = spinLossBackward(ctx, { inPlace: true }); // the logits' buffer: backward frees it
    this.model.backward(state!, dlogits as never);
    freeSpinLossContext(ctx);
    for (const t of [targets, segments, ref, pairMask, answerTokens, seqScale]) t?.free();
    freeInput(input);
    return nonPaddingTokens(batch);
  }
}

/** Supervised fine-tuning: mean token NLL of the answers (prompt tokens carry no loss). */
export class SftObjective implements Objective {
  readonly metricNames = ['loss'] as const;

  constructor(
    readonly model: LlamaModel,
    readonly seqs: readonly TokenizedSequence[],
    readonly eosId: number,
    readonly padId: number,
  ) {}

  microStep(indices: readonly number[], weight: number, metrics: Tensor<'f32'>): number {
    const be = this.model.backend;
    const batch = collateSequences(
      indices.map((i) => this.seqs[i]),
      this.eosId,
      this.padId,
    );
    const input = uploadInput(be, batch, this.model.cfg.vocabSize);
    const n = batch.targets.length;
    const targets = ops.upload(be, { dtype: 'i32', data: batch.targets }, [n]);
    // one segment holding every row: ignored rows have logp = 0, so its sum is the answers' log-prob
    const whole = ops.upload(be, { dtype: 'i32', data: new Int32Array(n) }, [n]);
    let count = 0;
    for (const t of batch.targets) if (t !== IGNORE_INDEX) count++;
    // d(mean NLL)/d logp_t = -1 / count for every target token
    const dHost = new Float32Array(n).map((_, i) => (batch.targets[i] !== IGNORE_INDEX && count > 0 ? -weight / count : 0));
    const dlogp = ops.upload(be, { dtype: 'f32', data: dHost }, [n]);
    const { logits, state } = this.model.forward(input, { train: true });
    const { logp, lse } = ops.logprobGather(logits, targets);
    const sum = ops.sequenceLogprob(logp, whole, 1);
    if (count > 0) ops.accumulate(metrics, sum, -weight / count);
    ops.logprobGatherBackward(logits, targets, lse, dlogp, { out: logits });
    this.model.backward(state!, logits); // (frees the logits)
    for (const t of [targets, whole, dlogp, logp, lse, sum]) t.free();
    freeInput(input);
    return nonPaddingTokens(batch);
  }
}
