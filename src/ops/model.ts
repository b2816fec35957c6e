// The model ops (fp32 compute; weights f32 or bf16): argument checks, then the backend's kernel.
// Shapes: T tokens, H hidden, B sequences of length L, nH query heads, nKV key-value heads, hd head dim.
import type {
  AttentionOpts,
  Backend,
  ComputeDtype,
  GluActivation,
  GluOpts,
  MatmulOpts,
  RmsNormOpts,
  RopeOpts,
} from '../backend/backend.js';
import type { Tensor } from '../tensor/tensor.js';
import { checkFinite, expectArg, expectRank, expectRows, expectShape, expectTensor } from './check.js';
import { matmulNeedsShim, matmulOnRoundedOperands } from './bf16_shim.js';

/**
 * [M, N] = alpha op(a) op(b) (+ out when accumulate). a f32 2-D; b f32 or bf16 2-D; op = transpose
 * when transA / transB. Linear layers: y = x W^T is matmul(x, W, { transB: true }); with rowInvariant
 * each row of y depends on its row of x only (generation: docs/ops.md "Row-invariant matmul").
 */
export function matmul(a: Tensor<'f32'> | Tensor<'bf16'>, b: Tensor, opts: MatmulOpts = {}): Tensor<'f32'> {
  const be = expectTensor(a, 'a');
  // a bf16 `a` only with computeDtype 'bf16' (mixed-precision training's saved bf16 inputs)
  expectArg(be, a, 'a', opts.computeDtype === 'bf16' ? ['f32', 'bf16'] : ['f32']);
  expectArg(be, b, 'b', ['f32', 'bf16']);
  expectRank(a, 2, 'a');
  expectRank(b, 2, 'b');
  const [ar, ac] = a.shape;
  const [br, bc] = b.shape;
  const [m, ka] = opts.transA ? [ac, ar] : [ar, ac];
  const [kb, n] = opts.transB ? [bc, br] : [br, bc];
  if (ka !== kb) throw new RangeError(`matmul: inner dimensions differ: op(a) is [${m}, ${ka}], op(b) is [${kb}, ${n}]`);
  if (opts.out) expectArg(be, opts.out, 'out', ['f32'], [m, n]);
  else if (opts.accumulate) throw new TypeError('matmul: accumulate needs an out tensor');
  checkFinite(opts.alpha ?? 1, 'alpha');
  if (opts.rowInvariant && (opts.transA || !opts.transB))
    throw new TypeError('matmul: rowInvariant is for linear layers: transB without transA');
  // TEMPORARY (autocast branch; lt-gemm's checkCompute replaces this): every form with computeDtype 'bf16'
  if (matmulNeedsShim(a, b, opts)) return matmulOnRoundedOperands(be, a, b, opts);
  checkCompute(opts.computeDtype, 'matmul', [b], !!opts.transA || !opts.transB);
  return be.matmul(a as Tensor<'f32'>, b, opts);
}

// computeDtype: 'f32' or 'bf16'; 'bf16' needs the linear layer form and bf16 weights.
function checkCompute(c: ComputeDtype | undefined, op: string, weights: readonly Tensor[], notLinear: boolean): void {
  if (c === undefined || c === 'f32') return;
  if (c !== 'bf16') throw new TypeError(`${op}: computeDtype must be 'f32' or 'bf16', got ${String(c)}`);
  if (notLinear) throw new TypeError(`${op}: computeDtype 'bf16' is for linear layers: transB without transA`);
  const f = weights.findIndex((w) => w.dtype !== 'bf16');
  if (f >= 0) throw new TypeError(`${op}: computeDtype 'bf16' needs bf16 weights, got ${weights[f].dtype} (a model stored in bf16)`);
}

/**
 * Several linear layers on one input, as one op: y_i = x W_i^T for x f32 [T, K] and each W_i f32 or
 * bf16 [N_i, K] -> f32 [T, N_i]. Each y_i equals matmul(x, W_i, { transB: true, rowInvariant }) bit for
 * bit (and with computeDtype, matmul's); the CPU runs the row-invariant case as one kernel over every
 * weight (the fused q/k/v and gate/up projections of generation: docs/ops.md "Row-invariant matmul").
 */
export function linears(
  x: Tensor<'f32'>,
  weights: readonly Tensor[],
  opts: { rowInvariant?: boolean; computeDtype?: ComputeDtype } = {},
): Tensor<'f32'>[] {
  const be = expectTensor(x, 'x');
  expectArg(be, x, 'x', ['f32']);
  expectRank(x, 2, 'x');
  if (weights.length === 0 || weights.length > 16) throw new RangeError(`linears takes 1 to 16 weights, got ${weights.length}`);
  weights.forEach((w, i) => {
    expectArg(be, w, `weights[${i}]`, ['f32', 'bf16']);
    expectRank(w, 2, `weights[${i}]`);
    if (w.shape[1] !== x.shape[1])
      throw new RangeError(`linears: weights[${i}] is [${w.shape.join(', ')}], its rows need the ${x.shape[1]} values of a row of x`);
  });
  // TEMPORARY (autocast branch, as in matmul): f32 weights with computeDtype 'bf16'
  if (opts.computeDtype === 'bf16' && weights.some((w) => w.dtype !== 'bf16'))
    return weights.map((w) => matmulOnRoundedOperands(be, x, w, { transB: true, ...opts }));
  checkCompute(opts.computeDtype, 'linears', weights, false);
  return be.linears(x, weights, { rowInvariant: !!opts.rowInvariant, computeDtype: opts.computeDtype ?? 'f32' });
}

/** Rows of a table: ids i32 [T], table [V, H] -> f32 [T, H]. Ids outside [0, V) raise a device error. */
export function embedding(ids: Tensor<'i32'>, table: Tensor): Tensor<'f32'> {
  const be = expectTensor(table, 'table');
  expectArg(be, table, 'table', ['f32', 'bf16']);
  expectRank(table, 2, 'table');
  expectArg(be, ids, 'ids', ['i32']);
  return be.embedding(ids, table);
}

/** dtable[ids[t]] += dout[t], tokens in order. */
export function embeddingBackward(ids: Tensor<'i32'>, dout: Tensor<'f32'>, dtable: Tensor<'f32'>): void {
  const be = expectTensor(dtable, 'dtable');
  expectArg(be, dtable, 'dtable', ['f32']);
  expectRank(dtable, 2, 'dtable');
  expectArg(be, ids, 'ids', ['i32']);
  expectArg(be, dout, 'dout', ['f32'], [ids.numel, dtable.shape[1]]);
  be.embeddingBackward(ids, dout, dtable);
}

/** The options of rmsnorm as the backends take them (unitOffset a boolean, default false). */
function rmsnormOpts(opts: RmsNormOpts): RmsNormOpts {
  if (opts.unitOffset !== undefined && typeof opts.unitOffset !== 'boolean') throw new TypeError('rmsnorm: unitOffset must be a boolean');
  return { unitOffset: opts.unitOffset === true };
}

/**
 * RMSNorm of rows: x [T, H], w [H] -> y [T, H] and rstd [T] (kept for the backward).
 * y = x rstd w, or x rstd (1 + w) with { unitOffset: true } (Gemma's RMSNorm: w stored, 1 added in f32).
 */
export function rmsnorm(x: Tensor<'f32'>, w: Tensor, eps: number, opts: RmsNormOpts = {}): { y: Tensor<'f32'>; rstd: Tensor<'f32'> } {
  const be = expectTensor(x, 'x');
  const [, h] = expectRows(be, x, 'x');
  expectArg(be, w, 'weight', ['f32', 'bf16'], [h]);
  checkFinite(eps, 'eps');
  return be.rmsnorm(x, w, eps, rmsnormOpts(opts));
}

/** Returns dx; adds the weight gradient into dw when given. opts as rmsnorm's (the forward's). */
export function rmsnormBackward(
  x: Tensor<'f32'>,
  w: Tensor,
  rstd: Tensor<'f32'>,
  dy: Tensor<'f32'>,
  dw?: Tensor<'f32'>,
  opts: RmsNormOpts = {},
): Tensor<'f32'> {
  const be = expectTensor(x, 'x');
  const [t, h] = expectRows(be, x, 'x');
  expectArg(be, w, 'weight', ['f32', 'bf16'], [h]);
  expectArg(be, rstd, 'rstd', ['f32'], [t]);
  expectArg(be, dy, 'dy', ['f32'], x.shape);
  if (dw) expectArg(be, dw, 'dw', ['f32'], [h]);
  return be.rmsnormBackward(x, w, rstd, dy, dw, rmsnormOpts(opts));
}

/**
 * Rotary embedding in place on x [T, heads, hd] at positions i32 [T] (HF rotate_half; inverse: the
 * transpose, i.e. the backward): with the inverse-frequency table of any rope type (src/model/rope.ts
 * ropeTable, which computes it from a config's rope settings) and its attention scale. hd <= 512.
 */
export function rope(x: Tensor<'f32'>, positions: Tensor<'i32'>, opts: RopeOpts): void {
  const be = expectTensor(x, 'x');
  expectArg(be, x, 'x', ['f32']);
  expectRank(x, 3, 'x');
  const hd = x.shape[2];
  if (hd % 2 !== 0) throw new RangeError(`rope needs an even head dimension, got x [${x.shape.join(', ')}]`);
  if (hd > 512) throw new RangeError(`rope supports head dimensions up to 512, got x [${x.shape.join(', ')}]`);
  expectArg(be, positions, 'positions', ['i32'], [x.shape[0]]);
  if (!(opts.invFreq instanceof Float32Array) || opts.invFreq.length !== hd / 2)
    throw new RangeError(`rope invFreq must be a Float32Array of ${hd / 2} values (head dim / 2)`);
  for (const v of opts.invFreq) checkFinite(v, 'rope invFreq');
  checkFinite(opts.attentionScale ?? 1, 'rope attentionScale');
  be.rope(x, positions, opts);
}

function attnDims(q: Tensor, k: Tensor, v: Tensor, keyMask: Tensor) {
  const be = expectTensor(q, 'q');
  for (const [t, what] of [
    [q, 'q'],
    [k, 'k'],
    [v, 'v'],
  ] as const) {
    expectArg(be, t, what, ['f32']);
    expectRank(t, 4, what);
  }
  const [b, l, nh, hd] = q.shape;
  const nkv = k.shape[2];
  expectShape(k, [b, l, nkv, hd], 'k');
  expectShape(v, [b, l, nkv, hd], 'v');
  if (nkv < 1 || nh % nkv !== 0) throw new RangeError(`attention: ${nh} query heads are not a multiple of ${nkv} key-value heads`);
  expectArg(be, keyMask, 'keyMask', ['i32'], [b, l]);
  return { be, b, l, nh, nkv, hd };
}

/** The spans of the pair / packing layout (AttentionOpts.spans): i32 [B, L, 3] on q's backend. Values are checked by the kernels. */
function checkSpans(d: { be: Backend; b: number; l: number }, opts: AttentionOpts): void {
  if (opts.spans !== undefined) expectArg(d.be, opts.spans, 'spans', ['i32'], [d.b, d.l, 3]);
}

function checkScale(opts: AttentionOpts): void {
  if (opts.scale !== undefined) checkFinite(opts.scale, 'attention scale');
  const w = opts.window;
  if (w !== undefined && !(Number.isSafeInteger(w) && w >= 0 && w <= 0x7fffffff))
    throw new RangeError(`attention window must be 0 (none) or a positive integer, got ${w}`);
  if (opts.computeDtype !== undefined && opts.computeDtype !== 'f32' && opts.computeDtype !== 'bf16')
    throw new TypeError(`attention computeDtype must be 'f32' or 'bf16', got ${String(opts.computeDtype)}`);
  const c = opts.softcap;
  // the kernels take it as an f32: positive and finite there too (not rounded to 0 or to Infinity)
  if (c !== undefined && c !== 0 && !(c > 0 && Math.fround(c) > 0 && Number.isFinite(Math.fround(c))))
    throw new RangeError(`attention softcap must be 0 (none) or a finite positive number (as an f32), got ${c}`);
}

/**
 * Causal GQA: q [B, L, nH, hd], k/v [B, L, nKV, hd], keyMask i32 [B, L] (0 = padding) -> out [B, L, nH, hd],
 * lse [B, nH, L]. opts.window > 0: query i sees key j only when i - j < window (AttentionOpts.window);
 * opts.softcap > 0: scores capped to softcap * tanh(s / softcap) before the mask (AttentionOpts.softcap).
 * opts.spans: the pair / packing layout, each query's visible key range (AttentionOpts.spans).
 */
export function attention(q: Tensor<'f32'>, k: Tensor<'f32'>, v: Tensor<'f32'>, keyMask: Tensor<'i32'>, opts: AttentionOpts = {}) {
  const d = attnDims(q, k, v, keyMask);
  checkScale(opts);
  checkSpans(d, opts);
  return d.be.attention(q, k, v, keyMask, opts);
}

export function attentionBackward(...[q, k, v, keyMask, out, lse, dout, opts = {}]: Parameters<Backend['attentionBackward']>) {
  const d = attnDims(q, k, v, keyMask);
  expectArg(d.be, out, 'out', ['f32'], q.shape);
  expectArg(d.be, dout, 'dout', ['f32'], q.shape);
  expectArg(d.be, lse, 'lse', ['f32'], [d.b, d.nh, d.l]);
  checkScale(opts);
  checkSpans(d, opts);
  return d.be.attentionBackward(q, k, v, keyMask, out, lse, dout, opts);
}

/**
 * One query per sequence against a KV cache: q [B, nH, hd], caches [B, nKV, Lmax, hd] (both f32 or both
 * bf16: a bf16 cache is widened as it is read, the math is f32), lengths i32 [B]
 * (positions [0, lengths[b]) are attended; a length outside [0, Lmax] raises a device error), keyMask
 * i32 [B, Lmax] optional (0 = skip that position). opts.window > 0: only the last `window` of the
 * lengths[b] positions (the query is position lengths[b] - 1).
 */
export function attentionDecode(
  ...[q, kCache, vCache, lengths, keyMask, opts = {}]: Parameters<Backend['attentionDecode']>
): Tensor<'f32'> {
  const be = expectTensor(q, 'q');
  expectArg(be, q, 'q', ['f32']);
  expectRank(q, 3, 'q');
  const [b, nh, hd] = q.shape;
  expectArg(be, kCache, 'kCache', ['f32', 'bf16']);
  expectRank(kCache, 4, 'kCache');
  const [cb, nkv, lmax, chd] = kCache.shape;
  if (cb !== b || chd !== hd) throw new RangeError(`kCache ${kCache} does not match q ${q}`);
  if (nkv < 1 || nh % nkv !== 0) throw new RangeError(`attentionDecode: ${nh} query heads are not a multiple of ${nkv} key-value heads`);
  expectArg(be, vCache, 'vCache', [kCache.dtype], kCache.shape);
  expectArg(be, lengths, 'lengths', ['i32'], [b]);
  if (keyMask) expectArg(be, keyMask, 'keyMask', ['i32'], [b, lmax]);
  checkScale(opts);
  if (opts.spans !== undefined)
    throw new TypeError('attentionDecode takes no spans: a decode query sees its cache (lengths, keyMask, window)');
  return be.attentionDecode(q, kCache, vCache, lengths, keyMask, opts);
}

/**
 * dst[index[r], :] = src[r, :] (src f32 [R, C], dst f32 or bf16 [*, C]: a bf16 KV cache, values rounded
 * to nearest even as cast rounds them); an index outside dst raises a device error.
 */
export function scatterRows(src: Tensor<'f32'>, index: Tensor<'i32'>, dst: Tensor): void {
  const be = expectTensor(src, 'src');
  const [rows, cols] = expectRows(be, src, 'src');
  expectArg(be, dst, 'dst', ['f32', 'bf16']);
  expectRank(dst, 2, 'dst');
  const dstCols = dst.shape[1];
  if (dstCols !== cols) throw new RangeError(`scatterRows: src rows have ${cols} values, dst rows ${dstCols}`);
  expectArg(be, index, 'index', ['i32'], [rows]);
  be.scatterRows(src, index, dst);
}

const GLU_ACTIVATIONS: readonly GluActivation[] = ['silu', 'gelu_tanh'];

/** The options of swiglu as the backends take them (activation checked, default 'silu'). */
function gluOpts(opts: GluOpts): Required<GluOpts> {
  const activation = opts.activation ?? 'silu';
  if (!GLU_ACTIVATIONS.includes(activation))
    throw new TypeError(`swiglu: activation must be 'silu' or 'gelu_tanh', got ${String(activation)}`);
  return { activation };
}

/**
 * act(gate) * up (same shapes): silu (SwiGLU, the default) or, with { activation: 'gelu_tanh' }, PyTorch's
 * gelu(approximate='tanh') (GeGLU: Gemma's gelu_pytorch_tanh).
 */
export function swiglu(gate: Tensor<'f32'>, up: Tensor<'f32'>, opts: GluOpts = {}): Tensor<'f32'> {
  const be = expectTensor(gate, 'gate');
  expectArg(be, gate, 'gate', ['f32']);
  expectArg(be, up, 'up', ['f32'], gate.shape);
  return be.swiglu(gate, up, gluOpts(opts));
}

/** dgate and dup of swiglu for dout; opts as the forward's. */
export function swigluBackward(
  gate: Tensor<'f32'>,
  up: Tensor<'f32'>,
  dout: Tensor<'f32'>,
  opts: GluOpts = {},
): { dgate: Tensor<'f32'>; dup: Tensor<'f32'> } {
  const be = expectTensor(gate, 'gate');
  expectArg(be, gate, 'gate', ['f32']);
  expectArg(be, up, 'up', ['f32'], gate.shape);
  expectArg(be, dout, 'dout', ['f32'], gate.shape);
  return be.swigluBackward(gate, up, dout, gluOpts(opts));
}

/** a + b (same shapes); `out` may be a or b (in place). */
export function add(a: Tensor<'f32'>, b: Tensor<'f32'>, out?: Tensor<'f32'>): Tensor<'f32'> {
  const be = expectTensor(a, 'a');
  expectArg(be, a, 'a', ['f32']);
  expectArg(be, b, 'b', ['f32'], a.shape);
  if (out) expectArg(be, out, 'out', ['f32'], a.shape);
  return be.add(a, b, out);
}

/** x [T, N] += bias [N], in place. */
export function addBias(x: Tensor<'f32'>, bias: Tensor): void {
  const be = expectTensor(x, 'x');
  const [, n] = expectRows(be, x, 'x');
  expectArg(be, bias, 'bias', ['f32', 'bf16'], [n]);
  be.addBias(x, bias);
}

/** dbias [N] += column sums of dy [T, N]. */
export function biasBackward(dy: Tensor<'f32'>, dbias: Tensor<'f32'>): void {
  const be = expectTensor(dy, 'dy');
  const [, n] = expectRows(be, dy, 'dy');
  expectArg(be, dbias, 'dbias', ['f32'], [n]);
  be.biasBackward(dy, dbias);
}
