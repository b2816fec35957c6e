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
 * The first round, as the official SPIN takes it: the first user message and the first assistant
 * reply after it. Leading system messages are passed over. An empty (all-whitespace) prompt is an
 * error, and so is an empty answer unless `allowEmptyAnswer` (a generated answer may be empty).
 */
export function firstRound(messages: ChatMessage[], field: string, allowEmptyAnswer = false): { prompt: string; real: string } {
  const u = messages.findIndex((m) => m.role === 'user');
  if (u < 0) throw new RowProblem(`"${field}" has no user turn (roles: ${preview(messages.map((m) => m.role))})`);
  const a = messages.findIndex((m, i) => i > u && m.role === 'assistant');
  if (a < 0)
    throw new RowProblem(`"${field}" has no assistant turn after the first user turn (roles: ${preview(messages.map((m) => m.role))})`);
  const prompt = messages[u].content;
  const real = messages[a].content;
  if (prompt.trim() === '') throw new RowProblem(`"${field}"[${u}] (the first user turn) is empty`);
  if (!allowEmptyAnswer && real.trim() === '') throw new RowProblem(`"${field}"[${a}] (the first assistant turn) is empty`);
  return { prompt, real };
}

/** [user prompt, assistant answer]: one round in the official pair layout. */
export function roundMessages(prompt: string, answer: string): ChatMessage[] {
  return [
    { role: 'user', content: prompt },
    { role: 'assistant', content: answer },
  ];
}
