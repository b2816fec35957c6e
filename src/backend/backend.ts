// The Backend interface: the kernels of one device, and nothing else. Callers never use it
// directly: they call the op layer (src/ops/), which checks shapes, dtypes, ranges and options once
// and then calls these methods with arguments that are already valid (docs/ops.md). A backend is only
// math; it may assume every precondition written here. Every method issues work synchronously and
// returns device tensors; only read() and takeErrors() are async (WebGPU maps buffers, CUDA syncs a
// stream).
import type { DType, HostArrayOf, HostData } from '../tensor/dtype.js';
import type { Tensor } from '../tensor/tensor.js';

/**
 * The losses of a pair (docs/algorithm.md), in the order of the kernels' enum (native/include/spin_math.h).
 * With r_w = S(theta, y) - S(ref, y), r_l = S(theta, y') - S(ref, y') and u = beta (r_w - r_l):
 * sigmoid softplus(-u) and hinge max(0, 1 - u) (SPIN), ipo (r_w - r_l - 1/(2 beta))^2 (IPO, Azar et al.
 * 2023) and sppo_hard (r_w - 1/(2 beta))^2 + (r_l + 1/(2 beta))^2 (SPPO with the real answer always
 * winning, Wu et al. 2024).
 */
export const SPIN_LOSS_TYPES = ['sigmoid', 'hinge', 'ipo', 'sppo_hard'] as const;
export type SpinLossType = (typeof SPIN_LOSS_TYPES)[number];

/** Rows of spinLoss's per-pair output [7, B], in order (TypeScript names; the logged names are SPIN_LOSS_MEANS). */
export const SPIN_LOSS_ROWS = [
  'loss', // the pair's loss (SPIN_LOSS_TYPES), plus the NLL term when nllAlpha > 0
  'rewardsReal', // beta * (S(theta, y) - S(ref, y))
  'rewardsGenerated', // beta * (S(theta, y') - S(ref, y'))
  'margins', // rewardsReal - rewardsGenerated = u
  'accuracies', // 1 if rewardsReal > rewardsGenerated (ties count as misses, as TRL logs it)
  'logpsReal', // S(theta, y)
  'logpsGenerated', // S(theta, y')
] as const;
export type SpinLossRow = (typeof SPIN_LOSS_ROWS)[number];

/**
 * Entries of spinLoss's `means` [8]: the seven rows averaged over the counted pairs, then the
 * fraction of pairs counted. Named as the official SPIN trainer logs them.
 */
export const SPIN_LOSS_MEANS = [
  'loss',
  'rewards/real',
  'rewards/generated',
  'rewards/margins',
  'rewards/accuracies',
  'logps/real',
  'logps/generated',
  'pairs/counted',
] as const;

/** Backend.headLogprob's options. */
export interface HeadOpts {
  /** c > 0: final-logit soft-capping z -> c tanh(z / c) (Gemma 2); 0 or absent: none. */
  softcap?: number;
  /**
   * 'bf16': h and w are rounded to bf16 before the products (f32 sums), as matmul's computeDtype; in
   * headLogprobBackward the logits' gradient g is rounded too before dh = g w and dw = g^T h.
   */
  computeDtype?: ComputeDtype;
  /**
   * Each row's logp and lse depend only on its row of h, on w and on its target, bit for bit (never on N
   * or the other rows). WebGPU and CUDA always are; the CPU then runs the row-invariant GEMM (as fast as
   * sgemm with AVX-512, ~10x slower with AVX2 only) instead of OpenBLAS, whose rows round differently
   * by their place in the call.
   */
  rowInvariant?: boolean;
}

export interface SpinLossOpts {
  /** > 0 for ipo and sppo_hard (their target is 1 / (2 beta)). */
  beta: number;
  lossType: SpinLossType;
  /** f32 [B]: 1 = the pair counts, 0 = it does not. */
  pairMask?: Tensor<'f32'>;
  /** Weight of the NLL term on the real answer (default 0: the official SPIN loss). */
  nllAlpha?: number;
  /** f32 [B]: answer tokens (incl. EOS) of each real answer; required when nllAlpha > 0. */
  answerTokens?: Tensor<'f32'>;
  /** Multiplies `dseq` (a micro-batch's share of its accumulation window; default 1). */
  gradScale?: number;
}

/** What spinLoss returns (all f32). */
export interface SpinLossOutputs {
  /** [7, B], rows as in SPIN_LOSS_ROWS (all-zero columns for uncounted pairs). */
  perPair: Tensor<'f32'>;
  /** [8], as in SPIN_LOSS_MEANS. */
  means: Tensor<'f32'>;
  /** [2B]: gradScale * d(mean loss) / dS, in the sequence layout (real answers, then generated). */
  dseq: Tensor<'f32'>;
}

/** Sampling options (src/generate/sampler.ts has the algorithm). */
export interface SampleOpts {
  /** 0 = greedy. */
  temperature: number;
  /** 0 = off. */
  topK: number;
  /** 1 = off. */
  topP: number;
}

/** What a backend says about itself (spinlm info). */
export interface BackendInfo {
  name: string;
  /** The device, e.g. "CPU (2 threads, AVX-512)" or a GPU's name. */
  device: string;
  /** Device memory in bytes where known. */
  memoryBytes?: number;
  /** Other facts worth showing (limits, features), as short strings. */
  details?: string[];
}

export interface MatmulOpts {
  transA?: boolean;
  transB?: boolean;
  alpha?: number;
  /** Write here instead of a new tensor; with `accumulate`, add to it. */
  out?: Tensor<'f32'>;
  accumulate?: boolean;
  /**
   * Each row of the result depends only on its row of a and on b, never on M, the other rows or the
   * thread count (BLAS libraries pick kernels, and so summation orders, by shape). Needs the linear
   * layer form (transB, not transA). Generation uses it so a prompt's numbers do not depend on its
   * batch (docs/ops.md "Row-invariant matmul").
   */
  rowInvariant?: boolean;
  /**
   * 'bf16': a and b are rounded to bf16 (round to nearest even; a bf16 tensor already is) and the
   * (exact) products of bf16 values are summed in f32, as a bf16 GEMM with f32 accumulation (cuBLASLt,
   * autocast), in every form (transA / transB, alpha, accumulate, out); a may then be bf16 too. Rows
   * are independent of M where rowInvariant says so (CUDA's cuBLASLt path is not otherwise). 'f32'
   * (the default): the operands as they are. docs/ops.md "bf16 compute".
   */
  computeDtype?: ComputeDtype;
}

/** The arithmetic of a linear layer: f32, or bf16 inputs with f32 sums (MatmulOpts.computeDtype). */
export type ComputeDtype = 'f32' | 'bf16';

/** Backend.linears's options: what matmul takes for a linear layer. */
export interface LinearsOpts {
  rowInvariant: boolean;
  computeDtype: ComputeDtype;
}

/** The options of attention, attentionBackward and attentionDecode (the same for all three). */
export interface AttentionOpts {
  /** Multiplies q . k before the softmax; default 1 / sqrt(headDim). Finite. */
  scale?: number;
  /**
   * Sliding window (Mistral's sliding_window): the query at position i sees the key at position j iff
   * j <= i and i - j < window (positions are indices in the sequence or the cache, as Hugging Face's
   * sliding_window_overlay; a decode query is position lengths[b] - 1). 0 or undefined: no window.
   */
  window?: number;
  /**
   * Attention-logit soft-capping (Gemma 2's attn_logit_softcapping): the score s = scale * q.k becomes
   * softcap * tanh(s / softcap) before the causal / window / key mask and the softmax (Hugging Face's
   * eager attention). 0 or undefined: none; otherwise finite and > 0.
   */
  softcap?: number;
  /**
   * The pair and packing layout (attention and attentionBackward only; docs/ops.md "Attention spans"):
   * i32 [B, L, 3], per query position i of sequence row b the triple (lo, hideLo, hideHi). Query i sees
   * key j iff lo <= j <= i, j is not in [hideLo, hideHi), keyMask[b, j] != 0 and, with a window,
   * dist(i, j) < window, where dist(i, j) = i - j - (j < hideLo ? hideHi - hideLo : 0): the distance in
   * position ids when the hidden keys are another branch (a pair's generated answer does not count the
   * real answer it skips). Valid spans: 0 <= lo <= hideLo <= hideHi <= i (hideLo = hideHi: nothing
   * hidden); a row with invalid spans gets NaN outputs and raises OP_ERRORS.attentionSpans. Results of a
   * query depend only on its visible keys' values and their offsets from lo (bit for bit: never on what
   * else is packed in the call, or where). Absent: lo = 0, nothing hidden (plain causal).
   */
  spans?: Tensor<'i32'>;
  /**
   * The products' arithmetic (attention and attentionBackward; attentionDecode is f32 whatever it says):
   * 'f32' (the default) or 'bf16', mixed precision as GPU trainers run it (FlashAttention under bf16
   * autocast; docs/numerics.md "Mixed precision"): q, k, v (and in the backward dout) are rounded to bf16
   * before their products, softmax, lse and every sum stay f32. A tensor-core kernel also rounds the
   * probabilities P (and in the backward dS) to bf16 before the products P V, dS K, dS^T Q and P^T dO.
   * A backend without a bf16 kernel rounds q, k, v (and dout) and runs its f32 kernel
   * (bf16_compute.ts). Results are within the bf16 tolerance of docs/numerics.md of float64 attention on
   * the rounded inputs; they are not bit-identical across backends.
   */
  computeDtype?: ComputeDtype;
}

/** The gated MLP's activation: act(gate) * up. */
export type GluActivation = 'silu' | 'gelu_tanh';

/** The options of swiglu and swigluBackward. */
export interface GluOpts {
  /**
   * 'silu' (SwiGLU: Llama, Qwen, Mistral; the default) or 'gelu_tanh' (GeGLU: Gemma's Hugging Face
   * gelu_pytorch_tanh, PyTorch gelu(approximate='tanh'): 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))).
   */
  activation?: GluActivation;
}

/** The options of rmsnorm and rmsnormBackward. */
export interface RmsNormOpts {
  /** Gemma's RMSNorm: the scale is 1 + w (w is what is stored), the 1 added in f32 as w is read. Default false. */
  unitOffset?: boolean;
}

/** What the backends' rope takes: the table HF computes for the rope type (src/model/rope.ts). */
export interface RopeOpts {
  /** f32 inverse frequencies [hd / 2] (host array; hd <= 512). */
  invFreq: Float32Array;
  /** Multiplies cos and sin (HF attention_scaling: yarn, longrope); default 1. Finite. */
  attentionScale?: number;
  /** The transpose (angle -> -angle, still times attentionScale): the backward. */
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

/** Bits of the device error word (native/include/op_errors.h has the same values). */
export const OP_ERRORS = {
  targets: 1 << 0,
  segments: 1 << 1,
  tokenIds: 1 << 2,
  scatterIndex: 1 << 3,
  decodeLengths: 1 << 4,
  positions: 1 << 5,
  attentionSpans: 1 << 6,
} as const;

/**
 * Kernels of one device. Preconditions (checked by src/ops before any call): every tensor belongs to
 * this backend and has the dtype and shape stated; options are finite and in range; views start at
 * multiples of VIEW_ALIGNMENT bytes. Index tensors live on the device, so their values are NOT checked
 * beforehand: a kernel that gathers or scatters by index must skip any index outside its range (never
 * touching memory outside a buffer) and raise the op's bit in the device error word (OP_ERRORS).
 */
export interface Backend {
  /** 'cpu', 'webgpu', 'cuda'. */
  readonly name: string;

  info(): BackendInfo;

  // ---- memory -------------------------------------------------------------------------------
  /** A new tensor with unspecified contents. */
  empty<D extends DType>(dtype: D, shape: readonly number[]): Tensor<D>;
  /** Copies host data into an existing tensor (same dtype and element count). */
  write<D extends DType>(t: Tensor<D>, host: HostData<D>): void;
  /** Copies a tensor to the host once the work issued before it is done. */
  read<D extends DType>(t: Tensor<D>): Promise<HostArrayOf<D>>;
  /** Returns the device error word's bits raised since the last call, and clears them. */
  takeErrors(): Promise<number>;
  /** Releases a tensor's buffer now (t owns its buffer). */
  free(t: Tensor): void;
  /**
   * Optional: gives the memory of freed buffers kept for reuse back to the system, before work that
   * allocates outside the tensors (a checkpoint write) or after a phase that will not run again.
   */
  releaseCached?(): void;
  /** Writes a raw bit pattern (16-bit for bf16, else 32-bit) into every element. */
  fillBits(t: Tensor, bits: number): void;
  /** out = t converted to out's dtype (f32 <-> bf16 rounds to nearest even; same dtype: a copy). */
  cast(t: Tensor, out: Tensor): void;

  // ---- the log-prob / SPIN loss family (docs/algorithm.md) ------------------------------------
  /**
   * logits [N, V] (f32 | bf16), targets i32 [N] (-100 = ignored) ->
   * logp f32 [N] = z[n, y_n] - logsumexp(z[n, :]) and lse f32 [N] (saved for the backward).
   * One online pass per row in fp32; ignored rows give logp = lse = 0. Extra memory O(N).
   */
  logprobGather(logits: Tensor, targets: Tensor<'i32'>): { logp: Tensor<'f32'>; lse: Tensor<'f32'> };
  /**
   * Backward of logprobGather into `out` [N, V] (f32 | bf16; may be `logits` itself when the dtypes
   * agree: in place): out[n, v] = dlogp[n] * (1[v = y_n] - softmax(z[n, :])_v), from the saved lse.
   * 1 - p_y is computed as -expm1(logp_y) in fp32. Ignored rows are exact zeros.
   */
  logprobGatherBackward(logits: Tensor, targets: Tensor<'i32'>, lse: Tensor<'f32'>, dlogp: Tensor<'f32'>, out: Tensor): void;
  /**
   * Per-sequence sums of token log-probs: out[s] = sum of logp[n] with segments[n] = s (-1: no
   * sequence). Fixed order, so the same inputs always give bit-identical sums.
   */
  sequenceLogprob(logp: Tensor<'f32'>, segments: Tensor<'i32'>, numSeqs: number): Tensor<'f32'>;
  /** Backward: dlogp[n] = dseq[segments[n]], 0 where segments[n] = -1. */
  sequenceLogprobBackward(dseq: Tensor<'f32'>, segments: Tensor<'i32'>): Tensor<'f32'>;
  /**
   * The SPIN loss of B pairs from summed log-probs policy, ref f32 [2B] (real answers 0..B-1, generated
   * B..2B-1). pairMask f32 [B] (1 = counted, 0 = not) gives uncounted pairs zero columns and zero
   * gradients; means are over counted pairs, and a batch with none has zero loss and zero gradients.
   * nllAlpha > 0 adds alpha x the mean token NLL of the real answer (-S(theta, y) / answerTokens[i]).
   */
  spinLoss(policy: Tensor<'f32'>, ref: Tensor<'f32'>, opts: SpinLossOpts): SpinLossOutputs;

  /**
   * The LM head fused with logprobGather (docs/ops.md "Fused head"): h f32 [N, H], w [V, H] (f32 | bf16),
   * targets i32 [N] (-100 = ignored) -> logp f32 [N] = z[n, y_n] - lse_n and lse f32 [N], where
   * z = h w^T (then c tanh(z / c) with opts.softcap = c > 0) is formed one vocabulary panel at a time and
   * never as [N, V]: lse is summed online over the panels in a fixed order. With opts.rowInvariant each
   * row's logp and lse depend only on its row of h, on w and on its target. Ignored rows give 0 and 0.
   * The scratch is a few panels of rows x vocabulary columns, whatever N and V (docs/ops.md).
   */
  headLogprob(h: Tensor<'f32'>, w: Tensor, targets: Tensor<'i32'>, opts: HeadOpts): { logp: Tensor<'f32'>; lse: Tensor<'f32'> };
  /**
   * Backward of headLogprob from dlogp f32 [N] and the saved lse: with g[n, v] = dlogp_n (1[v = y_n] -
   * exp(z[n, v] - lse_n)) (times 1 - tanh^2(z / c) under a softcap) recomputed panel by panel,
   * dh f32 [N, H] = g w (overwritten) and, when given, dw f32 [V, H] += g^T h (accumulated: the
   * parameter's gradient buffer). Ignored rows contribute nothing.
   */
  headLogprobBackward(
    h: Tensor<'f32'>,
    w: Tensor,
    targets: Tensor<'i32'>,
    lse: Tensor<'f32'>,
    dlogp: Tensor<'f32'>,
    dh: Tensor<'f32'>,
    dw: Tensor<'f32'> | null,
    opts: HeadOpts,
  ): void;

  // ---- optimizer ops (master weights and states f32) ------------------------------------------
  /**
   * One torch.optim.RMSprop step (not centered, no momentum). `master` is the f32 copy of a bf16
   * parameter (absent for f32). With `clip` f32 [2] (from clipCoefficient) the gradient is multiplied
   * by clip[1] first: gradient clipping without a host round trip.
   */
  rmspropStep(p: OptimTensors & { squareAvg: Tensor<'f32'> }, h: RmspropHyper, clip?: Tensor<'f32'>): void;
  /** One torch.optim.AdamW step; h.step counts from 1 (bias correction). */
  adamwStep(p: OptimTensors & { expAvg: Tensor<'f32'>; expAvgSq: Tensor<'f32'> }, h: AdamwHyper, clip?: Tensor<'f32'>): void;
  /** out[index] = sum of x^2, accumulated in double in a fixed order (same for any thread count). */
  sumSquares(x: Tensor<'f32'>, out: Tensor<'f32'>, index: number): void;
  /** From per-tensor sums of squares [k]: f32 [2] = [total norm, min(1, maxNorm / (norm + 1e-6))]. */
  clipCoefficient(sumsq: Tensor<'f32'>, maxNorm: number): Tensor<'f32'>;
  /** x *= a, in place. */
  scaleInPlace(x: Tensor<'f32'>, a: number): void;
  /**
   * x = c tanh(x / c), in place (c finite, > 0): logits soft-capped outside the fused head (Gemma 2's
   * final_logit_softcapping). Relative accuracy near 0 (c tanh(x / c) ~ x); +-Infinity -> +-c, NaN stays NaN.
   */
  softcapInPlace(x: Tensor<'f32'>, c: number): void;
  /** acc += alpha * x (same shapes), in place: metrics summed on the device. */
  accumulate(acc: Tensor<'f32'>, x: Tensor<'f32'>, alpha: number): void;

  // ---- sampling ------------------------------------------------------------------------------
  /**
   * Next token of each row of logits f32 [B, V]: rng i32 [B, 4] holds each row's xoshiro128** state
   * (src/util/rng.ts) and is advanced in place; active i32 [B] (0 = skip: id 0, state untouched).
   * Only ids < limit (1 <= limit <= V) are chosen, greedy too: a model's vocabulary padded past its
   * tokenizer's ids is never sampled.
   */
  sampleTokens(logits: Tensor<'f32'>, rng: Tensor<'i32'>, active: Tensor<'i32'>, opts: SampleOpts, limit: number): Tensor<'i32'>;

  // ---- model ops (fp32 compute; weights f32 or bf16) --------------------------------------------
  /**
   * [M, N] = alpha op(a) op(b) (+ out when accumulate). a f32 2-D (bf16 with computeDtype 'bf16'); b f32 or bf16 2-D; op = transpose
   * when transA / transB. Linear layers: y = x W^T is matmul(x, W, { transB: true }).
   */
  matmul(a: Tensor, b: Tensor, opts?: MatmulOpts): Tensor<'f32'>;
  /**
   * Several linear layers on one input: y_i = x W_i^T (x f32 [T, K], W_i f32 or bf16 [N_i, K]) ->
   * f32 [T, N_i] each, every y_i equal to matmul(x, W_i, { transB: true, ...opts }). The fused
   * q/k/v and gate/up projections: a backend may run them as one kernel (the CPU does, row-invariant).
   */
  linears(x: Tensor, weights: readonly Tensor[], opts: LinearsOpts): Tensor<'f32'>[];
  /** Rows of a table: ids i32 [T], table [V, H] -> f32 [T, H]. */
  embedding(ids: Tensor<'i32'>, table: Tensor): Tensor<'f32'>;
  /** dtable[ids[t]] += dout[t], tokens in order. */
  embeddingBackward(ids: Tensor<'i32'>, dout: Tensor<'f32'>, dtable: Tensor<'f32'>): void;
  /** RMSNorm of rows: x [T, H], w [H] -> y [T, H] and rstd [T] (saved for the backward); unitOffset: scale 1 + w. */
  rmsnorm(x: Tensor<'f32'>, w: Tensor, eps: number, opts?: RmsNormOpts): { y: Tensor<'f32'>; rstd: Tensor<'f32'> };
  /** Returns dx; adds the weight gradient into dw when given. */
  rmsnormBackward(
    x: Tensor<'f32'>,
    w: Tensor,
    rstd: Tensor<'f32'>,
    dy: Tensor<'f32'>,
    dw?: Tensor<'f32'>,
    opts?: RmsNormOpts,
  ): Tensor<'f32'>;
  /** Rotary embedding in place on x [T, heads, hd] at positions [T] (HF rotate_half; inverse: the backward). */
  rope(x: Tensor<'f32'>, positions: Tensor<'i32'>, opts: RopeOpts): void;
  /** Causal GQA: q [B, L, nH, hd], k/v [B, L, nKV, hd], keyMask i32 [B, L] -> out [B, L, nH, hd], lse [B, nH, L]. */
  attention(
    q: Tensor<'f32'>,
    k: Tensor<'f32'>,
    v: Tensor<'f32'>,
    keyMask: Tensor<'i32'>,
    opts?: AttentionOpts,
  ): { out: Tensor<'f32'>; lse: Tensor<'f32'> };
  attentionBackward(
    q: Tensor<'f32'>,
    k: Tensor<'f32'>,
    v: Tensor<'f32'>,
    keyMask: Tensor<'i32'>,
    out: Tensor<'f32'>,
    lse: Tensor<'f32'>,
    dout: Tensor<'f32'>,
    opts?: AttentionOpts,
  ): { dq: Tensor<'f32'>; dk: Tensor<'f32'>; dv: Tensor<'f32'> };
  /**
   * One query per sequence against a KV cache: q [B, nH, hd], caches [B, nKV, Lmax, hd] (both f32 or
   * both bf16, widened to f32: the math is f32 either way), lengths i32 [B], keyMask i32 [B, Lmax].
   */
  attentionDecode(
    q: Tensor<'f32'>,
    kCache: Tensor,
    vCache: Tensor,
    lengths: Tensor<'i32'>,
    keyMask?: Tensor<'i32'>,
    opts?: AttentionOpts,
  ): Tensor<'f32'>;
  /** dst[index[r], :] = src[r, :] (src f32 [R, C], dst f32 or bf16 [*, C]; bf16 rounds to nearest even, as cast does). */
  scatterRows(src: Tensor<'f32'>, index: Tensor<'i32'>, dst: Tensor): void;
  /** act(gate) * up: silu (the default) or gelu_tanh (GluOpts). */
  swiglu(gate: Tensor<'f32'>, up: Tensor<'f32'>, opts?: GluOpts): Tensor<'f32'>;
  swigluBackward(gate: Tensor<'f32'>, up: Tensor<'f32'>, dout: Tensor<'f32'>, opts?: GluOpts): { dgate: Tensor<'f32'>; dup: Tensor<'f32'> };
  /** a + b; `out` may be a or b (in place). */
  add(a: Tensor<'f32'>, b: Tensor<'f32'>, out?: Tensor<'f32'>): Tensor<'f32'>;
  /** x [T, N] += bias [N], in place. */
  addBias(x: Tensor<'f32'>, bias: Tensor): void;
  /** dbias [N] += column sums of dy [T, N]. */
  biasBackward(dy: Tensor<'f32'>, dbias: Tensor<'f32'>): void;
}
