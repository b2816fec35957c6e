// A Hugging Face tokenizer directory: tokenizer.json (run by @huggingface/tokenizers) plus
// tokenizer_config.json (special tokens, chat template). The chat template comes, as transformers
// takes it, from chat_template.jinja, else chat_template.json (the processor's file), else
// tokenizer_config.json.
import { INPUT_CAPS, type InputFileError, readInputFile } from '../util/input_file.js';
import { join } from 'node:path';
import { Tokenizer } from '@huggingface/tokenizers';

/** A missing or malformed tokenizer file, or a bad call: names the file. */
export class TokenizerError extends Error {
  constructor(
    readonly file: string,
    readonly problem: string,
  ) {
    super(`${file}: ${problem}`);
    this.name = 'TokenizerError';
  }
}

async function readText(file: string, required: boolean): Promise<string | null> {
  try {
    return await readInputFile(file, INPUT_CAPS.json);
  } catch (err) {
    const { code, message } = err as InputFileError;
    if (code === 'ENOENT' && !required) return null;
    throw new TokenizerError(file, code === 'ENOENT' ? 'not found' : code ? `cannot read (${code})` : message);
  }
}

async function readJsonObject(file: string): Promise<Record<string, unknown>> {
  const text = (await readText(file, true))!;
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (err) {
    throw new TokenizerError(file, `not valid JSON (${(err as Error).message})`);
  }
  if (typeof json !== 'object' || json === null || Array.isArray(json)) throw new TokenizerError(file, 'expected a JSON object');
  return json as Record<string, unknown>;
}

/** A special token as tokenizer_config.json writes it: a string, {content: string, ...}, or null. */
function tokenString(v: unknown, file: string, field: string): string | null {
  if (v === undefined || v === null) return null;
  if (typeof v === 'string') return v;
  if (typeof v === 'object' && !Array.isArray(v) && typeof (v as { content?: unknown }).content === 'string')
    return (v as { content: string }).content;
  throw new TokenizerError(file, `"${field}" must be a string, {"content": string} or null`);
}

/** chat_template as a string, or the "default" entry of a [{name, template}] list. */
function chatTemplateOf(v: unknown, file: string): string | null {
  if (v === undefined || v === null) return null;
  if (typeof v === 'string') return v;
  if (Array.isArray(v)) {
    for (const entry of v) {
      const e = entry as { name?: unknown; template?: unknown };
      if (typeof e !== 'object' || e === null || typeof e.name !== 'string' || typeof e.template !== 'string') {
        throw new TokenizerError(file, '"chat_template" list entries must be {"name": string, "template": string}');
      }
      if (e.name === 'default') return e.template;
    }
    return null;
  }
  throw new TokenizerError(file, '"chat_template" must be a string or a list of {name, template}');
}

/** The chat template of a tokenizer directory and the file it came from (transformers' order). */
async function chatTemplateIn(
  dir: string,
  cfg: Record<string, unknown>,
  cfgFile: string,
): Promise<{ template: string | null; file: string | null }> {
  const jinja = await readText(join(dir, 'chat_template.jinja'), false);
  if (jinja !== null) return { template: jinja, file: 'chat_template.jinja' };
  const jsonFile = join(dir, 'chat_template.json');
  const json = await readText(jsonFile, false);
  if (json !== null) {
    let parsed: unknown;
    try {
      parsed = JSON.parse(json);
    } catch (err) {
      throw new TokenizerError(jsonFile, `not valid JSON (${(err as Error).message})`);
    }
    const t = chatTemplateOf((parsed as { chat_template?: unknown } | null)?.chat_template, jsonFile);
    if (t === null) throw new TokenizerError(jsonFile, 'has no "chat_template" string');
    return { template: t, file: 'chat_template.json' };
  }
  const t = chatTemplateOf(cfg.chat_template, cfgFile);
  return { template: t, file: t === null ? null : 'tokenizer_config.json' };
}

type Merges = readonly (string | readonly [string, string])[];

/**
 * new Tokenizer(json, config), faster for BPE: the library keys its merge ranks by
 * JSON.stringify([a, b]) (a split and a stringify per merge, ~280k for Llama 3); here the Map is
 * keyed by the merge string itself ("a b" in the classic format, where tokens hold no space) or by
 * a + "\u0000" + b (the list format), and the model's lookup uses the same key. The library's own
 * path is taken when its BPE model does not look as expected.
 */
function buildTokenizer(json: Record<string, unknown>, config: Record<string, unknown>): Tokenizer {
  const model = json.model as { type?: unknown; merges?: unknown };
  const merges = model.merges as Merges | undefined;
  if (model.type !== 'BPE' || !Array.isArray(merges) || merges.length === 0) return new Tokenizer(json, config);
  const tok = new Tokenizer({ ...json, model: { ...model, merges: [] } }, config);
  const bpe = tok.model as unknown as { bpe_ranks?: unknown; add_node?: unknown; merges?: unknown };
  if (!(bpe.bpe_ranks instanceof Map) || typeof bpe.add_node !== 'function') return new Tokenizer(json, config);
  const classic = typeof merges[0] === 'string';
  const ranks = new Map<string, number>();
  for (let i = 0; i < merges.length; i++) {
    const m = merges[i];
    const key = classic ? (m as string) : `${(m as readonly string[])[0]}\u0000${(m as readonly string[])[1]}`;
    // the library's Map keeps the last rank of a repeated merge
    ranks.set(key, i);
  }
  const sep = classic ? ' ' : '\u0000';
  bpe.bpe_ranks = ranks;
  bpe.add_node = function (
    queue: { push(n: unknown): void },
    node: { token: string; next: { token: string }; score: number; bias: number },
  ) {
    const rank = ranks.get(node.token + sep + node.next.token);
    if (rank !== undefined) {
      node.score = rank + node.bias;
      queue.push(node);
    }
  };
  return tok;
}

export class HfTokenizer {
  /** Largest id + 1 over the vocabulary and added tokens (the model's vocab_size may be larger). */
  readonly vocabSize: number;
  /** Ids below vocabSize with no token (gaps): never produced by encode, refused by decode, never sampled. */
  readonly gapIds: readonly number[];
  /** Id of eos_token; SPIN appends it to every response. */
  readonly eosId: number;
  /** Id of bos_token, null when the tokenizer has none (e.g. Qwen2). */
  readonly bosId: number | null;
  /** Characters of the longest vocabulary entry: no token stands for more text than this. */
  readonly maxTokenChars: number;

  private constructor(
    private readonly tok: Tokenizer,
    /** The directory it was loaded from. */
    readonly dir: string,
    readonly eosToken: string,
    readonly bosToken: string | null,
    /** The Jinja chat template, null when the tokenizer has none. */
    readonly chatTemplate: string | null,
    private readonly cleanUpSpaces: boolean,
    /** The file the chat template came from, null when there is none. */
    readonly chatTemplateFile: string | null,
  ) {
    // Ids may have gaps (an added token at 5000 in a 260-token vocabulary, a vocabulary not starting
    // at 0): the Rust tokenizers library, and so transformers, accepts them, never encodes to a gap
    // and drops gap ids when decoding. Here they are counted (gapIds, never sampled) and decode
    // refuses them. One pass over the model's id -> token array, where a gap is an undefined entry
    // (get_vocab would build a map of it first).
    const tokens = (tok.model as unknown as { vocab?: unknown }).vocab;
    const list: readonly (string | undefined)[] = Array.isArray(tokens)
      ? tokens
      : (() => {
          const a: (string | undefined)[] = [];
          for (const [t, id] of tok.get_vocab(true)) a[id] = t;
          return a;
        })();
    const added = new Set(tok.get_added_tokens_decoder().keys());
    let max = -1;
    let longest = 1;
    let own = 0;
    const gaps: number[] = [];
    for (let id = 0; id < list.length; id++) {
      const token = list[id];
      if (typeof token !== 'string') {
        gaps.push(id);
        continue;
      }
      max = id;
      if (token.length > longest) longest = token.length;
      if (!added.has(id)) own++;
    }
    this.vocabSize = max + 1;
    this.gapIds = gaps.filter((id) => id < max);
    this.maxTokenChars = longest;
    const configFile = join(dir, 'tokenizer_config.json');
    // an empty vocabulary (or one of added/special tokens only) would score every text as 0 tokens
    if (own === 0) {
      const what =
        max < 0
          ? 'no tokens'
          : `only the added tokens ${[...added]
              .slice(0, 4)
              .map((id) => tok.id_to_token(id))
              .join(', ')}`;
      throw new TokenizerError(join(dir, 'tokenizer.json'), `the vocabulary is empty (${what}): every text would be 0 tokens`);
    }
    const eosId = tok.token_to_id(eosToken);
    if (eosId === undefined) throw new TokenizerError(configFile, `eos_token ${JSON.stringify(eosToken)} is not in the vocabulary`);
    this.eosId = eosId;
    if (bosToken === null) {
      this.bosId = null;
    } else {
      const bosId = tok.token_to_id(bosToken);
      if (bosId === undefined) throw new TokenizerError(configFile, `bos_token ${JSON.stringify(bosToken)} is not in the vocabulary`);
      this.bosId = bosId;
    }
  }

  /**
   * Loads `dir/tokenizer.json` and `dir/tokenizer_config.json`; the chat template from
   * `chat_template.jinja`, else `chat_template.json`, else tokenizer_config.json (transformers' order).
   */
  static async load(dir: string): Promise<HfTokenizer> {
    const tokFile = join(dir, 'tokenizer.json');
    const cfgFile = join(dir, 'tokenizer_config.json');
    const tokJson = await readJsonObject(tokFile);
    const cfg = await readJsonObject(cfgFile);

    const eosToken = tokenString(cfg.eos_token, cfgFile, 'eos_token');
    if (eosToken === null) throw new TokenizerError(cfgFile, '"eos_token" is missing (SPIN needs an end-of-sequence token)');
    const bosToken = tokenString(cfg.bos_token, cfgFile, 'bos_token');
    const { template: chatTemplate, file: chatTemplateFile } = await chatTemplateIn(dir, cfg, cfgFile);
    const cleanUp = cfg.clean_up_tokenization_spaces;
    if (cleanUp !== undefined && cleanUp !== null && typeof cleanUp !== 'boolean') {
      throw new TokenizerError(cfgFile, '"clean_up_tokenization_spaces" must be true or false');
    }

    // The library reads special tokens from the config as plain strings.
    const libConfig: Record<string, unknown> = { ...cfg };
    for (const k of ['bos_token', 'eos_token', 'unk_token', 'pad_token', 'sep_token', 'cls_token', 'mask_token']) {
      libConfig[k] = tokenString(cfg[k], cfgFile, k) ?? undefined;
    }
    const extra = cfg.additional_special_tokens;
    libConfig.additional_special_tokens = Array.isArray(extra)
      ? extra.map((t, i) => tokenString(t, cfgFile, `additional_special_tokens[${i}]`)).filter((t) => t !== null)
      : [];

    // The library guesses a model type when the stated one is unknown; an unknown type is an error here.
    const model = tokJson.model;
    if (typeof model !== 'object' || model === null || Array.isArray(model)) throw new TokenizerError(tokFile, 'has no "model" object');
    const type = (model as { type?: unknown }).type;
    if (type !== undefined && type !== 'BPE' && type !== 'WordPiece' && type !== 'Unigram') {
      throw new TokenizerError(tokFile, `model type ${JSON.stringify(type)} is not supported (BPE, WordPiece, Unigram)`);
    }
    let tok: Tokenizer;
    try {
      tok = buildTokenizer(tokJson, libConfig);
    } catch (err) {
      throw new TokenizerError(tokFile, `cannot build a tokenizer from it (${(err as Error).message})`);
    }
    return new HfTokenizer(tok, dir, eosToken, bosToken, chatTemplate, cleanUp === true, chatTemplateFile);
  }

  /** Token ids of `text`, no special tokens added (special-token strings inside the text still map to their ids, as in HF). */
  encode(text: string): number[] {
    if (typeof text !== 'string') throw new TypeError(`encode: expected a string, got ${typeof text}`);
    if (text === '') return [];
    const ids = this.tok.encode(text, { add_special_tokens: false }).ids;
    for (const id of ids) {
      if (!Number.isInteger(id)) {
        throw new TokenizerError(
          join(this.dir, 'tokenizer.json'),
          `encode: the text has characters the vocabulary cannot represent and the model has no unknown token (unk_id / unk_token): ${JSON.stringify(text.slice(0, 40))}`,
        );
      }
    }
    return ids;
  }

  /**
   * Text of `ids`; with skipSpecialTokens, special tokens (bos, eos, pad, ...) are dropped;
   * cleanUpSpaces (default: tokenizer_config.json's clean_up_tokenization_spaces) removes spaces before punctuation.
   */
  decode(ids: readonly number[] | Int32Array, opts: { skipSpecialTokens?: boolean; cleanUpSpaces?: boolean } = {}): string {
    const list = Array.from(ids);
    for (let i = 0; i < list.length; i++) {
      const id = list[i];
      if (!Number.isInteger(id) || id < 0 || id >= this.vocabSize || this.tok.id_to_token(id) === undefined) {
        throw new TokenizerError(
          join(this.dir, 'tokenizer.json'),
          `decode: ids[${i}] = ${id} is not a token id (vocabulary has ${this.vocabSize})`,
        );
      }
    }
    if (list.length === 0) return '';
    return this.tok.decode(list, {
      skip_special_tokens: opts.skipSpecialTokens ?? false,
      clean_up_tokenization_spaces: opts.cleanUpSpaces ?? this.cleanUpSpaces,
    });
  }

  /**
   * Refuses a model whose vocabulary (config.json's vocab_size) is smaller than this tokenizer's ids,
   * naming both files: its text could hold ids the model has no embedding row for. A larger
   * vocab_size (padded, as Qwen2's) is fine: generation never samples past the tokenizer's ids.
   */
  checkModelVocab(vocabSize: number, configFile: string): void {
    if (this.vocabSize <= vocabSize) return;
    throw new TokenizerError(
      join(this.dir, 'tokenizer.json'),
      `has token ids up to ${this.vocabSize - 1}, but the model's vocab_size is ${vocabSize} (${configFile}): ids ${vocabSize}..${this.vocabSize - 1} have no embedding row (is the tokenizer the model's own? added tokens need the model's embeddings resized)`,
    );
  }

  tokenToId(token: string): number | undefined {
    return this.tok.token_to_id(token);
  }

  idToToken(id: number): string | undefined {
    return this.tok.id_to_token(id);
  }
}

/** Loads the tokenizer of a Hugging Face model directory. */
export function loadTokenizer(dir: string): Promise<HfTokenizer> {
  return HfTokenizer.load(dir);
}
