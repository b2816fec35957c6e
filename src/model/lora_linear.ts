// The LoRA path of a linear layer, forward and backward, from existing ops only (matmul with alpha and
// accumulate, swiglu, scaleInPlace): every backend runs it. PEFT's lora.Linear.forward:
//   y = base(x) + lora_B(lora_A(dropout(x))) * scaling,   u = dropout(x) A^T [T, r],  y += s u B^T
// Backward, from dy [T, out]:
//   dB += s dy^T u,   du = s dy B,   dA += du^T dropout(x),   dx += dropout'(du A)
// The frozen base weight gets no gradient (layer.ts skips its dW GEMM). A fused module (Phi-3's
// qkv_proj, gate_up_proj) computes u once; each part (q, k, v) adds s u B_part^T to its own output, and
// its backward adds its share to du, which reaches A and dx after the module's last part.
//
// Dropout (lora_dropout > 0, training passes only): the mask is drawn on the host, seeded by the
// LoraState's dropoutSeed, its dropoutKey (the training loop's step and micro-batch) and the module
// path, so a recomputed layer (gradient checkpointing) and a resumed run draw the same mask. It is
// applied with the swiglu op: silu(g) * x with g = 2^20 (kept: silu(2^20) = 2^20 exactly, as
// exp(-2^20) = 0) or g = 0 (dropped: silu(0) = 0), then scaled by 2^-20 / (1 - p): x * fl(1 / (1 - p))
// exactly, as torch's dropout (powers of two are exact).
import type { ComputeDtype } from '../backend/backend.js';
import type { Tensor } from '../tensor/tensor.js';
import { Rng } from '../util/rng.js';
import { type LoraModule, type LoraState, loraA, loraB } from './lora.js';
import type { Weights } from './weights.js';
import * as ops from '../ops/index.js';

const KEEP = 2 ** 20;

/** What the backward of a fused module carries from one part to the next. */
interface Pending {
  xd: Tensor;
  u: Tensor<'f32'>;
  du: Tensor<'f32'> | null;
  gate: Tensor<'f32'> | null;
}

/**
 * The dropout gate of module `path`'s input (n values) on this pass, on the host: 0 (dropped, with
 * probability p) or 2^20 (kept); null when there is no dropout on this pass.
 */
export function dropoutGateHost(lora: LoraState, path: string, n: number): Float32Array | null {
  const p = lora.config.dropout;
  if (p === 0 || lora.dropoutKey === null) return null;
  const rng = new Rng(lora.dropoutSeed).fork(`${lora.dropoutKey}/${path}`);
  const g = new Float32Array(n);
  for (let i = 0; i < n; i++) g[i] = rng.next() < p ? 0 : KEEP;
  return g;
}

function dropoutGate(w: Weights, m: LoraModule, x: Tensor): Tensor<'f32'> | null {
  const g = dropoutGateHost(w.lora!, m.path, x.numel);
  return g ? ops.upload(w.backend, { dtype: 'f32', data: g }, x.shape) : null;
}

/** v * mask / (1 - p): a new tensor. */
function applyMask(gate: Tensor<'f32'>, v: Tensor<'f32'>, p: number): Tensor<'f32'> {
  const y = ops.swiglu(gate, v, { activation: 'silu' });
  ops.scaleInPlace(y, Math.fround(Math.fround(1 / (1 - p)) / KEEP));
  return y;
}

/**
 * The LoRA input of module m: dropout(x) (x itself without dropout) and the gate that made it. x f32, or
 * bf16 (the linear layer's input kept in bf16 under mixed precision: widened exactly for the dropout).
 */
function loraInput(w: Weights, m: LoraModule, x: Tensor): { xd: Tensor; gate: Tensor<'f32'> | null } {
  const gate = dropoutGate(w, m, x);
  if (!gate) return { xd: x, gate };
  const xf = x.dtype === 'f32' ? (x as Tensor<'f32'>) : ops.cast(x, 'f32');
  const xd = applyMask(gate, xf, w.lora!.config.dropout);
  if (xf !== x) xf.free();
  return { xd, gate };
}

/** The rows of B (or of its gradient) that part `row..row + n` of module m uses. */
function partRows(t: Tensor<'f32'>, m: LoraModule, row: number, n: number, r: number): Tensor<'f32'> {
  return m.parts.length === 1 ? t : t.view(row * r, [n, r]);
}

/**
 * Adds the LoRA paths to the outputs ys[i] = x W_i^T (+ b_i) of the linear layers `weights` (base
 * names) that have an adapter. `lin.rowInvariant`: generation's row-invariant matmuls; `lin.computeDtype`
 * 'bf16': both GEMMs round their inputs (x, A; u, B) to bf16 and sum in f32 (adapters are f32).
 */
export function loraForward(
  w: Weights,
  x: Tensor,
  weights: readonly string[],
  ys: Tensor<'f32'>[],
  lin: { rowInvariant?: boolean; computeDtype?: ComputeDtype },
): void {
  const lora = w.lora;
  if (!lora) return;
  const rowInvariant = !!lin.rowInvariant;
  const computeDtype = lin.computeDtype ?? 'f32';
  const us = new Map<LoraModule, { u: Tensor<'f32'>; xd: Tensor; gate: Tensor<'f32'> | null }>();
  try {
    weights.forEach((name, i) => {
      const hit = lora.of(name);
      if (!hit) return;
      const { m, row } = hit;
      let e = us.get(m);
      if (!e) {
        const { xd, gate } = loraInput(w, m, x);
        e = { u: ops.matmul(xd as Tensor<'f32'>, w.get(loraA(m.path)), { transB: true, rowInvariant, computeDtype }), xd, gate };
        us.set(m, e);
      }
      const B = partRows(w.get(loraB(m.path)) as Tensor<'f32'>, m, row, ys[i].shape[1], lora.config.r);
      ops.matmul(e.u, B, { transB: true, alpha: lora.scaling, out: ys[i], accumulate: true, rowInvariant, computeDtype });
    });
  } finally {
    for (const { u, xd, gate } of us.values()) {
      u.free();
      if (xd !== x) xd.free();
      gate?.free();
    }
  }
}

/**
 * The LoRA part of a linear layer's backward for base weight `weight`: dy [T, out_part] its output's
 * gradient, x [T, in] its input, dx [T, in] (already holding dy W) gets the LoRA path's share. The
 * adapters' gradients accumulate. A fused module's parts must come in B's row order (q, k, v; gate,
 * up); `pending` carries u and du between them.
 */
export function loraBackward(
  w: Weights,
  pending: Map<LoraModule, Pending>,
  dy: Tensor<'f32'>,
  x: Tensor,
  weight: string,
  dx: Tensor<'f32'>,
  computeDtype: ComputeDtype = 'f32',
): void {
  const lora = w.lora;
  const hit = lora?.of(weight);
  if (!lora || !hit) return;
  const { m, row } = hit;
  const { r, dropout } = lora.config;
  const s = lora.scaling;
  const A = w.get(loraA(m.path)) as Tensor<'f32'>;
  let e = pending.get(m);
  if (!e) {
    const { xd, gate } = loraInput(w, m, x); // the forward's mask again (same key)
    e = { xd, gate, u: ops.matmul(xd as Tensor<'f32'>, A, { transB: true, computeDtype }), du: null };
    pending.set(m, e);
  }
  const n = dy.shape[1];
  ops.matmul(dy, e.u, { transA: true, alpha: s, out: partRows(w.grad(loraB(m.path)), m, row, n, r), accumulate: true, computeDtype });
  const B = partRows(w.get(loraB(m.path)) as Tensor<'f32'>, m, row, n, r);
  if (e.du) ops.matmul(dy, B, { alpha: s, out: e.du, accumulate: true, computeDtype });
  else e.du = ops.matmul(dy, B, { alpha: s, computeDtype });
  if (weight !== m.parts[m.parts.length - 1].weight) return;
  pending.delete(m);
  try {
    ops.matmul(e.du, e.xd, { transA: true, out: w.grad(loraA(m.path)), accumulate: true, computeDtype });
    if (e.gate) {
      const dxd = ops.matmul(e.du, A, { computeDtype });
      const dxl = applyMask(e.gate, dxd, dropout);
      ops.add(dx, dxl, dx);
      dxd.free();
      dxl.free();
    } else {
      ops.matmul(e.du, A, { out: dx, accumulate: true, computeDtype });
    }
  } finally {
    e.u.free();
    e.du.free();
    if (e.xd !== x) e.xd.free();
    e.gate?.free();
  }
}

export type { Pending as LoraPending };
