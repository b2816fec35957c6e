// Float64 references of the model ops (written from the formulas; no code shared with the kernels).
// Arrays are flat row-major; shapes are passed alongside.

/**
 * fmaf(a, b, c) for float32 a, b, c: a * b + c rounded once to float32 (to nearest even). a * b is exact
 * in float64; p + c rounds to float64 once, and TwoSum gives that rounding's error e exactly, so the
 * exact sum is s + e. Rounding s to float32 is right unless s sits exactly halfway between two float32
 * (x = s + e cannot reach past a float32 boundary otherwise: every float32 midpoint is a float64), and
 * then e decides the side.
 */
export function fmaf(a: number, b: number, c: number): number {
  const p = a * b;
  const s = p + c;
  const t = s - p;
  const e = p - (s - t) + (c - t);
  const r = Math.fround(s);
  if (e === 0 || r === s) return r;
  const other = 2 * s - r; // the float32 on s's other side, if s is their midpoint
  if (Math.fround(other) !== other || other - s !== s - r) return r;
  return e > 0 === other > r ? other : r;
}

/**
 * C = A B^T in float32 with each element summed as the CPU's row-invariant GEMM documents it
 * (docs/ops.md, "Row-invariant matmul"): s = 0, then s = fmaf(a[i][p], b[j][p], s) for p = 0 .. K-1.
 */
export function matmulFmaChainRef(a: ArrayLike<number>, b: ArrayLike<number>, m: number, n: number, k: number): Float32Array {
  const c = new Float32Array(m * n);
  for (let i = 0; i < m; i++)
    for (let j = 0; j < n; j++) {
      let s = 0;
      for (let p = 0; p < k; p++) s = fmaf(a[i * k + p], b[j * k + p], s);
      c[i * n + j] = s;
    }
  return c;
}

export function matmulRef(
  a: ArrayLike<number>,
  b: ArrayLike<number>,
  m: number,
  n: number,
  k: number,
  transA: boolean,
  transB: boolean,
): Float64Array {
  const c = new Float64Array(m * n);
  for (let i = 0; i < m; i++)
    for (let j = 0; j < n; j++) {
      let s = 0;
      for (let p = 0; p < k; p++) s += (transA ? a[p * m + i] : a[i * k + p]) * (transB ? b[j * k + p] : b[p * n + j]);
      c[i * n + j] = s;
    }
  return c;
}

export function rmsnormRef(x: ArrayLike<number>, w: ArrayLike<number>, t: number, h: number, eps: number) {
  const y = new Float64Array(t * h);
  const rstd = new Float64Array(t);
  for (let r = 0; r < t; r++) {
    let ss = 0;
    for (let j = 0; j < h; j++) ss += x[r * h + j] ** 2;
    rstd[r] = 1 / Math.sqrt(ss / h + eps);
    for (let j = 0; j < h; j++) y[r * h + j] = x[r * h + j] * rstd[r] * w[j];
  }
  return { y, rstd };
}

/** d/dx and d/dw of sum(y * dy) for y = rmsnorm(x) * w. */
export function rmsnormBackwardRef(x: ArrayLike<number>, w: ArrayLike<number>, dy: ArrayLike<number>, t: number, h: number, eps: number) {
  const { rstd } = rmsnormRef(x, w, t, h, eps);
  const dx = new Float64Array(t * h);
  const dw = new Float64Array(h);
  for (let r = 0; r < t; r++) {
    const s = rstd[r];
    let dot = 0;
    for (let j = 0; j < h; j++) dot += w[j] * dy[r * h + j] * x[r * h + j];
    for (let j = 0; j < h; j++) {
      dx[r * h + j] = s * w[j] * dy[r * h + j] - (x[r * h + j] * s ** 3 * dot) / h;
      dw[j] += dy[r * h + j] * x[r * h + j] * s;
    }
  }
  return { dx, dw };
}

/** HF rotate_half RoPE; the angle is formed in fp32 exactly as HF does (pos * inv_freq, both fp32). */
export function ropeRef(
  x: ArrayLike<number>,
  pos: ArrayLike<number>,
  t: number,
  heads: number,
  hd: number,
  theta: number,
  scale = 1,
  inverse = false,
) {
  const inv = Float32Array.from({ length: hd / 2 }, (_, i) => {
    const v = Math.fround(1 / Math.fround(Math.fround(theta) ** Math.fround((2 * i) / hd)));
    return scale !== 1 ? Math.fround(v / scale) : v;
  });
  return ropeTableRef(x, pos, t, heads, hd, inv, 1, inverse);
}

/**
 * RoPE with a given fp32 inv_freq table [hd / 2] (any rope type): angle = fp32(pos * inv_freq), then
 * cos and sin in float64 times the attention scaling (HF attention_scaling); inverse = the transpose.
 */
export function ropeTableRef(
  x: ArrayLike<number>,
  pos: ArrayLike<number>,
  t: number,
  heads: number,
  hd: number,
  invFreq: ArrayLike<number>,
  attn = 1,
  inverse = false,
) {
  const half = hd / 2;
  const out = Float64Array.from(x as ArrayLike<number>);
  for (let r = 0; r < t; r++)
    for (let i = 0; i < half; i++) {
      const angle = Math.fround(pos[r] * invFreq[i]);
      const c = attn * Math.cos(angle),
        s = attn * (inverse ? -Math.sin(angle) : Math.sin(angle));
      for (let h = 0; h < heads; h++) {
        const o = (r * heads + h) * hd;
        const a = x[o + i],
          b = x[o + half + i];
        out[o + i] = a * c - b * s;
        out[o + half + i] = b * c + a * s;
      }
    }
  return out;
}

/** Rope scaling parameters as config.json spells them (rope_scaling / rope_parameters). */
export type RopeScalingJson = Record<string, unknown> & { rope_type?: string; type?: string };

/**
 * Float64 inv_freq [hd / 2] and attention scaling of each rope type, from the equations of transformers'
 * modeling_rope_utils.py (default, linear, dynamic, llama3, yarn, longrope with short_factor), with no fp32
 * rounding: the kernels' fp32 tables agree to ~1e-7 relative.
 */
export function ropeInvFreqRef(
  theta: number,
  hd: number,
  s: RopeScalingJson | null,
  maxPositionEmbeddings: number,
): { invFreq: Float64Array; attn: number } {
  const half = hd / 2;
  const base = Float64Array.from({ length: half }, (_, i) => theta ** ((2 * i) / hd)); // theta^(2i/d)
  const inv = base.map((b) => 1 / b);
  const type = s?.rope_type ?? s?.type ?? 'default';
  const num = (k: string) => s?.[k] as number;
  const orig = (num('original_max_position_embeddings') as number | undefined) ?? maxPositionEmbeddings;
  if (type === 'default' || type === 'dynamic') return { invFreq: inv, attn: 1 };
  if (type === 'linear') return { invFreq: inv.map((v) => v / num('factor')), attn: 1 };
  if (type === 'llama3') {
    const factor = num('factor'),
      lo = num('low_freq_factor'),
      hi = num('high_freq_factor');
    return {
      invFreq: inv.map((v) => {
        const wavelen = (2 * Math.PI) / v;
        if (wavelen < orig / hi) return v; // high frequency: kept
        if (wavelen > orig / lo) return v / factor; // low frequency: interpolated
        const smooth = (orig / wavelen - lo) / (hi - lo);
        return (1 - smooth) * (v / factor) + smooth * v;
      }),
      attn: 1,
    };
  }
  if (type === 'yarn') {
    const factor = num('factor') ?? maxPositionEmbeddings / orig;
    const mscale = (sc: number, m = 1) => (sc <= 1 ? 1 : 0.1 * m * Math.log(sc) + 1);
    const ms = num('mscale'),
      msa = num('mscale_all_dim');
    const attn = num('attention_factor') ?? (ms && msa ? mscale(factor, ms) / mscale(factor, msa) : mscale(factor));
    const dimOf = (rot: number) => (hd * Math.log(orig / (rot * 2 * Math.PI))) / (2 * Math.log(theta));
    const truncate = s?.truncate !== false;
    const low = Math.max(truncate ? Math.floor(dimOf(num('beta_fast') || 32)) : dimOf(num('beta_fast') || 32), 0);
    const high = Math.min(truncate ? Math.ceil(dimOf(num('beta_slow') || 1)) : dimOf(num('beta_slow') || 1), hd - 1);
    const span = high === low ? 0.001 : high - low;
    return {
      invFreq: base.map((b, i) => {
        const ramp = Math.min(Math.max((i - low) / span, 0), 1); // 0: extrapolate (keep), 1: interpolate
        return (1 / (factor * b)) * ramp + (1 / b) * (1 - ramp);
      }),
      attn,
    };
  }
  if (type === 'longrope' || type === 'su') {
    const factor = num('factor') ?? maxPositionEmbeddings / orig;
    const attn = num('attention_factor') ?? (factor <= 1 ? 1 : Math.sqrt(1 + Math.log(factor) / Math.log(orig)));
    const short = s!.short_factor as number[];
    return { invFreq: base.map((b, i) => 1 / (short[i] * b)), attn };
  }
  throw new Error(`ropeInvFreqRef: rope type ${type}`);
}

export interface AttnShape {
  b: number;
  l: number;
  nh: number;
  nkv: number;
  hd: number;
}

/**
 * Causal GQA with key mask; returns out [B, L, nH, hd] and lse [B, nH, L] (-inf where no key is visible).
 * window > 0: query i sees key j only when i - j < window (Hugging Face's sliding_window_overlay).
 * softcap > 0: Gemma 2's attention-logit soft-capping, as Hugging Face's eager attention: the scores
 * scale q.k are divided by softcap, put through tanh and multiplied by softcap, then masked (a masked
 * key is left out: the same as adding -inf after the cap). dcap [b][h] -> [l, l] holds d(capped)/ds
 * = 1 - tanh(s / softcap)^2 (1 without a cap) for the backward.
 * spans [B, L, 3] (AttentionOpts.spans, the pair / packing layout): query i sees key j iff
 * lo <= j <= i and j is outside [hideLo, hideHi); its window distance is i - j less the hidden keys
 * between them (attnVisibleRef).
 */
export function attentionRef(
  q: ArrayLike<number>,
  k: ArrayLike<number>,
  v: ArrayLike<number>,
  mask: ArrayLike<number>,
  s: AttnShape,
  scale: number,
  window = 0,
  softcap = 0,
  spans?: ArrayLike<number>,
) {
  const { b, l, nh, nkv, hd } = s;
  const out = new Float64Array(b * l * nh * hd);
  const lse = new Float64Array(b * nh * l);
  const probs: Float64Array[] = []; // [b][h] -> [l, l]
  const dcap: Float64Array[] = []; // [b][h] -> [l, l]
  for (let bi = 0; bi < b; bi++)
    for (let h = 0; h < nh; h++) {
      const kvh = Math.floor(h / (nh / nkv));
      const P = new Float64Array(l * l);
      const D = new Float64Array(l * l).fill(1);
      for (let i = 0; i < l; i++) {
        const sc: number[] = [];
        let m = -Infinity;
        for (let j = 0; j <= i; j++) {
          if (!mask[bi * l + j] || !attnVisibleRef(spans, bi * l + i, i, j, window)) continue;
          let d = 0;
          for (let c = 0; c < hd; c++) d += q[((bi * l + i) * nh + h) * hd + c] * k[((bi * l + j) * nkv + kvh) * hd + c];
          sc[j] = d * scale;
          if (softcap > 0) {
            const t = Math.tanh(sc[j] / softcap);
            sc[j] = t * softcap;
            D[i * l + j] = 1 - t * t;
          }
          m = Math.max(m, sc[j]);
        }
        if (m === -Infinity) {
          lse[(bi * nh + h) * l + i] = -Infinity;
          continue;
        }
        let sum = 0;
        for (let j = 0; j <= i; j++) if (sc[j] !== undefined) sum += Math.exp(sc[j] - m);
        lse[(bi * nh + h) * l + i] = m + Math.log(sum);
        for (let j = 0; j <= i; j++) {
          if (sc[j] === undefined) continue;
          const p = Math.exp(sc[j] - m) / sum;
          P[i * l + j] = p;
          for (let c = 0; c < hd; c++) out[((bi * l + i) * nh + h) * hd + c] += p * v[((bi * l + j) * nkv + kvh) * hd + c];
        }
      }
      probs.push(P);
      dcap.push(D);
    }
  return { out, lse, probs, dcap };
}

/**
 * Whether query i (flat row r = b * L + i) sees key j by position: causal, the window and, with spans,
 * lo <= j, j outside [hideLo, hideHi), and the window counted without the hidden keys
 * (AttentionOpts.spans in src/backend/backend.ts, written from its definition).
 */
export function attnVisibleRef(spans: ArrayLike<number> | undefined, r: number, i: number, j: number, window: number): boolean {
  if (j > i) return false;
  let dist = i - j;
  if (spans) {
    const [lo, hideLo, hideHi] = [spans[3 * r], spans[3 * r + 1], spans[3 * r + 2]];
    if (j < lo || (j >= hideLo && j < hideHi)) return false;
    if (j < hideLo) dist -= hideHi - hideLo;
  }
  return !(window > 0 && dist >= window);
}

export function attentionBackwardRef(
  q: ArrayLike<number>,
  k: ArrayLike<number>,
  v: ArrayLike<number>,
  mask: ArrayLike<number>,
  dout: ArrayLike<number>,
  s: AttnShape,
  scale: number,
  window = 0,
  softcap = 0,
  spans?: ArrayLike<number>,
) {
  const { b, l, nh, nkv, hd } = s;
  const { probs, dcap } = attentionRef(q, k, v, mask, s, scale, window, softcap, spans);
  const dq = new Float64Array(q.length),
    dk = new Float64Array(k.length),
    dv = new Float64Array(v.length);
  for (let bi = 0; bi < b; bi++)
    for (let h = 0; h < nh; h++) {
      const kvh = Math.floor(h / (nh / nkv));
      const P = probs[bi * nh + h];
      const D = dcap[bi * nh + h];
      const qi = (i: number, c: number) => ((bi * l + i) * nh + h) * hd + c;
      const kj = (j: number, c: number) => ((bi * l + j) * nkv + kvh) * hd + c;
      for (let i = 0; i < l; i++) {
        // dP_ij = dO_i . V_j; dS_ij = P_ij (dP_ij - sum_j' P_ij' dP_ij') d(capped_ij)/ds_ij
        const dP = new Float64Array(l);
        let rowDot = 0;
        for (let j = 0; j <= i; j++) {
          if (P[i * l + j] === 0) continue;
          for (let c = 0; c < hd; c++) dP[j] += dout[qi(i, c)] * v[kj(j, c)];
          rowDot += P[i * l + j] * dP[j];
        }
        for (let j = 0; j <= i; j++) {
          const p = P[i * l + j];
          if (p === 0) continue;
          const dS = p * (dP[j] - rowDot) * D[i * l + j];
          for (let c = 0; c < hd; c++) {
            dv[kj(j, c)] += p * dout[qi(i, c)];
            dq[qi(i, c)] += scale * dS * k[kj(j, c)];
            dk[kj(j, c)] += scale * dS * q[qi(i, c)];
          }
        }
      }
    }
  return { dq, dk, dv };
}

const sigmoid = (x: number) => 1 / (1 + Math.exp(-x));

/**
 * Gemma's RMSNorm (HF Gemma2RMSNorm / Gemma3RMSNorm: output = _norm(x) * (1 + w), w stored): rmsnormRef
 * with the scale 1 + w, formed in float64 from the stored w's exact values.
 */
export function gemmaRmsnormRef(x: ArrayLike<number>, w: ArrayLike<number>, t: number, h: number, eps: number) {
  return rmsnormRef(
    x,
    Array.from(w, (v) => 1 + v),
    t,
    h,
    eps,
  );
}

/** Its backward: dx with the scale 1 + w; dw = d/d(1 + w), the same sum as the plain norm's. */
export function gemmaRmsnormBackwardRef(
  x: ArrayLike<number>,
  w: ArrayLike<number>,
  dy: ArrayLike<number>,
  t: number,
  h: number,
  eps: number,
) {
  return rmsnormBackwardRef(
    x,
    Array.from(w, (v) => 1 + v),
    dy,
    t,
    h,
    eps,
  );
}

/** HF gelu_pytorch_tanh = PyTorch gelu(x, approximate='tanh'): 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))). */
export function geluTanhRef(x: number): number {
  return 0.5 * x * (1 + Math.tanh(Math.sqrt(2 / Math.PI) * (x + 0.044715 * x ** 3)));
}

/** d/dx of geluTanhRef: 0.5 (1 + tanh u) + 0.5 x (1 - tanh^2 u) sqrt(2/pi) (1 + 3 0.044715 x^2). */
export function geluTanhGradRef(x: number): number {
  const th = Math.tanh(Math.sqrt(2 / Math.PI) * (x + 0.044715 * x ** 3));
  return 0.5 * (1 + th) + 0.5 * x * (1 - th * th) * Math.sqrt(2 / Math.PI) * (1 + 3 * 0.044715 * x * x);
}

/** Gemma's MLP activation, GeGLU: gelu_tanh(gate) * up, and its gradients for dout. */
export function gegluRef(g: ArrayLike<number>, u: ArrayLike<number>) {
  return Float64Array.from({ length: g.length }, (_, i) => geluTanhRef(g[i]) * u[i]);
}

export function gegluBackwardRef(g: ArrayLike<number>, u: ArrayLike<number>, d: ArrayLike<number>) {
  const dgate = Float64Array.from({ length: g.length }, (_, i) => d[i] * u[i] * geluTanhGradRef(g[i]));
  const dup = Float64Array.from({ length: g.length }, (_, i) => d[i] * geluTanhRef(g[i]));
  return { dgate, dup };
}

export function swigluRef(g: ArrayLike<number>, u: ArrayLike<number>) {
  return Float64Array.from({ length: g.length }, (_, i) => g[i] * sigmoid(g[i]) * u[i]);
}

export function swigluBackwardRef(g: ArrayLike<number>, u: ArrayLike<number>, d: ArrayLike<number>) {
  const dgate = new Float64Array(g.length),
    dup = new Float64Array(g.length);
  for (let i = 0; i < g.length; i++) {
    const s = sigmoid(g[i]);
    dup[i] = d[i] * g[i] * s;
    dgate[i] = d[i] * u[i] * (s + g[i] * s * (1 - s));
  }
  return { dgate, dup };
}
