// Tiny Llama-family configs for tests, through the real config parser.
import { type LlamaConfig, type ModelType, parseConfig } from '../../src/model/config.js';

export interface TinyOptions {
  modelType?: ModelType;
  hidden?: number;
  layers?: number;
  heads?: number;
  kvHeads?: number;
  /** head_dim (default hidden / heads; qwen3 publishes one that differs). */
  headDim?: number;
  intermediate?: number;
  vocab?: number;
  tie?: boolean;
  ropeTheta?: number;
  ropeScaling?: number;
  /** sliding_window (mistral: every layer; qwen2: use_sliding_window from layer maxWindowLayers on). */
  slidingWindow?: number;
  maxWindowLayers?: number;
}

export function tinyConfig(o: TinyOptions = {}): LlamaConfig {
  return parseConfig(
    {
      model_type: o.modelType ?? 'llama',
      hidden_size: o.hidden ?? 64,
      intermediate_size: o.intermediate ?? 96,
      num_hidden_layers: o.layers ?? 2,
      num_attention_heads: o.heads ?? 4,
      num_key_value_heads: o.kvHeads ?? 2,
      ...(o.headDim ? { head_dim: o.headDim } : {}),
      rms_norm_eps: 1e-5,
      rope_theta: o.ropeTheta ?? 10000,
      rope_scaling: o.ropeScaling ? { type: 'linear', factor: o.ropeScaling } : null,
      vocab_size: o.vocab ?? 260,
      max_position_embeddings: 512,
      tie_word_embeddings: o.tie ?? false,
      bos_token_id: 1,
      eos_token_id: 2,
      hidden_act: 'silu',
      ...(o.slidingWindow === undefined
        ? {}
        : { sliding_window: o.slidingWindow, use_sliding_window: true, max_window_layers: o.maxWindowLayers ?? 0 }),
    },
    'tiny config',
  );
}

/** Qwen3-0.6B's config.json as its model card publishes it, layers and widths shrunk (head_dim kept apart). */
export const QWEN3_CONFIG = {
  architectures: ['Qwen3ForCausalLM'],
  attention_bias: false,
  attention_dropout: 0.0,
  bos_token_id: 1,
  eos_token_id: 2,
  head_dim: 32,
  hidden_act: 'silu',
  hidden_size: 64,
  initializer_range: 0.02,
  intermediate_size: 96,
  max_position_embeddings: 40960,
  max_window_layers: 28,
  model_type: 'qwen3',
  num_attention_heads: 4,
  num_hidden_layers: 2,
  num_key_value_heads: 2,
  rms_norm_eps: 1e-6,
  rope_scaling: null,
  rope_theta: 1000000,
  sliding_window: null,
  tie_word_embeddings: true,
  torch_dtype: 'bfloat16',
  transformers_version: '4.51.0',
  use_cache: true,
  use_sliding_window: false,
  vocab_size: 97,
};

/** Phi-3-mini-4k-instruct's config.json as its model card publishes it, layers and widths shrunk. */
export const PHI3_CONFIG = {
  architectures: ['Phi3ForCausalLM'],
  attention_bias: false,
  attention_dropout: 0.0,
  bos_token_id: 1,
  embd_pdrop: 0.0,
  eos_token_id: 2,
  hidden_act: 'silu',
  hidden_size: 64,
  initializer_range: 0.02,
  intermediate_size: 96,
  max_position_embeddings: 4096,
  model_type: 'phi3',
  num_attention_heads: 4,
  num_hidden_layers: 2,
  num_key_value_heads: 4,
  original_max_position_embeddings: 4096,
  pad_token_id: 0,
  resid_pdrop: 0.0,
  rms_norm_eps: 1e-5,
  rope_scaling: null,
  rope_theta: 10000.0,
  sliding_window: 2047,
  tie_word_embeddings: false,
  torch_dtype: 'bfloat16',
  transformers_version: '4.40.2',
  use_cache: true,
  vocab_size: 97,
};

/** A tiny byte-level model directory (config, safetensors, tokenizer) at `dir`, for CLI tests. */
export async function writeTinyModelDir(dir: string, o: TinyOptions & { seed?: number; context?: number } = {}): Promise<string> {
  const [{ mkdirSync }, { CpuBackend }, { initLlama }, { writeByteTokenizer }] = await Promise.all([
    import('node:fs'),
    import('../../src/backend/cpu/cpu_backend.js'),
    import('../../src/model/init.js'),
    import('../../src/text/byte_tokenizer.js'),
  ]);
  mkdirSync(dir, { recursive: true });
  await writeByteTokenizer(dir);
  const cfg = { ...tinyConfig({ vocab: 260, ...o }), ...(o.context ? { maxPositionEmbeddings: o.context } : {}) };
  const m = initLlama(new CpuBackend(), cfg, { seed: o.seed ?? 1, std: 0.05 });
  await m.save(dir);
  m.weights.free();
  return dir;
}
