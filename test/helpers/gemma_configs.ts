// Gemma config.json files as the model cards publish them (transformers 4.x) and as transformers 5
// writes them (derived from configuration_gemma2.py / configuration_gemma3.py: rope_parameters, dtype,
// layer_types), and shrunk copies for model tests.

/** google/gemma-2-2b config.json (transformers 4.42.4). */
export const GEMMA2_2B = {
  architectures: ['Gemma2ForCausalLM'],
  attention_bias: false,
  attention_dropout: 0.0,
  attn_logit_softcapping: 50.0,
  bos_token_id: 2,
  cache_implementation: 'hybrid',
  eos_token_id: 1,
  final_logit_softcapping: 30.0,
  head_dim: 256,
  hidden_act: 'gelu_pytorch_tanh',
  hidden_activation: 'gelu_pytorch_tanh',
  hidden_size: 2304,
  initializer_range: 0.02,
  intermediate_size: 9216,
  max_position_embeddings: 8192,
  model_type: 'gemma2',
  num_attention_heads: 8,
  num_hidden_layers: 26,
  num_key_value_heads: 4,
  pad_token_id: 0,
  query_pre_attn_scalar: 256,
  rms_norm_eps: 1e-6,
  rope_theta: 10000.0,
  sliding_window: 4096,
  torch_dtype: 'float32',
  transformers_version: '4.42.4',
  use_cache: true,
  vocab_size: 256000,
};

/** google/gemma-2-27b's shape: query_pre_attn_scalar 144 = hidden_size / num_attention_heads, head_dim 128. */
export const GEMMA2_27B = {
  ...GEMMA2_2B,
  hidden_size: 4608,
  intermediate_size: 36864,
  num_attention_heads: 32,
  num_key_value_heads: 16,
  num_hidden_layers: 46,
  head_dim: 128,
  query_pre_attn_scalar: 144,
  torch_dtype: 'bfloat16',
};

/** google/gemma-3-1b-it config.json (transformers 4.50.0.dev0). */
export const GEMMA3_1B = {
  architectures: ['Gemma3ForCausalLM'],
  attention_bias: false,
  attention_dropout: 0.0,
  attn_logit_softcapping: null,
  bos_token_id: 2,
  cache_implementation: 'hybrid',
  eos_token_id: [1, 106],
  final_logit_softcapping: null,
  head_dim: 256,
  hidden_activation: 'gelu_pytorch_tanh',
  hidden_size: 1152,
  initializer_range: 0.02,
  intermediate_size: 6912,
  max_position_embeddings: 32768,
  model_type: 'gemma3_text',
  num_attention_heads: 4,
  num_hidden_layers: 26,
  num_key_value_heads: 1,
  pad_token_id: 0,
  query_pre_attn_scalar: 256,
  rms_norm_eps: 1e-6,
  rope_local_base_freq: 10000,
  rope_scaling: null,
  rope_theta: 1000000,
  sliding_window: 512,
  sliding_window_pattern: 6,
  torch_dtype: 'bfloat16',
  transformers_version: '4.50.0.dev0',
  use_cache: true,
  vocab_size: 262144,
};

/** google/gemma-3-4b-it's text_config (inside its model_type "gemma3" config), written out as a gemma3_text config. */
export const GEMMA3_4B_TEXT = {
  architectures: ['Gemma3ForCausalLM'],
  model_type: 'gemma3_text',
  hidden_size: 2560,
  intermediate_size: 10240,
  num_hidden_layers: 34,
  num_attention_heads: 8,
  num_key_value_heads: 4,
  head_dim: 256,
  max_position_embeddings: 131072,
  rms_norm_eps: 1e-6,
  rope_scaling: { factor: 8.0, rope_type: 'linear' },
  rope_theta: 1000000.0,
  rope_local_base_freq: 10000.0,
  sliding_window: 1024,
  sliding_window_pattern: 6,
  vocab_size: 262208,
  eos_token_id: [1, 106],
  bos_token_id: 2,
  torch_dtype: 'bfloat16',
};

/** google/gemma-3-4b-it config.json's outer shape (the multimodal wrapper), shortened. */
export const GEMMA3_4B_MULTIMODAL = {
  architectures: ['Gemma3ForConditionalGeneration'],
  boi_token_index: 255999,
  eoi_token_index: 256000,
  eos_token_id: [1, 106],
  image_token_index: 262144,
  mm_tokens_per_image: 256,
  model_type: 'gemma3',
  text_config: {
    hidden_size: 2560,
    intermediate_size: 10240,
    model_type: 'gemma3_text',
    num_hidden_layers: 34,
    rope_scaling: { factor: 8.0, rope_type: 'linear' },
    sliding_window: 1024,
  },
  torch_dtype: 'bfloat16',
  vision_config: { model_type: 'siglip_vision_model', hidden_size: 1152 },
};

const LAYER_TYPES_18 = Array.from({ length: 18 }, (_, i) => ((i + 1) % 6 ? 'sliding_attention' : 'full_attention'));

/** google/gemma-3-270m's shape as transformers >= 4.53 writes it (layer_types, _sliding_window_pattern). */
export const GEMMA3_270M = {
  ...GEMMA3_1B,
  _sliding_window_pattern: 6,
  hidden_size: 640,
  intermediate_size: 2048,
  num_hidden_layers: 18,
  layer_types: LAYER_TYPES_18,
  sliding_window_pattern: undefined,
  use_bidirectional_attention: false,
  transformers_version: '4.55.0.dev0',
};

/** Gemma 3 1B as transformers 5 writes it: rope_parameters per layer type, dtype, no rope_theta / rope_local_base_freq. */
export function gemma3V5(c: Record<string, unknown> = GEMMA3_1B, full: Record<string, unknown> = { rope_type: 'default' }) {
  const { rope_theta: _t, rope_local_base_freq: _l, rope_scaling: _s, sliding_window_pattern: _p, torch_dtype: _d, ...rest } = c;
  const n = c.num_hidden_layers as number;
  return {
    ...rest,
    dtype: 'bfloat16',
    layer_types: Array.from({ length: n }, (_, i) => ((i + 1) % 6 ? 'sliding_attention' : 'full_attention')),
    rope_parameters: {
      full_attention: { ...full, rope_theta: 1000000.0 },
      sliding_attention: { rope_type: 'default', rope_theta: 10000.0 },
    },
    use_bidirectional_attention: false,
    transformers_version: '5.0.0',
  };
}

/** Gemma 2 2B as transformers 5 writes it: one rope_parameters object, layer_types, dtype. */
export function gemma2V5() {
  const { rope_theta: _t, torch_dtype: _d, ...rest } = GEMMA2_2B;
  return {
    ...rest,
    dtype: 'float32',
    layer_types: Array.from({ length: 26 }, (_, i) => (i % 2 === 0 ? 'sliding_attention' : 'full_attention')),
    rope_parameters: { rope_type: 'default', rope_theta: 10000.0 },
    use_bidirectional_attention: null,
    transformers_version: '5.0.0',
  };
}

/** A shrunk config of a family for model and oracle tests (hidden 4 or more, 2 heads over 1 kv head, head_dim 4). */
export function tinyGemma(base: Record<string, unknown>, over: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    ...base,
    hidden_size: 4,
    intermediate_size: 3,
    num_hidden_layers: 2,
    num_attention_heads: 2,
    num_key_value_heads: 1,
    head_dim: 4,
    query_pre_attn_scalar: 3,
    vocab_size: 7,
    max_position_embeddings: 64,
    sliding_window: 2,
    bos_token_id: 2,
    eos_token_id: 1,
    torch_dtype: 'float32',
    layer_types: undefined,
    ...over,
  };
}

/**
 * Gemma as the model cards publish it, widths and layers shrunk, for the model tests: soft-caps small enough to
 * bite on random weights, query_pre_attn_scalar apart from head_dim, a window shorter than the test sequences.
 */
const SHRINK = {
  hidden_size: 64,
  intermediate_size: 96,
  num_attention_heads: 4,
  num_key_value_heads: 2,
  head_dim: 16,
  query_pre_attn_scalar: 24,
  vocab_size: 97,
  max_position_embeddings: 256,
  sliding_window: 7,
  bos_token_id: 1,
  eos_token_id: 2,
};
/** gemma-2-2b's fields: soft-capped attention (2) and logits (3), sandwich norms, GeGLU; 2 layers (sliding, global). */
export const GEMMA2_SMALL = { ...GEMMA2_2B, ...SHRINK, num_hidden_layers: 2, attn_logit_softcapping: 2.0, final_logit_softcapping: 3.0 };
/** gemma-3-4b's text tower: q/k norms, linear rope scaling 8 on the global layer, local base 10k; layers 0-4 sliding, 5 global. */
export const GEMMA3_SMALL = { ...GEMMA3_4B_TEXT, ...SHRINK, num_hidden_layers: 6, torch_dtype: 'float32' };
