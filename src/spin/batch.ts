// From text pairs to the token tensors of a SPIN step, as the official SPIN collator does it
// (docs/algorithm.md; uclaml/SPIN spin/alignment/utils.py):
//  - prompt, real answer and generated answer tokenized separately, no special tokens added;
//    EOS appended to each answer;
//  - EOS ids inside the texts get attention mask 0 (the official collator's rule; not for chat
//    templates, whose EOS may be their own end of turn: src/spin/prompt_tokens.ts);
//  - if prompt + longer answer > maxLength: keep the last maxPromptLength prompt tokens
//    ('keep_end', default) or the first ('keep_start'); if still too long, cut both answers to
//    maxLength - maxPromptLength tokens;
//  - labels are the tokens with the prompt set to -100; the model predicts token t+1 at position t.
// A batch of B pairs has 2B rows of length L (right-padded): row i = prompt + real answer of pair i,
// row B + i = prompt + generated answer. Flattened [2B * L] arrays; segment of a position = its row
// when it carries a target, so the rows are exactly the 2B sequences of src/spin/loss.ts.

export const IGNORE_INDEX = -100;

export interface TextTokenizer {
  encode(text: string): number[];
  readonly eosId: number;
  /** Most characters one token can stand for (the longest vocabulary entry); bounds the text worth tokenizing. */
  readonly maxTokenChars?: number;
}

/**
 * The most characters of one text worth tokenizing for sequences of at most `maxLength` tokens: a
 * token covers at most maxTokenChars characters, so a longer text has more than 2 * maxLength
 * tokens and is truncated anyway; cutting it to this many characters first (from the end that is
 * dropped) keeps the kept tokens and bounds memory (tokenizers need ~100+ bytes per character).
 * Infinity when the tokenizer does not say.
 */
export function charCap(tok: TextTokenizer, maxLength: number): number {
  const m = tok.maxTokenChars;
  return m !== undefined && m > 0 ? 2 * maxLength * m + 64 : Infinity;
}

export interface TruncationOptions {
  maxLength: number;
  maxPromptLength: number;
  truncationMode?: 'keep_end' | 'keep_start';
}

/** One sequence: prompt tokens then answer tokens (answer ends with EOS unless cut). */
export interface TokenizedSequence {
  prompt: number[];
  answer: number[];
  /**
   * true: EOS ids inside the texts stay attended (chat templates, where EOS may be the template's
   * own end of turn, as the model sees it at inference); default: the official rule masks them.
   */
  attendEos?: boolean;
}

export interface TokenizedPair {
  real: TokenizedSequence;
  generated: TokenizedSequence;
}

export function checkTruncation(t: TruncationOptions): void {
  if (!Number.isSafeInteger(t.maxLength) || t.maxLength < 2) throw new RangeError(`max_length must be an integer >= 2, got ${t.maxLength}`);
  if (!Number.isSafeInteger(t.maxPromptLength) || t.maxPromptLength < 1 || t.maxPromptLength >= t.maxLength) {
    throw new RangeError(`max_prompt_length must be an integer in [1, max_length), got ${t.maxPromptLength} (max_length ${t.maxLength})`);
  }
}

/** Tokenizes and truncates one (prompt, real, generated) triple. */
export function tokenizePair(tok: TextTokenizer, prompt: string, real: string, generated: string, t: TruncationOptions): TokenizedPair {
  const cap = charCap(tok, t.maxLength);
  // a text over the cap is over max_length tokens: the prompt keeps its end (keep_end) or start, answers their start
  if (prompt.length > cap) prompt = t.truncationMode === 'keep_start' ? prompt.slice(0, cap) : prompt.slice(-cap);
  if (real.length > cap) real = real.slice(0, cap);
  if (generated.length > cap) generated = generated.slice(0, cap);
  const p = tok.encode(prompt);
  return truncatePair(
    { prompt: p, answer: [...tok.encode(real), tok.eosId] },
    { prompt: p, answer: [...tok.encode(generated), tok.eosId] },
    t,
  );
}

/**
 * The official truncation of a pair's two sequences (each may have its own prompt tokens: a chat
 * template's boundary token can differ): when prompt + the longer answer exceeds maxLength, the
 * prompt keeps maxPromptLength tokens (its end with keep_end); if still too long, both answers are
 * cut to maxLength - maxPromptLength tokens.
 */
export function truncatePair(real: TokenizedSequence, generated: TokenizedSequence, t: TruncationOptions): TokenizedPair {
  const longer = Math.max(real.answer.length, generated.answer.length);
  const cut = (s: TokenizedSequence): TokenizedSequence => {
    let p = s.prompt;
    let a = s.answer;
    if (p.length + longer > t.maxLength)
      p = t.truncationMode === 'keep_start' ? p.slice(0, t.maxPromptLength) : p.slice(-t.maxPromptLength);
    if (p.length + longer > t.maxLength) a = a.slice(0, t.maxLength - t.maxPromptLength);
    return s.attendEos ? { prompt: p, answer: a, attendEos: true } : { prompt: p, answer: a };
  };
  return { real: cut(real), generated: cut(generated) };
}

/** Tokenizes one (prompt, answer) for supervised fine-tuning, with the same truncation rules. */
export function tokenizeSft(tok: TextTokenizer, prompt: string, answer: string, t: TruncationOptions): TokenizedSequence {
  const pair = tokenizePair(tok, prompt, answer, '', { ...t });
  // the empty generated answer (just EOS) never decides the truncation: the real one is longer or equal
  return pair.real;
}

/** Host arrays of one batch of R rows x L positions, flattened row-major. */
export interface TokenBatch {
  rows: number;
  length: number;
  /** i32 [R * L]: token ids, padding = padId. */
  inputIds: Int32Array;
  /** i32 [R * L]: 1 = attend to this key, 0 = padding or an EOS inside the text. */
  attentionMask: Int32Array;
  /** i32 [R * L]: position ids 0..L-1 (right padding: what HF Llama uses without explicit ids). */
  positions: Int32Array;
  /** i32 [R * L]: the token predicted at each position (next token of the answer), -100 elsewhere. */
  targets: Int32Array;
  /** i32 [R * L]: the row index where the position has a target, -1 elsewhere. */
  segments: Int32Array;
  /** f32 [R]: target tokens per row (answer tokens incl. EOS). */
  targetCounts: Float32Array;
}

/** Collates sequences into right-padded rows; L = the longest prompt + answer (or `padTo`). */
export function collateSequences(seqs: readonly TokenizedSequence[], eosId: number, padId: number, padTo?: number): TokenBatch {
  const rows = seqs.length;
  const length = Math.max(padTo ?? 0, ...seqs.map((s) => s.prompt.length + s.answer.length), 1);
  const n = rows * length;
  const inputIds = new Int32Array(n).fill(padId);
  const attentionMask = new Int32Array(n);
  const positions = new Int32Array(n);
  const targets = new Int32Array(n).fill(IGNORE_INDEX);
  const segments = new Int32Array(n).fill(-1);
  const targetCounts = new Float32Array(rows);
  seqs.forEach((s, r) => {
    const base = r * length;
    const ids = [...s.prompt, ...s.answer];
    if (ids.length > length) throw new RangeError(`sequence ${r} has ${ids.length} tokens, more than the batch length ${length}`);
    for (let t = 0; t < length; t++) positions[base + t] = t;
    ids.forEach((id, t) => {
      inputIds[base + t] = id;
      // official rule: EOS ids inside the prompt or answer text are not attended to; the EOS we
      // appended to the answer (its last token) is.
      const appendedEos = t === ids.length - 1 && s.answer.length > 0 && s.answer[s.answer.length - 1] === eosId;
      attentionMask[base + t] = id === eosId && !appendedEos && !s.attendEos ? 0 : 1;
    });
    // position t predicts token t + 1; answer tokens are ids[prompt.length ..]
    for (let t = Math.max(0, s.prompt.length - 1); t < ids.length - 1; t++) {
      targets[base + t] = ids[t + 1];
      segments[base + t] = r;
    }
    targetCounts[r] = Math.max(0, ids.length - Math.max(1, s.prompt.length));
  });
  return { rows, length, inputIds, attentionMask, positions, targets, segments, targetCounts };
}

/** f32 [B]: 0 for a pair whose generated answer equals the real one token for token when `dropIdentical`, else 1. */
export function pairMaskOf(pairs: readonly TokenizedPair[], dropIdentical: boolean): Float32Array {
  return new Float32Array(pairs.length).map((_, i) => {
    const { real, generated } = pairs[i];
    const same = real.answer.length === generated.answer.length && real.answer.every((x, k) => x === generated.answer[k]);
    return dropIdentical && same ? 0 : 1;
  });
}

export interface SpinBatch extends TokenBatch {
  /** Pairs B (rows = 2B). */
  pairs: number;
  /** f32 [B]: 1 where the pair counts, 0 where it is dropped (see `dropIdentical`). */
  pairMask: Float32Array;
}

/**
 * The 2B rows of B pairs: real answers first, then generated. With `dropIdentical`, a pair whose
 * generated answer equals the real one token for token gets pairMask 0 (it carries no gradient in
 * the official loss, only dilutes the mean).
 */
export function collateSpinBatch(
  pairs: readonly TokenizedPair[],
  eosId: number,
  padId: number,
  opts: { dropIdentical?: boolean; padTo?: number } = {},
): SpinBatch {
  const batch = collateSequences([...pairs.map((p) => p.real), ...pairs.map((p) => p.generated)], eosId, padId, opts.padTo);
  return { ...batch, pairs: pairs.length, pairMask: pairMaskOf(pairs, !!opts.dropIdentical) };
}
