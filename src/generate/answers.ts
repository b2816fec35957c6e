// Text in, text out: the model's answers to templated prompts, optionally journaled so that a rerun
// after a kill skips the prompts already answered. Each prompt samples from its own RNG stream (its
// index in the full list), so a resumed run writes exactly what an uninterrupted one would.
//
// The journal's first line is its fingerprint: a digest of the prompts (in order), the sampling
// settings, and what the caller adds (the model's files, the command's options). A journal made by
// anything else is refused with the differences named, never reused (docs/reliability.md).
import { createHash } from 'node:crypto';
import { existsSync, readFileSync, truncateSync } from 'node:fs';
import { appendFileNamed, writeFileNamed } from '../util/atomic.js';
import { type DecoderModel, generate, type GenerateOptions } from './generate.js';

export interface AnswerTokenizer {
  encode(text: string): number[];
  decode(ids: readonly number[], opts?: { skipSpecialTokens?: boolean }): string;
  readonly eosId: number;
  /** Largest id + 1: no id at or past it is sampled (a model's vocab_size may be larger). */
  readonly vocabSize?: number;
  /** Ids below vocabSize the tokenizer does not define: never sampled either. */
  readonly gapIds?: readonly number[];
}

/** What produced a journal besides the prompts and sampling settings, and how to name a difference. */
export interface JournalKey {
  value: unknown;
  /** The differences between an earlier journal's value and this one, one phrase each (empty: the same). */
  diff(was: unknown): string[];
}

export interface AnswerOptions extends Omit<GenerateOptions, 'eosIds' | 'onProgress' | 'onBatch' | 'streamIds'> {
  /** JSONL journal of finished answers ({"i", "text"} per line, after a fingerprint line), appended per batch. */
  journal?: string;
  /** What produced the answers besides the prompts and the sampling settings (model identity, command options). */
  journalKey?: JournalKey;
  /**
   * Reuse a journal without a fingerprint line (written by an earlier spinlm) instead of refusing it:
   * for journals inside a run directory, whose own fingerprint already vouches for them.
   */
  adoptUnmarkedJournal?: boolean;
  /** Added to every prompt's stream id: draw s of the same prompts uses offset s x prompts.length. */
  streamOffset?: number;
  /** Ids that end an answer besides the tokenizer's EOS (stops.ts stopIdsOf: config eos ids, the template's end of turn). */
  stopIds?: readonly number[];
  onProgress?: (done: number, total: number, tokens: number) => void | Promise<void>;
}

/** The day a journal's prompts were rendered with (its fingerprint line's produced_by.template_date), or undefined. */
export function journalTemplateDate(file: string): string | undefined {
  if (!existsSync(file)) return undefined;
  try {
    const head = JSON.parse(readFileSync(file, 'utf8').split('\n', 1)[0]) as { produced_by?: { template_date?: unknown } };
    const d = head.produced_by?.template_date;
    return typeof d === 'string' ? d : undefined;
  } catch {
    return undefined;
  }
}

/** A journal made by another model, other settings or other prompts. */
export class JournalMismatchError extends Error {
  constructor(
    readonly file: string,
    readonly diffs: string[],
  ) {
    super(
      `${file}: a partial journal of answers made by another run: ${diffs.join('; ')}. Rerun with the same model, settings and data to resume, or delete ${file} to start over`,
    );
  }
}

interface JournalHeader {
  journal: 'spinlm answers';
  prompts: string;
  count: number;
  settings: Record<string, unknown>;
  produced_by?: unknown;
}

function headerOf(prompts: readonly string[], o: AnswerOptions): JournalHeader {
  const h = createHash('sha256');
  for (const p of prompts) h.update(`${p.length}:${p}`);
  const settings = {
    temperature: o.temperature,
    top_p: o.topP,
    top_k: o.topK,
    max_new_tokens: o.maxNewTokens,
    seed: o.seed,
    stream_offset: o.streamOffset ?? 0,
    stop: o.stopSequences ?? [],
    ...(o.stopIds?.length ? { stop_ids: [...o.stopIds] } : {}),
  };
  return {
    journal: 'spinlm answers',
    prompts: `sha256 ${h.digest('hex')}`,
    count: prompts.length,
    settings,
    produced_by: o.journalKey?.value,
  };
}

const show = (v: unknown) => (v === undefined ? '(not set)' : JSON.stringify(v));

function headerDiff(was: JournalHeader, now: JournalHeader, key: JournalKey | undefined): string[] {
  const diffs = key ? key.diff(was.produced_by) : [];
  if (!key && JSON.stringify(was.produced_by) !== JSON.stringify(now.produced_by)) diffs.push('the model or options differ');
  if (was.prompts !== now.prompts)
    diffs.push(`the prompts differ (${was.count} before, ${now.count} now; the data, its order, --n or the template changed)`);
  if (diffs.length === 0)
    for (const k of Object.keys(now.settings))
      if (JSON.stringify(was.settings?.[k]) !== JSON.stringify(now.settings[k]))
        diffs.push(`${k} (was ${show(was.settings?.[k])}, now ${show(now.settings[k])})`);
  return diffs;
}

/**
 * Answers already in a journal (its text, read by the caller); a torn last line (a killed run) is ignored and regenerated. With
 * `expect`, the journal's fingerprint line must match it (JournalMismatchError otherwise); a
 * journal without one is refused unless `adoptUnmarked`.
 */
function parseJournal(
  file: string,
  text: string,
  expect?: { header: JournalHeader; key?: JournalKey; adoptUnmarked?: boolean },
): Map<number, string> {
  const done = new Map<number, string>();
  const lines = text.split('\n');
  let first = true;
  for (const line of lines) {
    if (!line.trim()) continue;
    let row: (Partial<JournalHeader> & { i?: number; text?: string }) | null = null;
    try {
      row = JSON.parse(line);
    } catch {
      // torn line
    }
    if (first && expect) {
      first = false;
      if (row?.journal === 'spinlm answers') {
        const diffs = headerDiff(row as JournalHeader, expect.header, expect.key);
        if (diffs.length) throw new JournalMismatchError(file, diffs);
        continue;
      }
      if (row && !expect.adoptUnmarked) throw new JournalMismatchError(file, ['it has no fingerprint (written by an earlier spinlm)']);
    }
    if (row && Number.isSafeInteger(row.i) && typeof row.text === 'string') done.set(row.i!, row.text);
  }
  return done;
}

/**
 * Opens a journal for appending: checks an existing one (readJournal), cuts a torn last line so the
 * next answer starts a line of its own, and starts a new one with its fingerprint line.
 */
function openJournal(file: string, prompts: readonly string[], o: AnswerOptions): Map<number, string> {
  const header = headerOf(prompts, o);
  const text = existsSync(file) ? readFileSync(file, 'utf8') : '';
  const done = parseJournal(file, text, { header, key: o.journalKey, adoptUnmarked: o.adoptUnmarkedJournal });
  const hasHeader = text.startsWith('{"journal":"spinlm answers"') && text.includes('\n');
  if (done.size === 0 && !hasHeader) writeFileNamed(file, `${JSON.stringify(header)}\n`);
  else if (!text.endsWith('\n')) truncateSync(file, Buffer.byteLength(text.slice(0, text.lastIndexOf('\n') + 1)));
  return done;
}

/** Answers (decoded, surrounding whitespace stripped as the official generate.py does), in prompt order. */
export async function answerPrompts(
  model: DecoderModel,
  tok: AnswerTokenizer,
  prompts: readonly string[],
  o: AnswerOptions,
): Promise<string[]> {
  const texts = o.journal ? openJournal(o.journal, prompts, o) : new Map<number, string>();
  const todo = prompts.map((_, i) => i).filter((i) => !texts.has(i));
  let tokens = 0;
  await generate(
    model,
    todo.map((i) => tok.encode(prompts[i])),
    {
      ...o,
      eosIds: [...new Set([tok.eosId, ...(o.stopIds ?? [])])],
      vocabLimit: tok.vocabSize,
      excludedIds: tok.gapIds,
      streamIds: todo.map((i) => i + (o.streamOffset ?? 0)),
      onBatch: (idx, gens) => {
        const lines = idx.map((j, k) => {
          const text = tok.decode(gens[k].tokens, { skipSpecialTokens: true }).trim();
          texts.set(todo[j], text);
          tokens += gens[k].tokens.length;
          return JSON.stringify({ i: todo[j], text });
        });
        if (o.journal) appendFileNamed(o.journal, `${lines.join('\n')}\n`);
      },
      onProgress: () => o.onProgress?.(texts.size, prompts.length, tokens),
    },
  );
  return prompts.map((_, i) => texts.get(i)!);
}
