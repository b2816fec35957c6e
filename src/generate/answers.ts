// Text in, text out: the model's answers to templated prompts, optionally journaled so that a rerun
// after a kill skips the prompts already answered. Each prompt samples from its own RNG stream (its
// index in the full list), so a resumed run writes exactly what an uninterrupted one would.
import { appendFileSync, existsSync, readFileSync } from 'node:fs';
import { type DecoderModel, generate, type GenerateOptions } from './generate.js';

export interface AnswerTokenizer {
  encode(text: string): number[];
  decode(ids: readonly number[], opts?: { skipSpecialTokens?: boolean }): string;
  readonly eosId: number;
}

export interface AnswerOptions extends Omit<GenerateOptions, 'eosIds' | 'onProgress' | 'onBatch' | 'streamIds'> {
  /** JSONL journal of finished answers ({"i", "text"} per line), appended per batch. */
  journal?: string;
  /** Added to every prompt's stream id: draw s of the same prompts uses offset s x prompts.length. */
  streamOffset?: number;
  /** Ids that end an answer besides the tokenizer's EOS (stops.ts stopIdsOf: config eos ids, the template's end of turn). */
  stopIds?: readonly number[];
  onProgress?: (done: number, total: number, tokens: number) => void | Promise<void>;
}

/** The day a journal's prompts were rendered with (its first line {"template_date"}), or undefined. */
export function journalTemplateDate(file: string): string | undefined {
  if (!existsSync(file)) return undefined;
  try {
    const d = (JSON.parse(readFileSync(file, 'utf8').split('\n', 1)[0]) as { template_date?: unknown }).template_date;
    return typeof d === 'string' ? d : undefined;
  } catch {
    return undefined;
  }
}

/** Starts a journal with the day its prompts are rendered with (readJournal passes that line over). */
export function startJournal(file: string, templateDate: string): void {
  if (!existsSync(file)) appendFileSync(file, `${JSON.stringify({ template_date: templateDate })}\n`);
}

/** Answers already in a journal; a torn last line (a killed run) is ignored and regenerated. */
export function readJournal(file: string): Map<number, string> {
  const done = new Map<number, string>();
  if (!existsSync(file)) return done;
  for (const line of readFileSync(file, 'utf8').split('\n')) {
    if (!line.trim()) continue;
    try {
      const row = JSON.parse(line) as { i: number; text: string };
      if (Number.isSafeInteger(row.i) && typeof row.text === 'string') done.set(row.i, row.text);
    } catch {
      // torn line
    }
  }
  return done;
}

/** Answers (decoded, surrounding whitespace stripped as the official generate.py does), in prompt order. */
export async function answerPrompts(
  model: DecoderModel,
  tok: AnswerTokenizer,
  prompts: readonly string[],
  o: AnswerOptions,
): Promise<string[]> {
  const texts = o.journal ? readJournal(o.journal) : new Map<number, string>();
  const todo = prompts.map((_, i) => i).filter((i) => !texts.has(i));
  let tokens = 0;
  await generate(
    model,
    todo.map((i) => tok.encode(prompts[i])),
    {
      ...o,
      eosIds: [...new Set([tok.eosId, ...(o.stopIds ?? [])])],
      streamIds: todo.map((i) => i + (o.streamOffset ?? 0)),
      onBatch: (idx, gens) => {
        const lines = idx.map((j, k) => {
          const text = tok.decode(gens[k].tokens, { skipSpecialTokens: true }).trim();
          texts.set(todo[j], text);
          tokens += gens[k].tokens.length;
          return JSON.stringify({ i: todo[j], text });
        });
        if (o.journal) appendFileSync(o.journal, `${lines.join('\n')}\n`);
      },
      onProgress: () => o.onProgress?.(texts.size, prompts.length, tokens),
    },
  );
  return prompts.map((_, i) => texts.get(i)!);
}
