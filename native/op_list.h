// The op list: every kernel function that both native addons export, written once. Each entry is
//   SPINLM_OP(name, method, family, "TypeScript parameters")
// name: the addon's export (and the C++ binding js::name in native/<family>_ops.cc); method: the
// Backend method (src/backend/backend.ts) that calls it; family: the binding file; the string: the
// arguments as TypeScript declares them. From this file come
//   - the exports tables of both addons (op_binding.h SetOps: the CPU addon and the CUDA addon, with
//     its emulator build, instantiate the same bindings over their own buffers and kernels),
//   - src/backend/native/op_list.ts (`node scripts/gen-op-list.mjs`; test/op_list.test.ts fails when
//     it is stale): NATIVE_OPS (names, methods, families) and NativeOps, the op members of both
//     addons' TypeScript types. `//` lines right above an entry become its doc comment there.
// No include guard: define SPINLM_OP, include this file, undefine it.

// ---- tensor_ops.cc ----
// Writes `count` copies of a 16- or 32-bit pattern (elementBytes 2 | 4).
SPINLM_OP(fill, fillBits, tensor, "t: NativeView, count: number, elementBytes: 2 | 4, pattern: number")
// f32 <-> bf16 (round to nearest even), or a copy.
SPINLM_OP(cast, cast, tensor, "src: NativeView, srcDtype: string, dst: NativeView, dstDtype: string, count: number")

// ---- loss_ops.cc ----
SPINLM_OP(logprobGather, logprobGather, loss,
          "logits: NativeView, dtype: string, n: number, v: number, targets: NativeView, logp: NativeView, lse: NativeView")
SPINLM_OP(logprobGatherBackward, logprobGatherBackward, loss,
          "logits: NativeView, dtype: string, n: number, v: number, targets: NativeView, lse: NativeView, dlogp: NativeView, "
          "dlogits: NativeView, outDtype: string")
// The LM head fused with logprobGather: logits h w^T formed a vocabulary panel at a time, never [n, v];
// softcap > 0: z -> softcap tanh(z / softcap). rowInvariant: a row's results never depend on the other
// rows (CUDA: always, but with computeBf16 only when asked). computeBf16: h and w rounded to bf16
// (the CPU: w must be bf16).
SPINLM_OP(headLogprob, headLogprob, loss,
          "h: NativeView, n: number, hdim: number, w: NativeView, wDtype: string, v: number, targets: NativeView, "
          "softcap: number, rowInvariant: boolean, computeBf16: boolean, logp: NativeView, lse: NativeView")
// dh [n, hdim] = g w (overwritten), dw [v, hdim] += g^T h when given, g recomputed panel by panel.
// computeBf16: h, w and g rounded to bf16 before their products (f32 sums).
SPINLM_OP(headLogprobBackward, headLogprobBackward, loss,
          "h: NativeView, n: number, hdim: number, w: NativeView, wDtype: string, v: number, targets: NativeView, "
          "softcap: number, lse: NativeView, dlogp: NativeView, dh: NativeView, dw: NativeView | null, computeBf16: boolean")
SPINLM_OP(sequenceLogprob, sequenceLogprob, loss,
          "logp: NativeView, segments: NativeView, n: number, numSeqs: number, out: NativeView")
SPINLM_OP(sequenceLogprobBackward, sequenceLogprobBackward, loss,
          "dseq: NativeView, segments: NativeView, n: number, numSeqs: number, dlogp: NativeView")
SPINLM_OP(spinLoss, spinLoss, loss,
          "policy: NativeView, ref: NativeView, pairMask: NativeView | null, b: number, beta: number, lossType: string, "
          "nllAlpha: number, answerTokens: NativeView | null, gradScale: number, perPair: NativeView, means: NativeView, "
          "dseq: NativeView")

// ---- optim_ops.cc ----
SPINLM_OP(rmspropStep, rmspropStep, optim,
          "param: NativeView, dtype: string, master: NativeView | null, grad: NativeView, n: number, squareAvg: NativeView, "
          "h: { lr: number; alpha: number; eps: number; weightDecay: number }, clip: NativeView | null")
SPINLM_OP(adamwStep, adamwStep, optim,
          "param: NativeView, dtype: string, master: NativeView | null, grad: NativeView, n: number, expAvg: NativeView, "
          "expAvgSq: NativeView, h: { lr: number; beta1: number; beta2: number; eps: number; weightDecay: number; step: number }, "
          "clip: NativeView | null")
SPINLM_OP(sumSquares, sumSquares, optim, "x: NativeView, n: number, out: NativeView, index: number")
SPINLM_OP(clipCoefficient, clipCoefficient, optim, "sumsq: NativeView, count: number, maxNorm: number, out: NativeView")
SPINLM_OP(scaleInPlace, scaleInPlace, optim, "y: NativeView, n: number, a: number")
// y <- c tanh(y / c) in place (f32; c finite > 0): Gemma 2's final-logit soft-cap outside the fused head.
SPINLM_OP(softcapInPlace, softcapInPlace, optim, "y: NativeView, n: number, c: number")
SPINLM_OP(accumulate, accumulate, optim, "acc: NativeView, x: NativeView, n: number, alpha: number")

// ---- sample_ops.cc ----
// Only ids < limit (1 <= limit <= v) are chosen, greedy too.
SPINLM_OP(sampleTokens, sampleTokens, sample,
          "logits: NativeView, b: number, v: number, limit: number, rng: NativeView, active: NativeView, "
          "temperature: number, topK: number, topP: number, out: NativeView")

// ---- model_ops.cc ----
// computeBf16: a and b rounded to bf16, exact bf16 products summed in f32 (CUDA: every form, a and b
// f32 or bf16; the CPU: the linear layer form, a f32, b bf16). aDtype: 'bf16' only with computeBf16.
SPINLM_OP(matmul, matmul, model,
          "transA: boolean, transB: boolean, m: number, n: number, k: number, alpha: number, a: NativeView, lda: number, "
          "b: NativeView, bDtype: string, ldb: number, beta: number, c: NativeView, ldc: number, rowInvariant: boolean, "
          "computeBf16: boolean, aDtype: string")
// outs[i] [m, ns[i]] = a [m, k] bs[i] [ns[i], k]^T, row-invariant; every b and out contiguous.
SPINLM_OP(matmulRowsMany, linears, model,
          "m: number, k: number, a: NativeView, lda: number, bs: NativeView[], bDtypes: string[], ns: number[], "
          "outs: NativeView[], computeBf16: boolean")
SPINLM_OP(embedding, embedding, model,
          "ids: NativeView, t: number, table: NativeView, dtype: string, vocab: number, hidden: number, out: NativeView")
SPINLM_OP(embeddingBackward, embeddingBackward, model,
          "ids: NativeView, t: number, dout: NativeView, vocab: number, hidden: number, dtable: NativeView")
// unitOffset (Gemma): the scale is 1 + w, the 1 added in f32 as w is read.
SPINLM_OP(rmsnorm, rmsnorm, model,
          "x: NativeView, w: NativeView, wDtype: string, t: number, h: number, eps: number, y: NativeView, rstd: NativeView, "
          "unitOffset: boolean")
SPINLM_OP(rmsnormBackward, rmsnormBackward, model,
          "x: NativeView, w: NativeView, wDtype: string, rstd: NativeView, dy: NativeView, t: number, h: number, dx: NativeView, "
          "dw: NativeView | null, unitOffset: boolean")
SPINLM_OP(rope, rope, model,
          "x: NativeView, positions: NativeView, invFreq: Float32Array, t: number, heads: number, hd: number, "
          "attnScale: number, inverse: boolean")
SPINLM_OP(attention, attention, model,
          "q: NativeView, k: NativeView, v: NativeView, keyMask: NativeView, spans: NativeView | null, b: number, l: number, "
          "nh: number, nkv: number, hd: number, scale: number, window: number, softcap: number, out: NativeView, lse: NativeView, "
          "bf16: boolean")
SPINLM_OP(attentionBackward, attentionBackward, model,
          "q: NativeView, k: NativeView, v: NativeView, keyMask: NativeView, spans: NativeView | null, out: NativeView, "
          "lse: NativeView, dout: NativeView, b: number, l: number, nh: number, nkv: number, hd: number, scale: number, window: number, softcap: number, dq: NativeView, "
          "dk: NativeView, dv: NativeView, bf16: boolean")
SPINLM_OP(attentionDecode, attentionDecode, model,
          "q: NativeView, kCache: NativeView, vCache: NativeView, cacheDtype: string, lengths: NativeView, "
          "keyMask: NativeView | null, b: number, lmax: number, nh: number, nkv: number, hd: number, scale: number, window: number, "
          "softcap: number, out: NativeView")
SPINLM_OP(scatterRows, scatterRows, model,
          "src: NativeView, index: NativeView, rows: number, cols: number, dst: NativeView, dstDtype: string, dstRows: number")
// activation(gate) * up: 'silu' (SwiGLU) or 'gelu_tanh' (GeGLU: PyTorch gelu(approximate='tanh'), Gemma).
SPINLM_OP(swiglu, swiglu, model, "gate: NativeView, up: NativeView, n: number, out: NativeView, activation: 'silu' | 'gelu_tanh'")
SPINLM_OP(swigluBackward, swigluBackward, model,
          "gate: NativeView, up: NativeView, dout: NativeView, n: number, dgate: NativeView, dup: NativeView, "
          "activation: 'silu' | 'gelu_tanh'")
SPINLM_OP(add, add, model, "a: NativeView, b: NativeView, n: number, y: NativeView")
SPINLM_OP(addBias, addBias, model, "x: NativeView, bias: NativeView, biasDtype: string, t: number, n: number")
SPINLM_OP(biasBackward, biasBackward, model, "dy: NativeView, t: number, n: number, dbias: NativeView")
