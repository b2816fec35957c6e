// Supervised fine-tuning from (prompt, answer) text: the demo's weak model θ0 is made this way, and
// users without an SFT model start here. Mean token NLL of the answer + EOS under the prompt template.
import type { LlamaModel } from '../model/llama.js';
import type { HfTokenizer } from '../text/tokenizer.js';
import type { PromptSource, PromptTemplate } from '../text/templates.js';
import { checkTruncation, type TruncationOptions } from './batch.js';
import { tokenizeChatSft } from './prompt_tokens.js';
import { SftObjective } from './objectives.js';
import { type LoopConfig, type LoopHooks, runTrainingLoop } from './train_loop.js';

export interface SftConfig {
  loop: LoopConfig;
  truncation: TruncationOptions;
  template: PromptTemplate;
}

export async function runSft(
  model: LlamaModel,
  tok: HfTokenizer,
  pairs: readonly (PromptSource & { real: string })[],
  cfg: SftConfig,
  hooks: LoopHooks = {},
): Promise<void> {
  checkTruncation(cfg.truncation);
  const seqs = pairs.map((p, i) => tokenizeChatSft(tok, cfg.template, p, p.real, cfg.truncation, `row ${i + 1}`));
  await runTrainingLoop(model, seqs.length, new SftObjective(model, seqs, tok.eosId, padIdOf(tok)), cfg.loop, hooks);
}

/** The pad id for collation: the tokenizer's <pad> if it has one, else EOS (never attended or scored either way). */
export function padIdOf(tok: HfTokenizer): number {
  return tok.tokenToId('<pad>') ?? tok.eosId;
}
