// Causal grouped-query attention on the WebGPU device (attention.wgsl; native/cpu/attention.cc on the
// CPU): the forward, the backward (delta, dQ, then dK/dV), and decode over the KV cache, each with an
// optional sliding window (AttentionOpts.window) and soft-cap (AttentionOpts.softcap). Each module
// is compiled for the head dim HD and the key tile KT that fits the adapter's workgroup memory.
// AttentionOpts.spans (the pair / packing layout) selects the SPANS variant of the forward and backward
// (docs/ops.md "Attention spans"); without spans the modules are the causal ones, unchanged.
import type { AttentionOpts, Backend } from '../backend.js';
import type { Tensor } from '../../tensor/tensor.js';
import type { Defines } from './kernels.js';
import { empty } from './memory.js';
import type { Param, WebGpuRuntime } from './runtime.js';

/** Keys per attention tile: as many as fit half the workgroup memory for K and V together (max 32). */
function attnTile(rt: WebGpuRuntime, hd: number): number {
  return Math.max(1, Math.min(32, Math.floor((rt.limits.maxComputeWorkgroupStorageSize - 256) / (8 * hd))));
}

/**
 * The variant constants of the forward and backward: with spans, the SPANS variant, whose tile also
 * leaves room for each query row's visible ranges (16 + 4 bytes per tile row) and the block bounds.
 */
function attnDefines(rt: WebGpuRuntime, hd: number, spans: boolean): Defines {
  if (!spans) return { HD: hd, KT: attnTile(rt, hd) };
  const kt = Math.floor((rt.limits.maxComputeWorkgroupStorageSize - 64) / (8 * hd + 28));
  return { HD: hd, KT: Math.max(1, Math.min(32, kt)), SPANS: true };
}

export function attention(
  rt: WebGpuRuntime,
  q: Tensor<'f32'>,
  k: Tensor<'f32'>,
  v: Tensor<'f32'>,
  keyMask: Tensor<'i32'>,
  opts: AttentionOpts = {},
): { out: Tensor<'f32'>; lse: Tensor<'f32'> } {
  const [b, l, nh, hd] = q.shape;
  const nkv = k.shape[2];
  const out = empty(rt, 'f32', q.shape);
  const lse = empty(rt, 'f32', [b, nh, l]);
  if (b * l * nh === 0) return { out, lse };
  const blocks = Math.ceil(l / 64);
  const params: Param[] = [
    b,
    l,
    nh,
    nkv,
    blocks,
    1,
    opts.window ?? 0,
    0,
    [opts.scale ?? 1 / Math.sqrt(hd), 'f'],
    [opts.softcap ?? 0, 'f'],
    0,
    0,
  ];
  const sp = opts.spans;
  const bindings = sp ? [q, k, v, keyMask, out, lse, null, null, null, sp, rt.err] : [q, k, v, keyMask, out, lse];
  rt.dispatch('attention', attnDefines(rt, hd, !!sp), 'forward', params, bindings, b * nh * blocks);
  return { out, lse };
}

export function attentionBackward(
  rt: WebGpuRuntime,
  ...[q, k, v, keyMask, out, lse, dout, opts = {}]: Parameters<Backend['attentionBackward']>
): ReturnType<Backend['attentionBackward']> {
  const [b, l, nh, hd] = q.shape;
  const nkv = k.shape[2];
  const dq = empty(rt, 'f32', q.shape);
  const dk = empty(rt, 'f32', k.shape);
  const dv = empty(rt, 'f32', v.shape);
  if (b * l * nh === 0) return { dq, dk, dv };
  const blocks = Math.ceil(l / 64);
  const sp = opts.spans;
  // span_blocks stores query positions as f32 (exact to 2^24)
  if (sp && l > 2 ** 24) throw new RangeError(`attentionBackward: spans with ${l} positions per row (at most 2^24 on WebGPU)`);
  const defines = attnDefines(rt, hd, !!sp);
  const params: Param[] = [
    b,
    l,
    nh,
    nkv,
    blocks,
    1,
    opts.window ?? 0,
    0,
    [opts.scale ?? 1 / Math.sqrt(hd), 'f'],
    [opts.softcap ?? 0, 'f'],
    0,
    0,
  ];
  // delta [B, nH, L], then with spans the first key each 64-query block sees [B, blocks]
  const delta = rt.temp((b * nh * l + (sp ? b * blocks : 0)) * 4);
  rt.dispatch('attention', defines, 'delta', params, [out, dout, delta], Math.ceil((b * l * nh) / 64));
  if (sp) {
    rt.dispatch(
      'attention',
      defines,
      'span_blocks',
      params,
      [null, null, delta, null, null, null, null, null, null, sp],
      Math.ceil((b * blocks) / 64),
    );
    rt.dispatch('attention', defines, 'backward_dq', params, [q, k, v, keyMask, lse, delta, dout, dq, null, sp, rt.err], b * nh * blocks);
    rt.dispatch('attention', defines, 'backward_dkdv', params, [q, k, v, keyMask, lse, delta, dout, dk, dv, sp], b * nkv * blocks);
  } else {
    rt.dispatch('attention', defines, 'backward_dq', params, [q, k, v, keyMask, lse, delta, dout, dq], b * nh * blocks);
    rt.dispatch('attention', defines, 'backward_dkdv', params, [q, k, v, keyMask, lse, delta, dout, dk, dv], b * nkv * blocks);
  }
  rt.releaseBuffer(delta.buffer);
  return { dq, dk, dv };
}

export function attentionDecode(
  rt: WebGpuRuntime,
  ...[q, kCache, vCache, lengths, keyMask, opts = {}]: Parameters<Backend['attentionDecode']>
): Tensor<'f32'> {
  const [b, nh, hd] = q.shape;
  const [, nkv, lmax] = kCache.shape;
  const out = empty(rt, 'f32', q.shape);
  if (b * nh === 0) return out;
  const params: Param[] = [
    b,
    lmax,
    nh,
    nkv,
    1,
    keyMask ? 1 : 0,
    opts.window ?? 0,
    0,
    [opts.scale ?? 1 / Math.sqrt(hd), 'f'],
    [opts.softcap ?? 0, 'f'],
    0,
    0,
  ];
  const defines: Defines = { HD: hd, KT: attnTile(rt, hd) };
  if (kCache.dtype === 'bf16') defines.KV_BF16 = true; // set only where true: an f32 decode shares the forward's module
  rt.dispatch(
    'attention',
    defines,
    'decode',
    params,
    [q, kCache, vCache, keyMask ?? rt.none, lengths, out, rt.err],
    Math.ceil((b * nh) / 64),
  );
  return out;
}
