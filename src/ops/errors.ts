// Device-side index errors: a kernel that meets an index outside its range skips it and raises a bit
// in its backend's error word (src/backend/backend.ts OP_ERRORS); read() turns the bits into one error.
import { OP_ERRORS } from '../backend/backend.js';

const MESSAGES: Record<keyof typeof OP_ERRORS, string> = {
  targets: 'logprobGather/headLogprob (or their backward): a target is outside [0, vocab) and is not the ignore index -100',
  segments: 'sequenceLogprob/sequenceLogprobBackward: a segment id is outside [-1, numSeqs)',
  tokenIds: 'embedding/embeddingBackward: a token id is outside [0, rows of the table)',
  scatterIndex: 'scatterRows: an index is outside [0, rows of dst)',
  decodeLengths: 'attentionDecode: a length is outside [0, cache length]',
  positions: 'rope: a position is negative',
  attentionSpans: 'attention/attentionBackward: spans (lo, hideLo, hideHi) of a query i are not 0 <= lo <= hideLo <= hideHi <= i',
};

/** The error for a non-zero error word. */
export function deviceError(bits: number): RangeError {
  const which = (Object.keys(OP_ERRORS) as (keyof typeof OP_ERRORS)[]).filter((k) => bits & OP_ERRORS[k]).map((k) => MESSAGES[k]);
  if (which.length === 0) which.push(`unknown device error bits 0x${bits.toString(16)}`);
  return new RangeError(`an op met an out-of-range index on the device (its outputs were left invalid): ${which.join('; ')}`);
}
