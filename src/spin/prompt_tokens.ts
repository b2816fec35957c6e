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
 * Index of the first token that is not wholly inside the first `chars` characters of the text `ids`
 * encode: the largest k whose decoded prefix is a prefix of `text` no longer than `chars`.
 */
function splitIndex(tok: ChatTokenizer, ids: readonly number[], text: string, chars: number): number {
  let lo = 0;
  let hi = ids.length;
  while (lo < hi) {
    const mid = (lo + hi + 1) >> 1;
    const head = tok.decode(ids.slice(0, mid), { cleanUpSpaces: false });
    if (head.length <= chars && text.startsWith(head)) lo = mid;
    else hi = mid - 1;
  }
  return lo;
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
  // the usual case: the template ends the prompt at a special token or a newline, and no token spans the boundary
  let k = promptIds.length <= ids.length && promptIds.every((id, j) => id === ids[j]) ? promptIds.length : -1;
  if (k < 0) k = splitIndex(tok, ids, fullText, promptText.length); // a merged token spans it: it goes to the answer
  const answerIds = ids.slice(k);
  if (tok.eosToken === null || !fullText.trimEnd().endsWith(tok.eosToken)) answerIds.push(tok.eosId);
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
