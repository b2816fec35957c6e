// The one Backend interface (docs/design.md). Every op is issued synchronously and returns
// device tensors; only read() is async (WebGPU maps buffers, CUDA syncs a stream). Nothing above
// src/backend/ knows which device runs an op. Argument checks shared by all backends live in
// validate.ts, so each backend implements only the math.
import type { DType, HostArrayOf, HostData } from '../tensor/dtype.js';
import type { Tensor } from '../tensor/tensor.js';

export type SpinLossType = 'sigmoid' | 'hinge';

/** Rows of the [7, B] tensor returned by spinLoss, in order. */
export const SPIN_LOSS_ROWS = [
  'loss', // softplus(-u) (sigmoid) or max(0, 1 - u) (hinge), per pair
  'rewardsReal', // beta * (S(theta, y) - S(ref, y))
  'rewardsGenerated', // beta * (S(theta, y') - S(ref, y'))
  'margins', // rewardsReal - rewardsGenerated = u
  'accuracies', // 1 if rewardsReal > rewardsGenerated (ties count as misses, as TRL logs it)
  'dReal', // d(mean loss) / dS(theta, y)
  'dGenerated', // d(mean loss) / dS(theta, y')
] as const;
export type SpinLossRow = (typeof SPIN_LOSS_ROWS)[number];

export interface SpinLossOpts {
  beta: number;
  lossType: SpinLossType;
  /** f32 [B]: 1 = the pair counts, 0 = it does not. */
  pairMask?: Tensor<'f32'>;
  /** Weight of the NLL term on the real answer (default 0: the official SPIN loss). */
  nllAlpha?: number;
  /** f32 [B]: answer tokens (incl. EOS) of each real answer; required when nllAlpha > 0. */
  realTokens?: Tensor<'f32'>;
}

export interface MatmulOpts {
  transA?: boolean;
  transB?: boolean;
  alpha?: number;
  /** Write here instead of a new tensor; with `accumulate`, add to it. */
  out?: Tensor<'f32'>;
  accumulate?: boolean;
}

export interface RopeOpts {
  theta: number;
  /** Linear rope_scaling factor (1 = none). */
  scale?: number;
  inverse?: boolean;
}

/** The tensors of one parameter an optimizer step reads and writes. */
export interface OptimTensors {
  /** What the model computes with: f32, or bf16 (then `master` is required). */
  param: Tensor;
  /** f32 master weights of a bf16 parameter. */
  master?: Tensor<'f32'>;
  /** f32 gradient, same shape. */
  grad: Tensor<'f32'>;
}
export interface RmspropHyper {
  lr: number;
  alpha: number;
  eps: number;
  weightDecay: number;
}
export interface AdamwHyper {
  lr: number;
  beta1: number;
  beta2: number;
  eps: number;
  weightDecay: number;
  step: number;
}

export interface Backend {
  /** 'cpu', 'webgpu', 'cuda'. */
  readonly name: string;

  // ---- memory -------------------------------------------------------------------------------
  /** A new tensor with unspecified contents. */
  empty<D extends DType>(dtype: D, shape: readonly number[]): Tensor<D>;
  /** Copies host data into a new tensor of the given shape. */
  upload<D extends DType>(host: HostData<D>, shape: readonly number[]): Tensor<D>;
  /** Copies host data into an existing tensor (same dtype and element count). */
  write<D extends DType>(t: Tensor<D>, host: HostData<D>): void;
  /** Copies a tensor to the host. The only async op. */
  read<D extends DType>(t: Tensor<D>): Promise<HostArrayOf<D>>;
  /** Releases a tensor's buffer now. Using it afterwards throws. */
  free(t: Tensor): void;
  /** Sets every element to `value` (rounded to the dtype). */
  fill(t: Tensor, value: number): void;
  /** Writes a raw bit pattern into every element (e.g. 0x7fc00000 = f32 NaN): for poisoning outputs in tests. */
  fillBits(t: Tensor, bits: number): void;
  /** A new tensor with the values converted to `dtype` (f32 <-> bf16 rounds to nearest even). */
  cast<D extends DType>(t: Tensor, dtype: D): Tensor<D>;

  // ---- the log-prob / SPIN loss family (docs/algorithm.md) ---------------------------------
  /**
   * logits [N, V] (f32 | bf16), targets i32 [N] (-100 = ignored) ->
   * logp f32 [N] = z[n, y_n] - logsumexp(z[n, :]) and lse f32 [N] (saved for the backward).
   * One online pass per row in fp32; ignored rows give logp = lse = 0. Extra memory O(N).
   */
  logprobGather(logits: Tensor, targets: Tensor<'i32'>): { logp: Tensor<'f32'>; lse: Tensor<'f32'> };

  /**
   * Backward of logprobGather: dlogits[n, v] = dlogp[n] * (1[v = y_n] - softmax(z[n, :])_v), from the
   * saved lse (no second reduction). 1 - p_y is computed as -expm1(logp_y) in fp32. Ignored rows are
   * exact zeros. `out` may be `logits` itself (in place); else a new tensor of `dtype`
   * (default: the logits' dtype) is returned.
   */
  logprobGatherBackward(
    logits: Tensor,
    targets: Tensor<'i32'>,
    lse: Tensor<'f32'>,
    dlogp: Tensor<'f32'>,
    opts?: { out?: Tensor; dtype?: 'f32' | 'bf16' },
  ): Tensor;

  /**
   * Per-sequence sums of token log-probs: out[s] = sum of logp[n] with segments[n] = s
   * (segments[n] = -1: the token belongs to no sequence, e.g. prompt or padding). Fixed order,
   * so the same inputs always give bit-identical sums.
   */
  sequenceLogprob(logp: Tensor<'f32'>, segments: Tensor<'i32'>, numSeqs: number): Tensor<'f32'>;
  /** Backward: dlogp[n] = dseq[segments[n]], 0 where segments[n] = -1. */
  sequenceLogprobBackward(dseq: Tensor<'f32'>, segments: Tensor<'i32'>): Tensor<'f32'>;

  /**
   * The SPIN loss of B pairs from summed log-probs (each f32 [B]) -> f32 [7, B], rows as in
   * SPIN_LOSS_ROWS, with the gradients of the mean loss in the last two rows. `pairMask` f32 [B]
   * (1 = counted, 0 = not: a pair with no answer tokens, or dropped because its generated answer
   * equals the real one) gives uncounted pairs all-zero rows; the mean is over counted pairs and a
   * batch with none has zero loss and zero gradients. `nllAlpha` > 0 adds alpha x the mean token NLL
   * of the real answer (-S(theta, y) / realTokens[i]) to each pair's loss (iterative RPO's term).
   */
  spinLoss(
    policyReal: Tensor<'f32'>,
    policyGenerated: Tensor<'f32'>,
    refReal: Tensor<'f32'>,
    refGenerated: Tensor<'f32'>,
    opts: SpinLossOpts,
  ): Tensor<'f32'>;

  // ---- optimizer ops (master weights and states f32; see native/cpu/optim_kernels.h) ------------
  /**
   * One torch.optim.RMSprop step (not centered, no momentum) on one parameter tensor. `master` is the
   * f32 copy a bf16 parameter needs (omit it for an f32 parameter: it is its own master). The gradient
   * is multiplied by gradScale[0] first (gradient clipping without a host round trip).
   */
  rmspropStep(p: OptimTensors & { squareAvg: Tensor<'f32'> }, h: RmspropHyper, gradScale?: Tensor<'f32'>): void;
  /** One torch.optim.AdamW step; h.step counts from 1 (bias correction). */
  adamwStep(p: OptimTensors & { expAvg: Tensor<'f32'>; expAvgSq: Tensor<'f32'> }, h: AdamwHyper, gradScale?: Tensor<'f32'>): void;
  /** out[index] = sum of x^2, accumulated in double in a fixed order (same for any thread count). */
  sumSquares(x: Tensor<'f32'>, out: Tensor<'f32'>, index: number): void;
  /** From per-tensor sums of squares [k]: f32 [2] = [total norm, min(1, maxNorm / (norm + 1e-6))] (torch's clip_grad_norm_). */
  clipCoefficient(sumsq: Tensor<'f32'>, maxNorm: number): Tensor<'f32'>;
  /** x *= a, in place. */
  scaleInPlace(x: Tensor<'f32'>, a: number): void;

  // ---- model ops (fp32 compute; weights f32 or bf16; see native/cpu/model_kernels.h) --------------
  /**
   * [M, N] = alpha op(a) op(b) (+ out when accumulate). a f32 2-D; b f32 or bf16 2-D; op = transpose
   * when transA / transB. Linear layers: y = x W^T is matmul(x, W, { transB: true }).
   */
  matmul(a: Tensor<'f32'>, b: Tensor, opts?: MatmulOpts): Tensor<'f32'>;
  /** Rows of a table: ids i32 [T], table [V, H] -> f32 [T, H]. */
  embedding(ids: Tensor<'i32'>, table: Tensor): Tensor<'f32'>;
  /** dtable[ids[t]] += dout[t], tokens in order. */
  embeddingBackward(ids: Tensor<'i32'>, dout: Tensor<'f32'>, dtable: Tensor<'f32'>): void;
  /** RMSNorm of rows: x [T, H], w [H] -> y [T, H] and rstd [T] (saved for the backward). */
  rmsnorm(x: Tensor<'f32'>, w: Tensor, eps: number): { y: Tensor<'f32'>; rstd: Tensor<'f32'> };
  /** Returns dx; adds the weight gradient into dw when given. */
  rmsnormBackward(x: Tensor<'f32'>, w: Tensor, rstd: Tensor<'f32'>, dy: Tensor<'f32'>, dw?: Tensor<'f32'>): Tensor<'f32'>;
  /** Rotary embedding in place on x [T, heads, hd] at positions [T] (HF rotate_half; inverse: the backward). */
  rope(x: Tensor<'f32'>, positions: Tensor<'i32'>, opts: RopeOpts): void;
  /** Causal GQA: q [B, L, nH, hd], k/v [B, L, nKV, hd], keyMask i32 [B, L] -> out [B, L, nH, hd], lse [B, nH, L]. */
  attention(q: Tensor<'f32'>, k: Tensor<'f32'>, v: Tensor<'f32'>, keyMask: Tensor<'i32'>, opts?: { scale?: number }): { out: Tensor<'f32'>; lse: Tensor<'f32'> };
  attentionBackward(
    q: Tensor<'f32'>, k: Tensor<'f32'>, v: Tensor<'f32'>, keyMask: Tensor<'i32'>, out: Tensor<'f32'>, lse: Tensor<'f32'>, dout: Tensor<'f32'>,
    opts?: { scale?: number },
  ): { dq: Tensor<'f32'>; dk: Tensor<'f32'>; dv: Tensor<'f32'> };
  /** One query per sequence against a KV cache: q [B, nH, hd], caches [B, nKV, Lmax, hd], lengths i32 [B], keyMask i32 [B, Lmax]. */
  attentionDecode(
    q: Tensor<'f32'>, kCache: Tensor<'f32'>, vCache: Tensor<'f32'>, lengths: Tensor<'i32'>, keyMask?: Tensor<'i32'>,
    opts?: { scale?: number },
  ): Tensor<'f32'>;
  /** dst[index[r], :] = src[r, :] (src [R, C], dst [*, C]). */
  scatterRows(src: Tensor<'f32'>, index: Tensor<'i32'>, dst: Tensor<'f32'>): void;
  /** silu(gate) * up. */
  swiglu(gate: Tensor<'f32'>, up: Tensor<'f32'>): Tensor<'f32'>;
  swigluBackward(gate: Tensor<'f32'>, up: Tensor<'f32'>, dout: Tensor<'f32'>): { dgate: Tensor<'f32'>; dup: Tensor<'f32'> };
  /** a + b; `out` may be a or b (in place). */
  add(a: Tensor<'f32'>, b: Tensor<'f32'>, out?: Tensor<'f32'>): Tensor<'f32'>;
  /** x [T, N] += bias [N], in place. */
  addBias(x: Tensor<'f32'>, bias: Tensor): void;
  /** dbias [N] += column sums of dy [T, N]. */
  biasBackward(dy: Tensor<'f32'>, dbias: Tensor<'f32'>): void;
}
