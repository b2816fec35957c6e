// The ids that end a generated answer (docs/algorithm.md, "Stops"): every id of eos_token_id (a number
// or a list) in config.json and in generation_config.json, the tokenizer's EOS, and the end-of-turn
// token the chat template writes after an assistant turn (<|eot_id|>, <|im_end|>, <end_of_turn>, ...).
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { endOfTurnId, type EndOfTurnTokenizer, type PromptTemplate } from '../text/templates.js';

export interface StopTokenizer extends EndOfTurnTokenizer {
  readonly eosId: number;
  readonly vocabSize: number;
}

/** eos_token_id of a JSON file's object (a number or a list), checked against the vocabulary; [] when absent. */
function eosIdsIn(json: unknown, file: string, vocabSize: number): number[] {
  if (json === null || typeof json !== 'object' || Array.isArray(json)) throw new Error(`${file}: expected a JSON object`);
  const v = (json as { eos_token_id?: unknown }).eos_token_id;
  if (v === undefined || v === null) return [];
  const list = Array.isArray(v) ? v : [v];
  return list.map((id, i) => {
    if (typeof id !== 'number' || !Number.isSafeInteger(id) || id < 0 || id >= vocabSize)
      throw new Error(
        `${file}: "eos_token_id"${Array.isArray(v) ? `[${i}]` : ''} must be a token id in [0, ${vocabSize}), got ${JSON.stringify(id)}`,
      );
    return id;
  });
}

/** generation_config.json's eos_token_id in a model directory ([] when the file or the field is absent). */
export async function generationConfigEosIds(modelDir: string, vocabSize: number): Promise<number[]> {
  const file = join(modelDir, 'generation_config.json');
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw e;
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (e) {
    throw new Error(`${file}: not valid JSON (${(e as Error).message})`, { cause: e });
  }
  return eosIdsIn(json, file, vocabSize);
}

/**
 * Every id that ends an answer, without repeats: config.json's eos_token_id (`configEosIds`, parsed
 * with the model), generation_config.json's, the tokenizer's EOS and the template's end of turn.
 */
export async function stopIdsOf(
  modelDir: string,
  configEosIds: readonly number[],
  tok: StopTokenizer,
  template: PromptTemplate,
): Promise<number[]> {
  const ids = [tok.eosId, ...configEosIds, ...(await generationConfigEosIds(modelDir, tok.vocabSize))];
  const eot = endOfTurnId(tok, template);
  if (eot !== null) ids.push(eot);
  return [...new Set(ids)];
}
