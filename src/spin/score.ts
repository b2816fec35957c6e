// S(theta, y): the summed log-prob of an answer and its appended EOS given the prompt, for batches of
// (prompt, real, generated) pairs, through the fused kernels (docs/algorithm.md). The reference
// log-probs of an iteration and `spinlm score` both come from here.
import type { ComputeDtype } from '../backend/backend.js';
import type { LlamaModel } from '../model/llama.js';
import { freeInput, freeLossRows, uploadBatchLossRows, uploadInput } from '../model/input.js';
import type { ChatMessage, PromptTemplate } from '../text/templates.js';
import { checkTruncation, type SpinBatch, type TruncationOptions } from './batch.js';
import { packedPairTokens, packSpinBatch, splitByTokens } from './pack.js';
import { type ChatTokenizer, tokenizeChatPair } from './prompt_tokens.js';
import * as ops from '../ops/index.js';

export interface PairText {
  prompt: string;
  real: string;
  generated: string;
  /** Every turn before the answers, when more than the user turn `prompt` (chat templates render them). */
  messages?: readonly ChatMessage[];
}

export interface PairScore {
  logps_real: number;
  logps_generated: number;
  tokens_real: number;
  tokens_generated: number;
}

export interface ScoreOptions extends TruncationOptions {
  batchSize: number;
  /** Token budget of one forward pass (0 / absent: none): a batch is cut into runs of at most this many packed tokens. */
  maxTokensPerBatch?: number;
  template: PromptTemplate;
  /** Pad token id: unused since batches are packed (no padding); kept for callers that pass it. */
  padId?: number;
  /** The linear layers' arithmetic (default f32; 'bf16': docs/ops.md "bf16 compute"). */
  computeDtype?: ComputeDtype;
  onProgress?: (done: number, total: number) => void;
}

/** Tokenizes pairs with the template and the official truncation (see batch.ts, prompt_tokens.ts). */
export function tokenizePairs(tok: ChatTokenizer, pairs: readonly PairText[], opts: ScoreOptions) {
  checkTruncation(opts);
  return pairs.map((p, i) => tokenizeChatPair(tok, opts.template, p, p.real, p.generated, opts, `pair ${i + 1}`));
}

/** Sequence log-probs [2B] (real then generated) of one batch, padded (batch.ts) or packed (pack.ts): f32 on the host. */
/** `computeDtype`: the forward's arithmetic, by default the model's (LlamaModel.computeDtype: training's). */
export async function scoreBatch(model: LlamaModel, batch: SpinBatch, computeDtype?: ComputeDtype): Promise<Float32Array> {
  const be = model.backend;
  const input = uploadInput(be, batch, model.cfg.vocabSize);
  const loss = uploadBatchLossRows(be, batch);
  try {
    // only the answer positions reach the LM head (fused with the log-prob: no [T, V] logits)
    const { logp } = model.forwardLogprobs(input, loss, { computeDtype });
    const seq = ops.sequenceLogprob(logp, loss.segments!, batch.targetCounts.length);
    logp.free();
    const out = await ops.read(seq);
    seq.free();
    return out;
  } finally {
    freeInput(input);
    freeLossRows(loss);
  }
}

export async function scorePairs(
  model: LlamaModel,
  tok: ChatTokenizer,
  pairs: readonly PairText[],
  opts: ScoreOptions,
): Promise<PairScore[]> {
  if (!Number.isSafeInteger(opts.batchSize) || opts.batchSize < 1)
    throw new RangeError(`batch size must be a positive integer, got ${opts.batchSize}`);
  const tokenized = tokenizePairs(tok, pairs, opts);
  const out: PairScore[] = [];
  for (let i = 0; i < tokenized.length; i += opts.batchSize) {
    // packed as training packs them (src/spin/pack.ts): the prompt once per pair, no padding
    for (const chunk of splitByTokens(tokenized.slice(i, i + opts.batchSize), packedPairTokens, opts.maxTokensPerBatch ?? 0)) {
      const batch = packSpinBatch(chunk, tok.eosId);
      const s = await scoreBatch(model, batch, opts.computeDtype);
      const b = chunk.length;
      for (let j = 0; j < b; j++) {
        out.push({
          logps_real: s[j],
          logps_generated: s[b + j],
          tokens_real: batch.targetCounts[j],
          tokens_generated: batch.targetCounts[b + j],
        });
      }
    }
    opts.onProgress?.(Math.min(i + opts.batchSize, tokenized.length), tokenized.length);
  }
  return out;
}
