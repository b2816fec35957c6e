// Tokenization, truncation and collation of SPIN pairs, as the official SPIN collator does it.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { collateSequences, collateSpinBatch, IGNORE_INDEX, tokenizePair, tokenizeSft } from '../src/spin/batch.js';

// A character tokenizer: id = char code; '#' stands for the EOS token (id 35).
const EOS = 35;
const tok = { encode: (s: string) => [...s].map((c) => c.charCodeAt(0)), eosId: EOS };
const ids = (s: string) => tok.encode(s);

test('answers get EOS; nothing is cut when prompt + longer answer fits', () => {
  const p = tokenizePair(tok, 'abc', 'xy', 'z', { maxLength: 10, maxPromptLength: 4 });
  assert.deepEqual(p.real, { prompt: ids('abc'), answer: [...ids('xy'), EOS] });
  assert.deepEqual(p.generated, { prompt: ids('abc'), answer: [...ids('z'), EOS] });
});

test('too long: the prompt keeps its last max_prompt_length tokens (keep_end) or its first (keep_start)', () => {
  const end = tokenizePair(tok, 'abcdefgh', 'xyz', 'q', { maxLength: 8, maxPromptLength: 3 });
  assert.deepEqual(end.real.prompt, ids('fgh'));
  assert.deepEqual(end.real.answer, [...ids('xyz'), EOS]);
  const start = tokenizePair(tok, 'abcdefgh', 'xyz', 'q', { maxLength: 8, maxPromptLength: 3, truncationMode: 'keep_start' });
  assert.deepEqual(start.real.prompt, ids('abc'));
});

test('still too long: both answers are cut to max_length - max_prompt_length', () => {
  const p = tokenizePair(tok, 'abcdefgh', 'uvwxyz', 'qrstuvwxyz', { maxLength: 8, maxPromptLength: 3 });
  assert.deepEqual(p.real.prompt, ids('fgh'));
  assert.deepEqual(p.real.answer, ids('uvwxy'));
  assert.deepEqual(p.generated.answer, ids('qrstu'));
  assert.ok(p.real.prompt.length + p.real.answer.length <= 8);
});

test('collation: right padding, shifted targets, segments = rows, EOS in text not attended', () => {
  const b = collateSequences(
    [
      { prompt: ids('ab'), answer: [...ids('c'), EOS] },
      { prompt: ids('a#'), answer: [...ids('xy'), EOS] },
    ],
    EOS,
    0,
  );
  assert.equal(b.length, 5);
  assert.deepEqual([...b.inputIds], [...ids('abc'), EOS, 0, ...ids('a#xy'), EOS]);
  assert.deepEqual([...b.attentionMask], [1, 1, 1, 1, 0, 1, 0, 1, 1, 1]);
  // row 0: position 1 ('b') predicts 'c', position 2 predicts EOS
  assert.deepEqual([...b.targets], [IGNORE_INDEX, 99, EOS, IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX, 120, 121, EOS, IGNORE_INDEX]);
  assert.deepEqual([...b.segments], [-1, 0, 0, -1, -1, -1, 1, 1, 1, -1]);
  assert.deepEqual([...b.targetCounts], [2, 3]);
  assert.deepEqual([...b.positions], [0, 1, 2, 3, 4, 0, 1, 2, 3, 4]);
});

test('SPIN batch: real rows then generated rows; identical pairs dropped only when asked', () => {
  const pairs = [
    tokenizePair(tok, 'p', 'same', 'same', { maxLength: 20, maxPromptLength: 5 }),
    tokenizePair(tok, 'q', 'a', 'bb', { maxLength: 20, maxPromptLength: 5 }),
  ];
  const kept = collateSpinBatch(pairs, EOS, 0);
  assert.equal(kept.rows, 4);
  assert.equal(kept.pairs, 2);
  assert.deepEqual([...kept.pairMask], [1, 1]);
  assert.deepEqual(
    [...kept.inputIds.subarray(kept.length, 2 * kept.length)].slice(0, 3),
    [...ids('qa'), EOS],
    'row 1 = real answer of pair 1',
  );
  assert.deepEqual(
    [...kept.inputIds.subarray(3 * kept.length, 4 * kept.length)].slice(0, 4),
    [...ids('qbb'), EOS],
    'row 3 = generated answer of pair 1',
  );
  const dropped = collateSpinBatch(pairs, EOS, 0, { dropIdentical: true });
  assert.deepEqual([...dropped.pairMask], [0, 1]);
});

test('SFT tokenization follows the same truncation', () => {
  const s = tokenizeSft(tok, 'abcdefgh', 'xyz', { maxLength: 6, maxPromptLength: 2 });
  assert.deepEqual(s.prompt, ids('gh'));
  assert.deepEqual(s.answer, ids('xyz#').slice(0, 4));
});
