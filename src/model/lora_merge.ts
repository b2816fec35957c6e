// Merging a LoRA adapter into its base (docs/lora.md, "Merge"): W' = W + s B A, computed in float64 and
// rounded once to the stored dtype (bf16: round to nearest even from the float64 value, not through f32;
// f32: Math.fround). PEFT's own merge (LoraLayer.merge) computes B A s in f32 on the CPU and adds it in
// the weight's dtype, rounding twice; spinlm's result is the nearest bf16 (f32) to the exact sum.
// Phi-3's fused qkv_proj / gate_up_proj: B's rows [q | k | v] ([gate | up]) go to the split weights
// spinlm holds (lora.ts LoraModule.parts).
import { bf16ToF32 } from '../tensor/bf16.js';
import type { Tensor } from '../tensor/tensor.js';
import { loraModules, loraA, loraB, loraScaling } from './lora.js';
import type { LlamaConfig } from './config.js';
import type { HostAdapter } from './peft.js';
import type { Weights } from './weights.js';
import * as ops from '../ops/index.js';

const F32 = new Float32Array(1);
const U32 = new Uint32Array(F32.buffer);
/** The largest finite bf16, and the midpoint between it and 2^128 (from there on round to nearest gives Inf: the tie goes to even, Inf). */
const MAX_BF16 = bf16ToF32(0x7f7f);
const OVERFLOW = MAX_BF16 + 2 ** 119;

/** The bf16 (bit pattern) nearest to the float64 x, ties to even: one rounding (not through f32). NaN -> quiet NaN. */
export function f64ToBf16(x: number): number {
  if (Number.isNaN(x)) return 0x7fc0;
  const sign = x < 0 ? 0x8000 : 0;
  const ax = Math.abs(x);
  if (ax >= OVERFLOW) return sign | 0x7f80;
  // fround may have rounded across a bf16 value: the answer is the truncation of fround(|x|) or a neighbour
  F32[0] = ax;
  const t = U32[0] >>> 16;
  let best = t,
    bestErr = Infinity;
  for (const c of [t - 1, t, t + 1]) {
    if (c < 0 || c > 0x7f7f) continue;
    const err = Math.abs(bf16ToF32(c) - ax);
    if (err < bestErr || (err === bestErr && (c & 1) === 0)) {
      best = c;
      bestErr = err;
    }
  }
  return sign | best;
}

/** One adapter's share of a weight: the rows [row0, row0 + rows) of s B A. */
export interface MergeTerm {
  a: Float32Array;
  b: Float32Array;
  r: number;
  scale: number;
  row0: number;
}

/**
 * Merges sum_j s_j B_j A_j (the rows each term names) into w ([rows, in], f32 or bf16 bits) in place:
 * w[o][i] = round(w[o][i] + sum_j s_j sum_k B_j[row0_j + o][k] A_j[k][i]), everything in float64 and
 * rounded once to w's dtype.
 */
export function mergeRowsInto(w: Float32Array | Uint16Array, inFeatures: number, rows: number, terms: readonly MergeTerm[]): void {
  if (w.length !== rows * inFeatures) throw new RangeError(`merge: weight holds ${w.length} elements, expected ${rows} x ${inFeatures}`);
  for (const t of terms)
    if (t.a.length !== t.r * inFeatures)
      throw new RangeError(`merge: lora_A holds ${t.a.length} elements, expected ${t.r} x ${inFeatures}`);
  const acc = new Float64Array(inFeatures);
  const bf16 = w instanceof Uint16Array;
  for (let o = 0; o < rows; o++) {
    acc.fill(0);
    for (const { a, b, r, scale, row0 } of terms) {
      for (let k = 0; k < r; k++) {
        const bk = scale * b[(row0 + o) * r + k]; // exact enough: s B is one float64 product per element of B
        if (bk === 0) continue;
        const ak = k * inFeatures;
        for (let i = 0; i < inFeatures; i++) acc[i] += bk * a[ak + i];
      }
    }
    const base = o * inFeatures;
    if (bf16) for (let i = 0; i < inFeatures; i++) w[base + i] = f64ToBf16(bf16ToF32(w[base + i]) + acc[i]);
    else for (let i = 0; i < inFeatures; i++) w[base + i] = w[base + i] + acc[i]; // a Float32Array store is Math.fround
  }
}

/**
 * Merges host adapters into the weights the model computes with: each adapted base tensor is read to
 * the host, gets the sum of every adapter's s B A (float64, one rounding: a stack of adapters over an
 * untouched base is merged as one sum) and is written back, one tensor at a time. A merged weight must
 * not be training (its master or gradient would go stale: with LoRA the base is frozen), and the
 * weights must carry no adapter.
 */
export async function mergeAdapterIntoWeights(weights: Weights, cfg: LlamaConfig, ...adapters: HostAdapter[]): Promise<void> {
  if (weights.lora) throw new Error('merge: the weights carry an adapter of their own; take it off first (adapter.ts detachAdapter)');
  const byWeight = new Map<string, { inFeatures: number; rows: number; terms: MergeTerm[] }>();
  for (const adapter of adapters) {
    const scale = loraScaling(adapter.lora);
    for (const m of loraModules(cfg, adapter.lora)) {
      const a = adapter.tensors.get(loraA(m.path));
      const b = adapter.tensors.get(loraB(m.path));
      if (!a || !b) throw new Error(`merge: the adapter has no tensors for ${m.path}`);
      let row0 = 0;
      for (const part of m.parts) {
        let e = byWeight.get(part.weight);
        if (!e) byWeight.set(part.weight, (e = { inFeatures: m.inFeatures, rows: part.rows, terms: [] }));
        e.terms.push({ a: a.data, b: b.data, r: adapter.lora.r, scale, row0 });
        row0 += part.rows;
      }
    }
  }
  for (const [name, { inFeatures, rows, terms }] of byWeight) {
    if (weights.masters.has(name) || weights.grads.has(name)) throw new Error(`merge: ${name} is training (it has a master or a gradient)`);
    const t = weights.get(name);
    const host = await ops.read(t);
    mergeRowsInto(host as Float32Array | Uint16Array, inFeatures, rows, terms);
    if (t.dtype === 'bf16') ops.write(t as Tensor<'bf16'>, { dtype: 'bf16', data: host as Uint16Array });
    else ops.write(t as Tensor<'f32'>, { dtype: 'f32', data: host as Float32Array });
  }
}
