// A random-weight Llama model directory (config.json, bf16 model.safetensors, the byte tokenizer) for
// memory and speed measurements at real sizes; written once and reused (cached under a temp dir).
// Usage: node --import tsx bench/make_model.ts tinyllama|350m|32m|small-128k|mistral-7b [DIR]   -> prints the directory
import { existsSync, mkdirSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { expectedTensors, parseConfig } from '../src/model/config.js';
import { writeSafetensors } from '../src/model/safetensors.js';
import { writeByteTokenizer } from '../src/text/byte_tokenizer.js';

export const SHAPES = {
  // the 32M benchmark config of bench/model.bench.ts (vocab 8000)
  '32m': {
    hidden_size: 512,
    intermediate_size: 1408,
    num_hidden_layers: 8,
    num_attention_heads: 8,
    num_key_value_heads: 4,
    vocab_size: 8000,
  },
  // TinyLlama-1.1B's shape: ~1.10e9 parameters
  tinyllama: { hidden_size: 2048, intermediate_size: 5632, num_hidden_layers: 22, num_attention_heads: 32, num_key_value_heads: 4 },
  // ~350M parameters
  '350m': { hidden_size: 1024, intermediate_size: 2816, num_hidden_layers: 24, num_attention_heads: 16, num_key_value_heads: 4 },
  // Mistral-7B's shape (~7.24e9 parameters, 14.5 GB in bf16; the Llama architecture: at the few hundred
  // positions of bench/lora.bench.ts Mistral's 4096-token sliding window changes nothing)
  'mistral-7b': {
    hidden_size: 4096,
    intermediate_size: 14336,
    num_hidden_layers: 32,
    num_attention_heads: 32,
    num_key_value_heads: 8,
    vocab_size: 32000,
  },
  // a small model with Llama 3's 128,256-token vocabulary (the fused head's memory goal, bench/head.bench.ts)
  'small-128k': {
    hidden_size: 512,
    intermediate_size: 1408,
    num_hidden_layers: 4,
    num_attention_heads: 8,
    num_key_value_heads: 4,
    vocab_size: 128256,
  },
} as const;

/** Makes (or finds) the model directory of a shape; returns its path. */
export async function makeRandomModel(shape: keyof typeof SHAPES, dir = join(tmpdir(), `spinlm-random-${shape}`)): Promise<string> {
  if (existsSync(join(dir, 'model.safetensors'))) return dir;
  mkdirSync(dir, { recursive: true });
  const raw = {
    architectures: ['LlamaForCausalLM'],
    model_type: 'llama',
    vocab_size: 32000,
    ...SHAPES[shape],
    hidden_act: 'silu',
    rms_norm_eps: 1e-5,
    rope_theta: 10000,
    rope_scaling: null,
    max_position_embeddings: 2048,
    tie_word_embeddings: false,
    bos_token_id: 1,
    eos_token_id: 2,
    torch_dtype: 'bfloat16',
    attention_bias: false,
    mlp_bias: false,
  };
  const cfg = parseConfig(raw, 'random model config');
  let state = 0x9e3779b9;
  const tensors = expectedTensors(cfg).map((s) => ({
    name: s.name,
    dtype: 'bf16' as const,
    shape: s.shape,
    data: () => {
      const n = s.shape.reduce((a, b) => a * b, 1);
      const out = new Uint16Array(n);
      if (s.shape.length === 1) return out.fill(0x3f80); // norm weights: 1.0
      // uniform with std 0.02 (xorshift32), rounded to bf16 by truncation
      const f = new Float32Array(1),
        u = new Uint32Array(f.buffer);
      const a = (0.02 * Math.sqrt(3) * 2) / 4294967296;
      for (let i = 0; i < n; i++) {
        state ^= state << 13;
        state ^= state >>> 17;
        state ^= state << 5;
        f[0] = (state >>> 0) * a - 0.02 * Math.sqrt(3);
        out[i] = u[0] >>> 16;
      }
      return out;
    },
  }));
  await writeSafetensors(join(dir, 'model.safetensors'), tensors);
  await writeByteTokenizer(dir);
  writeFileSync(join(dir, 'config.json'), JSON.stringify(raw, null, 2));
  return dir;
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const shape = (process.argv[2] ?? 'tinyllama') as keyof typeof SHAPES;
  if (!(shape in SHAPES)) throw new Error(`shape must be one of ${Object.keys(SHAPES).join(', ')}`);
  console.log(await makeRandomModel(shape, process.argv[3]));
}
