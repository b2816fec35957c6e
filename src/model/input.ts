// Host token batches -> the device tensors of a forward pass.
import type { Backend } from '../backend/backend.js';
import type { Tensor } from '../tensor/tensor.js';
import type { ModelInput } from './llama.js';
import * as ops from '../ops/index.js';

/** Host arrays of R rows x L positions (src/spin/batch.ts TokenBatch has these fields). */
export interface HostTokens {
  rows: number;
  length: number;
  inputIds: Int32Array;
  positions: Int32Array;
  attentionMask: Int32Array;
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
  };
}

export function freeInput(input: ModelInput): void {
  for (const t of [input.inputIds, input.positions, input.attentionMask] as Tensor[]) t.free();
}
