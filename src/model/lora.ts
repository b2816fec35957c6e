// LoRA (Hu et al. 2021) as PEFT's LoraModel computes it: on a target linear layer y = x W^T (+ b) gains
// s * (dropout(x) A^T) B^T with A [r, in_features] and B [out_features, r], s = lora_alpha / r
// (lora_alpha / sqrt(r) with use_rslora). The base W stays frozen: no gradient, no master, no optimizer
// state (docs/lora.md). Module and tensor names are PEFT's, without its `base_model.model.` prefix:
// `model.layers.{i}.self_attn.q_proj.lora_A.weight`. Phi-3's fused qkv_proj / gate_up_proj have one A and
// one B over the fused output, as PEFT wraps the fused nn.Linear; spinlm computes q/k/v (gate/up) apart
// and gives each its rows of B (views, no copies).
import type { Backend } from '../backend/backend.js';
import { type Tensor, VIEW_ALIGNMENT } from '../tensor/tensor.js';
import { Rng, type Seed } from '../util/rng.js';
import type { LlamaConfig } from './config.js';
import * as ops from '../ops/index.js';

export interface LoraConfig {
  /** Rank r (integer >= 1). */
  r: number;
  /** lora_alpha (> 0): the scaling is alpha / r (alpha / sqrt(r) with useRslora). */
  alpha: number;
  /** lora_dropout in [0, 1): dropout on the LoRA path's input only. */
  dropout: number;
  /** PEFT module names (q_proj, ..., or Phi-3's qkv_proj, gate_up_proj), or every linear of the decoder layers. */
  targetModules: string[] | 'all-linear';
  /** rsLoRA (Kalajdzievski 2023): scaling alpha / sqrt(r). */
  useRslora: boolean;
}

/** PEFT's LoraConfig defaults (r has none here: giving it enables LoRA). */
export const LORA_DEFAULTS = { alpha: 8, dropout: 0, useRslora: false } as const;

/** One target module of one layer: its PEFT path and the model tensors whose outputs it covers. */
export interface LoraModule {
  /** PEFT module name: q_proj, ..., qkv_proj (phi3). */
  module: string;
  /** `model.layers.{i}.self_attn.q_proj` (PEFT's module path without `base_model.model.`). */
  path: string;
  layer: number;
  inFeatures: number;
  outFeatures: number;
  /** The base weights this module's output is made of, in B's row order: [q, k, v] for phi3's qkv_proj. */
  parts: { weight: string; rows: number }[];
}

type Family = LlamaConfig['modelType'];

const SPLIT_MODULES = ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj'];
const PHI3_MODULES = ['qkv_proj', 'o_proj', 'gate_up_proj', 'down_proj'];

/** Every LoRA-able module name of a family's decoder layers, in PEFT's spelling. */
export function loraModuleNames(family: Family): string[] {
  return family === 'phi3' ? [...PHI3_MODULES] : [...SPLIT_MODULES];
}

/**
 * PEFT's per-architecture default target_modules (peft/utils/constants.py,
 * TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING): q_proj and v_proj; Phi-3: qkv_proj.
 */
export function defaultTargetModules(family: Family): string[] {
  return family === 'phi3' ? ['qkv_proj'] : ['q_proj', 'v_proj'];
}

/** alpha / r, or alpha / sqrt(r) with rsLoRA (PEFT's LoraLayer.update_layer). */
export function loraScaling(c: LoraConfig): number {
  return c.useRslora ? c.alpha / Math.sqrt(c.r) : c.alpha / c.r;
}

/** LoRA settings before the model is known: targetModules null is the family's default. */
export type LoraOptions = Omit<LoraConfig, 'targetModules'> & { targetModules: LoraConfig['targetModules'] | null };

/** The LoraConfig of `o` for a family (its default targets when none are given), validated. */
export function resolveLora(o: LoraOptions, family: Family): LoraConfig {
  const c = { ...o, targetModules: o.targetModules ?? defaultTargetModules(family) };
  validateLoraConfig(c, family);
  return c;
}

/** Throws a RangeError naming the field if the config is not one spinlm (and PEFT) accepts for this family. */
export function validateLoraConfig(c: LoraConfig, family: Family): void {
  if (!Number.isSafeInteger(c.r) || c.r < 1) throw new RangeError(`lora_r must be an integer >= 1, got ${c.r}`);
  if (!(c.alpha > 0) || !Number.isFinite(c.alpha)) throw new RangeError(`lora_alpha must be a finite number > 0, got ${c.alpha}`);
  if (!(c.dropout >= 0 && c.dropout < 1)) throw new RangeError(`lora_dropout must be in [0, 1), got ${c.dropout}`);
  if (c.targetModules === 'all-linear') return;
  if (!Array.isArray(c.targetModules) || c.targetModules.length === 0)
    throw new RangeError(`lora_target_modules must name at least one module or be all-linear`);
  const valid = loraModuleNames(family);
  for (const m of c.targetModules) {
    if (!valid.includes(m)) {
      const hint = family === 'phi3' && SPLIT_MODULES.includes(m) ? ` (Phi-3's checkpoints fuse them: qkv_proj, gate_up_proj)` : '';
      throw new RangeError(
        `lora_target_modules: '${m}' is not a linear layer of a ${family} model; valid: ${valid.join(', ')}, all-linear${hint}`,
      );
    }
  }
  const dup = c.targetModules.find((m, i) => c.targetModules.indexOf(m) !== i);
  if (dup) throw new RangeError(`lora_target_modules: '${dup}' is listed twice`);
}

/** The target modules as a list: 'all-linear' is every linear layer of the decoder layers (PEFT's rule: not lm_head). */
export function resolveTargets(c: LoraConfig, family: Family): string[] {
  const all = loraModuleNames(family);
  if (c.targetModules === 'all-linear') return all;
  return all.filter((m) => (c.targetModules as string[]).includes(m)); // model order
}

/** Every adapted module of the model, layer by layer, in model order. */
export function loraModules(cfg: LlamaConfig, c: LoraConfig): LoraModule[] {
  validateLoraConfig(c, cfg.modelType);
  const { hiddenSize: H, intermediateSize: I, numHeads: nH, numKvHeads: nKV, headDim: hd } = cfg;
  const targets = new Set(resolveTargets(c, cfg.modelType));
  const out: LoraModule[] = [];
  for (let i = 0; i < cfg.numLayers; i++) {
    const pre = `model.layers.${i}`;
    const w = (sub: string, m: string, rows: number) => ({ weight: `${pre}.${sub}.${m}.weight`, rows });
    const defs: [string, string, number, { weight: string; rows: number }[]][] = [
      [
        'qkv_proj',
        'self_attn',
        H,
        [w('self_attn', 'q_proj', nH * hd), w('self_attn', 'k_proj', nKV * hd), w('self_attn', 'v_proj', nKV * hd)],
      ],
      ['q_proj', 'self_attn', H, [w('self_attn', 'q_proj', nH * hd)]],
      ['k_proj', 'self_attn', H, [w('self_attn', 'k_proj', nKV * hd)]],
      ['v_proj', 'self_attn', H, [w('self_attn', 'v_proj', nKV * hd)]],
      ['o_proj', 'self_attn', nH * hd, [w('self_attn', 'o_proj', H)]],
      ['gate_up_proj', 'mlp', H, [w('mlp', 'gate_proj', I), w('mlp', 'up_proj', I)]],
      ['gate_proj', 'mlp', H, [w('mlp', 'gate_proj', I)]],
      ['up_proj', 'mlp', H, [w('mlp', 'up_proj', I)]],
      ['down_proj', 'mlp', I, [w('mlp', 'down_proj', H)]],
    ];
    for (const [module, sub, inFeatures, parts] of defs) {
      if (!targets.has(module)) continue;
      const outFeatures = parts.reduce((a, p) => a + p.rows, 0);
      out.push({ module, path: `${pre}.${sub}.${module}`, layer: i, inFeatures, outFeatures, parts });
    }
  }
  return out;
}

/** Adapter tensor names of a module: `{path}.lora_A.weight`, `{path}.lora_B.weight` (PEFT's, no `base_model.model.`). */
export const loraA = (path: string) => `${path}.lora_A.weight`;
export const loraB = (path: string) => `${path}.lora_B.weight`;

/** Is this the name of an adapter tensor (lora_A / lora_B)? */
export function isAdapterName(name: string): boolean {
  return /\.lora_[AB]\.weight$/.test(name);
}

/** Every adapter tensor for a config + LoRA config, with its shape (f32): A [r, in], B [out, r], in model order. */
export function adapterTensors(cfg: LlamaConfig, c: LoraConfig): { name: string; shape: [number, number] }[] {
  return loraModules(cfg, c).flatMap((m) => [
    { name: loraA(m.path), shape: [c.r, m.inFeatures] as [number, number] },
    { name: loraB(m.path), shape: [m.outFeatures, c.r] as [number, number] },
  ]);
}

/**
 * A model's LoRA: its config, scaling and modules, indexed by base weight name for the layers. The
 * adapter tensors themselves live in the model's Weights (params, grads) under their PEFT names.
 */
export class LoraState {
  readonly scaling: number;
  readonly modules: LoraModule[];
  /** base weight name -> its module and the first row of its part in B. */
  private readonly byWeight = new Map<string, { m: LoraModule; row: number }>();
  /**
   * Dropout masks (lora_dropout > 0): the key of the current training pass, set by the training loop
   * (step, micro-batch, rank) around each micro-step, so a recomputed forward and a resumed run draw
   * the same masks. null (scoring, generation, evaluation): no dropout.
   */
  dropoutKey: string | null = null;
  /** The dropout stream's seed. */
  dropoutSeed: Seed = 0;

  constructor(
    readonly cfg: LlamaConfig,
    readonly config: LoraConfig,
  ) {
    this.modules = loraModules(cfg, config);
    this.scaling = loraScaling(config);
    for (const m of this.modules) {
      let row = 0;
      for (const p of m.parts) {
        // a fused module's parts use row views of B (and of its gradient): they start 256-byte aligned
        // in every real Phi-3 (rows of 3072, 1024, 8192...); say so when a toy shape does not
        if ((row * config.r * 4) % VIEW_ALIGNMENT !== 0)
          throw new RangeError(
            `lora: ${m.path}'s part ${p.weight} starts at row ${row} of lora_B: row x r x 4 bytes must be a multiple of ${VIEW_ALIGNMENT} (choose another lora_r)`,
          );
        this.byWeight.set(p.weight, { m, row });
        row += p.rows;
      }
    }
  }

  /** The module adapting base weight `weight` (and where its rows start in B), if any. */
  of(weight: string): { m: LoraModule; row: number } | undefined {
    return this.byWeight.get(weight);
  }
}

/**
 * Adapter tensors on a backend, initialised as PEFT's LoraLayer.reset_lora_parameters does by default:
 * A ~ kaiming_uniform_(a = sqrt(5)) = U(-1/sqrt(in), 1/sqrt(in)) (seeded: stream `seed` forked by the
 * tensor's name), B = 0. f32.
 */
export function initAdapterTensors(backend: Backend, cfg: LlamaConfig, c: LoraConfig, seed: Seed): Map<string, Tensor<'f32'>> {
  const out = new Map<string, Tensor<'f32'>>();
  const root = new Rng(seed);
  try {
    for (const m of loraModules(cfg, c)) {
      const rng = root.fork(loraA(m.path));
      const bound = 1 / Math.sqrt(m.inFeatures);
      const a = new Float32Array(c.r * m.inFeatures);
      for (let i = 0; i < a.length; i++) a[i] = (2 * rng.next() - 1) * bound;
      out.set(loraA(m.path), ops.upload(backend, { dtype: 'f32', data: a }, [c.r, m.inFeatures]));
      out.set(loraB(m.path), ops.zeros(backend, 'f32', [m.outFeatures, c.r]));
    }
  } catch (e) {
    for (const t of out.values()) t.free();
    throw e;
  }
  return out;
}
