// The GPU kit's step (c): every supported model family on the kit's device against Hugging Face
// transformers' own modeling code (bench/peer/hf_families.py, float64), one line per family. spinlm
// writes a tiny random-weight model of the family in HF format (published-shape config fields, layers
// and widths shrunk), computes the logits of a SPIN batch (3 pairs, padded, truncated prompts), each
// answer's S(theta, y), the SPIN loss and every parameter's gradient; transformers loads the same
// directory and computes the same in float64. Where transformers is not installed (here: CI's dry run)
// the float64 oracle written from the HF equations (test/oracle/llama_torch.py) stands in, and the line
// says so. Tolerances (normwise relative, f32 weights): 1e-4, the oracle test's.
// Usage: node --import tsx bench/gpu_families.ts [--backend cuda|cuda-emu|cpu] [--jsonl FILE]
import { execFileSync } from 'node:child_process';
import { appendFileSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { parseConfig } from '../src/model/config.js';
import { initLlama } from '../src/model/init.js';
import { LlamaModel } from '../src/model/llama.js';
import { collateSpinBatch } from '../src/spin/batch.js';
import { Rng } from '../src/util/rng.js';
import { relErr } from '../test/helpers/loss_ref.js';
import { checkpointGrads, oraclePairs, spinlmSpinCase, writeSpinRequest } from '../test/helpers/spin_oracle_case.js';
import { GEMMA2_SMALL, GEMMA3_SMALL } from '../test/helpers/gemma_configs.js';
import { PHI3_CONFIG, QWEN3_CONFIG } from '../test/helpers/tiny_model.js';
import { kitBackend, PYTHON } from './kit_backend.js';

const { values: args } = parseArgs({ options: { backend: { type: 'string', default: 'cuda' }, jsonl: { type: 'string' } } });
const be = await kitBackend(String(args.backend));
const HF = new URL('./peer/hf_families.py', import.meta.url).pathname;
const ORACLE = new URL('../test/oracle/llama_torch.py', import.meta.url).pathname;
const TOL = 1e-4;
const EOS = 2;

// Published config fields of each family (Llama-3-8B-like, Mistral-7B-v0.1, Qwen2.5-0.5B, Qwen3-0.6B,
// Phi-3-mini-4k-instruct), shrunk.
const small = { hidden_size: 64, intermediate_size: 96, num_hidden_layers: 2, num_attention_heads: 4, vocab_size: 97 };
const FAMILIES: { name: string; config: Record<string, unknown> }[] = [
  {
    name: 'llama (GQA 4/2, untied, rope_theta 5e5)',
    config: {
      architectures: ['LlamaForCausalLM'],
      model_type: 'llama',
      ...small,
      num_key_value_heads: 2,
      rms_norm_eps: 1e-5,
      rope_theta: 500000,
      max_position_embeddings: 256,
      bos_token_id: 1,
      eos_token_id: EOS,
      hidden_act: 'silu',
      tie_word_embeddings: false,
      attention_bias: false,
      mlp_bias: false,
    },
  },
  {
    name: 'mistral (GQA 4/1, sliding_window null)',
    config: {
      architectures: ['MistralForCausalLM'],
      model_type: 'mistral',
      ...small,
      num_key_value_heads: 1,
      rms_norm_eps: 1e-5,
      rope_theta: 10000,
      max_position_embeddings: 256,
      sliding_window: null,
      bos_token_id: 1,
      eos_token_id: EOS,
      hidden_act: 'silu',
      tie_word_embeddings: false,
    },
  },
  {
    name: 'qwen2 (tied, q/k/v biases, rope_theta 1e6)',
    config: {
      architectures: ['Qwen2ForCausalLM'],
      model_type: 'qwen2',
      ...small,
      num_key_value_heads: 2,
      rms_norm_eps: 1e-6,
      rope_theta: 1000000,
      max_position_embeddings: 256,
      use_sliding_window: false,
      bos_token_id: 1,
      eos_token_id: EOS,
      hidden_act: 'silu',
      tie_word_embeddings: true,
    },
  },
  { name: 'qwen3 (head_dim 32 != hidden/heads, q/k norms, tied, GQA 4/2)', config: { ...QWEN3_CONFIG, eos_token_id: EOS } },
  { name: 'phi3 (fused qkv_proj / gate_up_proj, sliding_window 2047)', config: { ...PHI3_CONFIG, eos_token_id: EOS } },
  { name: 'gemma2 (soft-capped attention and logits, sandwich norms, GeGLU)', config: { ...GEMMA2_SMALL, eos_token_id: EOS } },
  { name: 'gemma3_text (q/k norms, local/global rope, linear scaling 8)', config: { ...GEMMA3_SMALL, eos_token_id: EOS } },
  {
    // the batch's sequences (up to 48 tokens) run past the window: transformers' sliding-window mask
    name: 'mistral (GQA 4/2, sliding_window 7, shorter than the sequences)',
    config: {
      architectures: ['MistralForCausalLM'],
      model_type: 'mistral',
      ...small,
      num_key_value_heads: 2,
      rms_norm_eps: 1e-5,
      rope_theta: 10000,
      max_position_embeddings: 256,
      sliding_window: 7,
      bos_token_id: 1,
      eos_token_id: EOS,
      hidden_act: 'silu',
      tie_word_embeddings: false,
    },
  },
];

let failed = 0;
const rng = new Rng(11);
for (const fam of FAMILIES) {
  const dir = mkdtempSync(join(tmpdir(), 'spinlm-kit-family-'));
  const t0 = performance.now();
  try {
    const modelDir = join(dir, 'model');
    mkdirSync(modelDir);
    await initLlama(be, parseConfig(fam.config, fam.name), { seed: rng.int(0, 1e9), std: 0.2, dtype: 'f32', randomizeAll: true }).save(
      modelDir,
    );
    // the published fields spinlm does not read still travel (transformers reads config.json as written)
    const written = JSON.parse(readFileSync(join(modelDir, 'config.json'), 'utf8'));
    writeFileSync(join(modelDir, 'config.json'), JSON.stringify({ ...fam.config, ...written }, null, 2));
    const model = await LlamaModel.load(be, modelDir);
    model.weights.enableTraining();
    const pairs = oraclePairs(rng, 3, EOS);
    const batch = collateSpinBatch(pairs, EOS, 0);
    const ref = Float32Array.from({ length: 6 }, () => -60 + rng.normal() * 5);
    const beta = 0.3;
    const { logits: logitsHost, seq, loss } = await spinlmSpinCase(be, model, batch, ref, beta);
    const req = writeSpinRequest(dir, batch, ref, { beta, loss_type: 'sigmoid', pairs: 3 });
    let reference = 'transformers';
    try {
      execFileSync(PYTHON, [HF, 'run', modelDir, req], { stdio: ['ignore', 'pipe', 'pipe'], timeout: 120_000 });
    } catch (err) {
      if ((err as { status?: number }).status !== 3) throw err;
      reference = 'float64 oracle (transformers not installed)';
      execFileSync(PYTHON, [ORACLE, 'run', modelDir, req], { stdio: ['ignore', 'pipe', 'pipe'], timeout: 120_000 });
    }
    const read = (p: string) => {
      const b = readFileSync(join(req, p));
      return new Float32Array(b.buffer, b.byteOffset, b.byteLength / 4);
    };
    // logits where a query is real (transformers computes padded queries differently)
    const want = read('logits.out.bin');
    const v = model.cfg.vocabSize;
    const keep = (a: Float32Array) => a.filter((_, i) => batch.attentionMask[Math.floor(i / v)] === 1);
    const errs: Record<string, number> = { logits: relErr(keep(logitsHost), keep(want)), seq: relErr(seq, read('seq.out.bin')) };
    const torchLoss = JSON.parse(readFileSync(join(req, 'loss.json'), 'utf8')).loss as number;
    errs.loss = Math.abs(loss - torchLoss) / Math.max(1e-30, Math.abs(torchLoss));
    const refGrads = new Set(readdirSync(join(req, 'grad')).map((f) => f.replace(/\.bin$/, '')));
    let gradMax = 0,
      gradWorst = '';
    // per checkpoint tensor (phi3: qkv_proj and gate_up_proj, as transformers names its parameters)
    for await (const { name, grad } of checkpointGrads(model)) {
      if (!refGrads.has(name)) throw new Error(`the reference has no gradient for ${name} (names differ from HF's?)`);
      const e = relErr(grad, read(join('grad', `${name}.bin`)));
      if (!(e <= gradMax)) [gradMax, gradWorst] = [e, name];
    }
    errs.grad = gradMax;
    model.weights.free();
    const ok = Object.values(errs).every((e) => e <= TOL);
    if (!ok) failed++;
    const row = {
      step: 'families',
      family: fam.name,
      backend: be.name,
      reference,
      ok,
      tol: TOL,
      ...errs,
      grad_worst: gradWorst,
      ms: performance.now() - t0,
    };
    console.log(
      `${ok ? 'ok  ' : 'FAIL'} ${fam.name} on ${be.name} vs ${reference}: logits ${errs.logits.toExponential(1)}, S ${errs.seq.toExponential(1)}, ` +
        `loss ${errs.loss.toExponential(1)}, grads ${gradMax.toExponential(1)} (${gradWorst}); tolerance ${TOL}`,
    );
    if (args.jsonl) appendFileSync(String(args.jsonl), JSON.stringify(row) + '\n');
  } catch (err) {
    failed++;
    console.log(`FAIL ${fam.name} on ${be.name}: ${(err as Error).message.split('\n').slice(0, 4).join(' | ')}`);
    if (args.jsonl)
      appendFileSync(
        String(args.jsonl),
        JSON.stringify({ step: 'families', family: fam.name, ok: false, error: (err as Error).message.slice(0, 500) }) + '\n',
      );
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
console.log(`families: ${FAMILIES.length - failed} passed, ${failed} failed`);
process.exit(failed ? 1 : 0);
