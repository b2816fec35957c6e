// The SPIN loss over a batch of pairs, from the op layer's log-prob kernels (docs/algorithm.md):
//
//   h [M, H] --headLogprob--> logp [M] --sequenceLogprob--> S [2B] --spinLoss--> per-pair [7, B],
//   (or logits [N, V] --logprobGather--> logp [N])                                 means [8], dseq [2B]
//
// Sequence layout: the B real answers are sequences 0..B-1 and the B generated answers B..2B-1, so S,
// the reference log-probs and spinLoss's dseq (d(loss)/dS) share one layout and the backward is
// sequenceLogprobBackward + logprobGatherBackward with no copies and no views.
import { SPIN_LOSS_MEANS, type SpinLossOpts } from '../backend/backend.js';
import * as ops from '../ops/index.js';
import type { Tensor } from '../tensor/tensor.js';

/**
 * beta, lossType, and optionally pairMask, nllAlpha + answerTokens, gradScale (see Backend.spinLoss);
 * seqScale: f32 [2B, 2B] diagonal, c_i on the diagonal: the loss is computed on c_i S_i (length
 * normalization, c_i = 1 / tokens of answer i; refLogps must then hold c_i R_i).
 */
export type SpinLossOptions = SpinLossOpts & { seqScale?: Tensor<'f32'> };

/** Means over the counted pairs, named as the official SPIN trainer logs them (SPIN_LOSS_MEANS). */
export type SpinMetrics = Record<(typeof SPIN_LOSS_MEANS)[number], number>;

/** What the backward needs; freeSpinLossContext() releases it (not the inputs it names). */
export interface SpinLossContext {
  readonly segments: Tensor<'i32'>;
  readonly numPairs: number;
  /** f32 [2B]: S(theta, .) of the real then the generated answers. */
  readonly seqLogps: Tensor<'f32'>;
  /** f32 [7, B]: rows as in SPIN_LOSS_ROWS. */
  readonly perPair: Tensor<'f32'>;
  /** f32 [8]: SPIN_LOSS_MEANS, over the counted pairs. */
  readonly means: Tensor<'f32'>;
  /** f32 [2B]: gradScale * d(mean loss)/dS. */
  readonly dseq: Tensor<'f32'>;
}

/** The loss from logits [N, V] (spinLossForward): what spinLossBackward needs besides. */
export interface SpinLogitsContext extends SpinLossContext {
  readonly logits: Tensor;
  readonly targets: Tensor<'i32'>;
  /** f32 [N]: logsumexp of each logits row. */
  readonly lse: Tensor<'f32'>;
}

/**
 * The SPIN loss from token log-probs: `logp` f32 [N] (the fused head's, ops.headLogprob, over the loss
 * rows), `segments` i32 [N] put each row in sequence i (real answer of pair i), B + i (generated answer
 * of pair i) or -1. `refLogps` f32 [2B]: S(ref, .) in the same layout, computed once per iteration.
 */
export function spinLossFromLogprobs(
  logp: Tensor<'f32'>,
  segments: Tensor<'i32'>,
  refLogps: Tensor<'f32'>,
  numPairs: number,
  opts: SpinLossOptions,
): SpinLossContext {
  const b = numPairs;
  if (refLogps.numel !== 2 * b) {
    throw new RangeError(`refLogps must hold 2 x ${b} sequence log-probs (real then generated), got ${refLogps.numel}`);
  }
  const seqLogps = ops.sequenceLogprob(logp, segments, 2 * b);
  if (!opts.seqScale) {
    const { perPair, means, dseq } = ops.spinLoss(seqLogps, refLogps, opts);
    return { segments, numPairs: b, seqLogps, perPair, means, dseq };
  }
  // length-normalized: the loss sees c_i S_i (refLogps come scaled by the caller), so
  // dL/dS_i = c_i dL/d(c_i S_i). Both scalings are [1, 2B] x diag(c) [2B, 2B]: one tiny matmul on
  // the device (a diagonal product is exact: every other term is 0 x a finite value).
  const diag = opts.seqScale;
  const row = (t: Tensor<'f32'>) => t.reshape([1, 2 * b]);
  const scaled = ops.matmul(row(seqLogps), diag);
  const { perPair, means, dseq: dscaled } = ops.spinLoss(scaled.reshape([2 * b]), refLogps, opts);
  const dseq = ops.empty(logp.backend, 'f32', [2 * b]);
  ops.matmul(row(dscaled), diag, { out: row(dseq) });
  scaled.free();
  dscaled.free();
  return { segments, numPairs: b, seqLogps, perPair, means, dseq };
}

/** d(mean loss)/d(logp) f32 [N]: each row gets its sequence's dseq (0 for segment -1). */
export function spinLossDlogp(ctx: SpinLossContext): Tensor<'f32'> {
  return ops.sequenceLogprobBackward(ctx.dseq, ctx.segments);
}

/**
 * The same loss from logits [N, V] (f32 | bf16): logprobGather, then spinLossFromLogprobs. Training goes
 * through the fused head instead; this is the library's entry for callers that hold logits, and the
 * tests' reference for the fused path. `targets` i32 [N] are the next tokens (-100 where no loss).
 */
export function spinLossForward(
  logits: Tensor,
  targets: Tensor<'i32'>,
  segments: Tensor<'i32'>,
  refLogps: Tensor<'f32'>,
  numPairs: number,
  opts: SpinLossOptions,
): SpinLogitsContext {
  if (refLogps.numel !== 2 * numPairs) {
    throw new RangeError(`refLogps must hold 2 x ${numPairs} sequence log-probs (real then generated), got ${refLogps.numel}`);
  }
  const { logp, lse } = ops.logprobGather(logits, targets);
  const ctx = spinLossFromLogprobs(logp, segments, refLogps, numPairs, opts);
  logp.free();
  return { ...ctx, logits, targets, lse };
}

/** Reads the means (one device read: use it per logging interval, not inside a step). */
export async function spinLossMetrics(ctx: SpinLossContext): Promise<SpinMetrics> {
  const m = await ops.read(ctx.means);
  return Object.fromEntries(SPIN_LOSS_MEANS.map((k, i) => [k, m[i]])) as SpinMetrics;
}

/**
 * Backward pass: d(mean loss)/d(logits) [N, V]. With `inPlace` the gradient overwrites the logits
 * buffer (the logits are dead after the backward), saving an [N, V] allocation.
 */
export function spinLossBackward(ctx: SpinLogitsContext, opts: { inPlace?: boolean; dtype?: 'f32' | 'bf16' } = {}): Tensor {
  const dlogp = spinLossDlogp(ctx);
  const dlogits = ops.logprobGatherBackward(
    ctx.logits,
    ctx.targets,
    ctx.lse,
    dlogp,
    opts.inPlace ? { out: ctx.logits } : { dtype: opts.dtype },
  );
  dlogp.free();
  return dlogits;
}

export function freeSpinLossContext(ctx: SpinLossContext | SpinLogitsContext): void {
  for (const t of [ctx.seqLogps, ctx.perPair, ctx.means, ctx.dseq]) t.free();
  if ('lse' in ctx) ctx.lse.free();
}
