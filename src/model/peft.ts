// LoRA adapters as PEFT files (docs/lora.md, "Files"): `adapter_config.json` with PEFT's LoraConfig keys
// and `adapter_model.safetensors` with PEFT's tensor names, written and read back with validation.
//
// PEFT's layout (huggingface/peft src/peft/utils/save_and_load.py get_peft_model_state_dict, and
// src/peft/tuners/lora/config.py LoraConfig): the tensors are the LoRA parameters of the PeftModel's
// state dict with the adapter name ("default") taken out, so a Llama layer's q_proj carries
// `base_model.model.model.layers.{i}.self_attn.q_proj.lora_A.weight` [r, in] and `...lora_B.weight`
// [out, r], stored in the adapter's dtype (f32: PEFT keeps adapters in f32 over a bf16 base). Phi-3's
// fused projections carry one adapter each under their checkpoint names (`qkv_proj`, `gate_up_proj`).
// The update is W' = W + s B A with s = lora_alpha / r (use_rslora: lora_alpha / sqrt(r)).
// spinlm's model holds the adapter tensors under the same names minus `base_model.model.`.
import { join } from 'node:path';
import { type LlamaConfig } from './config.js';
import { adapterTensors, type LoraConfig, resolveTargets } from './lora.js';
import { openSafetensors, SafetensorsError, writeSafetensors } from './safetensors.js';
import { INPUT_CAPS, type InputFileError, readInputFile } from '../util/input_file.js';
import { makeDirs, writeFileAtomic } from '../util/atomic.js';
import { existsSync } from 'node:fs';

export const ADAPTER_CONFIG = 'adapter_config.json';
export const ADAPTER_WEIGHTS = 'adapter_model.safetensors';
/** PEFT's prefix of every tensor name (PeftModelForCausalLM.base_model = LoraModel, whose .model is the HF model). */
export const PEFT_PREFIX = 'base_model.model.';

/** An adapter on the host: its configuration and f32 tensors by model name (`model.layers.0.self_attn.q_proj.lora_A.weight`). */
export interface HostAdapter {
  lora: LoraConfig;
  tensors: Map<string, { shape: number[]; data: Float32Array }>;
}

/** A bad adapter directory: names the file and what is wrong. */
export class AdapterError extends Error {
  constructor(
    readonly file: string,
    readonly problem: string,
  ) {
    super(`${file}: ${problem}`);
    this.name = 'AdapterError';
  }
}

export interface AdapterConfigOptions {
  /** base_model_name_or_path: the model the adapter was trained on. */
  baseModel: string;
  /** PEFT writes true for a saved adapter loaded for inference; a training run's adapter is saved with false. */
  inferenceMode?: boolean;
}

/**
 * adapter_config.json as PEFT writes it (LoraConfig.to_dict; features spinlm does not implement written
 * as their off values). The newest keys (exclude_modules, lora_bias) are left out: absent means off, and
 * older PEFT versions refuse keys they do not know. `all-linear` is written as the module
 * names it selected (PEFT expands the shorthand when it builds the model, and saves the expanded set).
 */
export function peftConfigJson(cfg: LlamaConfig, lora: LoraConfig, opts: AdapterConfigOptions): Record<string, unknown> {
  const targets = resolveTargets(lora, cfg.modelType).sort();
  return {
    alpha_pattern: {},
    auto_mapping: null,
    base_model_name_or_path: opts.baseModel,
    bias: 'none',
    fan_in_fan_out: false,
    inference_mode: opts.inferenceMode ?? true,
    init_lora_weights: true,
    layer_replication: null,
    layers_pattern: null,
    layers_to_transform: null,
    loftq_config: {},
    lora_alpha: lora.alpha,
    lora_dropout: lora.dropout,
    megatron_config: null,
    megatron_core: 'megatron.core',
    modules_to_save: null,
    peft_type: 'LORA',
    r: lora.r,
    rank_pattern: {},
    revision: null,
    target_modules: targets,
    task_type: 'CAUSAL_LM',
    use_dora: false,
    use_rslora: lora.useRslora,
  };
}

const isEmpty = (v: unknown) =>
  v === undefined ||
  v === null ||
  v === false ||
  (Array.isArray(v) && v.length === 0) ||
  (typeof v === 'object' && v !== null && Object.keys(v).length === 0);

/**
 * Reads adapter_config.json's LoRA settings, refusing what spinlm does not implement with a message
 * naming the key: another peft_type or task_type, bias other than "none", DoRA, rank_pattern /
 * alpha_pattern, layers_to_transform / layers_pattern, layer_replication, modules_to_save,
 * fan_in_fan_out, exclude_modules, lora_bias, trainable tokens and target_parameters.
 */
export function parsePeftConfig(json: unknown, file: string): LoraConfig & { baseModel: string | null } {
  const fail = (problem: string) => new AdapterError(file, problem);
  if (typeof json !== 'object' || json === null || Array.isArray(json)) throw fail('expected a JSON object');
  const j = json as Record<string, unknown>;
  if (j.peft_type !== 'LORA') throw fail(`peft_type is ${JSON.stringify(j.peft_type)}; spinlm reads LoRA adapters ("LORA") only`);
  if (j.task_type !== undefined && j.task_type !== null && j.task_type !== 'CAUSAL_LM')
    throw fail(`task_type is ${JSON.stringify(j.task_type)}; spinlm's models are CAUSAL_LM`);
  const r = j.r;
  if (typeof r !== 'number' || !Number.isSafeInteger(r) || r < 1) throw fail(`"r" must be a positive integer, got ${JSON.stringify(r)}`);
  const alpha = j.lora_alpha ?? 8; // PEFT's default
  if (typeof alpha !== 'number' || !Number.isFinite(alpha)) throw fail(`"lora_alpha" must be a number, got ${JSON.stringify(alpha)}`);
  const dropout = j.lora_dropout ?? 0;
  if (typeof dropout !== 'number' || !(dropout >= 0 && dropout < 1))
    throw fail(`"lora_dropout" must be a number in [0, 1), got ${JSON.stringify(dropout)}`);
  const bias = j.bias ?? 'none';
  if (bias !== 'none') throw fail(`"bias" is ${JSON.stringify(bias)}; spinlm's adapters train no biases (bias "none" only)`);
  if (j.use_dora === true) throw fail('"use_dora" is true: DoRA adapters are not supported (plain LoRA only)');
  for (const key of [
    'rank_pattern',
    'alpha_pattern',
    'layers_to_transform',
    'layers_pattern',
    'layer_replication',
    'modules_to_save',
    'exclude_modules',
    'trainable_token_indices',
    'target_parameters',
    'lora_bias',
    'fan_in_fan_out',
    'use_qalora',
  ]) {
    if (!isEmpty(j[key]))
      throw fail(`"${key}" is ${JSON.stringify(j[key])}: not supported (spinlm reads plain LoRA on whole linear layers)`);
  }
  const t = j.target_modules;
  let targetModules: string[] | 'all-linear';
  if (typeof t === 'string') {
    // PEFT reads any other string as a regular expression over full module names (re.fullmatch)
    if (t.toLowerCase() !== 'all-linear')
      throw fail(`"target_modules" is the regular expression ${JSON.stringify(t)}: not supported; list the module names instead`);
    targetModules = 'all-linear';
  } else if (Array.isArray(t) && t.length > 0 && t.every((x) => typeof x === 'string' && x !== '')) targetModules = [...(t as string[])];
  else throw fail(`"target_modules" must be a non-empty list of module names or "all-linear", got ${JSON.stringify(t)}`);
  const useRslora = j.use_rslora ?? false;
  if (typeof useRslora !== 'boolean') throw fail(`"use_rslora" must be true or false, got ${JSON.stringify(useRslora)}`);
  const base = j.base_model_name_or_path;
  return {
    r,
    alpha,
    dropout,
    targetModules,
    useRslora,
    baseModel: typeof base === 'string' ? base : null,
  };
}

/** An adapter tensor to write: model name (no PEFT prefix), shape, f32 data or a function that reads it. */
export interface AdapterTensorToWrite {
  name: string;
  shape: readonly number[];
  data: Float32Array | (() => Float32Array | Promise<Float32Array>);
}

/**
 * Writes `dir/adapter_config.json` and `dir/adapter_model.safetensors` (f32, PEFT's names), each
 * atomically; the tensors must be exactly the adapter's (lora.ts adapterTensors) in name and shape.
 */
export async function writePeftAdapter(
  dir: string,
  cfg: LlamaConfig,
  lora: LoraConfig,
  tensors: readonly AdapterTensorToWrite[],
  opts: AdapterConfigOptions,
): Promise<void> {
  const specs = adapterTensors(cfg, lora);
  const given = new Map(tensors.map((t) => [t.name, t]));
  for (const s of specs) {
    const t = given.get(s.name);
    if (!t) throw new AdapterError(join(dir, ADAPTER_WEIGHTS), `internal: adapter tensor ${s.name} not given`);
    if (t.shape.length !== 2 || t.shape[0] !== s.shape[0] || t.shape[1] !== s.shape[1])
      throw new AdapterError(
        join(dir, ADAPTER_WEIGHTS),
        `internal: ${s.name} has shape [${t.shape.join(', ')}], expected [${s.shape.join(', ')}]`,
      );
  }
  if (given.size !== specs.length) {
    const extra = [...given.keys()].find((n) => !specs.some((s) => s.name === n));
    throw new AdapterError(join(dir, ADAPTER_WEIGHTS), `internal: ${extra} is not a tensor of this adapter`);
  }
  await makeDirs(dir);
  await writeSafetensors(
    join(dir, ADAPTER_WEIGHTS),
    specs.map((s) => ({ name: PEFT_PREFIX + s.name, dtype: 'f32' as const, shape: s.shape, data: given.get(s.name)!.data })),
    { format: 'pt' },
  );
  await writeFileAtomic(join(dir, ADAPTER_CONFIG), `${JSON.stringify(peftConfigJson(cfg, lora, opts), null, 2)}\n`);
}

/** Whether `dir` holds a PEFT adapter (its adapter_config.json). */
export function isAdapterDir(dir: string): boolean {
  return existsSync(join(dir, ADAPTER_CONFIG));
}

/**
 * Reads a PEFT LoRA adapter for a model of config `cfg`: the configuration (parsePeftConfig's checks)
 * and every tensor as f32 (F32, BF16 or F16 in the file), checked against the modules the config
 * targets: a missing or extra tensor, a wrong shape (an `r` that disagrees with the tensors included)
 * and NaN / Inf are errors that name the tensor. Pickled adapters (adapter_model.bin) are never read.
 */
export async function readPeftAdapter(dir: string, cfg: LlamaConfig): Promise<HostAdapter & { baseModel: string | null }> {
  const configFile = join(dir, ADAPTER_CONFIG);
  const weightsFile = join(dir, ADAPTER_WEIGHTS);
  let text: string;
  try {
    text = await readInputFile(configFile, INPUT_CAPS.json);
  } catch (e) {
    const { code, message } = e as InputFileError;
    throw new AdapterError(
      configFile,
      code === 'ENOENT' ? 'not found: an adapter directory holds adapter_config.json' : code ? `cannot read (${code})` : message,
    );
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (e) {
    throw new AdapterError(configFile, `not valid JSON (${(e as Error).message})`);
  }
  const lora = parsePeftConfig(json, configFile);
  if (!existsSync(weightsFile)) {
    const bin = existsSync(join(dir, 'adapter_model.bin'));
    throw new AdapterError(
      weightsFile,
      bin ? 'not found; adapter_model.bin is a pickle, which spinlm never reads (save the adapter with safe_serialization)' : 'not found',
    );
  }
  let specs;
  try {
    specs = adapterTensors(cfg, lora);
  } catch (e) {
    throw new AdapterError(configFile, (e as Error).message.replace(/^lora_target_modules/, 'target_modules'));
  }
  const f = await openSafetensors(weightsFile);
  try {
    const inFile = new Map<string, string>(); // model name -> file name
    for (const n of f.names()) {
      if (!n.startsWith(PEFT_PREFIX)) throw new AdapterError(weightsFile, `tensor ${n} does not start with PEFT's prefix "${PEFT_PREFIX}"`);
      inFile.set(n.slice(PEFT_PREFIX.length), n);
    }
    const wanted = new Set(specs.map((s) => s.name));
    const missing = specs.filter((s) => !inFile.has(s.name)).map((s) => PEFT_PREFIX + s.name);
    if (missing.length)
      throw new AdapterError(
        weightsFile,
        `tensor ${missing[0]} is missing (${missing.length} missing); target_modules and the tensors disagree`,
      );
    const extra = [...inFile.keys()].filter((n) => !wanted.has(n));
    if (extra.length)
      throw new AdapterError(
        weightsFile,
        `tensor ${inFile.get(extra[0])} is not a LoRA tensor of the modules target_modules selects in this ${cfg.modelType} model (${extra.length} unexpected; DoRA magnitudes, embeddings and biases are not supported)`,
      );
    const tensors = new Map<string, { shape: number[]; data: Float32Array }>();
    for (const s of specs) {
      const name = inFile.get(s.name)!;
      const info = f.info(name);
      if (info.shape.length !== 2 || info.shape[0] !== s.shape[0] || info.shape[1] !== s.shape[1]) {
        const rNote = s.name.endsWith('lora_A.weight')
          ? info.shape[0] !== lora.r
            ? ` (its rank ${info.shape[0]} is not the config's r = ${lora.r})`
            : ''
          : info.shape[1] !== lora.r
            ? ` (its rank ${info.shape[1]} is not the config's r = ${lora.r})`
            : '';
        throw new AdapterError(
          weightsFile,
          `tensor ${name} has shape [${info.shape.join(', ')}], expected [${s.shape.join(', ')}]${rNote}`,
        );
      }
      if (info.dtype !== 'F32' && info.dtype !== 'BF16' && info.dtype !== 'F16')
        throw new AdapterError(weightsFile, `tensor ${name} has dtype ${info.dtype}; adapters are F32, BF16 or F16`);
      const t = await f.readTensor(name, { dtype: 'f32' });
      const data = t.data as Float32Array;
      const bad = data.findIndex((v) => !Number.isFinite(v));
      if (bad >= 0) throw new AdapterError(weightsFile, `tensor ${name} element ${bad} is ${data[bad]}: the adapter holds NaN or Inf`);
      tensors.set(s.name, { shape: [...s.shape], data });
    }
    const { baseModel, ...rest } = lora;
    return { lora: rest, tensors, baseModel };
  } catch (e) {
    if (e instanceof SafetensorsError) throw new AdapterError(weightsFile, e.message);
    throw e;
  } finally {
    await f.close();
  }
}
