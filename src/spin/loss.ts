// The SPIN loss over a batch of pairs, fused from the backend's log-prob kernels (docs/algorithm.md):
//
//   logits [N, V] --logprobGather--> logp [N] --sequenceLogprob--> S [2B] --spinLoss--> [7, B]
//
// Sequence layout: the B real answers are sequences 0..B-1 and the B generated answers B..2B-1, so
// S.view(0) / S.view(B) are the policy log-probs of each side and rows 5-6 of the spinLoss output
// (dReal, dGenerated) are, back to back, exactly d(loss)/dS in the same layout: the backward is
// sequenceLogprobBackward + logprobGatherBackward with no copies.
import { type Backend, SPIN_LOSS_ROWS, type SpinLossOpts } from '../backend/backend.js';
import type { Tensor } from '../tensor/tensor.js';

/** beta, lossType, and optionally pairMask, nllAlpha + realTokens (see Backend.spinLoss). */
export type SpinLossOptions = SpinLossOpts;

/** Means over the counted pairs, named as the official SPIN trainer logs them. */
export interface SpinMetrics {
  loss: number;
  'rewards/real': number;
  'rewards/generated': number;
  'rewards/margins': number;
  'rewards/accuracies': number;
  'logps/real': number;
  'logps/generated': number;
  /** Pairs that counted in the means. */
  pairs: number;
}

/** What the backward needs; free() releases it. */
export interface SpinLossContext {
  readonly backend: Backend;
  readonly logits: Tensor;
  readonly targets: Tensor<'i32'>;
  readonly segments: Tensor<'i32'>;
  readonly numPairs: number;
  /** f32 [N]: logsumexp of each logits row. */
  readonly lse: Tensor<'f32'>;
  /** f32 [2B]: S(theta, .) of the real then the generated answers. */
  readonly seqLogps: Tensor<'f32'>;
  /** f32 [7, B]: rows as in SPIN_LOSS_ROWS. */
  readonly out: Tensor<'f32'>;
  readonly pairMask?: Tensor<'f32'>;
}

/**
 * Forward pass. `targets` i32 [N] are the next tokens (-100 where no loss); `segments` i32 [N] put
 * each row in sequence i (real answer of pair i), B + i (generated answer of pair i) or -1.
 * `refLogps` f32 [2B]: S(ref, .) in the same layout, computed once per iteration.
 */
export function spinLossForward(
  backend: Backend,
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
  const { logp, lse } = backend.logprobGather(logits, targets);
  const seqLogps = backend.sequenceLogprob(logp, segments, 2 * b);
  logp.free();
  const out = backend.spinLoss(seqLogps.view(0, [b]), seqLogps.view(b, [b]), refLogps.view(0, [b]), refLogps.view(b, [b]), opts);
  return { backend, logits, targets, segments, numPairs: b, lse, seqLogps, out, pairMask: opts.pairMask };
}

/** Reads the per-pair rows and averages them over the counted pairs (float64 on the host). */
export async function spinLossMetrics(ctx: SpinLossContext): Promise<SpinMetrics> {
  const b = ctx.numPairs;
  const [out, seq, mask] = await Promise.all([
    ctx.backend.read(ctx.out),
    ctx.backend.read(ctx.seqLogps),
    ctx.pairMask ? ctx.backend.read(ctx.pairMask) : Promise.resolve(null),
  ]);
  const row = (name: (typeof SPIN_LOSS_ROWS)[number]) => out.subarray(SPIN_LOSS_ROWS.indexOf(name) * b, (SPIN_LOSS_ROWS.indexOf(name) + 1) * b);
  let pairs = 0;
  const sums = { loss: 0, rr: 0, rg: 0, m: 0, acc: 0, lr: 0, lg: 0 };
  for (let i = 0; i < b; i++) {
    if (mask && mask[i] === 0) continue;
    pairs++;
    sums.loss += row('loss')[i];
    sums.rr += row('rewardsReal')[i];
    sums.rg += row('rewardsGenerated')[i];
    sums.m += row('margins')[i];
    sums.acc += row('accuracies')[i];
    sums.lr += seq[i];
    sums.lg += seq[b + i];
  }
  const mean = (x: number) => (pairs > 0 ? x / pairs : 0);
  return {
    loss: mean(sums.loss),
    'rewards/real': mean(sums.rr),
    'rewards/generated': mean(sums.rg),
    'rewards/margins': mean(sums.m),
    'rewards/accuracies': mean(sums.acc),
    'logps/real': mean(sums.lr),
    'logps/generated': mean(sums.lg),
    pairs,
  };
}

/**
 * Backward pass: d(mean loss)/d(logits) [N, V]. With `inPlace` the gradient overwrites the logits
 * buffer (the logits are dead after the backward), saving an [N, V] allocation.
 */
export function spinLossBackward(ctx: SpinLossContext, opts: { inPlace?: boolean; dtype?: 'f32' | 'bf16' } = {}): Tensor {
  const { backend, numPairs: b } = ctx;
  const dseq = ctx.out.view(SPIN_LOSS_ROWS.indexOf('dReal') * b, [2 * b]);
  const dlogp = backend.sequenceLogprobBackward(dseq, ctx.segments);
  const dlogits = backend.logprobGatherBackward(ctx.logits, ctx.targets, ctx.lse, dlogp, opts.inPlace ? { out: ctx.logits } : { dtype: opts.dtype });
  dlogp.free();
  return dlogits;
}

export function freeSpinLossContext(ctx: SpinLossContext): void {
  ctx.lse.free();
  ctx.seqLogps.free();
  ctx.out.free();
}
