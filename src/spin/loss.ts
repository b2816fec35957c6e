// The SPIN loss over a batch of pairs, fused from the op layer's log-prob kernels (docs/algorithm.md):
//
//   logits [N, V] --logprobGather--> logp [N] --sequenceLogprob--> S [2B] --spinLoss--> per-pair [7, B],
//                                                                                        means [8], dseq [2B]
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

/** What the backward needs; free() releases it. */
export interface SpinLossContext {
  readonly logits: Tensor;
  readonly targets: Tensor<'i32'>;
  readonly segments: Tensor<'i32'>;
  readonly numPairs: number;
  /** f32 [N]: logsumexp of each logits row. */
  readonly lse: Tensor<'f32'>;
  /** f32 [2B]: S(theta, .) of the real then the generated answers. */
  readonly seqLogps: Tensor<'f32'>;
  /** f32 [7, B]: rows as in SPIN_LOSS_ROWS. */
  readonly perPair: Tensor<'f32'>;
  /** f32 [8]: SPIN_LOSS_MEANS, over the counted pairs. */
  readonly means: Tensor<'f32'>;
  /** f32 [2B]: gradScale * d(mean loss)/dS. */
  readonly dseq: Tensor<'f32'>;
}

/**
 * Forward pass. `targets` i32 [N] are the next tokens (-100 where no loss); `segments` i32 [N] put
 * each row in sequence i (real answer of pair i), B + i (generated answer of pair i) or -1.
 * `refLogps` f32 [2B]: S(ref, .) in the same layout, computed once per iteration.
 */
export function spinLossForward(
  logits: Tensor,
  targets: Tensor<'i32'>,
  segments: Tensor<'i32'>,
  refLogps: Tensor<'f32'>,
  numPairs: number,
  opts: SpinLossOptions,
): SpinLossContext {
  const b = numPairs;
  if (refLogps.numel !== 2 * b) {
    throw new RangeError(`refLogps must hold 2 x ${b} sequence log-probs (real then generated), got ${refLogps.numel}`);
  }
  const { logp, lse } = ops.logprobGather(logits, targets);
  const seqLogps = ops.sequenceLogprob(logp, segments, 2 * b);
  logp.free();
  if (!opts.seqScale) {
    const { perPair, means, dseq } = ops.spinLoss(seqLogps, refLogps, opts);
    return { logits, targets, segments, numPairs: b, lse, seqLogps, perPair, means, dseq };
  }
  // length-normalized: the loss sees c_i S_i (refLogps come scaled by the caller), so
  // dL/dS_i = c_i dL/d(c_i S_i). Both scalings are [1, 2B] x diag(c) [2B, 2B]: one tiny matmul on
  // the device (a diagonal product is exact: every other term is 0 x a finite value).
  const diag = opts.seqScale;
  const row = (t: Tensor<'f32'>) => t.reshape([1, 2 * b]);
  const scaled = ops.matmul(row(seqLogps), diag);
  const { perPair, means, dseq: dscaled } = ops.spinLoss(scaled.reshape([2 * b]), refLogps, opts);
  const dseq = ops.empty(logits.backend, 'f32', [2 * b]);
  ops.matmul(row(dscaled), diag, { out: row(dseq) });
  scaled.free();
  dscaled.free();
  return { logits, targets, segments, numPairs: b, lse, seqLogps, perPair, means, dseq };
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
export function spinLossBackward(ctx: SpinLossContext, opts: { inPlace?: boolean; dtype?: 'f32' | 'bf16' } = {}): Tensor {
  const dlogp = ops.sequenceLogprobBackward(ctx.dseq, ctx.segments);
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

export function freeSpinLossContext(ctx: SpinLossContext): void {
  for (const t of [ctx.lse, ctx.seqLogps, ctx.perPair, ctx.means, ctx.dseq]) t.free();
}
