// A model directory's side files: what transformers (and spinlm) read beside config.json and the
// weights to tokenize, render chats and generate. Every model directory spinlm writes from another
// (sft, train, each run iteration) carries them over byte for byte from an allow-list of plain data
// files, so the output loads the way its source did: the same tokenizer, the same chat template for
// `--template auto`, the same generation settings. Pickles (*.bin, *.pt, *.pkl), code (*.py) and
// anything not listed are never copied. config.json is the source's own, with only what spinlm
// changed rewritten (the weights' dtype); when spinlm's config differs in anything else, spinlm's
// config.json is kept whole.
import { copyFile, readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { isDeepStrictEqual } from 'node:util';
import { OutputError, writeFileAtomic } from '../util/atomic.js';
import { parseConfig } from './config.js';
import type { LlamaModel } from './llama.js';

/** The tokenizer's files (transformers' fast and slow tokenizers, SentencePiece models, chat templates). */
export const TOKENIZER_FILES: readonly string[] = [
  'tokenizer.json',
  'tokenizer_config.json',
  'special_tokens_map.json',
  'added_tokens.json',
  'tokenizer.model',
  'spiece.model',
  'sentencepiece.bpe.model',
  'vocab.json',
  'vocab.txt',
  'merges.txt',
  'chat_template.jinja',
  'chat_template.json',
];

/** Everything a model directory carries to the models made from it. */
export const SIDE_FILES: readonly string[] = [...TOKENIZER_FILES, 'generation_config.json'];

/** No side file is larger (the largest published tokenizer.json files are tens of MiB). */
export const MAX_SIDE_FILE_BYTES = 1 << 30;

/** Copies the allow-listed files of `from` that exist (symlinks followed) into `to`, byte for byte; returns their names. */
export async function copySideFiles(from: string, to: string, names: readonly string[] = SIDE_FILES): Promise<string[]> {
  const copied: string[] = [];
  for (const name of names) {
    if (!SIDE_FILES.includes(name)) throw new RangeError(`copySideFiles: ${name} is not on the side-file allow-list`);
    const src = join(from, name);
    const st = await stat(src).catch((e: NodeJS.ErrnoException) => {
      if (e.code === 'ENOENT') return null;
      throw new OutputError(src, `cannot read it (${e.code ?? e.message})`, e.code);
    });
    if (st === null) continue;
    if (!st.isFile()) throw new OutputError(src, 'is not a regular file: not copied into the output model');
    if (st.size > MAX_SIDE_FILE_BYTES)
      throw new OutputError(src, `is ${st.size} bytes, over the ${MAX_SIDE_FILE_BYTES}-byte limit of a side file`);
    const dst = join(to, name);
    try {
      await copyFile(src, dst);
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      throw new OutputError(dst, `cannot copy ${src} there (${code ?? (e as Error).message})`, code);
    }
    copied.push(name);
  }
  return copied;
}

/**
 * Rewrites `dir/config.json` (spinlm's, just saved) as the source's config.json with only the dtype
 * field set to spinlm's (`torch_dtype`, or `dtype` where the source names it so), when both parse to
 * the same configuration; otherwise leaves spinlm's. Fields spinlm does not read (pad_token_id,
 * initializer_range, transformers_version, ...) so stay as the source had them. Returns whether the
 * source's was kept.
 */
export async function keepSourceConfig(dir: string, sourceConfig: string): Promise<boolean> {
  const file = join(dir, 'config.json');
  const written = JSON.parse(await readFile(file, 'utf8')) as Record<string, unknown>;
  let source: unknown;
  try {
    source = JSON.parse(await readFile(sourceConfig, 'utf8'));
  } catch {
    return false;
  }
  if (typeof source !== 'object' || source === null || Array.isArray(source)) return false;
  const src = source as Record<string, unknown>;
  const out: Record<string, unknown> = { ...src };
  const dtype = written.torch_dtype;
  if ('dtype' in src) out.dtype = dtype;
  if ('torch_dtype' in src || !('dtype' in src)) out.torch_dtype = dtype;
  try {
    if (!isDeepStrictEqual(parseConfig(out, file), parseConfig(written, file))) return false;
  } catch {
    return false;
  }
  await writeFileAtomic(file, `${JSON.stringify(out, null, 2)}\n`);
  return true;
}

/** Where a saved model comes from: its side files' directory, the config.json to follow, and which files to carry. */
export interface ModelSource {
  dir: string;
  /** The config.json to keep (default dir/config.json; null: spinlm's own config only). */
  config?: string | null;
  /** Default SIDE_FILES. */
  files?: readonly string[];
}

/** model.save(dir), then the source's config.json (dtype updated) and side files: the rule above. */
export async function saveDerivedModel(model: LlamaModel, dir: string, source: ModelSource): Promise<void> {
  await model.save(dir);
  const config = source.config === undefined ? join(source.dir, 'config.json') : source.config;
  if (config !== null) await keepSourceConfig(dir, config);
  await copySideFiles(source.dir, dir, source.files ?? SIDE_FILES);
}
