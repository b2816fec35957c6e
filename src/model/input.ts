// Host token batches -> the device tensors of a forward pass.
import type { Backend } from '../backend/backend.js';
import type { Tensor } from '../tensor/tensor.js';
import type { ModelInput } from './llama.js';

/** Host arrays of R rows x L positions (src/spin/batch.ts TokenBatch has these fields). */
export interface HostTokens {
  rows: number;
  length: number;
  inputIds: Int32Array;
  positions: Int32Array;
  attentionMask: Int32Array;
}

export function uploadInput(be: Backend, b: HostTokens): ModelInput {
  const t = b.rows * b.length;
  return {
    rows: b.rows,
    length: b.length,
    inputIds: be.upload({ dtype: 'i32', data: b.inputIds }, [t]),
    positions: be.upload({ dtype: 'i32', data: b.positions }, [t]),
    attentionMask: be.upload({ dtype: 'i32', data: b.attentionMask }, [b.rows, b.length]),
  };
}

export function freeInput(input: ModelInput): void {
  for (const t of [input.inputIds, input.positions, input.attentionMask] as Tensor[]) t.free();
}
