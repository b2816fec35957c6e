// What a `spinlm` command is, and the checks and readers several commands share.
import type { Rounds } from '../data/messages.js';
import { loadSftPairs } from '../data/sft.js';
import type { LlamaModel } from '../model/llama.js';
import type { StepLog } from '../spin/train_loop.js';
import { formatPrompt, type PromptSource, type PromptTemplate } from '../text/templates.js';
import type { HfTokenizer } from '../text/tokenizer.js';
import { OutputError, resolveOutput } from '../util/atomic.js';
import { type OptionSpec, type Parsed, UsageError } from './args.js';
import { fmt } from './common.js';
import type { DataConfig } from './config.js';
import { checkOverlap } from './run_dir.js';

export interface Command {
  name: string;
  summary: string;
  options: OptionSpec[];
  /** Picks a backend from --device before it runs. */
  usesDevice?: boolean;
  /** A first argument that is not an option (e.g. sweep's CONFIG.yaml), stored in the options under `name`. */
  positional?: { name: string; usage: string };
  run(o: Parsed): Promise<void>;
}

/** Refuses a file output (--out) that is an input or replaces a file inside one; and an output that cannot be written. */
export async function checkFileOut(command: string, out: string | undefined, inputs: Record<string, string | undefined>): Promise<void> {
  if (out === undefined) return;
  checkOverlap(
    command,
    { flag: 'out', path: out, kind: 'file' },
    Object.entries(inputs)
      .filter((e): e is [string, string] => typeof e[1] === 'string')
      .map(([flag, path]) => ({ flag, path })),
  );
  try {
    await resolveOutput(out);
  } catch (e) {
    if (e instanceof OutputError) throw new UsageError(`spinlm ${command}: --out ${e.message}`);
    throw e;
  }
}

/**
 * A row check for commands that generate from the prompts: the templated prompt must leave room
 * for at least one new token within the model's context, so that a long row is reported (file and
 * row, honoring --skip_invalid) before the first stage, not after hours of work.
 */
export function promptFits(model: LlamaModel, tok: HfTokenizer, template: PromptTemplate) {
  const context = model.maxPositions; // max_position_embeddings (longrope: original_max_position_embeddings)
  return (p: PromptSource): string | null => {
    const text = formatPrompt(tok, template, p);
    // a token covers at most maxTokenChars characters: a longer text needs no tokenizing to know
    const n = text.length >= context * tok.maxTokenChars ? null : tok.encode(text).length;
    if (n !== null && n < context) return null;
    return `the prompt is ${n === null ? `over ${context}` : n} tokens with the prompt template, which leaves no room to generate within the model's context of ${context} tokens (max_position_embeddings, or longrope's original_max_position_embeddings); shorten the prompt or drop the row (--skip_invalid skips such rows)`;
  };
}

export function stepLine(prefix: string, l: StepLog): string {
  const keys = ['loss', 'rewards/margins', 'rewards/accuracies', 'logps/real', 'logps/generated'].filter((k) => typeof l[k] === 'number');
  return `${prefix} step ${l.step} epoch ${fmt(l.epoch, 2)} ${keys.map((k) => `${k} ${fmt(l[k])}`).join(' ')} lr ${l.learning_rate.toExponential(2)} grad_norm ${fmt(l.grad_norm, 3)} ${fmt(l.tokens_per_s, 0)} tok/s`;
}

/** The SFT pairs of --data (a seeded sample with --n); skipped rows are reported on stderr. */
export async function sftData(d: DataConfig, check?: (p: PromptSource) => string | null, rounds?: Rounds) {
  const r = await loadSftPairs(d.path, { n: d.n, seed: d.seed, skipInvalid: d.skipInvalid, check, rounds, strictUtf8: d.strict });
  if (r.skipped) process.stderr.write(`spinlm: skipped ${r.skipped} malformed rows of ${d.path}, e.g. ${r.problems[0]}\n`);
  return r.pairs;
}
