// The log-prob / SPIN loss ops (docs/algorithm.md): argument checks, then the backend's kernel.
import { SPIN_LOSS_TYPES, type HeadOpts, type SpinLossOpts, type SpinLossOutputs } from '../backend/backend.js';
import type { Tensor } from '../tensor/tensor.js';
import { checkCount, checkFinite, describe, expectArg, expectDisjoint, expectDType, expectRank, expectTensor } from './check.js';
import { headLogprobBackwardOnRounded, headLogprobOnRounded } from './bf16_shim.js';

/** logits [N, V] f32|bf16 and targets i32 [N]. */
function logprobArgs(logits: Tensor, targets: Tensor) {
  const be = expectTensor(logits, 'logits');
  expectArg(be, targets, 'targets', ['i32']);
  expectDType(logits, ['f32', 'bf16'], 'logits');
  expectRank(logits, 2, 'logits');
  expectRank(targets, 1, 'targets');
  const [n, v] = logits.shape;
  if (targets.shape[0] !== n) {
    throw new RangeError(`targets ${describe(targets)} must have one entry per logits row (${n}), logits are ${describe(logits)}`);
  }
  if (n > 0 && v < 1) throw new RangeError(`logits ${describe(logits)} need a vocabulary of at least 1`);
  return { be, n, v };
}

/**
 * logits [N, V] (f32 | bf16), targets i32 [N] (-100 = ignored) -> logp f32 [N] = z[n, y_n] - lse_n and
 * lse f32 [N] (kept for the backward). Ignored rows give 0 and 0.
 */
export function logprobGather(logits: Tensor, targets: Tensor<'i32'>): { logp: Tensor<'f32'>; lse: Tensor<'f32'> } {
  const { be } = logprobArgs(logits, targets);
  return be.logprobGather(logits, targets);
}

/**
 * d(logp)/d(logits) applied to dlogp: dlogits[n, v] = dlogp[n] (1[v = y_n] - softmax(z_n)_v). `out` may
 * be `logits` itself (in place, same dtype); else a new tensor of `dtype` (default: the logits' dtype).
 */
export function logprobGatherBackward(
  logits: Tensor,
  targets: Tensor<'i32'>,
  lse: Tensor<'f32'>,
  dlogp: Tensor<'f32'>,
  opts: { out?: Tensor; dtype?: 'f32' | 'bf16' } = {},
): Tensor {
  const { be, n, v } = logprobArgs(logits, targets);
  expectArg(be, lse, 'lse', ['f32'], [n]);
  expectArg(be, dlogp, 'dlogp', ['f32'], [n]);
  let out = opts.out;
  if (out) {
    expectArg(be, out, 'out', ['f32', 'bf16'], [n, v]);
    const overlaps =
      out.handle === logits.handle &&
      out.byteOffset < logits.byteOffset + logits.byteLength &&
      logits.byteOffset < out.byteOffset + out.byteLength;
    if (overlaps && (out.byteOffset !== logits.byteOffset || out.dtype !== logits.dtype)) {
      throw new RangeError('logprobGatherBackward: out overlaps logits without being exactly in place with the same dtype');
    }
  } else {
    if (opts.dtype !== undefined && opts.dtype !== 'f32' && opts.dtype !== 'bf16')
      throw new TypeError(`dtype must be 'f32' or 'bf16', got ${String(opts.dtype)}`);
    out = be.empty(opts.dtype ?? (logits.dtype as 'f32' | 'bf16'), [n, v]);
  }
  be.logprobGatherBackward(logits, targets, lse, dlogp, out);
  return out;
}

/** h f32 [N, H], w [V, H] f32|bf16, targets i32 [N], and the options of the fused head. */
function headArgs(h: Tensor<'f32'>, w: Tensor, targets: Tensor<'i32'>, opts: HeadOpts) {
  const be = expectTensor(h, 'h');
  expectArg(be, h, 'h', ['f32']);
  expectRank(h, 2, 'h');
  expectArg(be, w, 'w', ['f32', 'bf16']);
  expectRank(w, 2, 'w');
  const [n, hdim] = h.shape;
  const v = w.shape[0];
  if (w.shape[1] !== hdim) throw new RangeError(`w ${describe(w)} must have ${hdim} columns, the width of h ${describe(h)}`);
  if (n > 0 && v < 1) throw new RangeError(`w ${describe(w)} needs a vocabulary of at least 1 row`);
  expectArg(be, targets, 'targets', ['i32'], [n]);
  const softcap = opts.softcap ?? 0;
  checkFinite(softcap, 'softcap');
  if (softcap < 0) throw new RangeError(`softcap must be > 0 (or 0 for none), got ${softcap}`);
  if (opts.computeDtype !== undefined && opts.computeDtype !== 'f32' && opts.computeDtype !== 'bf16')
    throw new TypeError(`computeDtype must be 'f32' or 'bf16', got ${String(opts.computeDtype)}`);
  return {
    be,
    n,
    hdim,
    v,
    opts: { softcap, computeDtype: opts.computeDtype ?? 'f32', rowInvariant: !!opts.rowInvariant } satisfies HeadOpts,
  };
}

/**
 * The LM head fused with the target log-probs: logp f32 [N] and lse f32 [N] of the logits h w^T (soft-capped
 * with opts.softcap), which are formed a vocabulary panel at a time and never held as [N, V]
 * (Backend.headLogprob). Pass only the rows that carry a loss: a row costs V x H multiply-adds.
 */
export function headLogprob(
  h: Tensor<'f32'>,
  w: Tensor,
  targets: Tensor<'i32'>,
  opts: HeadOpts = {},
): { logp: Tensor<'f32'>; lse: Tensor<'f32'> } {
  const a = headArgs(h, w, targets, opts);
  // TEMPORARY (autocast branch, until lt-gemm's head kernels): an f32 head with computeDtype 'bf16'
  if (a.opts.computeDtype === 'bf16' && w.dtype !== 'bf16') return headLogprobOnRounded(a.be, h, w, targets, a.opts);
  return a.be.headLogprob(h, w, targets, a.opts);
}

/**
 * Backward of headLogprob: returns dh f32 [N, H]; with `dw` (f32 [V, H], the head's gradient buffer)
 * also adds the head's weight gradient into it. The logits are recomputed panel by panel.
 */
export function headLogprobBackward(
  h: Tensor<'f32'>,
  w: Tensor,
  targets: Tensor<'i32'>,
  lse: Tensor<'f32'>,
  dlogp: Tensor<'f32'>,
  opts: HeadOpts & { dw?: Tensor<'f32'> } = {},
): Tensor<'f32'> {
  const a = headArgs(h, w, targets, opts);
  expectArg(a.be, lse, 'lse', ['f32'], [a.n]);
  expectArg(a.be, dlogp, 'dlogp', ['f32'], [a.n]);
  if (opts.dw) {
    expectArg(a.be, opts.dw, 'dw', ['f32'], [a.v, a.hdim]);
    expectDisjoint(opts.dw, h, 'dw and h');
    expectDisjoint(opts.dw, w, 'dw and w');
  }
  const dh = a.be.empty('f32', [a.n, a.hdim]);
  // TEMPORARY (autocast branch, until lt-gemm's head kernels): computeDtype 'bf16'
  if (a.opts.computeDtype === 'bf16') headLogprobBackwardOnRounded(a.be, h, w, targets, lse, dlogp, dh, opts.dw ?? null, a.opts);
  else a.be.headLogprobBackward(h, w, targets, lse, dlogp, dh, opts.dw ?? null, a.opts);
  return dh;
}

/** out[s] = sum of logp[n] over the rows with segments[n] = s (-1: no sequence); fixed order. */
export function sequenceLogprob(logp: Tensor<'f32'>, segments: Tensor<'i32'>, numSeqs: number): Tensor<'f32'> {
  const be = expectTensor(logp, 'logp');
  expectArg(be, logp, 'logp', ['f32']);
  expectRank(logp, 1, 'logp');
  expectArg(be, segments, 'segments', ['i32'], [logp.numel]);
  checkCount(numSeqs, 'numSeqs');
  return be.sequenceLogprob(logp, segments, numSeqs);
}

/** dlogp[n] = dseq[segments[n]] (0 where segments[n] = -1). */
export function sequenceLogprobBackward(dseq: Tensor<'f32'>, segments: Tensor<'i32'>): Tensor<'f32'> {
  const be = expectTensor(dseq, 'dseq');
  expectArg(be, dseq, 'dseq', ['f32']);
  expectRank(dseq, 1, 'dseq');
  expectArg(be, segments, 'segments', ['i32']);
  expectRank(segments, 1, 'segments');
  return be.sequenceLogprobBackward(dseq, segments);
}

/**
 * The SPIN loss of B pairs from summed log-probs policy, ref f32 [2B] (real answers first, then the
 * generated ones). Returns per-pair rows [7, B], means over counted pairs [8] and dseq [2B] (see
 * Backend.spinLoss).
 */
export function spinLoss(policy: Tensor<'f32'>, ref: Tensor<'f32'>, opts: SpinLossOpts): SpinLossOutputs {
  const be = expectTensor(policy, 'policy');
  expectArg(be, policy, 'policy', ['f32']);
  expectRank(policy, 1, 'policy');
  if (policy.numel % 2 !== 0) throw new RangeError(`policy ${describe(policy)} must hold 2 x B log-probs (real then generated)`);
  const b = policy.numel / 2;
  expectArg(be, ref, 'ref', ['f32'], [2 * b]);
  if (opts.pairMask) expectArg(be, opts.pairMask, 'pairMask', ['f32'], [b]);
  if (opts.answerTokens) expectArg(be, opts.answerTokens, 'answerTokens', ['f32'], [b]);
  const nllAlpha = opts.nllAlpha ?? 0;
  checkFinite(nllAlpha, 'nllAlpha');
  if (nllAlpha < 0) throw new RangeError(`nllAlpha must be >= 0, got ${nllAlpha}`);
  if (nllAlpha > 0 && !opts.answerTokens) throw new TypeError("nllAlpha > 0 needs answerTokens (the real answers' token counts)");
  checkFinite(opts.beta, 'beta');
  checkFinite(opts.gradScale ?? 1, 'gradScale');
  if (!(SPIN_LOSS_TYPES as readonly string[]).includes(opts.lossType)) {
    throw new RangeError(`lossType must be one of ${SPIN_LOSS_TYPES.map((t) => `'${t}'`).join(', ')}, got '${String(opts.lossType)}'`);
  }
  if ((opts.lossType === 'ipo' || opts.lossType === 'sppo_hard') && !(opts.beta > 0)) {
    throw new RangeError(`beta must be > 0 for lossType '${opts.lossType}' (its target is 1 / (2 beta)), got ${opts.beta}`);
  }
  return be.spinLoss(policy, ref, opts);
}
