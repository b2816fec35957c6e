// What one micro-batch computes, for SPIN and for supervised fine-tuning (SFT).
import type { Backend, SpinLossType } from '../backend/backend.js';
import { freeInput, uploadInput } from '../model/input.js';
import type { LlamaModel } from '../model/llama.js';
import { collateSequences, collateSpinBatch, IGNORE_INDEX, type TokenBatch, type TokenizedPair, type TokenizedSequence } from './batch.js';
import { freeSpinLossContext, spinLossBackward, spinLossForward, spinLossMetrics } from './loss.js';
import { scoreBatch } from './score.js';
import type { MicroResult, Objective } from './train_loop.js';
import { epochOrder } from './train_loop.js';

export interface SpinObjectiveConfig {
  beta: number;
  lossType: SpinLossType;
  /** Weight of an NLL term on the real answer (0 = the official SPIN loss). */
  nllAlpha: number;
  /** Give pairs whose generated answer equals the real one no weight. */
  dropIdentical: boolean;
  eosId: number;
  padId: number;
}

function uploadTargets(be: Backend, b: TokenBatch) {
  return {
    targets: be.upload({ dtype: 'i32', data: b.targets }, [b.targets.length]),
    segments: be.upload({ dtype: 'i32', data: b.segments }, [b.segments.length]),
  };
}

/** Tokens that are not padding. */
function nonPaddingTokens(b: TokenBatch): number {
  let n = 0;
  for (let i = 0; i < b.inputIds.length; i++) if (b.attentionMask[i] || b.targets[i] !== IGNORE_INDEX) n++;
  return n;
}

/**
 * S(ref, .) of every pair, computed once per iteration with the model before training, micro-batch
 * by micro-batch in the first epoch's order: the first training step then sees bit-identical
 * policy log-probs and u = 0 exactly. Returns [2N]: real answers, then generated.
 */
export async function referenceLogps(model: LlamaModel, pairs: readonly TokenizedPair[], opts: { microBatchSize: number; seed: number; eosId: number; padId: number; onProgress?: (done: number, total: number) => void }): Promise<Float32Array> {
  const n = pairs.length;
  const out = new Float32Array(2 * n);
  const order = epochOrder(n, opts.seed, 0);
  for (let i = 0; i < n; i += opts.microBatchSize) {
    const idx = order.slice(i, i + opts.microBatchSize);
    const s = await scoreBatch(model, collateSpinBatch(idx.map((j) => pairs[j]), opts.eosId, opts.padId));
    idx.forEach((j, k) => {
      out[j] = s[k];
      out[n + j] = s[idx.length + k];
    });
    opts.onProgress?.(Math.min(i + idx.length, n), n);
  }
  return out;
}

export class SpinObjective implements Objective {
  constructor(
    readonly model: LlamaModel,
    readonly pairs: readonly TokenizedPair[],
    /** [2N] from referenceLogps. */
    readonly ref: Float32Array,
    readonly cfg: SpinObjectiveConfig,
  ) {
    if (ref.length !== 2 * pairs.length) throw new RangeError(`reference log-probs: ${ref.length} values for ${pairs.length} pairs`);
  }

  async microStep(indices: readonly number[], scale: number): Promise<MicroResult> {
    const be = this.model.backend;
    const n = this.pairs.length;
    const b = indices.length;
    const batch = collateSpinBatch(indices.map((i) => this.pairs[i]), this.cfg.eosId, this.cfg.padId, { dropIdentical: this.cfg.dropIdentical });
    const input = uploadInput(be, batch);
    const { targets, segments } = uploadTargets(be, batch);
    const refHost = new Float32Array(2 * b);
    indices.forEach((i, k) => {
      refHost[k] = this.ref[i];
      refHost[b + k] = this.ref[n + i];
    });
    const ref = be.upload({ dtype: 'f32', data: refHost }, [2 * b]);
    const pairMask = be.upload({ dtype: 'f32', data: batch.pairMask }, [b]);
    const realCounts = be.upload({ dtype: 'f32', data: batch.targetCounts.slice(0, b) }, [b]);
    const { logits, state } = this.model.forward(input, { train: true });
    const ctx = spinLossForward(be, logits, targets, segments, ref, b, {
      beta: this.cfg.beta, lossType: this.cfg.lossType, pairMask, nllAlpha: this.cfg.nllAlpha, realTokens: realCounts,
    });
    const m = await spinLossMetrics(ctx);
    if (scale !== 1) be.scaleInPlace(ctx.out.view(5 * b, [2 * b]), scale); // d(loss)/dS of both sides
    const dlogits = spinLossBackward(ctx, { inPlace: true });
    this.model.backward(state!, dlogits as never);
    freeSpinLossContext(ctx);
    for (const t of [logits, targets, segments, ref, pairMask, realCounts]) t.free();
    freeInput(input);
    const { pairs: counted, ...metrics } = m;
    return { metrics: { ...metrics, 'pairs/counted': counted / b }, tokens: nonPaddingTokens(batch) };
  }
}

/** Supervised fine-tuning: mean token NLL of the answers (prompt tokens carry no loss). */
export class SftObjective implements Objective {
  constructor(
    readonly model: LlamaModel,
    readonly seqs: readonly TokenizedSequence[],
    readonly eosId: number,
    readonly padId: number,
  ) {}

  async microStep(indices: readonly number[], scale: number): Promise<MicroResult> {
    const be = this.model.backend;
    const batch = collateSequences(indices.map((i) => this.seqs[i]), this.eosId, this.padId);
    const input = uploadInput(be, batch);
    const { targets, segments } = uploadTargets(be, batch);
    segments.free();
    let count = 0;
    for (const t of batch.targets) if (t !== IGNORE_INDEX) count++;
    // d(mean NLL)/d logp_t = -1 / count for every target token
    const dHost = new Float32Array(batch.targets.length).map((_, i) => (batch.targets[i] !== IGNORE_INDEX && count > 0 ? -scale / count : 0));
    const dlogp = be.upload({ dtype: 'f32', data: dHost }, [dHost.length]);
    const { logits, state } = this.model.forward(input, { train: true });
    const { logp, lse } = be.logprobGather(logits, targets);
    const lp = await be.read(logp);
    let sum = 0;
    for (const x of lp) sum += x;
    be.logprobGatherBackward(logits, targets, lse, dlogp, { out: logits });
    this.model.backward(state!, logits);
    for (const t of [logits, targets, dlogp, logp, lse]) t.free();
    freeInput(input);
    return { metrics: { loss: count > 0 ? -sum / count : 0 }, tokens: nonPaddingTokens(batch) };
  }
}
