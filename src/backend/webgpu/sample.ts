// Next-token choice on the WebGPU device (sample.wgsl; native/cpu/sample.cc on the CPU): greedy argmax
// or the full sampler (temperature, top-k, top-p, a xoshiro128** stream per row) over the ids < limit,
// logits bound one chunk of rows at a time.
import type { Tensor } from '../../tensor/tensor.js';
import type { SampleOpts } from '../backend.js';
import { empty } from './memory.js';
import type { Bindable, Param, WebGpuRuntime } from './runtime.js';

export function sampleTokens(
  rt: WebGpuRuntime,
  logits: Tensor<'f32'>,
  rng: Tensor<'i32'>,
  active: Tensor<'i32'>,
  o: SampleOpts,
  limit: number,
): Tensor<'i32'> {
  const [b, v] = logits.shape;
  const out = empty(rt, 'i32', [b]);
  if (b === 0) return out;
  const greedy = o.temperature === 0 || o.topK === 1;
  let chunk = rt.rowChunk(b, v * 4, 'sampleTokens logits');
  if (chunk < b) chunk = Math.floor(chunk / 64) * 64; // the per-row tensors start at 256-byte boundaries too
  if (chunk === 0) rt.binding(logits.view(0, [64, v])); // throws: 64 rows exceed one binding
  for (let r0 = 0; r0 < b; r0 += chunk) {
    const rows = Math.min(chunk, b - r0);
    const params: Param[] = [rows, v, greedy ? 1 : 0, o.topK, [o.temperature, 'f'], [o.topP, 'f'], limit, 0];
    // the small per-row tensors are bound at the chunk's row too: chunks are multiples of 64 rows
    const bs: Bindable[] = [
      rt.rowsOf(logits, r0, rows, v),
      rt.rowsOf(rng, r0, rows, 4),
      rt.rowsOf(active, r0, rows, 1),
      rt.rowsOf(out, r0, rows, 1),
    ];
    if (greedy) rt.dispatch('sample', {}, 'argmax', params, [bs[0], null, bs[2], bs[3]], rows);
    else rt.dispatch('sample', {}, 'sample', params, bs, Math.ceil(rows / 64));
  }
  return out;
}
