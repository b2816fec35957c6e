// Generation prompts: the official SPIN instruction template, or a model's Jinja chat template
// rendered the way transformers' apply_chat_template does (trim_blocks, lstrip_blocks).
import { Template } from '@huggingface/jinja';

/** The prompt format of the official SPIN code (generation and training). */
export const SPIN_INSTRUCTION_TEMPLATE = '### Instruction: {prompt}\n\n### Response: ';

/** `### Instruction: {prompt}\n\n### Response: ` with the prompt put in verbatim. */
export function instructionPrompt(prompt: string): string {
  if (typeof prompt !== 'string') throw new TypeError(`instructionPrompt: expected a string, got ${typeof prompt}`);
  return `### Instruction: ${prompt}\n\n### Response: `;
}

/** One turn in the Hugging Face / UltraChat layout. */
export interface ChatMessage {
  role: string; // 'system' | 'user' | 'assistant' (others are kept but never used as a turn)
  content: string;
}

export interface ChatTemplateOptions {
  /** End with the opening of an assistant turn (what generation continues from). */
  addGenerationPrompt?: boolean;
  bosToken?: string | null;
  eosToken?: string | null;
  /** Names the template in errors (e.g. the tokenizer_config.json path). */
  source?: string;
}

const compiled = new Map<string, Template>();

/** Renders a chat template over `messages`; template errors name `source`. */
export function renderChatTemplate(template: string, messages: readonly ChatMessage[], opts: ChatTemplateOptions = {}): string {
  const source = opts.source ?? 'chat template';
  let t = compiled.get(template);
  try {
    if (!t) {
      t = new Template(template);
      compiled.set(template, t);
    }
    return t.render({
      messages: messages.map((m) => ({ role: m.role, content: m.content })),
      add_generation_prompt: opts.addGenerationPrompt ?? false,
      bos_token: opts.bosToken ?? '',
      eos_token: opts.eosToken ?? '',
    });
  } catch (err) {
    throw new Error(`${source}: cannot render the chat template (${(err as Error).message})`, { cause: err });
  }
}

/** What chatGenerationPrompt needs from a tokenizer (HfTokenizer has all of it). */
export interface ChatTemplateSource {
  chatTemplate: string | null;
  bosToken: string | null;
  eosToken: string | null;
  dir?: string;
}

/**
 * The generation prompt for one user message under the tokenizer's chat template. The text may
 * contain the bos token string (many templates start with it); encode() maps it to its id.
 */
export function chatGenerationPrompt(tok: ChatTemplateSource, userMessage: string): string {
  const source = tok.dir !== undefined ? `${tok.dir} (tokenizer_config.json)` : 'tokenizer';
  if (tok.chatTemplate === null) throw new Error(`${source}: has no chat_template; use the instruction template instead`);
  return renderChatTemplate(tok.chatTemplate, [{ role: 'user', content: userMessage }], {
    addGenerationPrompt: true,
    bosToken: tok.bosToken,
    eosToken: tok.eosToken,
    source,
  });
}

export type PromptTemplate = 'instruction' | 'chat';

/** The default template: chat when the tokenizer has a chat_template, else the official SPIN instruction template. */
export function defaultTemplate(tok: ChatTemplateSource): PromptTemplate {
  return tok.chatTemplate !== null ? 'chat' : 'instruction';
}

/** The text a model sees before its answer to `prompt`, under the chosen template. */
export function formatPrompt(tok: ChatTemplateSource, template: PromptTemplate, prompt: string): string {
  if (template === 'instruction') return instructionPrompt(prompt);
  if (template === 'chat') return chatGenerationPrompt(tok, prompt);
  throw new RangeError(`unknown template '${String(template)}': expected 'instruction' or 'chat'`);
}
