// Generation prompts: the official SPIN instruction template, or a model's Jinja chat template
// rendered the way transformers' apply_chat_template does (trim_blocks, lstrip_blocks).
import { Environment, Interpreter, Template } from '@huggingface/jinja';

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
  /**
   * The day `strftime_now` reports (YYYY-MM-DD; Llama 3.2's template writes "Today Date"): one fixed
   * day per run so prompts do not change with the calendar. Default: today (UTC).
   */
  date?: string;
}

const MONTHS = ['January', 'February', 'March', 'April', 'May', 'June', 'July', 'August', 'September', 'October', 'November', 'December'];
const DAYS = ['Sunday', 'Monday', 'Tuesday', 'Wednesday', 'Thursday', 'Friday', 'Saturday'];

/** Today as YYYY-MM-DD (UTC). */
export function todayUtc(now = new Date()): string {
  return now.toISOString().slice(0, 10);
}

/** Checks a YYYY-MM-DD day and returns it as a UTC midnight Date. */
export function parseDay(day: string): Date {
  const m = /^(\d{4})-(\d{2})-(\d{2})$/.exec(day);
  const d = m ? new Date(Date.UTC(Number(m[1]), Number(m[2]) - 1, Number(m[3]))) : null;
  if (!d || todayUtc(d) !== day) throw new RangeError(`expected a day as YYYY-MM-DD, got ${JSON.stringify(day)}`);
  return d;
}

/** Python's time.strftime in the C locale, for a day at midnight (what strftime_now gives templates). */
export function strftimeDay(day: string, format: string): string {
  const d = parseDay(day);
  const pad = (n: number, w = 2) => String(n).padStart(w, '0');
  const yday = Math.round((d.getTime() - Date.UTC(d.getUTCFullYear(), 0, 1)) / 86_400_000) + 1;
  const codes: Record<string, string> = {
    Y: String(d.getUTCFullYear()),
    y: pad(d.getUTCFullYear() % 100),
    m: pad(d.getUTCMonth() + 1),
    d: pad(d.getUTCDate()),
    e: String(d.getUTCDate()).padStart(2, ' '),
    b: MONTHS[d.getUTCMonth()].slice(0, 3),
    h: MONTHS[d.getUTCMonth()].slice(0, 3),
    B: MONTHS[d.getUTCMonth()],
    a: DAYS[d.getUTCDay()].slice(0, 3),
    A: DAYS[d.getUTCDay()],
    j: pad(yday, 3),
    H: '00',
    I: '12',
    M: '00',
    S: '00',
    p: 'AM',
    '%': '%',
  };
  return format.replace(/%(.)/g, (all, c: string) => codes[c] ?? all);
}

const compiled = new Map<string, Template>();

/**
 * @huggingface/jinja 0.5's str.strip / lstrip / rstrip ignore their argument (Qwen3's template calls
 * content.lstrip('\n'), which then also drops a leading space; found by the jinja2 oracle test).
 * Python's semantics are installed on its string values once: with an argument, only those characters go.
 */
function patchStripMethods(): void {
  const probe = new Environment().set('probe', '') as object;
  const proto = Object.getPrototypeOf(probe) as object;
  const desc = Object.getOwnPropertyDescriptor(proto, 'builtins');
  if (!desc?.get || (proto as { spinlmStrip?: boolean }).spinlmStrip) return;
  const original = desc.get;
  type Fn = { value: (args: { value: unknown }[]) => unknown };
  Object.defineProperty(proto, 'builtins', {
    configurable: true,
    get(this: { value: string }) {
      const map = original.call(this) as Map<string, Fn>;
      const upper = map.get('upper');
      if (!upper || (map as { spinlmStrip?: boolean }).spinlmStrip) return map;
      const FunctionValue = upper.constructor as new (fn: (args: { value: unknown }[]) => unknown) => Fn;
      const StringValue = this.constructor as new (s: string) => unknown;
      const strip = (start: boolean, end: boolean) =>
        new FunctionValue((args) => {
          const chars = args[0]?.value;
          let s = this.value;
          if (typeof chars !== 'string') return new StringValue(start && end ? s.trim() : start ? s.trimStart() : s.trimEnd());
          let a = 0;
          let b = s.length;
          while (start && a < b && chars.includes(s[a])) a++;
          while (end && b > a && chars.includes(s[b - 1])) b--;
          s = s.slice(a, b);
          return new StringValue(s);
        });
      map.set('strip', strip(true, true));
      map.set('lstrip', strip(true, false));
      map.set('rstrip', strip(false, true));
      (map as { spinlmStrip?: boolean }).spinlmStrip = true;
      return map;
    },
  });
  (proto as { spinlmStrip?: boolean }).spinlmStrip = true;
}
patchStripMethods();

/** Python's range(), as the library's global. */
function pyRange(start: number, stop?: number, step = 1): number[] {
  if (stop === undefined) [start, stop] = [0, start];
  if (step === 0) throw new Error('range() step must not be zero');
  const out: number[] = [];
  for (let i = start; step > 0 ? i < stop : i > stop; i += step) out.push(i);
  return out;
}

/**
 * Template.render with the library's globals (true/false/none, raise_exception, range) and our
 * strftime_now: render() declares its own strftime_now (the wall clock), which a context entry
 * cannot replace.
 */
function renderWith(t: Template, items: Record<string, unknown>): string {
  const env = new Environment();
  const globals: Record<string, unknown> = {
    false: false,
    true: true,
    none: null,
    False: false,
    True: true,
    None: null,
    raise_exception: (message: unknown) => {
      throw new Error(String(message));
    },
    range: pyRange,
  };
  for (const [k, v] of Object.entries({ ...globals, ...items })) env.set(k, v);
  return String(new Interpreter(env).run(t.parsed).value);
}

/** Renders a chat template over `messages`; template errors name `source`. */
export function renderChatTemplate(template: string, messages: readonly ChatMessage[], opts: ChatTemplateOptions = {}): string {
  const source = opts.source ?? 'chat template';
  let t = compiled.get(template);
  try {
    if (!t) {
      t = new Template(template);
      compiled.set(template, t);
    }
    return renderWith(t, {
      messages: messages.map((m) => ({ role: m.role, content: m.content })),
      add_generation_prompt: opts.addGenerationPrompt ?? false,
      bos_token: opts.bosToken ?? '',
      eos_token: opts.eosToken ?? '',
      strftime_now: (format: unknown) => strftimeDay(opts.date ?? todayUtc(), String(format)),
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
  /** The file the chat template came from (chat_template.jinja, chat_template.json or tokenizer_config.json). */
  chatTemplateFile?: string | null;
}

/** How the chat template is applied: `--template chat` with its options (docs/algorithm.md, "Chats into tokens"). */
export interface ChatSettings {
  kind: 'chat';
  /** Insert an empty system turn when the conversation has none (the official SPIN data preparation; off by default). */
  emptySystemTurn?: boolean;
  /** The day strftime_now reports (YYYY-MM-DD), fixed per run; default today (UTC). */
  date?: string;
}

/** 'instruction': the official SPIN format; 'chat' (or ChatSettings): the tokenizer's chat template. */
export type PromptTemplate = 'instruction' | 'chat' | ChatSettings;

/** The chat settings of a template; null for the instruction template. */
export function chatSettings(template: PromptTemplate): ChatSettings | null {
  if (template === 'instruction') return null;
  if (template === 'chat') return { kind: 'chat' };
  if (typeof template === 'object' && template !== null && template.kind === 'chat') return template;
  throw new RangeError(`unknown template '${String(template)}': expected 'instruction' or 'chat'`);
}

/**
 * What a prompt is made of: the user turn the answer replies to, and, when the row has more than
 * that turn (a system turn, earlier rounds), every turn before the answer.
 */
export interface PromptSource {
  prompt: string;
  messages?: readonly ChatMessage[];
}

const asSource = (p: string | PromptSource): PromptSource => (typeof p === 'string' ? { prompt: p } : p);

/** The turns before the answer as the chat template sees them (an empty system turn first with emptySystemTurn). */
export function chatContext(p: string | PromptSource, settings: ChatSettings | null = null): ChatMessage[] {
  const src = asSource(p);
  const turns = src.messages ? src.messages.map((m) => ({ role: m.role, content: m.content })) : [{ role: 'user', content: src.prompt }];
  if (settings?.emptySystemTurn && turns[0]?.role !== 'system') turns.unshift({ role: 'system', content: '' });
  return turns;
}

function templateSource(tok: ChatTemplateSource): string {
  return tok.dir !== undefined ? `${tok.dir} (${tok.chatTemplateFile ?? 'tokenizer_config.json'})` : 'tokenizer';
}

/** Renders `messages` with the tokenizer's chat template (its bos / eos strings, the settings' date). */
export function renderChat(
  tok: ChatTemplateSource,
  messages: readonly ChatMessage[],
  addGenerationPrompt: boolean,
  settings: ChatSettings | null = null,
): string {
  const source = templateSource(tok);
  if (tok.chatTemplate === null) throw new Error(`${source}: has no chat_template; use the instruction template instead`);
  return renderChatTemplate(tok.chatTemplate, messages, {
    addGenerationPrompt,
    bosToken: tok.bosToken,
    eosToken: tok.eosToken,
    source,
    date: settings?.date,
  });
}

/**
 * The generation prompt for one user message (or a conversation) under the tokenizer's chat template.
 * The text may contain the bos token string (many templates start with it); encode() maps it to its id.
 */
export function chatGenerationPrompt(tok: ChatTemplateSource, p: string | PromptSource, settings: ChatSettings | null = null): string {
  return renderChat(tok, chatContext(p, settings), true, settings);
}

/** The default template: chat when the tokenizer has a chat_template, else the official SPIN instruction template. */
export function defaultTemplate(tok: ChatTemplateSource): 'instruction' | 'chat' {
  return tok.chatTemplate !== null ? 'chat' : 'instruction';
}

/**
 * The text a model sees before its answer, under the chosen template. The instruction template shows
 * the one user turn `prompt` (the official format has no place for a system turn or earlier rounds);
 * the chat template renders every turn before the answer.
 */
export function formatPrompt(tok: ChatTemplateSource, template: PromptTemplate, p: string | PromptSource): string {
  const settings = chatSettings(template);
  if (settings === null) return instructionPrompt(asSource(p).prompt);
  return chatGenerationPrompt(tok, p, settings);
}

/** What endOfTurnId needs: the chat template and encode / decode. */
export interface EndOfTurnTokenizer extends ChatTemplateSource {
  encode(text: string): number[];
  decode(ids: readonly number[], opts?: { skipSpecialTokens?: boolean }): string;
}

const SENTINEL = 'SPINLMANSWERSENTINEL';
const endOfTurn = new WeakMap<object, Map<string, number | null>>();

/**
 * The first special token the chat template writes after an assistant turn's content (its end of
 * turn: <|eot_id|>, <|im_end|>, <end_of_turn>, </s>, ...), or null (the instruction template, or
 * none after the content).
 */
export function endOfTurnId(tok: EndOfTurnTokenizer, template: PromptTemplate): number | null {
  const settings = chatSettings(template);
  if (settings === null || tok.chatTemplate === null) return null;
  let known = endOfTurn.get(tok);
  if (!known) endOfTurn.set(tok, (known = new Map()));
  const key = `${tok.chatTemplate}\u0000${settings.emptySystemTurn === true}`;
  if (known.has(key)) return known.get(key)!;
  let id: number | null = null;
  try {
    const turns = [
      { role: 'user', content: 'Hi' },
      { role: 'assistant', content: SENTINEL },
    ];
    const text = renderChat(tok, chatContext({ prompt: 'Hi', messages: turns }, settings), false, { ...settings, date: '2024-01-01' });
    const at = text.lastIndexOf(SENTINEL);
    const tail = at < 0 ? '' : text.slice(at + SENTINEL.length);
    // a special token decodes to nothing when special tokens are skipped
    if (tail.trim() !== '') id = tok.encode(tail).find((t) => tok.decode([t], { skipSpecialTokens: true }) === '') ?? null;
  } catch {
    id = null; // a template that needs more than a user and an assistant turn says so when it renders the data
  }
  known.set(key, id);
  return id;
}
