// A real Hugging Face tokenizer over bytes (the demo's tokenizer, and the tests'): BPE with no merges whose vocabulary is the 256 GPT-2
// byte-level symbols, behind the ByteLevel pre-tokenizer and decoder, so any UTF-8 string encodes
// to one token per byte and decodes back exactly. Ids: 0 <pad>, 1 <s>, 2 </s>, 3 <unk>, 4 + byte.
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';

export const BOS_ID = 1;
export const EOS_ID = 2;
export const BYTE_OFFSET = 4;
export const BYTE_VOCAB_SIZE = 260;
const SPECIALS = ['<pad>', '<s>', '</s>', '<unk>'];

/** HuggingFaceH4/zephyr-7b-beta's chat template, verbatim. */
export const ZEPHYR_CHAT_TEMPLATE =
  "{% for message in messages %}\n{% if message['role'] == 'user' %}\n{{ '<|user|>\n' + message['content'] + eos_token }}\n{% elif message['role'] == 'system' %}\n{{ '<|system|>\n' + message['content'] + eos_token }}\n{% elif message['role'] == 'assistant' %}\n{{ '<|assistant|>\n'  + message['content'] + eos_token }}\n{% endif %}\n{% if loop.last and add_generation_prompt %}\n{{ '<|assistant|>' }}\n{% endif %}\n{% endfor %}";

/** GPT-2's bytes_to_unicode: printable bytes stand for themselves, the rest map to U+0100 onwards. */
export function byteSymbols(): string[] {
  const out: string[] = new Array(256);
  let next = 256;
  for (let b = 0; b < 256; b++) {
    const printable = (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff);
    out[b] = String.fromCodePoint(printable ? b : next++);
  }
  return out;
}

export interface ByteTokenizerOptions {
  /** chat_template for tokenizer_config.json; default none. */
  chatTemplate?: string | null;
  /** Write bos_token/eos_token as {"content": ...} objects, as some tokenizer_config.json files do. */
  tokenObjects?: boolean;
}

/** Writes tokenizer.json and tokenizer_config.json into dir (which must exist). */
export async function writeByteTokenizer(dir: string, opts: ByteTokenizerOptions = {}): Promise<void> {
  const vocab: Record<string, number> = {};
  SPECIALS.forEach((s, i) => (vocab[s] = i));
  byteSymbols().forEach((s, b) => (vocab[s] = BYTE_OFFSET + b));
  const tokenizerJson = {
    version: '1.0',
    truncation: null,
    padding: null,
    added_tokens: SPECIALS.map((content, id) => ({
      id,
      content,
      single_word: false,
      lstrip: false,
      rstrip: false,
      normalized: false,
      special: true,
    })),
    normalizer: null,
    pre_tokenizer: { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: false },
    post_processor: null,
    decoder: { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: false },
    model: {
      type: 'BPE',
      dropout: null,
      unk_token: '<unk>',
      continuing_subword_prefix: null,
      end_of_word_suffix: null,
      fuse_unk: false,
      byte_fallback: false,
      ignore_merges: false,
      vocab,
      merges: [],
    },
  };
  const tok = (content: string) =>
    opts.tokenObjects ? { __type: 'AddedToken', content, lstrip: false, normalized: false, rstrip: false, single_word: false } : content;
  const config: Record<string, unknown> = {
    tokenizer_class: 'PreTrainedTokenizerFast',
    bos_token: tok('<s>'),
    eos_token: tok('</s>'),
    unk_token: tok('<unk>'),
    pad_token: tok('<pad>'),
    clean_up_tokenization_spaces: false,
    model_max_length: 1024,
  };
  if (opts.chatTemplate != null) config.chat_template = opts.chatTemplate;
  await writeFile(join(dir, 'tokenizer.json'), JSON.stringify(tokenizerJson));
  await writeFile(join(dir, 'tokenizer_config.json'), JSON.stringify(config, null, 2));
}
