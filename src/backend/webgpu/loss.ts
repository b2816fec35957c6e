// The log-prob / SPIN loss family on the WebGPU device (loss.wgsl; native/cpu/loss.cc on the CPU):
// logprobGather and its backward (logits bound one chunk of rows at a time), sequence sums and their
// backward, and the SPIN loss.
import { dtypeSize } from '../../tensor/dtype.js';
import type { Tensor } from '../../tensor/tensor.js';
import { SPIN_LOSS_TYPES, type SpinLossOpts, type SpinLossOutputs } from '../backend.js';
import { empty } from './memory.js';
import type { Param, WebGpuRuntime } from './runtime.js';

export function logprobGather(rt: WebGpuRuntime, logits: Tensor, targets: Tensor<'i32'>): { logp: Tensor<'f32'>; lse: Tensor<'f32'> } {
  const [n, v] = logits.shape;
  const logp = empty(rt, 'f32', [n]);
  const lse = empty(rt, 'f32', [n]);
  if (n === 0) return { logp, lse };
  const zb = logits.dtype === 'bf16';
  const d = { Z_BF16: zb, SUBGROUPS: rt.subgroups };
  const chunk = rt.rowChunk(n, v * dtypeSize(logits.dtype), 'logprobGather logits');
  // long rows: split each row over several workgroups and merge their (max, sum) pairs
  const splits = v >= 16384 ? Math.min(64, Math.ceil(v / 8192)) : 1;
  for (let r0 = 0; r0 < n; r0 += chunk) {
    const rows = Math.min(chunk, n - r0);
    const z = rt.rowsOf(logits, r0, rows, v);
    if (splits === 1) {
      rt.dispatch('loss', d, 'gather', [rows, v, r0, 1, 0], [z, targets, logp, lse, rt.err], rows);
    } else {
      const part = rt.temp(rows * splits * 8);
      rt.dispatch('loss', d, 'gather_split', [rows, v, r0, splits, 0], [z, null, part], rows * splits);
      rt.dispatch('loss', d, 'gather_merge', [rows, v, r0, splits, 0], [part, targets, logp, lse, rt.err, z], Math.ceil(rows / 64));
      rt.releaseBuffer(part.buffer);
    }
  }
  return { logp, lse };
}

export function logprobGatherBackward(
  rt: WebGpuRuntime,
  logits: Tensor,
  targets: Tensor<'i32'>,
  lse: Tensor<'f32'>,
  dlogp: Tensor<'f32'>,
  out: Tensor,
): void {
  const [n, v] = logits.shape;
  if (n === 0 || v === 0) return;
  const inPlace = logits.handle === out.handle && logits.byteOffset === out.byteOffset;
  const zb = logits.dtype === 'bf16';
  const ob = out.dtype === 'bf16';
  const es = Math.max(dtypeSize(logits.dtype), dtypeSize(out.dtype));
  // bf16 rows set the alignment (so chunks also hold an even number of elements: no bf16 word straddles two)
  const chunk = rt.rowChunk(n, v * es, 'logprobGatherBackward logits', v * Math.min(dtypeSize(logits.dtype), dtypeSize(out.dtype)));
  for (let r0 = 0; r0 < n; r0 += chunk) {
    const rows = Math.min(chunk, n - r0);
    const cnt = rows * v;
    const z = inPlace ? rt.none : rt.rowsOf(logits, r0, rows, v);
    const o = rt.rowsOf(out, r0, rows, v);
    const inv = ob ? Math.ceil(cnt / 2) : cnt;
    rt.dispatch(
      'loss',
      { Z_BF16: zb, OUT_BF16: ob, IN_PLACE: inPlace },
      'backward',
      [rows, v, r0, 1, cnt],
      [z, targets, lse, dlogp, rt.err, o],
      Math.ceil(inv / 256),
    );
  }
}

export function sequenceLogprob(rt: WebGpuRuntime, logp: Tensor<'f32'>, segments: Tensor<'i32'>, numSeqs: number): Tensor<'f32'> {
  const out = empty(rt, 'f32', [numSeqs]);
  if (numSeqs === 0) return out;
  rt.dispatch('loss', {}, 'sequence_sum', [numSeqs, 0, 0, 0, logp.numel], [logp, segments, out, rt.err], numSeqs);
  return out;
}

export function sequenceLogprobBackward(rt: WebGpuRuntime, dseq: Tensor<'f32'>, segments: Tensor<'i32'>): Tensor<'f32'> {
  const n = segments.numel;
  const out = empty(rt, 'f32', [n]);
  if (n === 0) return out;
  rt.dispatch('loss', {}, 'sequence_backward', [dseq.numel, 0, 0, 0, n], [dseq, segments, out, rt.err], Math.ceil(n / 256));
  return out;
}

export function spinLoss(rt: WebGpuRuntime, policy: Tensor<'f32'>, ref: Tensor<'f32'>, opts: SpinLossOpts): SpinLossOutputs {
  const b = policy.numel / 2;
  const perPair = empty(rt, 'f32', [7, b]);
  const means = empty(rt, 'f32', [8]);
  const dseq = empty(rt, 'f32', [2 * b]);
  const params: Param[] = [
    b,
    SPIN_LOSS_TYPES.indexOf(opts.lossType),
    opts.pairMask ? 1 : 0,
    [opts.beta, 'f'],
    [opts.nllAlpha ?? 0, 'f'],
    [opts.gradScale ?? 1, 'f'],
    0,
    0,
  ];
  rt.dispatch(
    'loss',
    {},
    'spin_loss',
    params,
    [policy, ref, opts.pairMask ?? rt.none, opts.answerTokens ?? rt.none, perPair, means, dseq],
    1,
  );
  return { perPair, means, dseq };
}
