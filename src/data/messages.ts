// Chat messages in the UltraChat / Hugging Face layout: [{role, content}, ...].
import type { ChatMessage } from '../text/templates.js';
import { preview, RowProblem } from './data_error.js';

export type { ChatMessage };

/** Checks `value` is a list of {role: string, content: string}; `field` names it in errors. */
export function parseMessages(value: unknown, field: string): ChatMessage[] {
  if (!Array.isArray(value)) throw new RowProblem(`"${field}" must be a list of {role, content} messages, got ${preview(value)}`);
  return value.map((m, i) => {
    if (m === null || typeof m !== 'object' || Array.isArray(m)) {
      throw new RowProblem(`"${field}"[${i}] must be an object {role, content}, got ${preview(m)}`);
    }
    const { role, content } = m as Record<string, unknown>;
    if (typeof role !== 'string') throw new RowProblem(`"${field}"[${i}].role must be a string, got ${preview(role)}`);
    if (typeof content !== 'string') throw new RowProblem(`"${field}"[${i}].content must be a string, got ${preview(content)}`);
    return { role, content };
  });
}

/**
 * Which round of a conversation is the answer: 'last' (the last assistant turn, every turn before it
 * the prompt) or 'first' (the official SPIN: the first assistant turn after the first user turn).
 */
export type Rounds = 'first' | 'last';

/** A conversation split into prompt and answer. */
export interface ChatRound {
  /** The user turn the answer replies to (the last one before it). */
  prompt: string;
  /** The answer: the chosen assistant turn's content. */
  real: string;
  /** Every turn before the answer, system turns included; only when that is more than the lone user turn. */
  messages?: ChatMessage[];
}

const rolesOf = (messages: readonly ChatMessage[]) => preview(messages.map((m) => m.role));

function lastIndex<T>(xs: readonly T[], ok: (x: T, i: number) => boolean): number {
  for (let i = xs.length - 1; i >= 0; i--) if (ok(xs[i], i)) return i;
  return -1;
}

/**
 * Splits a conversation into the turns before the answer and the answer. 'last' (the default for
 * chat templates): the answer is the last assistant turn with a user turn before it; turns after it
 * are not used. 'first' (the official SPIN, and the instruction template): the first assistant turn
 * after the first user turn; system turns before that user turn are kept in `messages`. An empty
 * (all-whitespace) prompt is an error, and so is an empty answer unless `allowEmptyAnswer` (a
 * generated answer may be empty).
 */
export function chatRound(messages: ChatMessage[], field: string, rounds: Rounds = 'first', allowEmptyAnswer = false): ChatRound {
  const u0 = messages.findIndex((m) => m.role === 'user');
  if (u0 < 0) throw new RowProblem(`"${field}" has no user turn (roles: ${rolesOf(messages)})`);
  let a: number;
  if (rounds === 'first') a = messages.findIndex((m, i) => i > u0 && m.role === 'assistant');
  else a = lastIndex(messages, (m, i) => i > u0 && m.role === 'assistant');
  if (a < 0) throw new RowProblem(`"${field}" has no assistant turn after the first user turn (roles: ${rolesOf(messages)})`);
  const context = rounds === 'first' ? [...messages.slice(0, u0).filter((m) => m.role === 'system'), messages[u0]] : messages.slice(0, a);
  const u = rounds === 'first' ? u0 : lastIndex(context, (m) => m.role === 'user');
  const prompt = rounds === 'first' ? messages[u0].content : context[u].content;
  const real = messages[a].content;
  const which = rounds === 'first' ? 'first' : 'last';
  if (prompt.trim() === '')
    throw new RowProblem(`"${field}"[${rounds === 'first' ? u0 : u}] (the ${which} user turn before the answer) is empty`);
  if (!allowEmptyAnswer && real.trim() === '') throw new RowProblem(`"${field}"[${a}] (the ${which} assistant turn) is empty`);
  const round: ChatRound = { prompt, real };
  if (context.length > 1) round.messages = context.map((m) => ({ role: m.role, content: m.content }));
  return round;
}

/** The first round (the official SPIN): chatRound with rounds 'first'. */
export function firstRound(messages: ChatMessage[], field: string, allowEmptyAnswer = false): { prompt: string; real: string } {
  const { prompt, real } = chatRound(messages, field, 'first', allowEmptyAnswer);
  return { prompt, real };
}

/** The turns before an answer: `messages` when given, else the lone user turn `prompt`. */
export function contextOf(p: { prompt: string; messages?: readonly ChatMessage[] }): ChatMessage[] {
  return p.messages ? p.messages.map((m) => ({ role: m.role, content: m.content })) : [{ role: 'user', content: p.prompt }];
}

/** Two contexts are the same conversation (role and content of every turn). */
export function sameContext(a: readonly ChatMessage[], b: readonly ChatMessage[]): boolean {
  return a.length === b.length && a.every((m, i) => m.role === b[i].role && m.content === b[i].content);
}

/** [user prompt, assistant answer]: one round in the official pair layout. */
export function roundMessages(prompt: string, answer: string): ChatMessage[] {
  return [
    { role: 'user', content: prompt },
    { role: 'assistant', content: answer },
  ];
}
