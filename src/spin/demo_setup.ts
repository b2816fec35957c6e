// The embedded default of `spinlm demo`: the synthetic tasks, the weak model's architecture and the
// recipe that trains it. docs/demo.md says why: θ0 must be a *converged* SFT model (trained to
// the end of a decaying schedule) on tasks where a converged tiny model stays clearly imperfect.
import { generateSyntheticTasks, type SyntheticTask } from '../data/synthetic.js';
import type { LoopConfig } from './train_loop.js';

/**
 * Task families of the demo: character-level skills a ~0.8M-parameter model learns only partly in a
 * few CPU minutes. (Letter-exact reversals, case swaps and multi-digit arithmetic stayed near 0% for
 * this model after 5 minutes of SFT and were left out: they would only add zeros to the table.)
 */
export const DEMO_FAMILIES = ['date', 'reverse_words', 'minutes', 'count_letter', 'last_letters', 'sort_letters'] as const;

/** θ0's SFT set: large enough that a few epochs generalize instead of memorizing (a 4000-task set
 * trained 20 epochs reached 49% exact match on its own prompts and 15% on held-out ones). */
export const DEMO_TRAIN_SIZE = 20000;
export const DEMO_TEST_SIZE = 300;

/** Held-out tasks (unique prompts) and training tasks from another stream, minus any held-out prompt. */
export function demoTasks(seed = 2024): { train: SyntheticTask[]; test: SyntheticTask[] } {
  const test = generateSyntheticTasks({ seed, size: DEMO_TEST_SIZE, families: [...DEMO_FAMILIES] });
  const held = new Set(test.map((t) => t.prompt));
  const train = generateSyntheticTasks({ seed: seed + 1, size: DEMO_TRAIN_SIZE, families: [...DEMO_FAMILIES], unique: false }).filter(
    (t) => !held.has(t.prompt),
  );
  return { train, test };
}

/**
 * The held-out pool of a sweep from the shipped θ0 (docs/science.md): the demo's 300 held-out tasks,
 * then tasks of another stream (seed + 2) whose prompts θ0 never trained on, taken family by family
 * in turn so that any prefix is as balanced as the families allow (`minutes` has few prompts that
 * are not in the training set, so it runs out first). About 3,600 tasks; the first 300 are
 * `demoTasks().test`, so eval_tasks <= 300 measures what it always did.
 */
export function demoHeldoutPool(seed = 2024): SyntheticTask[] {
  const { train, test } = demoTasks(seed);
  const seen = new Set([...train, ...test].map((t) => t.prompt));
  const extra = generateSyntheticTasks({ seed: seed + 2, size: 4000, families: [...DEMO_FAMILIES] }).filter((t) => !seen.has(t.prompt));
  const byFamily = DEMO_FAMILIES.map((f) => extra.filter((t) => t.task === f));
  const out = [...test];
  for (let k = 0; byFamily.some((xs) => k < xs.length); k++) for (const xs of byFamily) if (k < xs.length) out.push(xs[k]);
  return out;
}

/** config.json of θ0: a Llama with the byte tokenizer's 260 ids. */
export const DEMO_MODEL_CONFIG = {
  architectures: ['LlamaForCausalLM'],
  model_type: 'llama',
  hidden_size: 128,
  intermediate_size: 352,
  num_hidden_layers: 4,
  num_attention_heads: 4,
  num_key_value_heads: 2,
  rms_norm_eps: 1e-5,
  rope_theta: 10000,
  vocab_size: 260,
  max_position_embeddings: 256,
  tie_word_embeddings: false,
  bos_token_id: 1,
  eos_token_id: 2,
  hidden_act: 'silu',
  torch_dtype: 'float32',
};

/** θ0's SFT recipe: AdamW to the end of a linear decay (converged, as the paper's SFT model was). */
export const DEMO_SFT_LOOP: LoopConfig = {
  learningRate: 2e-3,
  optim: { type: 'adamw', weightDecay: 0 },
  lrSchedulerType: 'linear',
  warmupRatio: 0.05,
  microBatchSize: 64,
  gradientAccumulationSteps: 1,
  numTrainEpochs: 4,
  maxGradNorm: 1.0,
  seed: 2024,
  saveSteps: 100,
};

export const DEMO_TRUNCATION = { maxLength: 160, maxPromptLength: 96 };
