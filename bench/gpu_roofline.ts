// The performance model of docs/cuda.md "Performance model (written before the GPU)": bytes, FLOPs,
// arithmetic intensity, the binding roof and the predicted time of each kernel class on an H100 SXM and
// an H200, written before any GPU time. bench/gpu.bench.ts prints each measured row beside its
// prediction from here; `node --import tsx bench/gpu_roofline.ts` prints the tables of the doc.
// Every efficiency is an assumption stated in the doc, not a measurement.

export interface Gpu {
  name: string;
  /** Dense bf16 tensor-core FLOP/s as measured (not the datasheet's 989 T). */
  bf16: number;
  /** fp32 FLOP/s without tensor cores: 132 SMs x 128 lanes x 2 x ~1.755 GHz sustained. */
  fp32: number;
  /** HBM bytes/s as a device-to-device copy measures it. */
  hbm: number;
}
export const H100: Gpu = { name: 'H100 SXM', bf16: 790e12, fp32: 60e12, hbm: 3.0e12 };
export const H200: Gpu = { name: 'H200', bf16: 790e12, fp32: 60e12, hbm: 4.3e12 };

/** Assumed fractions of a roof (docs/cuda.md states where each comes from). */
export const EFF = {
  /** cuBLASLt bf16 at M = 8192 with N, K >= 4096 */
  gemmLarge: 0.75,
  /** cuBLASLt bf16 at M = 8192 with a 2048-wide side (1.1B shapes) */
  gemmMid: 0.68,
  /** memory-bound GEMMs at M <= 64 (cuBLASLt's GEMV-like kernels): fraction of HBM */
  decodeCublas: 0.85,
  /** spinlm's row-invariant tensor-core decode GEMM (fixed split-K order, planned by tc-gemm) */
  decodeOurs: 0.65,
  /** WMMA flash attention forward / backward (flash-fwd, flash-bwd): fraction of bf16 peak */
  flashFwd: 0.2,
  flashBwd: 0.15,
  /** torch SDPA (FlashAttention-2) at hd 128 causal on an H100: ~330 / ~250 TFLOP/s published */
  sdpaFwd: 0.42,
  sdpaBwd: 0.32,
  /** the fused head: panels of GEMM + an online log-sum-exp epilogue, fraction of the GEMM rate */
  headOfGemm: 0.7,
  /** streaming elementwise kernels, fraction of HBM */
  stream: 0.8,
};

export interface Shape {
  name: string;
  m: number;
  n: number;
  k: number;
}
export const LLAMA_1B = { hidden: 2048, layers: 22, heads: 32, kv: 4, hd: 64, inter: 5632, vocab: 32000 };
export const LLAMA_7B = { hidden: 4096, layers: 32, heads: 32, kv: 8, hd: 128, inter: 14336, vocab: 32000 };
type Arch = typeof LLAMA_1B;

/** The linear layers of one decoder layer and the head as GEMMs of `m` rows: [m, k] x [k, n]. */
export function linearShapes(a: Arch, m: number, tag: string): Shape[] {
  const H = a.hidden,
    kv = a.kv * a.hd;
  return [
    { name: `${tag} qkv`, m, n: H + 2 * kv, k: H },
    { name: `${tag} o`, m, n: H, k: H },
    { name: `${tag} gate+up`, m, n: 2 * a.inter, k: H },
    { name: `${tag} down`, m, n: H, k: a.inter },
    { name: `${tag} head`, m, n: a.vocab, k: H },
  ];
}

export interface Prediction {
  flops: number;
  bytes: number;
  /** FLOPs per byte */
  ai: number;
  roof: 'compute' | 'memory';
  /** predicted seconds */
  s: number;
  /** predicted fraction of the binding roof */
  frac: number;
}
const pred = (flops: number, bytes: number, computeS: number, memS: number): Prediction => {
  const s = Math.max(computeS, memS);
  return { flops, bytes, ai: flops / bytes, roof: computeS >= memS ? 'compute' : 'memory', s, frac: 0 };
};

/** A bf16 GEMM at M tokens: bytes as spinlm moves them (f32 activations in and out, bf16 weights). */
export function gemm(g: Gpu, s: Shape, eff = Math.min(s.n, s.k) >= 4096 ? EFF.gemmLarge : EFF.gemmMid): Prediction {
  const flops = 2 * s.m * s.n * s.k;
  const bytes = 4 * s.m * s.k + 2 * s.n * s.k + 4 * s.m * s.n;
  const p = pred(flops, bytes, flops / (g.bf16 * eff), bytes / (g.hbm * EFF.stream));
  return { ...p, frac: flops / p.s / g.bf16 };
}

/** A decode GEMM (M <= 64 rows): the weights' bytes bound it. `eff`: the fraction of HBM reached. */
export function decodeGemm(g: Gpu, s: Shape, eff: number): Prediction {
  const flops = 2 * s.m * s.n * s.k;
  const bytes = 2 * s.n * s.k + 4 * s.m * (s.k + s.n);
  const p = pred(flops, bytes, flops / (g.bf16 * 0.5), bytes / (g.hbm * eff));
  return { ...p, frac: bytes / p.s / g.hbm };
}

/** Visible (query, key) pairs: `seqs` causal sequences of `len` tokens. */
export const causalPairs = (seqs: number, len: number) => (seqs * len * (len + 1)) / 2;
/** Visible pairs of SPIN's packed pair layout [prompt | real | generated] (generated skips real). */
export const pairLayoutPairs = (pairs: number, prompt: number, answer: number) =>
  pairs * (causalPairs(1, prompt) + 2 * (answer * prompt + causalPairs(1, answer)));

/**
 * Attention forward / backward. FLOPs as FlashAttention's benchmark counts them: 4 d per visible pair
 * (QK^T and PV) forward, 2.5x that backward. Bytes: q, k, v, out (and lse) f32 as spinlm keeps them.
 */
export function attention(
  g: Gpu,
  visible: number,
  tokens: number,
  heads: number,
  kvHeads: number,
  hd: number,
  eff: number,
  backward = false,
) {
  const flops = 4 * visible * heads * hd * (backward ? 2.5 : 1);
  const io = 4 * tokens * hd * (2 * heads + 2 * kvHeads);
  const bytes = backward ? 2 * io : io;
  const p = pred(flops, bytes, flops / (g.bf16 * eff), bytes / (g.hbm * EFF.stream));
  return { ...p, frac: flops / p.s / g.bf16 };
}

/** A memory-bound kernel that moves `bytes`. */
export function stream(g: Gpu, bytes: number, flops = 0, eff = EFF.stream): Prediction {
  const p = pred(flops, bytes, 0, bytes / (g.hbm * eff));
  return { ...p, frac: eff };
}

/** The fused LM head at N rows, hidden H, vocabulary V: forward 1 GEMM, backward 3 (recompute, dh, dw). */
export function head(g: Gpu, n: number, h: number, v: number, backward = false) {
  const base = gemm(g, { name: 'head', m: n, n: v, k: h });
  const times = backward ? 3 : 1;
  const s = (times * base.s) / EFF.headOfGemm;
  const bytes = 4 * n * h * (backward ? 3 : 1) + 2 * v * h * times + (backward ? 4 * v * h : 0) + 8 * n;
  return {
    flops: times * base.flops,
    bytes,
    ai: (times * base.flops) / bytes,
    roof: 'compute' as const,
    s,
    frac: (times * base.flops) / s / g.bf16,
  };
}

export const params = (a: Arch) => {
  const layer = a.hidden * (a.hidden + 2 * a.kv * a.hd) + a.hidden * a.hidden + 3 * a.hidden * a.inter + 2 * a.hidden;
  return {
    layer,
    trunk: a.layers * layer,
    embed: a.vocab * a.hidden,
    head: a.vocab * a.hidden,
    total: a.layers * layer + 2 * a.vocab * a.hidden + a.hidden,
  };
};

/**
 * Elementwise bytes per token and layer, forward, f32 activations (`act` bytes per value): two RMSNorms,
 * rope on q and k, two residual adds, SwiGLU, and the rounding of each GEMM input to bf16. The backward
 * moves about twice that.
 */
export function elementwiseBytes(a: Arch, act = 4): number {
  const H = a.hidden,
    I = a.inter,
    qk = (a.heads + a.kv) * a.hd;
  const norms = 2 * (2 * act * H);
  const rope = 2 * act * qk;
  const residual = 2 * (3 * act * H);
  const swiglu = 3 * act * I;
  const casts = act === 4 ? 6 * (3 * H + I) : 0;
  return norms + rope + residual + swiglu + casts;
}

/**
 * Peak training memory of full fine-tuning without checkpointing (docs/memory.md): 12 bytes per parameter
 * (bf16 weights made per unit from f32 masters, f32 gradients, RMSprop state) plus what each layer keeps
 * per token, 4 (6H + 2 nKV hd + 3I + nH + 2) bytes with f32 activations (`act` / 4 of that otherwise).
 */
export function trainMemoryBytes(a: Arch, tokens: number, act = 4): number {
  const perTokenLayer = act * (6 * a.hidden + 2 * a.kv * a.hd + 3 * a.inter + a.heads + 2);
  return 12 * params(a).total + perTokenLayer * a.layers * tokens + 2 * 4 * a.hidden * tokens;
}

/** The SPIN step of bench/gpu_probe.ts: `pairs` pairs, prompt P, answers A, packed [P | A | A]. */
export interface StepModel {
  gemmS: number;
  headS: number;
  attnS: number;
  elemS: number;
  optimS: number;
  totalS: number;
  flops: number;
}
export function spinStep(
  g: Gpu,
  a: Arch,
  o: { pairs: number; prompt: number; answer: number; recompute: boolean; lora: boolean; act: number; optimBytesPerParam: number },
): StepModel {
  const T = o.pairs * (o.prompt + 2 * o.answer);
  const lossRows = o.pairs * 2 * o.answer;
  const p = params(a);
  const big = Math.min(a.hidden, a.inter) >= 4096;
  const eff = big ? EFF.gemmLarge : EFF.gemmMid;
  // forward 2P, backward dX 2P and dW 2P (LoRA: no base dW), recompute another forward
  const passes = 1 + 1 + (o.lora ? 0 : 1) + (o.recompute ? 1 : 0);
  const trunkFlops = 2 * p.trunk * T * passes;
  const gemmS = trunkFlops / (g.bf16 * eff);
  const h = head(g, lossRows, a.hidden, a.vocab);
  const hb = head(g, lossRows, a.hidden, a.vocab, true);
  const vis = pairLayoutPairs(o.pairs, o.prompt, o.answer);
  const fwd = attention(g, vis, T, a.heads, a.kv, a.hd, EFF.flashFwd);
  const bwd = attention(g, vis, T, a.heads, a.kv, a.hd, EFF.flashBwd, true);
  const attnS = a.layers * ((o.recompute ? 2 : 1) * fwd.s + bwd.s);
  const elemPasses = 1 + 2 + (o.recompute ? 1 : 0);
  const elemS = stream(g, elementwiseBytes(a, o.act) * a.layers * T * elemPasses).s;
  const trainable = o.lora ? 0.006 * p.total : p.total;
  const optimS = stream(g, o.optimBytesPerParam * trainable + (o.lora ? 0 : 20 * p.total)).s;
  const totalS = gemmS + h.s + hb.s + attnS + elemS + optimS;
  const flops = trunkFlops + h.flops + hb.flops + a.layers * ((o.recompute ? 2 : 1) * fwd.flops + bwd.flops);
  return { gemmS, headS: h.s + hb.s, attnS, elemS, optimS, totalS, flops };
}

/**
 * One greedy decode step at batch `b` with `ctx` cached tokens per row (bf16 weights and cache): the GPU
 * streams the weights (at the row-invariant GEMM's fraction of HBM) and the KV cache; the host issues
 * ~16 ops per layer through N-API (assumed 8.5 us each). The step is the slower of the two.
 */
export function decodeStep(g: Gpu, a: Arch, b: number, ctx: number, usPerOp = 8.5) {
  const weights = 2 * (params(a).trunk + params(a).head);
  const kv = 2 * 2 * a.kv * a.hd * a.layers * ctx * b;
  const gpuS = weights / (g.hbm * EFF.decodeOurs) + kv / (g.hbm * EFF.stream) + 16 * a.layers * 3e-6;
  const hostS = (16 * a.layers + 10) * usPerOp * 1e-6;
  return { gpuS, hostS, s: Math.max(gpuS, hostS), tokensPerS: b / Math.max(gpuS, hostS) };
}

const fmtT = (x: number) => (x >= 1e12 ? `${(x / 1e12).toFixed(2)} T` : `${(x / 1e9).toFixed(2)} G`);
const fmtB = (x: number) => (x >= 1e9 ? `${(x / 1e9).toFixed(2)} GB` : `${(x / 1e6).toFixed(1)} MB`);
const fmtS = (s: number) => (s >= 1e-3 ? `${(s * 1e3).toFixed(2)} ms` : `${(s * 1e6).toFixed(1)} us`);
const row = (cells: (string | number)[]) => `| ${cells.join(' | ')} |`;

/** Markdown tables of the doc (both GPUs side by side where the roof differs). */
export function tables(): string {
  const out: string[] = [];
  out.push('GEMMs, bf16, 8192 tokens (bytes: f32 activations in and out, bf16 weights)', '');
  out.push(row(['shape (M x N x K)', 'FLOPs', 'bytes', 'FLOP/B', 'roof', 'eff. assumed', 'H100 time', 'TFLOP/s', 'H200 time']));
  out.push(row(['---', '---:', '---:', '---:', '---', '---:', '---:', '---:', '---:']));
  for (const s of [...linearShapes(LLAMA_1B, 8192, '1.1B'), ...linearShapes(LLAMA_7B, 8192, '7B')]) {
    const p = gemm(H100, s),
      q = gemm(H200, s);
    const eff = Math.min(s.n, s.k) >= 4096 ? EFF.gemmLarge : EFF.gemmMid;
    out.push(
      row([
        `${s.name} ${s.m} x ${s.n} x ${s.k}`,
        fmtT(p.flops),
        fmtB(p.bytes),
        p.ai.toFixed(0),
        p.roof,
        `${eff * 100}%`,
        fmtS(p.s),
        (p.flops / p.s / 1e12).toFixed(0),
        fmtS(q.s),
      ]),
    );
  }
  out.push('', 'Decode GEMMs, 7B linear shapes, bf16 weights (memory bound: the weights are read once per step)', '');
  out.push(row(['shape', 'M', 'weight bytes', 'FLOP/B', 'cuBLASLt H100 (85% HBM)', 'ours H100 (65%)', 'ours / cuBLASLt', 'ours H200']));
  out.push(row(['---', '---:', '---:', '---:', '---:', '---:', '---:', '---:']));
  for (const m of [1, 8, 32, 64])
    for (const s of linearShapes(LLAMA_7B, m, '7B')) {
      if (m !== 32 && !s.name.endsWith('gate+up')) continue;
      const c = decodeGemm(H100, s, EFF.decodeCublas),
        o = decodeGemm(H100, s, EFF.decodeOurs),
        o2 = decodeGemm(H200, s, EFF.decodeOurs);
      out.push(row([s.name, m, fmtB(2 * s.n * s.k), c.ai.toFixed(1), fmtS(c.s), fmtS(o.s), (c.s / o.s).toFixed(2), fmtS(o2.s)]));
    }
  out.push(
    '',
    'Attention, hd 128 causal, seq 2048, B 8 x 16 heads (16k tokens); the SPIN pair layout at 1.1B (8 pairs of [128 | 896 | 896], 32 / 4 heads, hd 64, one layer)',
    '',
  );
  out.push(row(['kernel', 'FLOPs', 'bytes', 'FLOP/B', 'eff. assumed', 'H100 time', 'TFLOP/s', 'SDPA (FA2) time', 'ours / SDPA']));
  out.push(row(['---', '---:', '---:', '---:', '---:', '---:', '---:', '---:', '---:']));
  const vis = causalPairs(8, 2048);
  for (const bwd of [false, true]) {
    const o = attention(H100, vis, 8 * 2048, 16, 16, 128, bwd ? EFF.flashBwd : EFF.flashFwd, bwd);
    const t = attention(H100, vis, 8 * 2048, 16, 16, 128, bwd ? EFF.sdpaBwd : EFF.sdpaFwd, bwd);
    out.push(
      row([
        `seq 2048 hd 128 ${bwd ? 'backward' : 'forward'}`,
        fmtT(o.flops),
        fmtB(o.bytes),
        o.ai.toFixed(0),
        `${((bwd ? EFF.flashBwd : EFF.flashFwd) * 100).toFixed(0)}%`,
        fmtS(o.s),
        (o.flops / o.s / 1e12).toFixed(0),
        fmtS(t.s),
        (t.s / o.s).toFixed(2),
      ]),
    );
  }
  const pv = pairLayoutPairs(8, 128, 896);
  for (const bwd of [false, true]) {
    const o = attention(H100, pv, 8 * 1920, 32, 4, 64, bwd ? EFF.flashBwd : EFF.flashFwd, bwd);
    const t = attention(H100, causalPairs(16, 1023), 16 * 1023, 32, 4, 64, bwd ? EFF.sdpaBwd : EFF.sdpaFwd, bwd);
    out.push(
      row([
        `SPIN pairs 1.1B ${bwd ? 'backward' : 'forward'} (${(pv / 1e6).toFixed(2)} M visible pairs)`,
        fmtT(o.flops),
        fmtB(o.bytes),
        o.ai.toFixed(0),
        `${((bwd ? EFF.flashBwd : EFF.flashFwd) * 100).toFixed(0)}%`,
        fmtS(o.s),
        (o.flops / o.s / 1e12).toFixed(0),
        fmtS(t.s),
        (t.s / o.s).toFixed(2),
      ]),
    );
  }
  out.push('', 'Fused head, loss, elementwise, optimizer, sampling', '');
  out.push(row(['kernel', 'FLOPs', 'bytes', 'FLOP/B', 'roof', 'H100 time', 'H200 time', 'note']));
  out.push(row(['---', '---:', '---:', '---:', '---', '---:', '---:', '---']));
  const hs: [string, (g: Gpu) => Prediction, string][] = [
    ['fused head fwd 8192 x 4096 x 32000', (g) => head(g, 8192, 4096, 32000), `70% of the GEMM rate (goal 60%)`],
    ['fused head bwd (recompute + dh + dw)', (g) => head(g, 8192, 4096, 32000, true), '3 GEMMs at 70% of the GEMM rate'],
    ['logprobGather bf16 8192 x 128256', (g) => stream(g, 8192 * 128256 * 2, 8192 * 128256 * 4), 'logits read once, 80% of HBM'],
    ['logprobGather backward in place', (g) => stream(g, 2 * 8192 * 128256 * 2, 8192 * 128256 * 4), 'read + write'],
    [
      'elementwise fwd, 1.1B, 1 layer, 8192 tok',
      (g) => stream(g, elementwiseBytes(LLAMA_1B) * 8192),
      `${(elementwiseBytes(LLAMA_1B) / 1024).toFixed(0)} KiB/token: 2 RMSNorm, rope, 2 residual, SwiGLU, bf16 casts (f32 activations)`,
    ],
    [
      'elementwise fwd, 7B, 1 layer, 8192 tok',
      (g) => stream(g, elementwiseBytes(LLAMA_7B) * 8192),
      `${(elementwiseBytes(LLAMA_7B) / 1024).toFixed(0)} KiB/token`,
    ],
    [
      'RMSprop, 1.1B (f32 master, grad, state; bf16 copy)',
      (g) => stream(g, 22 * params(LLAMA_1B).total, 6 * params(LLAMA_1B).total),
      '22 B/param: r grad, master, state; w master, state, bf16',
    ],
    ['AdamW, 1.1B', (g) => stream(g, 30 * params(LLAMA_1B).total, 12 * params(LLAMA_1B).total), '30 B/param'],
    ['grad norm + clip, 1.1B', (g) => stream(g, 12 * params(LLAMA_1B).total), 'r grad (norm), r + w grad (scale)'],
    [
      'sampling, 32 rows x 32000 (top-k/top-p)',
      (g) => stream(g, 4 * 32 * 32000 * 4, 32 * 32000 * 20),
      '~4 passes over f32 logits; launch-latency bound (~10-30 us)',
    ],
  ];
  for (const [name, f, note] of hs) {
    const p = f(H100),
      q = f(H200);
    out.push(row([name, fmtT(p.flops), fmtB(p.bytes), p.ai.toFixed(1), p.roof, fmtS(p.s), fmtS(q.s), note]));
  }
  return out.join('\n');
}

/** The SPIN step table (1.1B on an H100, 7B LoRA on an H100, 7B full on an H200). */
export function stepTable(): string {
  const out: string[] = [];
  const cases: [string, Gpu, Arch, Parameters<typeof spinStep>[2]][] = [
    [
      '1.1B full FT, H100, f32 activations',
      H100,
      LLAMA_1B,
      { pairs: 8, prompt: 128, answer: 896, recompute: false, lora: false, act: 4, optimBytesPerParam: 20 },
    ],
    [
      '1.1B full FT, H100, bf16 activations',
      H100,
      LLAMA_1B,
      { pairs: 8, prompt: 128, answer: 896, recompute: false, lora: false, act: 2, optimBytesPerParam: 20 },
    ],
    [
      '7B LoRA r16, H100, checkpointing',
      H100,
      LLAMA_7B,
      { pairs: 8, prompt: 128, answer: 896, recompute: true, lora: true, act: 4, optimBytesPerParam: 32 },
    ],
    [
      '7B full FT, H200, checkpointing',
      H200,
      LLAMA_7B,
      { pairs: 8, prompt: 128, answer: 896, recompute: true, lora: false, act: 4, optimBytesPerParam: 20 },
    ],
  ];
  out.push(
    row([
      'setting',
      'GEMMs',
      'head',
      'attention',
      'elementwise',
      'optimizer + casts',
      'step',
      'tokens/s (16384 / step)',
      'TFLOP/s (model FLOPs)',
    ]),
  );
  out.push(row(['---', '---:', '---:', '---:', '---:', '---:', '---:', '---:', '---:']));
  for (const [name, g, a, o] of cases) {
    const s = spinStep(g, a, o);
    out.push(
      row([
        name,
        fmtS(s.gemmS),
        fmtS(s.headS),
        fmtS(s.attnS),
        fmtS(s.elemS),
        fmtS(s.optimS),
        fmtS(s.totalS),
        (16384 / s.totalS).toFixed(0),
        (s.flops / s.totalS / 1e12).toFixed(0),
      ]),
    );
  }
  return out.join('\n');
}

if (import.meta.url === `file://${process.argv[1]}`) {
  console.log(tables());
  console.log('');
  console.log(stepTable());
}
