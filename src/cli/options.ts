// Option groups shared by the commands (names as TRL / HF TrainingArguments / the official SPIN code).
import { nonNegative, type OptionSpec, positive, unitInterval } from './args.js';
import { SPIN_LOSS_TYPES } from '../backend/backend.js';

const nonEmpty = (v: string) => (v === '' ? 'must not be empty' : null);

/** --stop: one non-empty string, or a JSON list of non-empty strings. */
const stopCheck = (v: string): string | null => {
  if (!v.trim().startsWith('[')) return nonEmpty(v);
  let list: unknown;
  try {
    list = JSON.parse(v);
  } catch {
    return 'not a JSON list of strings';
  }
  return Array.isArray(list) && list.length > 0 && list.every((x) => typeof x === 'string' && x.length > 0)
    ? null
    : 'expected a non-empty JSON list of non-empty strings';
};

export const modelOption: OptionSpec = {
  name: 'model',
  type: 'string',
  required: true,
  check: nonEmpty,
  help: 'Hugging Face model directory (config.json, model.safetensors, tokenizer.json)',
};
export const adapterOption: OptionSpec = {
  name: 'adapter',
  type: 'string',
  check: nonEmpty,
  help: 'a PEFT LoRA adapter directory (adapter_config.json, adapter_model.safetensors) for --model, applied unmerged: the model is base + adapter (docs/lora.md)',
};
export const dataOption: OptionSpec = {
  name: 'data',
  type: 'string',
  required: true,
  check: nonEmpty,
  help: 'data file: JSONL or Parquet (UltraChat messages, {prompt, completion}, or SPIN pair rows)',
};
export const outOption = (help: string): OptionSpec => ({ name: 'out', type: 'string', required: true, check: nonEmpty, help });

export const deviceOption: OptionSpec = {
  name: 'device',
  type: { oneOf: ['auto', 'cpu', 'cuda', 'webgpu'] },
  default: 'auto',
  help: 'where the kernels run: auto takes CUDA, then WebGPU, then the CPU (spinlm info lists what is available here)',
};

export const textOptions: OptionSpec[] = [
  {
    name: 'template',
    type: { oneOf: ['auto', 'instruction', 'chat'] },
    default: 'auto',
    help: "prompt format: the official '### Instruction: {prompt}\\n\\n### Response: ', the tokenizer's chat template, or auto (chat when the tokenizer has one)",
  },
  {
    name: 'first_round_only',
    type: 'bool',
    default: false,
    help: 'chat template: the answer is the first assistant turn, as the official SPIN takes it (default: the last assistant turn, every turn before it the prompt, so multi-turn rows keep their history; the instruction template always takes the first round)',
  },
  {
    name: 'empty_system_turn',
    type: 'bool',
    default: false,
    help: 'chat template: insert an empty system turn when a row has none, as the official SPIN does (default off: for Llama 3.1 and Qwen2.5 it changes the rendered prompt)',
  },
  {
    name: 'template_date',
    type: 'string',
    help: "the day chat templates read with strftime_now (Llama 3.2's 'Today Date'); default: the day a run started, kept in its fingerprint.json (generate: in its journal) so a resume renders the same prompts",
  },
  {
    name: 'max_length',
    type: 'int',
    check: positive,
    help: "longest prompt + answer in tokens (default: the model's context, max_position_embeddings; at most that)",
  },
  {
    name: 'max_prompt_length',
    type: 'int',
    check: positive,
    help: 'prompt tokens kept (the last ones) when a sequence is too long (default: min(512, max_length / 2))',
  },
  { name: 'truncation_mode', type: { oneOf: ['keep_end', 'keep_start'] }, default: 'keep_end', help: 'which prompt tokens to keep' },
  {
    name: 'dtype',
    type: { oneOf: ['auto', 'bf16', 'f32'] },
    default: 'auto',
    help: 'parameter dtype (compute is fp32 on the CPU); auto = as stored',
  },
];

/** LoRA (docs/lora.md): --lora_r enables it; the rest are PEFT's LoraConfig fields and defaults. */
export const loraOptions: OptionSpec[] = [
  {
    name: 'lora_r',
    type: 'int',
    check: positive,
    help: 'train LoRA adapters of this rank on a frozen base instead of every parameter (docs/lora.md; off when not given)',
  },
  {
    name: 'lora_alpha',
    type: 'number',
    default: 8,
    check: positive,
    help: "LoRA alpha: the adapters' output is scaled by alpha / r (PEFT's default 8)",
  },
  {
    name: 'lora_dropout',
    type: 'number',
    default: 0,
    check: (v: number) => (v >= 0 && v < 1 ? null : 'must be in [0, 1)'),
    help: 'dropout on the LoRA input (default 0: with dropout the policy differs from the reference at step 0, so u != 0)',
  },
  {
    name: 'lora_target_modules',
    type: 'string',
    check: nonEmpty,
    help: "comma list of PEFT module names (q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj; Phi-3: qkv_proj,o_proj,gate_up_proj,down_proj) or all-linear (default: PEFT's per family, q_proj,v_proj; Phi-3 qkv_proj)",
  },
  { name: 'use_rslora', type: 'bool', default: false, help: 'rsLoRA: scale by alpha / sqrt(r) instead of alpha / r' },
];

export const loopOptions = (defaults: { lr: number[]; optim: string; epochs: number; batch: number; accum: number }): OptionSpec[] => [
  {
    name: 'learning_rate',
    type: 'numbers',
    default: defaults.lr,
    check: (v: number[]) => (v.every((x) => x >= 0) ? null : 'must be >= 0'),
    help: 'learning rate; a comma-separated list gives one per iteration (last repeats)',
  },
  { name: 'optim', type: { oneOf: ['rmsprop', 'adamw'] }, default: defaults.optim, help: "optimizer (RMSProp is the paper's)" },
  { name: 'rmsprop_alpha', type: 'number', default: 0.99, check: unitInterval, help: 'RMSProp smoothing constant' },
  { name: 'adam_beta1', type: 'number', default: 0.9, check: unitInterval, help: 'AdamW beta1' },
  { name: 'adam_beta2', type: 'number', default: 0.999, check: unitInterval, help: 'AdamW beta2' },
  { name: 'adam_epsilon', type: 'number', default: 1e-8, check: positive, help: 'epsilon of RMSProp / AdamW' },
  { name: 'weight_decay', type: 'number', default: 0, check: nonNegative, help: 'decoupled (AdamW) or L2 (RMSProp) weight decay' },
  {
    name: 'lr_scheduler_type',
    type: { oneOf: ['linear', 'cosine', 'constant'] },
    default: 'linear',
    help: 'learning-rate schedule after warm-up',
  },
  { name: 'warmup_ratio', type: 'number', default: 0.1, check: unitInterval, help: 'fraction of steps warming up linearly' },
  {
    name: 'per_device_train_batch_size',
    type: 'int',
    default: defaults.batch,
    check: positive,
    help: 'pairs (or sequences) per micro-batch',
  },
  {
    name: 'max_tokens_per_batch',
    type: 'int',
    default: 0,
    check: nonNegative,
    help: 'token budget of a micro-batch (0 = none): pairs are packed back to back, the prompt once per pair, no padding; a micro-batch is cut into runs of at most this many tokens, each weighted by its share of the step (docs/algorithm.md)',
  },
  {
    name: 'gradient_accumulation_steps',
    type: 'int',
    default: defaults.accum,
    check: positive,
    help: 'micro-batches per optimizer step (global batch = micro x accumulation)',
  },
  { name: 'num_train_epochs', type: 'int', default: defaults.epochs, check: positive, help: 'passes over the data per iteration' },
  { name: 'max_grad_norm', type: 'number', default: 1.0, check: nonNegative, help: 'clip the global gradient norm (0 = off)' },
  { name: 'seed', type: 'int', default: 42, help: 'seed of data order and sampling' },
  { name: 'save_steps', type: 'int', default: 50, check: nonNegative, help: 'resumable checkpoint every N optimizer steps (0: per epoch)' },
  {
    name: 'gradient_checkpointing',
    type: 'bool',
    default: false,
    help: "keep only each layer's input and recompute its activations in the backward: less memory, ~1/3 more compute, same results (docs/memory.md)",
  },
  {
    name: 'fused_update',
    type: 'bool',
    default: false,
    help: 'update each layer as soon as its gradient is complete, never holding all gradients (LOMO-style; needs --max_grad_norm 0, --gradient_accumulation_steps 1, one process): same results, 4 bytes/parameter less (docs/memory.md)',
  },
  ...loraOptions,
];

export const spinOptions: OptionSpec[] = [
  {
    name: 'beta',
    type: 'numbers',
    default: [0.1],
    check: (v: number[]) => (v.every((x) => x > 0) ? null : 'must be > 0'),
    help: 'SPIN beta; a list gives one per iteration (paper: 0.1,0.1,0.1,5.0)',
  },
  {
    name: 'loss_type',
    type: { oneOf: SPIN_LOSS_TYPES },
    default: 'sigmoid',
    help: "loss of a pair (docs/algorithm.md): SPIN's sigmoid or hinge; ipo (IPO) or sppo_hard (SPPO, real answer always wins)",
  },
  {
    name: 'nll_alpha',
    type: 'number',
    default: 0,
    check: nonNegative,
    help: 'weight of an NLL term on the real answer (0 = the official loss)',
  },
  { name: 'drop_identical_pairs', type: 'bool', default: false, help: 'give pairs whose generated answer equals the real one no weight' },
  {
    name: 'length_normalized',
    type: 'bool',
    default: false,
    help: "divide each answer's log-prob (policy and reference) by its token count: the margin becomes per token (docs/algorithm.md)",
  },
];

/**
 * The arithmetic of the GEMMs: training's mixed precision (docs/numerics.md "Mixed precision"), and
 * generation's and scoring's linear layers (docs/ops.md "bf16 compute"). `auto`: bf16 training on CUDA.
 */
export const computeDtypeOption: OptionSpec = {
  name: 'compute_dtype',
  type: { oneOf: ['auto', 'f32', 'bf16'] },
  default: 'auto',
  help: "arithmetic of the GEMMs: bf16 rounds their inputs to bf16 (exact products, f32 sums) as PyTorch's bf16 autocast; norms, softmax, loss, gradients, optimizer and master weights stay f32. Training: auto = bf16 on --device cuda, f32 on cpu and webgpu. Generation and scoring: auto = f32; bf16 there needs bf16 parameters",
};

export const generationOptions: OptionSpec[] = [
  { name: 'max_new_tokens', type: 'int', default: 256, check: positive, help: 'longest answer' },
  {
    name: 'temperature',
    type: 'number',
    default: 0,
    check: nonNegative,
    help: "sampling temperature (0 = greedy, the paper's HF path; 1.0 its vLLM path)",
  },
  {
    name: 'top_p',
    type: 'number',
    default: 1,
    check: (v: number) => (v > 0 && v <= 1 ? null : 'must be in (0, 1]'),
    help: 'nucleus sampling',
  },
  { name: 'top_k', type: 'int', default: 0, check: nonNegative, help: 'top-k sampling (0 = off)' },
  {
    name: 'generation_batch_size',
    aliases: ['gen_batch_size'],
    type: 'int',
    default: 32,
    check: positive,
    help: 'prompts decoded together',
  },
  {
    name: 'kv_cache_dtype',
    type: { oneOf: ['auto', 'bf16', 'f32'] },
    default: 'auto',
    help: "KV cache of generation: auto = the parameters' dtype (bf16 halves decode attention's reads; the math is fp32 either way)",
  },
  computeDtypeOption,
  {
    name: 'stop',
    type: 'string',
    check: stopCheck,
    help: 'stop string(s) that end an answer (excluded): one string, or a JSON list of strings',
  },
];

/** `spinlm run`'s official mixing of iterations. */
export const mixPreviousOption: OptionSpec = {
  name: 'mix_previous_iteration',
  type: 'bool',
  default: true,
  help: 'train iteration t >= 1 on the answers of t-1 and t (official)',
};

/** The self-play loop's own options (`spinlm run` and a sweep's arms): mixing, the reference, the opponent's choice. */
export const selfPlayLoopOptions: OptionSpec[] = [
  mixPreviousOption,
  {
    name: 'reference_model',
    type: { oneOf: ['previous', 'initial'] },
    default: 'previous',
    help: 'reference of iteration t: previous = the opponent θ_t (the paper), initial = θ0 in every iteration (fixed)',
  },
  {
    name: 'opponent_samples',
    type: 'int',
    default: 1,
    check: positive,
    help: "answers sampled per prompt (needs --temperature > 0); the opponent's answer is the first that differs from the real one",
  },
  {
    name: 'lora_merge',
    type: { oneOf: ['merge', 'stack'] },
    default: 'merge',
    help: "with LoRA, the next opponent: merge = this iteration's model plus its adapter (W + s B A, rounded once), stack = θ0 untouched plus every adapter so far, summed in float64 and rounded once (docs/lora.md)",
  },
];

/** Sequences per forward pass when scoring or evaluating (HF's per_device_eval_batch_size). */
export const evalBatchOption = (defaultSize: number, help: string): OptionSpec => ({
  name: 'per_device_eval_batch_size',
  aliases: ['batch_size'],
  type: 'int',
  default: defaultSize,
  check: positive,
  help,
});

/** Token budget of one scoring forward pass (packed pairs). */
export const evalTokensOption: OptionSpec = {
  name: 'max_tokens_per_batch',
  type: 'int',
  default: 0,
  check: nonNegative,
  help: 'token budget of one forward pass (0 = none): pairs are packed back to back, the prompt once per pair, no padding',
};

/** Data parallelism (docs/distributed.md): --nproc starts mpirun; under an existing mpirun the ranks come from it. */
export const nprocOption: OptionSpec = {
  name: 'nproc',
  type: 'int',
  default: 1,
  check: positive,
  help: 'processes (data parallel, through mpirun; needs Open MPI); under an existing mpirun its ranks are used',
};
export const oversubscribeOption: OptionSpec = {
  name: 'oversubscribe',
  type: 'bool',
  default: false,
  help: 'allow --nproc above the number of cores (ranks then share cores: slow, for tests); without it a larger --nproc is refused',
};
export const distOptions: OptionSpec[] = [
  nprocOption,
  oversubscribeOption,
  {
    name: 'zero_stage',
    type: { oneOf: ['0', '1', '2', '3'] },
    default: '0',
    help: "ZeRO sharding across processes (DeepSpeed's stages): 1 optimizer state + fp32 masters, 2 also gradients, 3 also parameters",
  },
];

/** The training options of `spinlm train` and `spinlm run` (and, less the process options, of a sweep's arms). */
export const trainOptions: OptionSpec[] = [
  ...loopOptions({ lr: [5e-7], optim: 'rmsprop', epochs: 2, batch: 8, accum: 8 }),
  ...spinOptions,
  ...textOptions,
  ...distOptions,
];

export const quietOption: OptionSpec = { name: 'quiet', type: 'bool', default: false, help: 'no progress bars' };
export const nOption: OptionSpec = { name: 'n', type: 'int', check: positive, help: 'use n prompts (a seeded random sample; default all)' };
export const skipInvalidOption: OptionSpec = {
  name: 'skip_invalid',
  type: 'bool',
  default: false,
  help: 'skip malformed rows (and report how many) instead of stopping at the first',
};
export const strictOption: OptionSpec = {
  name: 'strict',
  type: 'bool',
  default: false,
  help: 'refuse a data file with invalid UTF-8 (default: one warning per file, the bytes read as U+FFFD)',
};
export const overwriteOption: OptionSpec = {
  name: 'overwrite_output_dir',
  type: 'bool',
  default: false,
  help: 'start over: clear what an earlier run left in --out instead of resuming it (needed when the settings differ)',
};
