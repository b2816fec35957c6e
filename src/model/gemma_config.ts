// Gemma 2 (model_type "gemma2") and Gemma 3 text (model_type "gemma3_text") config.json <-> the Gemma
// fields of LlamaConfig, as transformers' configuration_gemma2.py / configuration_gemma3.py read them
// (4.x: rope_theta, rope_scaling, rope_local_base_freq, sliding_window_pattern; 5.x: rope_parameters,
// per layer type for Gemma 3), and the per-layer attention window / RoPE / scale every family uses.
// The equations these fields stand for: docs/design.md "Gemma 2 and Gemma 3", test/oracle/gemma_torch.py.
import type { Fields, LayerType, LlamaConfig, RopeScaling } from './config.js';
import { parseRopeScaling } from './rope.js';

type Json = Record<string, unknown>;

export type GemmaType = 'gemma2' | 'gemma3_text';

/** model_type "gemma3" (Gemma3ForConditionalGeneration) is refused with this. */
export const GEMMA3_MULTIMODAL =
  '"gemma3" is the multimodal Gemma 3 (Gemma3ForConditionalGeneration: text_config nested, weights under language_model): not supported; a text-only checkpoint (model_type "gemma3_text", e.g. gemma-3-1b) is';

/** The LlamaConfig fields that only Gemma sets (neutral for every other family: noGemma). */
export type GemmaFields = Pick<
  LlamaConfig,
  | 'hiddenActivation'
  | 'normUnitOffset'
  | 'sandwichNorms'
  | 'embedScale'
  | 'queryPreAttnScalar'
  | 'attnSoftcap'
  | 'finalSoftcap'
  | 'layerTypes'
  | 'ropeLocalTheta'
>;

/** The values of GemmaFields for the Llama-style families (llama, mistral, qwen2, qwen3, phi3). */
export function noGemma(headDim: number): GemmaFields {
  return {
    hiddenActivation: 'silu',
    normUnitOffset: false,
    sandwichNorms: false,
    embedScale: 1,
    queryPreAttnScalar: headDim, // scores * head_dim^-0.5, as LlamaAttention.scaling
    attnSoftcap: null,
    finalSoftcap: null,
    layerTypes: null,
    ropeLocalTheta: null,
  };
}

/** What parseGemma decides besides GemmaFields. */
export interface GemmaParse extends GemmaFields {
  slidingWindow: number | null;
  ropeTheta: number;
  ropeScaling: RopeScaling | null;
  ropeJson: LlamaConfig['ropeJson'];
}

const HF_DEFAULTS = {
  // configuration_gemma2.py Gemma2Config / configuration_gemma3.py Gemma3TextConfig class defaults
  gemma2: { finalSoftcap: 30.0, attnSoftcap: 50.0, ropeTheta: 10_000.0 },
  gemma3_text: { finalSoftcap: null, attnSoftcap: null, ropeTheta: 1_000_000.0 },
} as const;

/**
 * A soft-cap field: absent -> HF's class default; an explicit null -> none (HF passes None on, and
 * `if self.config.final_logit_softcapping is not None` skips it); else a positive number.
 */
function softcap(f: Fields, field: string, dflt: number | null): number | null {
  if (f.json[field] === undefined) return dflt;
  if (f.json[field] === null) return null;
  return f.posNumber(field);
}

function object(f: Fields, v: unknown, field: string): Json | null {
  if (v === undefined || v === null) return null;
  if (typeof v !== 'object' || Array.isArray(v)) throw f.error(field, `expected an object, got ${Array.isArray(v) ? 'a list' : String(v)}`);
  return v as Json;
}

/**
 * Layer types: config.json's layer_types (transformers >= 4.53 writes them), else the class default:
 * Gemma 2 `"sliding_attention" if bool((i + 1) % 2) else "full_attention"` (Gemma2Config.__post_init__),
 * Gemma 3 the same with `sliding_window_pattern` (default 6: layers 5, 11, ... global).
 */
function layerTypesOf(f: Fields, mt: GemmaType, numLayers: number): LayerType[] {
  const lt = f.json.layer_types;
  if (lt !== undefined && lt !== null) {
    if (!Array.isArray(lt) || lt.length !== numLayers)
      throw f.error(
        'layer_types',
        `expected a list of num_hidden_layers (${numLayers}) entries, got ${Array.isArray(lt) ? `${lt.length}` : String(lt)}`,
      );
    return lt.map((t, i) => {
      if (t !== 'sliding_attention' && t !== 'full_attention')
        throw f.error(`layer_types[${i}]`, `expected "sliding_attention" or "full_attention", got ${JSON.stringify(t)}`);
      return t;
    });
  }
  const pattern = mt === 'gemma2' ? 2 : f.posInt('sliding_window_pattern', 6);
  return Array.from({ length: numLayers }, (_, i) => ((i + 1) % pattern !== 0 ? 'sliding_attention' : 'full_attention'));
}

/** Gemma 3's two RoPEs: global (full_attention layers, may be scaled) and local (sliding layers, never scaled). */
function gemma3Rope(
  f: Fields,
  ctx: { headDim: number; maxPositionEmbeddings: number },
): Pick<GemmaParse, 'ropeTheta' | 'ropeScaling' | 'ropeJson' | 'ropeLocalTheta'> {
  const fail = (field: string, problem: string) => f.error(field, problem);
  const rctx = { ...ctx, originalMaxPositionEmbeddings: null };
  const topTheta = f.posNumber('rope_theta', HF_DEFAULTS.gemma3_text.ropeTheta);
  const topLocal = f.posNumber('rope_local_base_freq', 10_000.0);
  const rp = object(f, f.json.rope_parameters, 'rope_parameters');
  if (rp === null) {
    // transformers 4.x: rope_theta and rope_scaling for the global layers, rope_local_base_freq for the
    // local ones (Gemma3TextModel: `config.rope_theta = config.rope_local_base_freq; config.rope_scaling =
    // {"rope_type": "default"}; self.rotary_emb_local = Gemma3RotaryEmbedding(config=config)`)
    const rs = object(f, f.json.rope_scaling, 'rope_scaling');
    return {
      ropeTheta: topTheta,
      ropeScaling: rs === null ? null : parseRopeScaling(rs, 'rope_scaling', rctx, fail),
      ropeJson: rs === null ? null : { field: 'rope_scaling', value: structuredClone(rs) },
      ropeLocalTheta: topLocal,
    };
  }
  // transformers 5.x (Gemma3TextConfig.convert_rope_params_to_dict): {"full_attention": {...},
  // "sliding_attention": {...}}; a missing rope_theta comes from rope_theta / rope_local_base_freq
  if (f.has('rope_scaling')) throw f.error('rope_scaling', 'given together with rope_parameters: give one of them');
  for (const k of Object.keys(rp))
    if (k !== 'full_attention' && k !== 'sliding_attention')
      throw f.error(
        `rope_parameters.${k}`,
        'Gemma 3 keeps one rope_parameters object per layer type: expected only "full_attention" and "sliding_attention"',
      );
  const full = object(f, rp.full_attention, 'rope_parameters.full_attention') ?? {};
  const local = object(f, rp.sliding_attention, 'rope_parameters.sliding_attention') ?? {};
  const theta = (o: Json, field: string, dflt: number) => {
    const v = o.rope_theta;
    if (v === undefined || v === null) return dflt;
    if (typeof v !== 'number' || !Number.isFinite(v) || v <= 0) throw f.error(field, `expected a positive number, got ${String(v)}`);
    return v;
  };
  const localType = local.rope_type ?? local.type ?? 'default';
  if (localType !== 'default')
    throw f.error(
      'rope_parameters.sliding_attention.rope_type',
      `scaled RoPE on the sliding layers is not supported (got ${JSON.stringify(localType)})`,
    );
  const typed = full.rope_type !== undefined || full.type !== undefined;
  return {
    ropeTheta: theta(full, 'rope_parameters.full_attention.rope_theta', topTheta),
    ropeScaling: typed ? parseRopeScaling(full, 'rope_parameters.full_attention', rctx, fail) : null,
    ropeJson: { field: 'rope_parameters', value: structuredClone(rp) },
    ropeLocalTheta: theta(local, 'rope_parameters.sliding_attention.rope_theta', topLocal),
  };
}

/**
 * The Gemma part of parseConfig. `base` holds what the common part read: head_dim, max positions and
 * the common rope reading (right for Gemma 2, whose rope is llama's; Gemma 3 reads its own).
 */
export function parseGemma(
  f: Fields,
  mt: GemmaType,
  base: {
    hiddenSize: number;
    numLayers: number;
    headDim: number;
    maxPositionEmbeddings: number;
    ropeTheta: number;
    ropeScaling: RopeScaling | null;
    ropeJson: LlamaConfig['ropeJson'];
  },
): GemmaParse {
  if (f.bool('use_bidirectional_attention', false))
    throw f.error(
      'use_bidirectional_attention',
      'bidirectional (encoder-style) attention is not supported: spinlm trains causal language models',
    );
  // Gemma2MLP / Gemma3MLP: act_fn = ACT2FN[config.hidden_activation] (hidden_act is not read)
  const act = f.has('hidden_activation') ? f.json.hidden_activation : 'gelu_pytorch_tanh';
  if (act !== 'gelu_pytorch_tanh') throw f.error('hidden_activation', `only "gelu_pytorch_tanh" is supported, got ${JSON.stringify(act)}`);
  const d = HF_DEFAULTS[mt];
  const attnSoftcap = softcap(f, 'attn_logit_softcapping', d.attnSoftcap);
  // Gemma3Attention never passes softcap= to the attention function: a set value would be ignored by transformers
  if (mt === 'gemma3_text' && attnSoftcap !== null)
    throw f.error(
      'attn_logit_softcapping',
      "Gemma 3's attention has no soft-cap in transformers (Gemma3Attention ignores it): expected null",
    );
  const window = f.posInt('sliding_window', 4096);
  const rope =
    mt === 'gemma3_text'
      ? gemma3Rope(f, base)
      : { ropeTheta: base.ropeTheta, ropeScaling: base.ropeScaling, ropeJson: base.ropeJson, ropeLocalTheta: null };
  return {
    hiddenActivation: 'gelu_tanh',
    normUnitOffset: true,
    sandwichNorms: true,
    // Gemma2Model: `normalizer = torch.tensor(self.config.hidden_size**0.5, dtype=hidden_states.dtype)`;
    // Gemma3TextScaledWordEmbedding: `* self.embed_scale.to(self.weight.dtype)`: rounded to the compute dtype
    embedScale: Math.sqrt(base.hiddenSize),
    queryPreAttnScalar: f.posNumber('query_pre_attn_scalar', 256),
    attnSoftcap,
    finalSoftcap: softcap(f, 'final_logit_softcapping', d.finalSoftcap),
    layerTypes: layerTypesOf(f, mt, base.numLayers),
    slidingWindow: window < base.maxPositionEmbeddings ? window : null,
    ...rope,
  };
}

/** The Gemma fields of config.json for configToJson (parseConfig of the result gives the same config). */
export function gemmaToJson(cfg: LlamaConfig): Json {
  if (!cfg.layerTypes || cfg.hiddenActivation !== 'gelu_tanh' || !cfg.normUnitOffset || !cfg.sandwichNorms)
    throw new Error(`configToJson: ${cfg.modelType} needs layerTypes, gelu_tanh, (1 + w) norms and sandwich norms`);
  if (cfg.qkNorm !== (cfg.modelType === 'gemma3_text'))
    throw new Error(`configToJson: ${cfg.modelType} ${cfg.qkNorm ? 'has no' : 'needs'} q/k norms`);
  if (cfg.qkvBias !== cfg.oBias) throw new Error('configToJson: Gemma has one attention_bias flag for q/k/v/o');
  const out: Json = {
    hidden_act: 'gelu_pytorch_tanh',
    hidden_activation: 'gelu_pytorch_tanh',
    attention_bias: cfg.qkvBias,
    query_pre_attn_scalar: cfg.queryPreAttnScalar,
    attn_logit_softcapping: cfg.attnSoftcap,
    final_logit_softcapping: cfg.finalSoftcap,
    // a window of at least max_position_embeddings is none; written as that length
    sliding_window: cfg.slidingWindow ?? cfg.maxPositionEmbeddings,
    layer_types: [...cfg.layerTypes],
    use_bidirectional_attention: false,
  };
  if (cfg.modelType === 'gemma3_text') out.rope_local_base_freq = cfg.ropeLocalTheta;
  return out;
}

/** The attention window of layer i in tokens (each query sees at most this many keys), 0 for none. */
export function layerWindow(cfg: LlamaConfig, i: number): number {
  const w = cfg.slidingWindow;
  if (w === null) return 0;
  if (cfg.layerTypes) return cfg.layerTypes[i] === 'sliding_attention' ? w : 0;
  return i >= cfg.firstSlidingLayer ? w : 0;
}

/**
 * The RoPE of layer i: Gemma 3's sliding layers take ropeLocalTheta without scaling
 * (Gemma3DecoderLayer: `position_embeddings_local if self.self_attn.is_sliding`); every other layer
 * of every family takes ropeTheta and ropeScaling.
 */
export function layerRope(cfg: LlamaConfig, i: number): { theta: number; scaling: RopeScaling | null } {
  if (cfg.ropeLocalTheta !== null && cfg.layerTypes?.[i] === 'sliding_attention') return { theta: cfg.ropeLocalTheta, scaling: null };
  return { theta: cfg.ropeTheta, scaling: cfg.ropeScaling };
}

/** The factor on q.k: queryPreAttnScalar^-0.5 (Gemma{2,3}Attention.scaling; head_dim^-0.5 elsewhere). */
export function attentionScale(cfg: LlamaConfig): number {
  return cfg.queryPreAttnScalar ** -0.5;
}
