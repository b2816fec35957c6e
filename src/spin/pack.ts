// The lean batch layout (issue 27; docs/algorithm.md "One sequence per pair, no padding"): the pairs of a
// micro-batch become one row of tokens, back to back, no padding. A pair is one sequence
//
//   [ prompt (P) | real answer (R) | generated answer (G) ]
//     positions 0..P-1, P..P+R-1,    P..P+G-1 (restarting after the prompt)
//
// and attention spans (AttentionOpts.spans: per query lo, hideLo, hideHi) let each answer see the prompt
// and itself, never the other answer. The prompt's forward and backward run once; its gradients sum both
// answers' contributions. The last prompt token predicts the first token of both answers, so it is a
// loss row twice (once per sequence): loss rows are explicit (position, target, sequence) triples here.
// Sequence numbering is the padded layout's (src/spin/batch.ts): real answers 0..B-1, generated B..2B-1;
// a sequence's loss rows are in its token order, so its log-prob adds the same terms in the same order
// whatever it is packed with. A pair whose two sides have different prompt tokens (a chat template's
// boundary can differ) or an empty prompt is packed as two plain sequences.
import { pairMaskOf, type TokenBatch, type TokenizedPair, type TokenizedSequence } from './batch.js';

/** Loss rows on the host: the position each reads its hidden state from, its target token and its sequence. */
export interface HostLossRows {
  rows: Int32Array;
  targets: Int32Array;
  segments: Int32Array;
}

/** One packed row: TokenBatch with rows = 1 (targets / segments per position where unambiguous) plus spans and explicit loss rows. */
export interface PackedBatch extends TokenBatch {
  /** i32 [L * 3]: (lo, hideLo, hideHi) per position. */
  spans: Int32Array;
  /** The loss rows (the shared last prompt token appears once per answer). */
  loss: HostLossRows;
  /** Most positions one sequence spans (its position ids are below this): what max_position_embeddings bounds. */
  seqLength: number;
}

export interface PackedSpinBatch extends PackedBatch {
  pairs: number;
  pairMask: Float32Array;
}

/** Whether a pair is one sequence: both sides have the same non-empty prompt tokens (and EOS rule). */
function sharesPrompt({ real: a, generated: b }: TokenizedPair): boolean {
  return (
    a.prompt.length > 0 &&
    a.prompt.length === b.prompt.length &&
    !!a.attendEos === !!b.attendEos &&
    a.prompt.every((x, i) => x === b.prompt[i])
  );
}

/** Tokens one pair takes in the packed layout (prompt once when both sides share it). */
export function packedPairTokens(p: TokenizedPair): number {
  const { real: r, generated: g } = p;
  return sharesPrompt(p) ? r.prompt.length + r.answer.length + g.answer.length : packedSequenceTokens(r) + packedSequenceTokens(g);
}

/** Tokens one sequence takes in the packed layout. */
export function packedSequenceTokens(s: TokenizedSequence): number {
  return s.prompt.length + s.answer.length;
}

/** Builds one packed row: sequences and pairs are appended in order, then finish() makes the batch. */
class RowBuilder {
  ids: number[] = [];
  mask: number[] = [];
  pos: number[] = [];
  spans: number[] = [];
  lossRows: number[] = [];
  lossTargets: number[] = [];
  lossSegs: number[] = [];
  seqLength = 1;

  constructor(readonly eosId: number) {}

  /**
   * Appends tokens with their positions and spans. The official rule (batch.ts): an EOS id inside a text
   * is not attended to, the EOS appended to an answer (its last token) is; attendEos keeps all.
   */
  private push(tokens: readonly number[], firstPos: number, lo: number, hide: [number, number], appendedEosAt: number, attendEos: boolean) {
    tokens.forEach((id, k) => {
      this.ids.push(id);
      this.pos.push(firstPos + k);
      this.mask.push(id === this.eosId && k !== appendedEosAt && !attendEos ? 0 : 1);
      this.spans.push(lo, hide[0], hide[1]);
    });
  }

  private lossRow(row: number, target: number, seg: number) {
    this.lossRows.push(row);
    this.lossTargets.push(target);
    this.lossSegs.push(seg);
  }

  /** Index of an answer's appended EOS (its last token when it is EOS), -1 if none. */
  private eosAt(s: TokenizedSequence): number {
    const a = s.answer;
    return a.length > 0 && a[a.length - 1] === this.eosId ? a.length - 1 : -1;
  }

  /** A plain sequence (prompt then answer) as sequence `seg`; returns its answer's token count. */
  sequence(s: TokenizedSequence, seg: number): number {
    const o = this.ids.length,
      p = s.prompt.length,
      n = p + s.answer.length;
    const at = this.eosAt(s);
    this.push(s.prompt, 0, o, [o, o], -1, !!s.attendEos);
    this.push(s.answer, p, o, [o, o], at, !!s.attendEos);
    // position t predicts token t + 1: the answer tokens (and the first from the prompt's last token)
    const ids = [...s.prompt, ...s.answer];
    for (let t = Math.max(0, p - 1); t < n - 1; t++) this.lossRow(o + t, ids[t + 1], seg);
    this.seqLength = Math.max(this.seqLength, n);
    return Math.max(0, n - Math.max(1, p));
  }

  /** A pair as one sequence (or two when its prompts differ): sequences `segReal` and `segGen`. Returns both answers' token counts. */
  pair(pr: TokenizedPair, segReal: number, segGen: number): [number, number] {
    const { real, generated: gen } = pr;
    if (!sharesPrompt(pr)) return [this.sequence(real, segReal), this.sequence(gen, segGen)];
    const o = this.ids.length,
      p = real.prompt.length,
      r = real.answer.length,
      g = gen.answer.length;
    const attend = !!real.attendEos;
    this.push(real.prompt, 0, o, [o, o], -1, attend);
    this.push(real.answer, p, o, [o, o], this.eosAt(real), attend);
    this.push(gen.answer, p, o, [o + p, o + p + r], this.eosAt(gen), attend);
    // answer token a is predicted by the prompt's last token (a = 0) or by the answer's token a - 1
    for (let a = 0; a < r; a++) this.lossRow(a === 0 ? o + p - 1 : o + p + a - 1, real.answer[a], segReal);
    for (let a = 0; a < g; a++) this.lossRow(a === 0 ? o + p - 1 : o + p + r + a - 1, gen.answer[a], segGen);
    this.seqLength = Math.max(this.seqLength, p + r, p + g);
    return [r, g];
  }

  finish(counts: Float32Array): PackedBatch {
    const length = Math.max(1, this.ids.length);
    const pad = length - this.ids.length; // an empty batch: one masked position that sees only itself
    for (let k = 0; k < pad; k++) {
      this.ids.push(0);
      this.mask.push(0);
      this.pos.push(0);
      this.spans.push(0, 0, 0);
    }
    const targets = new Int32Array(length).fill(-100);
    const segments = new Int32Array(length).fill(-1);
    // per position where one target is meant (the shared prompt token keeps its real-answer target)
    for (let k = this.lossRows.length - 1; k >= 0; k--) {
      targets[this.lossRows[k]] = this.lossTargets[k];
      segments[this.lossRows[k]] = this.lossSegs[k];
    }
    return {
      rows: 1,
      length,
      inputIds: Int32Array.from(this.ids),
      attentionMask: Int32Array.from(this.mask),
      positions: Int32Array.from(this.pos),
      targets,
      segments,
      targetCounts: counts,
      spans: Int32Array.from(this.spans),
      loss: { rows: Int32Array.from(this.lossRows), targets: Int32Array.from(this.lossTargets), segments: Int32Array.from(this.lossSegs) },
      seqLength: this.seqLength,
    };
  }
}

/** The pairs of a micro-batch in one packed row (sequences: real answers 0..B-1, generated B..2B-1). */
export function packSpinBatch(pairs: readonly TokenizedPair[], eosId: number, opts: { dropIdentical?: boolean } = {}): PackedSpinBatch {
  const b = pairs.length;
  const rb = new RowBuilder(eosId);
  const counts = new Float32Array(2 * b);
  pairs.forEach((p, i) => ([counts[i], counts[b + i]] = rb.pair(p, i, b + i)));
  return { ...rb.finish(counts), pairs: b, pairMask: pairMaskOf(pairs, !!opts.dropIdentical) };
}

/** Sequences (SFT) in one packed row, sequence i = seqs[i]. */
export function packSequences(seqs: readonly TokenizedSequence[], eosId: number): PackedBatch {
  const rb = new RowBuilder(eosId);
  const counts = new Float32Array(seqs.length);
  seqs.forEach((s, i) => (counts[i] = rb.sequence(s, i)));
  return rb.finish(counts);
}

/**
 * Splits items (in order) into runs of at most `maxTokens` tokens (tokensOf each); an item over the budget
 * alone is a run of its own. maxTokens 0: one run.
 */
export function splitByTokens<T>(items: readonly T[], tokensOf: (x: T) => number, maxTokens: number): T[][] {
  if (!(maxTokens > 0)) return items.length ? [[...items]] : [];
  const runs: T[][] = [];
  let cur: T[] = [],
    used = 0;
  for (const x of items) {
    const t = tokensOf(x);
    if (cur.length > 0 && used + t > maxTokens) {
      runs.push(cur);
      cur = [];
      used = 0;
    }
    cur.push(x);
    used += t;
  }
  if (cur.length) runs.push(cur);
  return runs;
}
