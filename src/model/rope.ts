// RoPE scaling (config.json rope_scaling / rope_parameters) -> the rope op's inverse-frequency table and
// attention factor, computed as Hugging Face transformers' modeling_rope_utils.py does: in fp32 (every
// torch op on an fp32 tensor rounds to fp32, emulated here with Math.fround), with the scalars HF keeps
// as Python floats in float64. docs/numerics.md "RoPE scaling" has the rules and the tests.
//
// Two torch details matter for bit equality: `scalar / tensor` is reciprocal(tensor) * scalar
// (torch/_tensor.py __rtruediv__), and a Python scalar meets an fp32 tensor as an fp32 value.

const f = Math.fround;

/** Parsed rope scaling; `null` in LlamaConfig means none ("default", or no rope_scaling). */
export type RopeScaling =
  /** Position interpolation: inv_freq / factor. */
  | { type: 'linear'; factor: number }
  /**
   * Dynamic NTK: HF recomputes inv_freq only for sequences longer than max_position_embeddings, which
   * spinlm refuses, so it equals no scaling everywhere spinlm runs.
   */
  | { type: 'dynamic'; factor: number }
  /** Llama 3.1: low frequencies / factor, high ones kept, a smooth blend between. */
  | { type: 'llama3'; factor: number; lowFreqFactor: number; highFreqFactor: number; originalMaxPositionEmbeddings: number }
  /** YaRN: a ramp between interpolated and extrapolated inv_freq, cos and sin times the attention factor. */
  | {
      type: 'yarn';
      factor: number;
      originalMaxPositionEmbeddings: number;
      attentionFactor: number | null;
      betaFast: number;
      betaSlow: number;
      mscale: number | null;
      mscaleAllDim: number | null;
      truncate: boolean;
    }
  /**
   * LongRoPE (Phi-3 128k): inv_freq / short_factor while the sequence fits original_max_position_embeddings
   * (spinlm refuses longer ones: HF switches to long_factor per forward, by the batch's longest position).
   */
  | {
      type: 'longrope';
      shortFactor: number[];
      longFactor: number[];
      factor: number;
      attentionFactor: number | null;
      originalMaxPositionEmbeddings: number;
    };

export type RopeType = RopeScaling['type'];

/** What the parser needs from the rest of config.json. */
export interface RopeContext {
  headDim: number;
  maxPositionEmbeddings: number;
  /** Top-level original_max_position_embeddings (Phi-3 keeps it there), null when absent. */
  originalMaxPositionEmbeddings: number | null;
}

type Json = Record<string, unknown>;
type Fail = (field: string, problem: string) => Error;

const SUPPORTED = '"default", "linear", "dynamic", "llama3", "yarn", "longrope" (or "su")';

function show(v: unknown): string {
  return v === undefined ? 'nothing' : typeof v === 'string' ? JSON.stringify(v) : Array.isArray(v) ? 'a list' : String(v);
}

/**
 * Checks a rope_scaling (or rope_parameters) object; `field` names it in errors. Returns null for
 * "default". Any other type is refused by name.
 */
export function parseRopeScaling(o: Json, field: string, ctx: RopeContext, fail: Fail): RopeScaling | null {
  const type = o.rope_type ?? o.type;
  const has = (k: string) => o[k] !== undefined && o[k] !== null;
  const num = (k: string, check: (v: number) => boolean, what: string): number => {
    const v = o[k];
    if (typeof v !== 'number' || !Number.isFinite(v) || !check(v)) throw fail(`${field}.${k}`, `expected ${what}, got ${show(v)}`);
    return v;
  };
  const pos = (k: string) => num(k, (v) => v > 0, 'a positive number');
  const optPos = (k: string) => (has(k) ? pos(k) : null);
  const posInt = (k: string) => num(k, (v) => Number.isSafeInteger(v) && v > 0, 'a positive integer');
  const origMax = () => (has('original_max_position_embeddings') ? posInt('original_max_position_embeddings') : null);
  if (has('partial_rotary_factor') && o.partial_rotary_factor !== 1) {
    throw fail(`${field}.partial_rotary_factor`, `partial rotary embeddings are not supported (got ${show(o.partial_rotary_factor)})`);
  }
  switch (type) {
    case 'default':
      return null; // HF's name for "no scaling"
    case 'linear':
      return { type, factor: pos('factor') };
    case 'dynamic':
      return { type, factor: pos('factor') };
    case 'llama3': {
      const lowFreqFactor = pos('low_freq_factor');
      const highFreqFactor = pos('high_freq_factor');
      if (!(highFreqFactor > lowFreqFactor)) {
        throw fail(`${field}.high_freq_factor`, `must exceed low_freq_factor ${lowFreqFactor}, got ${highFreqFactor}`);
      }
      return {
        type,
        factor: pos('factor'),
        lowFreqFactor,
        highFreqFactor,
        originalMaxPositionEmbeddings: posInt('original_max_position_embeddings'),
      };
    }
    case 'yarn': {
      const originalMaxPositionEmbeddings = origMax() ?? ctx.originalMaxPositionEmbeddings ?? ctx.maxPositionEmbeddings;
      const truncate = o.truncate ?? true;
      if (typeof truncate !== 'boolean') throw fail(`${field}.truncate`, `expected true or false, got ${show(truncate)}`);
      return {
        type,
        factor: optPos('factor') ?? ctx.maxPositionEmbeddings / originalMaxPositionEmbeddings,
        originalMaxPositionEmbeddings,
        attentionFactor: optPos('attention_factor'),
        // HF: `get("beta_fast") or 32`, so 0 and null mean the default too
        betaFast: o.beta_fast === 0 ? 32 : (optPos('beta_fast') ?? 32),
        betaSlow: o.beta_slow === 0 ? 1 : (optPos('beta_slow') ?? 1),
        mscale: o.mscale === 0 ? null : optPos('mscale'),
        mscaleAllDim: o.mscale_all_dim === 0 ? null : optPos('mscale_all_dim'),
        truncate,
      };
    }
    case 'longrope':
    case 'su': {
      const originalMaxPositionEmbeddings = origMax() ?? ctx.originalMaxPositionEmbeddings ?? ctx.maxPositionEmbeddings;
      const list = (k: string): number[] => {
        const v = o[k];
        const half = ctx.headDim / 2;
        if (!Array.isArray(v) || v.length !== half || !v.every((x) => typeof x === 'number' && Number.isFinite(x) && x > 0)) {
          throw fail(`${field}.${k}`, `expected a list of ${half} positive numbers (head_dim / 2), got ${show(v)}`);
        }
        return [...(v as number[])];
      };
      return {
        type: 'longrope',
        shortFactor: list('short_factor'),
        longFactor: list('long_factor'),
        factor: optPos('factor') ?? ctx.maxPositionEmbeddings / originalMaxPositionEmbeddings,
        attentionFactor: optPos('attention_factor'),
        originalMaxPositionEmbeddings,
      };
    }
    default:
      throw fail(field, `rope scaling type ${show(type)} is not supported (spinlm supports ${SUPPORTED})`);
  }
}

/** The rope op's inputs for a model: f32 inv_freq [hd / 2] and the factor on cos and sin. */
export interface RopeTable {
  invFreq: Float32Array;
  attentionScale: number;
}

/** HF _compute_default_rope_parameters: base ** (arange(0, dim, 2).float() / dim), in fp32. */
function powers(theta: number, hd: number): Float32Array {
  const out = new Float32Array(hd / 2);
  for (let i = 0; i < hd / 2; i++) out[i] = f(f(theta) ** f(f(2 * i) / f(hd)));
  return out;
}

/** HF's yarn get_mscale. */
function mscaleOf(scale: number, m = 1): number {
  return scale <= 1 ? 1 : 0.1 * m * Math.log(scale) + 1;
}

/** inv_freq and attention scaling of a config as HF computes them (longrope: the short factors). */
export function ropeTable(theta: number, hd: number, s: RopeScaling | null): RopeTable {
  const p = powers(theta, hd);
  const half = hd / 2;
  const inv = p.map((x) => f(1 / x));
  if (s === null || s.type === 'dynamic') return { invFreq: inv, attentionScale: 1 };
  switch (s.type) {
    case 'linear':
      return { invFreq: inv.map((x) => f(x / f(s.factor))), attentionScale: 1 };
    case 'llama3': {
      const { factor, lowFreqFactor: lf, highFreqFactor: hf, originalMaxPositionEmbeddings: old } = s;
      const lowWave = f(old / lf),
        highWave = f(old / hf);
      const out = new Float32Array(half);
      for (let i = 0; i < half; i++) {
        const wavelen = f(f(1 / inv[i]) * f(2 * Math.PI));
        const llama = wavelen > lowWave ? f(inv[i] / f(factor)) : inv[i];
        const smooth = f(f(f(f(1 / wavelen) * f(old)) - f(lf)) / f(hf - lf));
        const smoothed = f(f(f(f(1 - smooth) * llama) / f(factor)) + f(smooth * llama));
        const medium = !(wavelen < highWave) && !(wavelen > lowWave);
        out[i] = medium ? smoothed : llama;
      }
      return { invFreq: out, attentionScale: 1 };
    }
    case 'yarn': {
      const { factor } = s;
      let attn = s.attentionFactor;
      if (attn === null)
        attn = s.mscale && s.mscaleAllDim ? mscaleOf(factor, s.mscale) / mscaleOf(factor, s.mscaleAllDim) : mscaleOf(factor);
      const corr = (rot: number) => (hd * Math.log(s.originalMaxPositionEmbeddings / (rot * 2 * Math.PI))) / (2 * Math.log(theta));
      let low = corr(s.betaFast),
        high = corr(s.betaSlow);
      if (s.truncate) {
        low = Math.floor(low);
        high = Math.ceil(high);
      }
      low = Math.max(low, 0);
      high = Math.min(high, hd - 1);
      if (low === high) high += 0.001; // HF: prevent singularity
      const out = new Float32Array(half);
      for (let i = 0; i < half; i++) {
        const extra = f(1 / p[i]);
        const inter = f(1 / f(f(factor) * p[i]));
        const ramp = Math.min(Math.max(f(f(f(i) - f(low)) / f(high - low)), 0), 1);
        const ef = f(1 - ramp);
        out[i] = f(f(inter * f(1 - ef)) + f(extra * ef));
      }
      return { invFreq: out, attentionScale: attn };
    }
    case 'longrope': {
      let attn = s.attentionFactor;
      if (attn === null) attn = s.factor <= 1 ? 1 : Math.sqrt(1 + Math.log(s.factor) / Math.log(s.originalMaxPositionEmbeddings));
      return { invFreq: p.map((x, i) => f(1 / f(f(s.shortFactor[i]) * x))), attentionScale: attn };
    }
  }
}

/**
 * The longest sequence spinlm runs with this scaling: max_position_embeddings, or for longrope
 * original_max_position_embeddings (past it HF would switch to long_factor for the whole batch).
 */
export function ropePositionLimit(maxPositionEmbeddings: number, s: RopeScaling | null): number {
  return s?.type === 'longrope' ? Math.min(maxPositionEmbeddings, s.originalMaxPositionEmbeddings) : maxPositionEmbeddings;
}
