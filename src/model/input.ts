// Host token batches -> the device tensors of a forward pass.
import type { Backend } from '../backend/backend.js';
import type { Tensor } from '../tensor/tensor.js';
import type { LossRows, ModelInput } from './llama.js';
import * as ops from '../ops/index.js';

/** Host arrays of R rows x L positions (src/spin/batch.ts TokenBatch has these fields). */
export interface HostTokens {
  rows: number;
  length: number;
  inputIds: Int32Array;
  positions: Int32Array;
  attentionMask: Int32Array;
  /** i32 [R * L * 3]: attention spans of a packed row (src/spin/pack.ts); absent: causal rows. */
  spans?: Int32Array;
  /** With spans: the most positions one sequence spans. */
  seqLength?: number;
  /** Explicit loss rows (packed batches: the shared prompt token is a loss row of both answers). */
  loss?: { rows: Int32Array; targets: Int32Array; segments: Int32Array };
}

/**
 * Token ids are checked here, where they are made on the host, so the embedding never meets one
 * outside the vocabulary (a device-side check would only surface at the next read).
 */
export function checkTokenIds(ids: Int32Array, vocabSize: number, what = 'input'): void {
  for (let i = 0; i < ids.length; i++) {
    if (ids[i] < 0 || ids[i] >= vocabSize) {
      throw new RangeError(
        `${what}: token id ${ids[i]} at position ${i} is outside the model's vocabulary [0, ${vocabSize}): is the tokenizer the model's own?`,
      );
    }
  }
}

export function uploadInput(be: Backend, b: HostTokens, vocabSize: number): ModelInput {
  checkTokenIds(b.inputIds, vocabSize);
  const t = b.rows * b.length;
  return {
    rows: b.rows,
    length: b.length,
    inputIds: ops.upload(be, { dtype: 'i32', data: b.inputIds }, [t]),
    positions: ops.upload(be, { dtype: 'i32', data: b.positions }, [t]),
    attentionMask: ops.upload(be, { dtype: 'i32', data: b.attentionMask }, [b.rows, b.length]),
    ...(b.spans ? { spans: ops.upload(be, { dtype: 'i32', data: b.spans }, [b.rows, b.length, 3]), seqLength: b.seqLength } : {}),
  };
}

export function freeInput(input: ModelInput): void {
  for (const t of [input.inputIds, input.positions, input.attentionMask, input.spans]) t?.free();
}

/** The loss rows of a batch on the device (forwardLogprobs), with each row's segment when given. */
export interface DeviceLossRows extends LossRows {
  /** i32 [M]: the sequence each loss row belongs to (batch.segments at those positions). */
  segments: Tensor<'i32'> | null;
  count: number;
}

/**
 * The positions whose target is not the ignore index (-100): only they reach the LM head. Their order is
 * the positions' order, so per-sequence sums add the same terms in the same order as over all positions.
 */
export function uploadLossRows(be: Backend, targets: Int32Array, segments?: Int32Array): DeviceLossRows {
  const rows: number[] = [];
  for (let i = 0; i < targets.length; i++) if (targets[i] !== -100) rows.push(i);
  const m = rows.length;
  const pick = (a: Int32Array) => ops.upload(be, { dtype: 'i32', data: Int32Array.from(rows, (r) => a[r]) }, [m]);
  return {
    rows: ops.upload(be, { dtype: 'i32', data: Int32Array.from(rows) }, [m]),
    targets: pick(targets),
    segments: segments ? pick(segments) : null,
    count: m,
  };
}

/** A batch's loss rows on the device: its explicit rows (packed batches) or those of its targets and segments. */
export function uploadBatchLossRows(be: Backend, b: HostTokens & { targets: Int32Array; segments?: Int32Array }): DeviceLossRows {
  if (!b.loss) return uploadLossRows(be, b.targets, b.segments);
  const m = b.loss.rows.length;
  const up = (a: Int32Array) => ops.upload(be, { dtype: 'i32', data: a }, [m]);
  return { rows: up(b.loss.rows), targets: up(b.loss.targets), segments: up(b.loss.segments), count: m };
}

export function freeLossRows(r: DeviceLossRows): void {
  for (const t of [r.rows, r.targets, r.segments]) t?.free();
}
