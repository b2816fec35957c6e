// The numerical guard of training (docs/reliability.md, "Divergence"): a step whose loss or gradient
// norm is not finite stops the run with a DivergenceError naming the step, before anything after it
// is written; checkpoints and models are checked element by element while they are written, so no
// file with NaN or Inf weights is ever renamed into place. Under data parallelism the loss and the
// norm are all-reduced (every rank sees the same values, so every rank stops at the same step), and a
// checkpoint's per-rank verdicts are combined by one all-reduce before its directory is renamed.
import type { HostArray } from '../tensor/dtype.js';
import { firstNonFinite } from './weights.js';

/** Training produced a non-finite loss, gradient norm or weight: the run stops (exit 1), nothing diverged is saved. */
export class DivergenceError extends Error {
  override name = 'DivergenceError';
  constructor(
    message: string,
    /** Every rank of a process group throws it at the same point (all-reduced values, a shared verdict). */
    readonly everyRank = false,
  ) {
    super(message);
  }
}

const show = (x: number) => String(x).replace('Infinity', 'Inf');

/** Throws a DivergenceError when step `step`'s loss or gradient norm is NaN or ±Inf. */
export function checkStepFinite(step: number, loss: number | undefined, gradNorm: number, lastCheckpoint: string | null): void {
  if (Number.isFinite(gradNorm) && (loss === undefined || Number.isFinite(loss))) return;
  throw new DivergenceError(
    `training diverged at step ${step}: the loss is ${loss === undefined ? '(none)' : show(loss)} and the gradient norm ${show(gradNorm)}; ` +
      `${lastCheckpoint ? `the last good checkpoint (${lastCheckpoint}) is kept and ` : ''}no model was written. ` +
      'Lower --learning_rate, or keep --max_grad_norm on (clipping)',
    true, // the loss and the norm are all-reduced: every rank sees the same values
  );
}

/**
 * `chunks` passed through, each checked for NaN / ±Inf (f32, or bf16 bit patterns): on the first one
 * `onBad` is called with a message naming the tensor and element (it may throw; if it returns, the
 * chunks keep flowing, so a distributed writer can finish its file and share the verdict).
 */
export async function* finiteChunks<T extends HostArray>(
  name: string,
  chunks: AsyncIterable<T>,
  onBad: (message: string) => void,
): AsyncGenerator<T, void, undefined> {
  let offset = 0;
  let reported = false;
  for await (const c of chunks) {
    const bad = reported ? -1 : firstNonFinite(c as never);
    if (bad >= 0) {
      reported = true;
      onBad(`${name}: element ${offset + bad} is not finite (NaN or Inf)`);
    }
    offset += c.length;
    yield c;
  }
}

/** finiteChunks that throws a DivergenceError at the first non-finite element. */
export const finiteOrThrow = <T extends HostArray>(name: string, chunks: AsyncIterable<T>) =>
  finiteChunks(name, chunks, (m) => {
    throw new DivergenceError(`training diverged: ${m}; not written`);
  });
