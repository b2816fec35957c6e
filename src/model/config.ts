// Hugging Face config.json for the Llama family (llama, mistral, qwen2, qwen3, phi3; Gemma 2 and Gemma 3's
// text model, parsed in gemma_config.ts) <-> LlamaConfig.
// They share one architecture (RMSNorm, RoPE, grouped-query attention, SwiGLU MLP); they differ in
// attention biases, sliding-window attention, qwen3's per-head q/k RMSNorm and phi3's fused qkv_proj /
// gate_up_proj checkpoint tensors, which LlamaConfig and checkpointLayout record explicitly.
import { INPUT_CAPS, type InputFileError, readInputFile } from '../util/input_file.js';
import { join } from 'node:path';
import { writeFileAtomic } from '../util/atomic.js';
import { type RopeScaling, parseRopeScaling } from './rope.js';
import { GEMMA3_MULTIMODAL, gemmaToJson, noGemma, parseGemma } from './gemma_config.js';

export type { RopeScaling } from './rope.js';

/** A bad config.json: names the file and the field. */
export class ConfigError extends Error {
  constructor(
    readonly file: string,
    readonly field: string | null,
    readonly problem: string,
  ) {
    super(field === null ? `${file}: ${problem}` : `${file}: field "${field}": ${problem}`);
    this.name = 'ConfigError';
  }
}

export type ModelType = 'llama' | 'mistral' | 'qwen2' | 'qwen3' | 'phi3' | 'gemma2' | 'gemma3_text';
/** Gemma's per-layer attention (config.json layer_types). */
export type LayerType = 'sliding_attention' | 'full_attention';

const ARCHITECTURES: Record<ModelType, string> = {
  llama: 'LlamaForCausalLM',
  mistral: 'MistralForCausalLM',
  qwen2: 'Qwen2ForCausalLM',
  qwen3: 'Qwen3ForCausalLM',
  phi3: 'Phi3ForCausalLM',
  gemma2: 'Gemma2ForCausalLM',
  gemma3_text: 'Gemma3ForCausalLM',
};
const isGemma = (t: ModelType): t is 'gemma2' | 'gemma3_text' => t === 'gemma2' || t === 'gemma3_text';
const MODEL_TYPES = Object.keys(ARCHITECTURES) as ModelType[];

export type TorchDtype = 'bfloat16' | 'float16' | 'float32';

export interface LlamaConfig {
  /** HF model_type; decides the architectures name and bias/sliding-window conventions. */
  modelType: ModelType;
  /** H: width of the residual stream (hidden_size). */
  hiddenSize: number;
  /** I: width of the SwiGLU MLP (intermediate_size). */
  intermediateSize: number;
  /** L: number of decoder layers (num_hidden_layers). */
  numLayers: number;
  /** nH: query heads (num_attention_heads). */
  numHeads: number;
  /** nKV: key/value heads, nH / nKV query heads share each (num_key_value_heads; default nH). */
  numKvHeads: number;
  /** hd: width of one head (head_dim; default H / nH). nH * hd need not equal H. */
  headDim: number;
  /** Epsilon inside RMSNorm's rsqrt (rms_norm_eps). */
  rmsNormEps: number;
  /** RoPE base (rope_theta; default 10000). */
  ropeTheta: number;
  /** RoPE position scaling (rope_scaling or rope_parameters; src/model/rope.ts), null for none. */
  ropeScaling: RopeScaling | null;
  /** The rope_scaling / rope_parameters object as read, written back unchanged; null when absent. */
  ropeJson: { field: 'rope_scaling' | 'rope_parameters'; value: Record<string, unknown> } | null;
  /** Top-level original_max_position_embeddings (Phi-3 style), written back; null when absent. */
  originalMaxPositionEmbeddings: number | null;
  /** V: vocabulary rows of the embedding and lm_head (vocab_size). */
  vocabSize: number;
  /** Longest sequence the model was trained for (max_position_embeddings). */
  maxPositionEmbeddings: number;
  /** lm_head shares model.embed_tokens.weight (tie_word_embeddings; default false). */
  tieWordEmbeddings: boolean;
  /** q_proj, k_proj and v_proj have biases (qwen2: always; llama, qwen3: attention_bias; mistral, phi3: never). */
  qkvBias: boolean;
  /** o_proj has a bias (llama, qwen3: attention_bias; qwen2, mistral, phi3: never). */
  oBias: boolean;
  /**
   * qwen3: RMSNorm over each head of q and k (q_norm / k_norm, weight [hd], eps rms_norm_eps) after
   * the projections, before RoPE. False for every other family.
   */
  qkNorm: boolean;
  /**
   * Sliding attention window in tokens (each query sees at most this many keys, itself included),
   * or null when no window applies: none configured, qwen2 / qwen3 with use_sliding_window false, or a
   * window not smaller than max_position_embeddings. phi3's sliding_window (Phi-3-mini-4k: 2047) has
   * the same meaning in transformers' masks and lands here too.
   */
  slidingWindow: number | null;
  /** First layer index that uses slidingWindow (qwen2 / qwen3: max_window_layers; others: 0). */
  firstSlidingLayer: number;
  /** Id of the beginning-of-sequence token (bos_token_id), null when none. */
  bosTokenId: number | null;
  /** Ids that end generation (eos_token_id: one number or a list); may be empty. */
  eosTokenIds: number[];
  /** The dtype the weights were saved in (torch_dtype or dtype), null when not stated. */
  torchDtype: TorchDtype | null;
  // ---- Gemma 2 / Gemma 3 (gemma_config.ts); [every other family's value] ----
  /** The MLP's gate activation: SwiGLU's 'silu' or Gemma's GeGLU 'gelu_tanh' (HF gelu_pytorch_tanh). */
  hiddenActivation: 'silu' | 'gelu_tanh';
  /** Gemma: every RMSNorm (q/k norms included) scales by (1 + w) instead of w [false]. */
  normUnitOffset: boolean;
  /**
   * Gemma's sandwich norms [false]: x += post_attention_layernorm(attn(input_layernorm(x))), x +=
   * post_feedforward_layernorm(mlp(pre_feedforward_layernorm(x))) (Llama's post_attention_layernorm is the MLP's input norm).
   */
  sandwichNorms: boolean;
  /** Embedding rows times this (Gemma: sqrt(hidden_size) in float64; HF rounds it to the compute dtype) [1]. */
  embedScale: number;
  /** Attention scores are q.k * queryPreAttnScalar^-0.5 (Gemma: query_pre_attn_scalar) [headDim]. */
  queryPreAttnScalar: number;
  /** Attention-logit soft-cap c: s -> c tanh(s / c) after the scale, before the mask (Gemma 2: 50) [null]. */
  attnSoftcap: number | null;
  /** Final-logit soft-cap c: z -> c tanh(z / c) (Gemma 2: 30; Gemma 3: null) [null]. */
  finalSoftcap: number | null;
  /** Gemma: each layer's attention (layer_types) [null: sliding from firstSlidingLayer on]; per layer: layerWindow. */
  layerTypes: LayerType[] | null;
  /** Gemma 3: RoPE base of the sliding layers, unscaled (rope_local_base_freq) [null: one RoPE]; per layer: layerRope. */
  ropeLocalTheta: number | null;
}

/** One HF tensor the model needs: its name and shape. */
export interface TensorSpec {
  name: string;
  shape: number[];
}

// ---- parsing ----

type Json = Record<string, unknown>;

function describe(v: unknown): string {
  if (v === undefined) return 'nothing';
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'a list';
  if (typeof v === 'string') return JSON.stringify(v.length > 40 ? `${v.slice(0, 40)}...` : v);
  if (typeof v === 'object') return 'an object';
  return String(v);
}

/** Field readers: `null` counts as absent (HF writes e.g. "head_dim": null). */
export class Fields {
  constructor(
    readonly json: Json,
    readonly file: string,
  ) {}

  error(field: string, problem: string): ConfigError {
    return new ConfigError(this.file, field, problem);
  }

  has(field: string): boolean {
    return this.json[field] !== undefined && this.json[field] !== null;
  }

  posInt(field: string, dflt?: number): number {
    if (!this.has(field)) {
      if (dflt !== undefined) return dflt;
      throw this.error(field, 'missing (expected a positive integer)');
    }
    const v = this.json[field];
    if (typeof v !== 'number' || !Number.isSafeInteger(v) || v <= 0)
      throw this.error(field, `expected a positive integer, got ${describe(v)}`);
    return v;
  }

  nonNegInt(field: string, dflt: number): number {
    if (!this.has(field)) return dflt;
    const v = this.json[field];
    if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 0)
      throw this.error(field, `expected a non-negative integer, got ${describe(v)}`);
    return v;
  }

  posNumber(field: string, dflt?: number): number {
    if (!this.has(field)) {
      if (dflt !== undefined) return dflt;
      throw this.error(field, 'missing (expected a positive number)');
    }
    const v = this.json[field];
    if (typeof v !== 'number' || !Number.isFinite(v) || v <= 0) throw this.error(field, `expected a positive number, got ${describe(v)}`);
    return v;
  }

  bool(field: string, dflt: boolean): boolean {
    if (!this.has(field)) return dflt;
    const v = this.json[field];
    if (typeof v !== 'boolean') throw this.error(field, `expected true or false, got ${describe(v)}`);
    return v;
  }
}

/** qwen3 / phi3 dropout fields, refused by name unless 0: spinlm's passes are deterministic. */
function checkNoDropout(f: Fields, modelType: ModelType): void {
  const dropouts = modelType === 'phi3' ? ['attention_dropout', 'resid_pdrop', 'embd_pdrop'] : ['attention_dropout'];
  for (const field of dropouts) {
    if (!f.has(field)) continue;
    const v = f.json[field];
    if (v !== 0) throw f.error(field, `dropout is not supported (expected 0, got ${describe(v)})`);
  }
}

function tokenId(f: Fields, field: string, v: unknown, vocabSize: number): number {
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 0 || v >= vocabSize) {
    throw f.error(field, `expected a token id in [0, ${vocabSize}), got ${describe(v)}`);
  }
  return v;
}

/** Checks a parsed config.json; `file` names it in errors. */
export function parseConfig(json: unknown, file: string): LlamaConfig {
  if (typeof json !== 'object' || json === null || Array.isArray(json)) {
    throw new ConfigError(file, null, `expected a JSON object, got ${describe(json)}`);
  }
  const f = new Fields(json as Json, file);
  const mt = f.json.model_type;
  if (mt === 'gemma3') throw f.error('model_type', GEMMA3_MULTIMODAL);
  if (!MODEL_TYPES.includes(mt as ModelType)) {
    const names = MODEL_TYPES.map((t) => `"${t}"`);
    throw f.error(
      'model_type',
      `expected ${names.slice(0, -1).join(', ')} or ${names[names.length - 1]}, got ${mt === undefined ? 'nothing' : describe(mt)}`,
    );
  }
  const modelType = mt as ModelType;

  const hiddenSize = f.posInt('hidden_size');
  const intermediateSize = f.posInt('intermediate_size');
  const numLayers = f.posInt('num_hidden_layers');
  const numHeads = f.posInt('num_attention_heads');
  const gemma = isGemma(modelType);
  const numKvHeads = f.posInt('num_key_value_heads', gemma ? 4 : numHeads); // Gemma{2,3}Config default 4
  if (numHeads % numKvHeads !== 0) {
    throw f.error('num_key_value_heads', `${numKvHeads} does not divide num_attention_heads ${numHeads}`);
  }
  let headDim: number;
  if (f.has('head_dim') || gemma) {
    headDim = f.posInt('head_dim', 256); // Gemma's class default
  } else {
    if (hiddenSize % numHeads !== 0) {
      throw f.error('num_attention_heads', `${numHeads} does not divide hidden_size ${hiddenSize} (and no head_dim is given)`);
    }
    headDim = hiddenSize / numHeads;
  }
  if (headDim % 2 !== 0) throw f.error('head_dim', `rotary embeddings need an even head width, got ${headDim}`);
  const vocabSize = f.posInt('vocab_size');
  const maxPositionEmbeddings = f.posInt('max_position_embeddings');
  const rmsNormEps = f.posNumber('rms_norm_eps');

  // Newer transformers may nest rope_theta / the scaling type under rope_parameters.
  const ropeParams = f.json.rope_parameters;
  if (ropeParams !== undefined && ropeParams !== null && (typeof ropeParams !== 'object' || Array.isArray(ropeParams))) {
    throw f.error('rope_parameters', `expected an object, got ${describe(ropeParams)}`);
  }
  const rp = (ropeParams ?? null) as Json | null;
  let ropeTheta: number;
  if (!f.has('rope_theta') && rp && rp.rope_theta !== undefined) {
    ropeTheta = new Fields(rp, file).posNumber('rope_theta');
  } else {
    ropeTheta = f.posNumber('rope_theta', 10000);
  }
  const rpScaling = rp && (rp.rope_type !== undefined || rp.type !== undefined) ? rp : null; // no type: no scaling
  const ropeField: 'rope_scaling' | 'rope_parameters' = f.has('rope_scaling') ? 'rope_scaling' : 'rope_parameters';
  const ropeObj = ropeField === 'rope_scaling' ? f.json.rope_scaling : rpScaling;
  if (ropeObj !== null && (typeof ropeObj !== 'object' || Array.isArray(ropeObj))) {
    throw f.error(ropeField, `expected null or an object, got ${describe(ropeObj)}`);
  }
  const originalMaxPositionEmbeddings = f.has('original_max_position_embeddings') ? f.posInt('original_max_position_embeddings') : null;
  if (f.has('partial_rotary_factor') && f.json.partial_rotary_factor !== 1) {
    throw f.error('partial_rotary_factor', `partial rotary embeddings are not supported (got ${describe(f.json.partial_rotary_factor)})`);
  }
  const ropeScaling =
    ropeObj === null
      ? null
      : parseRopeScaling(ropeObj as Json, ropeField, { headDim, maxPositionEmbeddings, originalMaxPositionEmbeddings }, (field, problem) =>
          f.error(field, problem),
        );
  const ropeJson = ropeObj === null ? null : { field: ropeField, value: structuredClone(ropeObj as Json) };

  const act = f.json.hidden_act; // Gemma reads hidden_activation (gemma_config.ts)
  if (!gemma && act !== undefined && act !== 'silu') throw f.error('hidden_act', `only "silu" is supported, got ${describe(act)}`);
  if (modelType === 'llama' && f.bool('mlp_bias', false)) throw f.error('mlp_bias', 'MLP biases are not supported');
  if (modelType === 'qwen3' || modelType === 'phi3' || gemma) checkNoDropout(f, modelType);
  const tieWordEmbeddings = f.bool('tie_word_embeddings', gemma);
  // phi3's attention has no biases whatever attention_bias says (HF's Phi3Attention ignores it)
  const llamaBias = modelType === 'llama' || modelType === 'qwen3' || gemma ? f.bool('attention_bias', false) : false;
  const qkvBias = modelType === 'qwen2' || llamaBias;
  const oBias = llamaBias;
  const qkNorm = modelType === 'qwen3' || modelType === 'gemma3_text';

  let slidingWindow: number | null = null;
  let firstSlidingLayer = 0;
  if (modelType !== 'llama' && !gemma) {
    const window = f.has('sliding_window') ? f.posInt('sliding_window') : null;
    const qwen = modelType === 'qwen2' || modelType === 'qwen3';
    const used = !qwen || f.bool('use_sliding_window', false);
    if (qwen) firstSlidingLayer = f.nonNegInt('max_window_layers', 28); // 28: HF Qwen2Config's and Qwen3Config's default
    if (used && window !== null && window < maxPositionEmbeddings) slidingWindow = window;
  }

  const bosTokenId = f.has('bos_token_id') ? tokenId(f, 'bos_token_id', f.json.bos_token_id, vocabSize) : null;
  let eosTokenIds: number[] = [];
  if (f.has('eos_token_id')) {
    const eos = f.json.eos_token_id;
    eosTokenIds = Array.isArray(eos)
      ? eos.map((v, i) => tokenId(f, `eos_token_id[${i}]`, v, vocabSize))
      : [tokenId(f, 'eos_token_id', eos, vocabSize)];
  }

  const dtypeField = f.has('torch_dtype') ? 'torch_dtype' : 'dtype';
  let torchDtype: TorchDtype | null = null;
  if (f.has(dtypeField)) {
    const d = f.json[dtypeField];
    if (d !== 'bfloat16' && d !== 'float16' && d !== 'float32') {
      throw f.error(dtypeField, `expected "bfloat16", "float16" or "float32", got ${describe(d)}`);
    }
    torchDtype = d;
  }

  const g = gemma
    ? parseGemma(f, modelType, { hiddenSize, numLayers, headDim, maxPositionEmbeddings, ropeTheta, ropeScaling, ropeJson })
    : { ...noGemma(headDim), slidingWindow, ropeTheta, ropeScaling, ropeJson };
  return {
    ...g,
    modelType,
    hiddenSize,
    intermediateSize,
    numLayers,
    numHeads,
    numKvHeads,
    headDim,
    rmsNormEps,
    originalMaxPositionEmbeddings,
    vocabSize,
    maxPositionEmbeddings,
    tieWordEmbeddings,
    qkvBias,
    oBias,
    qkNorm,
    firstSlidingLayer,
    bosTokenId,
    eosTokenIds,
    torchDtype,
  };
}

/** Reads and checks `dir/config.json`. */
export async function loadConfig(dir: string): Promise<LlamaConfig> {
  const file = join(dir, 'config.json');
  let text: string;
  try {
    text = await readInputFile(file, INPUT_CAPS.config);
  } catch (err) {
    const { code, message } = err as InputFileError;
    throw new ConfigError(
      file,
      null,
      code === 'ENOENT' ? 'not found (a Hugging Face model directory needs config.json)' : code ? `cannot read (${code})` : message,
    );
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (err) {
    throw new ConfigError(file, null, `not valid JSON (${(err as Error).message})`);
  }
  return parseConfig(json, file);
}

// ---- writing ----

/** The HF config.json object for a config (parseConfig(configToJson(c)) gives c back). */
export function configToJson(cfg: LlamaConfig): Record<string, unknown> {
  const out: Record<string, unknown> = {
    architectures: [ARCHITECTURES[cfg.modelType]],
    model_type: cfg.modelType,
    hidden_size: cfg.hiddenSize,
    intermediate_size: cfg.intermediateSize,
    num_hidden_layers: cfg.numLayers,
    num_attention_heads: cfg.numHeads,
    num_key_value_heads: cfg.numKvHeads,
    head_dim: cfg.headDim,
    hidden_act: 'silu',
    rms_norm_eps: cfg.rmsNormEps,
    rope_theta: cfg.ropeTheta,
    rope_scaling: cfg.ropeJson?.field === 'rope_scaling' ? structuredClone(cfg.ropeJson.value) : null,
    vocab_size: cfg.vocabSize,
    max_position_embeddings: cfg.maxPositionEmbeddings,
    tie_word_embeddings: cfg.tieWordEmbeddings,
    bos_token_id: cfg.bosTokenId,
    eos_token_id: cfg.eosTokenIds.length === 1 ? cfg.eosTokenIds[0] : cfg.eosTokenIds.length === 0 ? null : [...cfg.eosTokenIds],
  };
  if (cfg.ropeJson?.field === 'rope_parameters') out.rope_parameters = structuredClone(cfg.ropeJson.value);
  if (cfg.originalMaxPositionEmbeddings !== null) out.original_max_position_embeddings = cfg.originalMaxPositionEmbeddings;
  if (cfg.torchDtype !== null) out.torch_dtype = cfg.torchDtype;
  switch (cfg.modelType) {
    case 'llama':
      if (cfg.qkvBias !== cfg.oBias)
        throw new Error(`configToJson: llama has one attention_bias flag for q/k/v/o, got qkvBias ${cfg.qkvBias}, oBias ${cfg.oBias}`);
      out.attention_bias = cfg.qkvBias;
      out.mlp_bias = false;
      break;
    case 'mistral':
      if (cfg.qkvBias || cfg.oBias) throw new Error('configToJson: mistral has no attention biases');
      out.sliding_window = cfg.slidingWindow;
      break;
    case 'qwen2':
      if (!cfg.qkvBias || cfg.oBias) throw new Error('configToJson: qwen2 has q/k/v biases and no o_proj bias');
      out.use_sliding_window = cfg.slidingWindow !== null;
      out.sliding_window = cfg.slidingWindow;
      out.max_window_layers = cfg.firstSlidingLayer;
      break;
    case 'qwen3':
      if (cfg.qkvBias !== cfg.oBias)
        throw new Error(`configToJson: qwen3 has one attention_bias flag for q/k/v/o, got qkvBias ${cfg.qkvBias}, oBias ${cfg.oBias}`);
      out.attention_bias = cfg.qkvBias;
      out.use_sliding_window = cfg.slidingWindow !== null;
      out.sliding_window = cfg.slidingWindow;
      out.max_window_layers = cfg.firstSlidingLayer;
      break;
    case 'phi3':
      if (cfg.qkvBias || cfg.oBias) throw new Error('configToJson: phi3 has no attention biases');
      out.sliding_window = cfg.slidingWindow;
      break;
    case 'gemma2':
    case 'gemma3_text':
      return Object.assign(out, gemmaToJson(cfg));
  }
  const neutral = noGemma(cfg.headDim);
  for (const k of Object.keys(neutral) as (keyof typeof neutral)[])
    if (cfg[k] !== neutral[k]) throw new Error(`configToJson: ${k} is a Gemma field, ${cfg.modelType} has ${JSON.stringify(neutral[k])}`);
  if (cfg.qkNorm !== (cfg.modelType === 'qwen3'))
    throw new Error(`configToJson: ${cfg.modelType} ${cfg.qkNorm ? 'has no' : 'needs'} q/k norms`);
  return out;
}

/** Writes `dir/config.json` atomically. */
export async function writeConfig(dir: string, cfg: LlamaConfig): Promise<void> {
  await writeFileAtomic(join(dir, 'config.json'), `${JSON.stringify(configToJson(cfg), null, 2)}\n`);
}

/**
 * Every tensor the model computes with, in model order, named as in HF's llama (phi3's fused
 * checkpoint tensors appear split: q_proj, k_proj, v_proj, gate_proj, up_proj; checkpointLayout).
 * Gemma (modeling_gemma2.py / modeling_gemma3.py Gemma*DecoderLayer) adds pre_feedforward_layernorm and
 * post_feedforward_layernorm per layer; Gemma 3 has self_attn.q_norm / k_norm [head_dim] like qwen3.
 */
export function expectedTensors(cfg: LlamaConfig): TensorSpec[] {
  const { hiddenSize: H, intermediateSize: I, vocabSize: V, numHeads: nH, numKvHeads: nKV, headDim: hd } = cfg;
  const out: TensorSpec[] = [{ name: 'model.embed_tokens.weight', shape: [V, H] }];
  for (let i = 0; i < cfg.numLayers; i++) {
    const p = `model.layers.${i}`;
    out.push({ name: `${p}.input_layernorm.weight`, shape: [H] });
    out.push({ name: `${p}.self_attn.q_proj.weight`, shape: [nH * hd, H] });
    if (cfg.qkvBias) out.push({ name: `${p}.self_attn.q_proj.bias`, shape: [nH * hd] });
    out.push({ name: `${p}.self_attn.k_proj.weight`, shape: [nKV * hd, H] });
    if (cfg.qkvBias) out.push({ name: `${p}.self_attn.k_proj.bias`, shape: [nKV * hd] });
    out.push({ name: `${p}.self_attn.v_proj.weight`, shape: [nKV * hd, H] });
    if (cfg.qkvBias) out.push({ name: `${p}.self_attn.v_proj.bias`, shape: [nKV * hd] });
    out.push({ name: `${p}.self_attn.o_proj.weight`, shape: [H, nH * hd] });
    if (cfg.oBias) out.push({ name: `${p}.self_attn.o_proj.bias`, shape: [H] });
    if (cfg.qkNorm) {
      out.push({ name: `${p}.self_attn.q_norm.weight`, shape: [hd] });
      out.push({ name: `${p}.self_attn.k_norm.weight`, shape: [hd] });
    }
    out.push({ name: `${p}.post_attention_layernorm.weight`, shape: [H] });
    if (cfg.sandwichNorms) out.push({ name: `${p}.pre_feedforward_layernorm.weight`, shape: [H] });
    out.push({ name: `${p}.mlp.gate_proj.weight`, shape: [I, H] });
    out.push({ name: `${p}.mlp.up_proj.weight`, shape: [I, H] });
    out.push({ name: `${p}.mlp.down_proj.weight`, shape: [H, I] });
    if (cfg.sandwichNorms) out.push({ name: `${p}.post_feedforward_layernorm.weight`, shape: [H] });
  }
  out.push({ name: 'model.norm.weight', shape: [H] });
  if (!cfg.tieWordEmbeddings) out.push({ name: 'lm_head.weight', shape: [V, H] });
  return out;
}

/** One tensor of the checkpoint file and the model tensors it holds, stacked along dim 0 in this order. */
export interface CheckpointTensorSpec extends TensorSpec {
  parts: TensorSpec[];
}

/**
 * The checkpoint's tensors in HF naming and the model tensors each holds. Every family stores the
 * model's tensors one to one, except phi3: `self_attn.qkv_proj.weight` [(nH + 2 nKV) hd, H] holds
 * q_proj, k_proj, v_proj (rows in that order, as HF's Phi3Attention slices them) and
 * `mlp.gate_up_proj.weight` [2 I, H] holds gate_proj then up_proj (HF's Phi3MLP: `gate, up =
 * chunk(2)`). Loading splits them, saving joins them again.
 */
export function checkpointLayout(cfg: LlamaConfig): CheckpointTensorSpec[] {
  const specs = expectedTensors(cfg);
  if (cfg.modelType !== 'phi3') return specs.map((s) => ({ ...s, parts: [s] }));
  const byName = new Map(specs.map((s) => [s.name, s]));
  const fused = new Map<string, { name: string; parts: string[] }>();
  for (let i = 0; i < cfg.numLayers; i++) {
    const p = `model.layers.${i}`;
    fused.set(`${p}.self_attn.q_proj.weight`, {
      name: `${p}.self_attn.qkv_proj.weight`,
      parts: ['q_proj', 'k_proj', 'v_proj'].map((n) => `${p}.self_attn.${n}.weight`),
    });
    fused.set(`${p}.mlp.gate_proj.weight`, {
      name: `${p}.mlp.gate_up_proj.weight`,
      parts: [`${p}.mlp.gate_proj.weight`, `${p}.mlp.up_proj.weight`],
    });
  }
  const inFused = new Set([...fused.values()].flatMap((f) => f.parts));
  const out: CheckpointTensorSpec[] = [];
  for (const s of specs) {
    const f = fused.get(s.name);
    if (f) {
      const parts = f.parts.map((n) => byName.get(n)!);
      out.push({ name: f.name, shape: [parts.reduce((a, t) => a + t.shape[0], 0), s.shape[1]], parts });
    } else if (!inFused.has(s.name)) out.push({ ...s, parts: [s] });
  }
  return out;
}
