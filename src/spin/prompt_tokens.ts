// Conversations into prompt and answer tokens, under either template (docs/algorithm.md, "Chats into
// tokens"):
//  - instruction (the official SPIN format): `### Instruction: {prompt}\n\n### Response: `; prompt and
//    answer tokenized separately, EOS appended to the answer (batch.ts tokenizePair, unchanged);
//  - chat: the turns before the answer rendered with add_generation_prompt (the prompt) and the whole
//    conversation with the answer as the last assistant turn; the conversation is tokenized once and
//    split where the prompt's text ends, so a BPE merge across the boundary cannot change ids. The
//    answer is what the template renders for the assistant turn, its end of turn included; EOS is
//    appended only when that rendering does not already end with it (trailing whitespace aside).
//    A prompt that is not a prefix of the conversation is refused, naming the row.
import {
  chatContext,
  chatSettings,
  endOfTurnId,
  type ChatSettings,
  type ChatTemplateSource,
  formatPrompt,
  type PromptSource,
  renderChat,
  type PromptTemplate,
} from '../text/templates.js';
import {
  charCap,
  type TextTokenizer,
  type TokenizedPair,
  type TokenizedSequence,
  tokenizePair,
  truncatePair,
  type TruncationOptions,
} from './batch.js';

/** What chat tokenization needs: encode, decode (to place a boundary inside a token), EOS and the chat template. */
export interface ChatTokenizer extends TextTokenizer, ChatTemplateSource {
  decode(ids: readonly number[], opts?: { skipSpecialTokens?: boolean; cleanUpSpaces?: boolean }): string;
}

/** A row whose chat rendering cannot be split into prompt and answer. */
export class ChatSplitError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ChatSplitError';
  }
}

const show = (s: string, n = 60) => JSON.stringify(s.length > n ? `${s.slice(0, n)}...` : s);

/**
 * Where the conversation's ids `ids` leave the prompt, whose own ids are `promptIds`: after the ids
 * both share, then after each further id still wholly inside the prompt's text (compared decoded,
 * as both go through the same decoder). A token that spans the boundary goes to the answer.
 */
function splitIndex(tok: ChatTokenizer, ids: readonly number[], promptIds: readonly number[]): number {
  let k = 0;
  while (k < promptIds.length && k < ids.length && promptIds[k] === ids[k]) k++;
  if (k === promptIds.length) return k;
  const target = tok.decode(promptIds, { cleanUpSpaces: false });
  while (k < ids.length) {
    const head = tok.decode(ids.slice(0, k + 1), { cleanUpSpaces: false });
    if (head.length > target.length || !target.startsWith(head)) break;
    k++;
  }
  return k;
}

/**
 * Prompt and answer tokens of one conversation under a chat template. `where` names the row in errors.
 */
export function chatSequence(
  tok: ChatTokenizer,
  src: PromptSource,
  answer: string,
  settings: ChatSettings,
  where = 'a row',
): TokenizedSequence {
  const context = chatContext(src, settings);
  const promptText = renderChat(tok, context, true, settings);
  const fullText = renderChat(tok, [...context, { role: 'assistant', content: answer }], false, settings);
  if (!fullText.startsWith(promptText)) {
    let i = 0;
    while (i < promptText.length && promptText[i] === fullText[i]) i++;
    throw new ChatSplitError(
      `${where}: the chat template renders the prompt (add_generation_prompt) as text that does not begin the conversation with the answer ` +
        `(they differ at character ${i}: prompt ${show(promptText.slice(i))}, conversation ${show(fullText.slice(i))}); ` +
        'such a template (e.g. one that drops earlier reasoning blocks) cannot be split into prompt and answer tokens: use another template or drop the row',
    );
  }
  const ids = tok.encode(fullText);
  const promptIds = tok.encode(promptText);
  // usually the prompt's own ids begin the conversation's (the template ends the prompt at a special
  // token or a newline); when a merged token spans the boundary, it goes to the answer
  const k = splitIndex(tok, ids, promptIds);
  let answerIds = ids.slice(k);
  // the assistant turn ends at its end-of-turn token and the whitespace after it; anything the
  // template writes after that (e.g. an unconditional next assistant header) belongs to no answer
  const eot = endOfTurnId(tok, settings);
  const at = eot === null ? -1 : answerIds.indexOf(eot);
  if (at >= 0) {
    let end = at + 1;
    while (end < answerIds.length && tok.decode([answerIds[end]]).trim() === '' && answerIds[end] !== tok.eosId) end++;
    if (answerIds[end] === tok.eosId) end++;
    answerIds = answerIds.slice(0, end);
  }
  // EOS only when the rendering does not already end with it (trailing whitespace aside)
  let last = answerIds.length - 1;
  while (last >= 0 && answerIds[last] !== tok.eosId && tok.decode([answerIds[last]]).trim() === '') last--;
  if (last < 0 || answerIds[last] !== tok.eosId) answerIds.push(tok.eosId);
  return { prompt: ids.slice(0, k), answer: answerIds, attendEos: true };
}

/** `answer` cut to the characters worth tokenizing (batch.ts charCap): its start is kept. */
function capped(tok: TextTokenizer, answer: string, t: TruncationOptions): string {
  const cap = charCap(tok, t.maxLength);
  return answer.length > cap ? answer.slice(0, cap) : answer;
}

/** Tokenizes and truncates one (conversation, real, generated) triple under `template`. */
export function tokenizeChatPair(
  tok: ChatTokenizer,
  template: PromptTemplate,
  src: PromptSource,
  real: string,
  generated: string,
  t: TruncationOptions,
  where?: string,
): TokenizedPair {
  const settings = chatSettings(template);
  if (settings === null) return tokenizePair(tok, formatPrompt(tok, template, src), real, generated, t);
  return truncatePair(
    chatSequence(tok, src, capped(tok, real, t), settings, where),
    chatSequence(tok, src, capped(tok, generated, t), settings, where),
    t,
  );
}

/** Tokenizes one (conversation, answer) for supervised fine-tuning, with the same rules. */
export function tokenizeChatSft(
  tok: ChatTokenizer,
  template: PromptTemplate,
  src: PromptSource,
  answer: string,
  t: TruncationOptions,
  where?: string,
): TokenizedSequence {
  const settings = chatSettings(template);
  if (settings === null) return tokenizePair(tok, formatPrompt(tok, template, src), answer, '', t).real;
  const seq = chatSequence(tok, src, capped(tok, answer, t), settings, where);
  // no generated answer: the real one alone decides the truncation
  return truncatePair(seq, { prompt: seq.prompt, answer: [] }, t).real;
}
