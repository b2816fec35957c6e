// Tiny Llama-family configs for tests, through the real config parser.
import { type LlamaConfig, parseConfig } from '../../src/model/config.js';

export interface TinyOptions {
  modelType?: 'llama' | 'mistral' | 'qwen2';
  hidden?: number;
  layers?: number;
  heads?: number;
  kvHeads?: number;
  intermediate?: number;
  vocab?: number;
  tie?: boolean;
  ropeTheta?: number;
  ropeScaling?: number;
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
      rms_norm_eps: 1e-5,
      rope_theta: o.ropeTheta ?? 10000,
      rope_scaling: o.ropeScaling ? { type: 'linear', factor: o.ropeScaling } : null,
      vocab_size: o.vocab ?? 260,
      max_position_embeddings: 512,
      tie_word_embeddings: o.tie ?? false,
      bos_token_id: 1,
      eos_token_id: 2,
      hidden_act: 'silu',
    },
    'tiny config',
  );
}

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
