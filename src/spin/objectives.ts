// What one micro-batch computes, for SPIN and for supervised fine-tuning (SFT).
import { SPIN_LOSS_MEANS, type SpinLossType } from '../backend/backend.js';
import { freeInput, freeLossRows, uploadBatchLossRows, uploadInput } from '../model/input.js';
import type { LlamaModel } from '../model/llama.js';
import { IGNORE_INDEX, type TokenBatch, type TokenizedPair, type TokenizedSequence } from './batch.js';
import { packedPairTokens, packedSequenceTokens, packSequences, packSpinBatch } from './pack.js';
import type { Tensor } from '../tensor/tensor.js';
import { freeSpinLossContext, spinLossDlogp, spinLossFromLogprobs } from './loss.js';
import { scoreBatch } from './score.js';
import type { Objective } from './train_loop.js';
import { epochOrder, tokenRuns } from './train_loop.js';
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

/** Tokens that are not padding (for tokens/s). */
function nonPaddingTokens(b: TokenBatch): number {
  let n = 0;
  for (let i = 0; i < b.inputIds.length; i++) if (b.attentionMask[i] || b.targets[i] !== IGNORE_INDEX) n++;
  return n;
}

/**
 * S(ref, .) of every pair, computed once per iteration with the model before training, micro-batch
 * by micro-batch in the first epoch's order, packed as training packs them (src/spin/pack.ts, the
 * token budget's runs included): the first training step then sees bit-identical policy log-probs and
 * u = 0 exactly. Returns [2N]: real answers, then generated.
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
    /** LoopConfig.maxTokensPerBatch: the reference pass cuts micro-batches into the same runs. */
    maxTokensPerBatch?: number;
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
  for (let i = 0; i < n; i += opts.microBatchSize)
    batches.push(...tokenRuns(order.slice(i, i + opts.microBatchSize), (j) => packedPairTokens(pairs[j]), opts.maxTokensPerBatch));
  const size = opts.group?.size ?? 1;
  let done = 0;
  // scores travel as the bytes of their f32 values (exact, NaN and infinities included)
  const score = async (mine: number[][]): Promise<string[]> => {
    const res: string[] = [];
    for (const idx of mine) {
      const s = await scoreBatch(
        model,
        packSpinBatch(
          idx.map((j) => pairs[j]),
          opts.eosId,
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

  tokensOf(i: number): number {
    return packedPairTokens(this.pairs[i]);
  }

  microStep(indices: readonly number[], weight: number, metrics: Tensor<'f32'>): number {
    const be = this.model.backend;
    const n = this.pairs.length;
    const b = indices.length;
    // one packed row: each pair [prompt | real | generated], the prompt computed once (src/spin/pack.ts)
    const batch = packSpinBatch(
      indices.map((i) => this.pairs[i]),
      this.cfg.eosId,
      { dropIdentical: this.cfg.dropIdentical },
    );
    const input = uploadInput(be, batch, this.model.cfg.vocabSize);
    const loss = uploadBatchLossRows(be, batch);
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
    const { logp, state } = this.model.forwardLogprobs(input, loss, { train: true });
    const ctx = spinLossFromLogprobs(logp, loss.segments!, ref, b, {
      beta: this.cfg.beta,
      lossType: this.cfg.lossType,
      pairMask,
      nllAlpha: this.cfg.nllAlpha,
      answerTokens,
      gradScale: weight,
      seqScale,
    });
    ops.accumulate(metrics, ctx.means, weight);
    const dlogp = spinLossDlogp(ctx);
    this.model.backwardLogprobs(state!, dlogp);
    freeSpinLossContext(ctx);
    for (const t of [logp, dlogp, ref, pairMask, answerTokens, seqScale]) t?.free();
    freeLossRows(loss);
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

  tokensOf(i: number): number {
    return packedSequenceTokens(this.seqs[i]);
  }

  microStep(indices: readonly number[], weight: number, metrics: Tensor<'f32'>): number {
    const be = this.model.backend;
    // the sequences back to back in one row, no padding (src/spin/pack.ts)
    const batch = packSequences(
      indices.map((i) => this.seqs[i]),
      this.eosId,
    );
    const input = uploadInput(be, batch, this.model.cfg.vocabSize);
    const loss = uploadBatchLossRows(be, batch);
    const count = loss.count;
    // one segment holding every loss row: its sum is the answers' log-prob; d(mean NLL)/d logp_t = -1 / count
    const whole = ops.zeros(be, 'i32', [count]);
    const dlogp = ops.upload(be, { dtype: 'f32', data: new Float32Array(count).fill(-weight / Math.max(1, count)) }, [count]);
    const { logp, state } = this.model.forwardLogprobs(input, loss, { train: true });
    const sum = ops.sequenceLogprob(logp, whole, 1);
    if (count > 0) ops.accumulate(metrics, sum, -weight / count);
    this.model.backwardLogprobs(state!, dlogp);
    for (const t of [whole, dlogp, logp, sum]) t.free();
    freeLossRows(loss);
    freeInput(input);
    return nonPaddingTokens(batch);
  }
}
