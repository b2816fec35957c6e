// The Gemma 2 / Gemma 3 PyTorch reference (test/oracle/gemma_torch.py, run through llama_torch.py's
// make / run commands as the model tests will) against a hand computation of the same tiny models
// (hidden 6, 2 layers: one sliding, one global; written out below from the HF equations, reading the
// parsed LlamaConfig's Gemma fields): logits, sequence log-probs and the SPIN loss, and its gradients
// against central finite differences of the hand computation. Also: the checkpoint the reference writes
// has exactly expectedTensors' names. (spinlm's model against this reference: test/llama_torch.test.ts.)
// Tolerances: logits, log-probs and loss 1e-5 relative (the reference writes f32; both compute in float64
// from the same stored weights); gradients |g - fd| <= 1e-5 + 1e-4 |g| (finite differences, h = 1e-6).
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import { openCheckpointTensors } from '../src/model/checkpoint_files.js';
import { expectedTensors, type LlamaConfig, parseConfig } from '../src/model/config.js';
import { attentionScale, layerRope, layerWindow } from '../src/model/gemma_config.js';
import { bf16ToF32, f32ToBf16 } from '../src/tensor/bf16.js';
import { GEMMA2_2B, GEMMA3_1B, gemma3V5, tinyGemma } from './helpers/gemma_configs.js';
import { runPython } from './helpers/python.js';
import { withSeed } from './helpers/random.js';

const ORACLE = new URL('./oracle/llama_torch.py', import.meta.url).pathname;
type W = Map<string, Float64Array>;

/** Hand computation of a Gemma model's logits [T][V] for one unpadded sequence at positions 0..T-1. */
function handLogits(cfg: LlamaConfig, w: W, ids: number[]): number[][] {
  const { hiddenSize: H, numHeads: nH, numKvHeads: nKV, headDim: hd, intermediateSize: I, vocabSize: V, rmsNormEps: eps } = cfg;
  const g = (n: string) => w.get(n)!;
  const norm = (x: number[], wt: Float64Array) => {
    const r = 1 / Math.sqrt(x.reduce((a, v) => a + v * v, 0) / x.length + eps);
    return x.map((v, j) => v * r * (cfg.normUnitOffset ? 1 + wt[j] : wt[j]));
  };
  const mv = (m: Float64Array, x: number[], rows: number) =>
    Array.from({ length: rows }, (_, r) => x.reduce((a, v, j) => a + m[r * x.length + j] * v, 0));
  const gelu = (x: number) => 0.5 * x * (1 + Math.tanh(Math.sqrt(2 / Math.PI) * (x + 0.044715 * x ** 3)));
  const cap = (s: number, c: number | null) => (c === null ? s : c * Math.tanh(s / c));
  // HF rounds sqrt(H) to the model's dtype (the checkpoint's torch_dtype here)
  const scale = cfg.torchDtype === 'bfloat16' ? bf16ToF32(f32ToBf16(cfg.embedScale)) : Math.fround(cfg.embedScale);
  const E = g('model.embed_tokens.weight');
  let xs = ids.map((id) => Array.from(E.subarray(id * H, (id + 1) * H), (v) => v * scale));
  for (let l = 0; l < cfg.numLayers; l++) {
    const p = `model.layers.${l}`;
    const win = layerWindow(cfg, l);
    const { theta, scaling } = layerRope(cfg, l);
    const rope = (v: number[], pos: number) => {
      const out = v.slice();
      for (let i = 0; i < hd / 2; i++) {
        const a = (pos * theta ** ((-2 * i) / hd)) / (scaling?.type === 'linear' ? scaling.factor : 1);
        out[i] = v[i] * Math.cos(a) - v[i + hd / 2] * Math.sin(a);
        out[i + hd / 2] = v[i + hd / 2] * Math.cos(a) + v[i] * Math.sin(a);
      }
      return out;
    };
    const heads = (y: number[], n: number, t: number, normName: string | null, rot: boolean) =>
      Array.from({ length: n }, (_, h) => {
        let v = y.slice(h * hd, (h + 1) * hd);
        if (normName !== null && cfg.qkNorm) v = norm(v, g(`${p}.self_attn.${normName}.weight`));
        return rot ? rope(v, t) : v;
      });
    const hs = xs.map((x) => norm(x, g(`${p}.input_layernorm.weight`)));
    const q = hs.map((h, t) => heads(mv(g(`${p}.self_attn.q_proj.weight`), h, nH * hd), nH, t, 'q_norm', true));
    const k = hs.map((h, t) => heads(mv(g(`${p}.self_attn.k_proj.weight`), h, nKV * hd), nKV, t, 'k_norm', true));
    const v = hs.map((h, t) => heads(mv(g(`${p}.self_attn.v_proj.weight`), h, nKV * hd), nKV, t, null, false));
    xs = xs.map((x, t) => {
      const att: number[] = [];
      for (let h = 0; h < nH; h++) {
        const kv = Math.floor(h / (nH / nKV));
        const js = Array.from({ length: t + 1 }, (_, j) => j).filter((j) => win === 0 || t - j < win);
        const s = js.map((j) => cap(q[t][h].reduce((a, qi, d) => a + qi * k[j][kv][d], 0) * attentionScale(cfg), cfg.attnSoftcap));
        const mx = Math.max(...s);
        const e = s.map((si) => Math.exp(si - mx));
        const z = e.reduce((a, b) => a + b, 0);
        for (let d = 0; d < hd; d++) att.push(js.reduce((a, j, n) => a + (e[n] / z) * v[j][kv][d], 0));
      }
      const o = mv(g(`${p}.self_attn.o_proj.weight`), att, H);
      const x1 = x.map((xi, j) => xi + norm(o, g(`${p}.post_attention_layernorm.weight`))[j]);
      const h2 = norm(x1, g(`${p}.pre_feedforward_layernorm.weight`));
      const up = mv(g(`${p}.mlp.up_proj.weight`), h2, I);
      const act = mv(g(`${p}.mlp.gate_proj.weight`), h2, I).map((gi, j) => gelu(gi) * up[j]);
      const m = norm(mv(g(`${p}.mlp.down_proj.weight`), act, H), g(`${p}.post_feedforward_layernorm.weight`));
      return x1.map((xi, j) => xi + m[j]);
    });
  }
  const head = cfg.tieWordEmbeddings ? E : g('lm_head.weight');
  return xs.map((x) => mv(head, norm(x, g('model.norm.weight')), V).map((z) => cap(z, cfg.finalSoftcap)));
}

/** Sum of log p(ids[t + 1] | ids[..t]) over the sequence. */
function handSeq(cfg: LlamaConfig, w: W, ids: number[]): number {
  const logits = handLogits(cfg, w, ids);
  let s = 0;
  for (let t = 0; t + 1 < ids.length; t++) {
    const mx = Math.max(...logits[t]);
    const lse = mx + Math.log(logits[t].reduce((a, z) => a + Math.exp(z - mx), 0));
    s += logits[t][ids[t + 1]] - lse;
  }
  return s;
}

const BETA = 0.7;
const REF = [-3.25, -4.5];
const handLoss = (cfg: LlamaConfig, w: W, rows: number[][]) => {
  const u = BETA * (handSeq(cfg, w, rows[0]) - REF[0] - (handSeq(cfg, w, rows[1]) - REF[1]));
  return Math.log1p(Math.exp(-u)); // -logsigmoid(u)
};

/** The request llama_torch.py run reads: row 0 the real answer of pair 0, row 1 the generated one. */
function writeRequest(dir: string, rows: number[][]): string {
  const req = join(dir, 'req');
  mkdirSync(req, { recursive: true });
  const L = rows[0].length;
  const i32 = (name: string, a: number[]) => writeFileSync(join(req, `${name}.bin`), Buffer.from(Int32Array.from(a).buffer));
  i32('input_ids', rows.flat());
  i32(
    'positions',
    [...rows.keys()].flatMap(() => [...Array(L).keys()]),
  );
  i32('attention_mask', Array(2 * L).fill(1));
  i32(
    'targets',
    rows.flatMap((r) => r.map((_, t) => (t + 1 < L ? r[t + 1] : -100))),
  );
  i32(
    'segments',
    rows.flatMap((r, i) => r.map((_, t) => (t + 1 < L ? i : -1))),
  );
  writeFileSync(join(req, 'ref.bin'), Buffer.from(Float32Array.from(REF).buffer));
  writeFileSync(join(req, 'request.json'), JSON.stringify({ rows: 2, length: L, beta: BETA, loss_type: 'sigmoid', pairs: 1 }));
  return req;
}

const f32 = (file: string) => {
  const b = readFileSync(file);
  return new Float32Array(b.buffer, b.byteOffset, b.byteLength / 4);
};

async function readWeights(dir: string): Promise<W> {
  const files = await openCheckpointTensors(dir);
  const w: W = new Map();
  for (const name of files.names()) {
    const n = files.info(name).shape.reduce((a, b) => a * b, 1);
    const out = new Float64Array(n);
    await files.readTensorChunks(name, 'f32', n, (d, off) => out.set(d, off));
    w.set(name, out);
  }
  await files.close();
  return w;
}

const CASES: { name: string; config: Record<string, unknown>; dtype: 'f32' | 'bf16' }[] = [
  // small soft-caps so that both caps bend the numbers
  {
    name: 'gemma2 (attention soft-cap 0.5, final 0.8, window 2 on layer 0)',
    config: tinyGemma(GEMMA2_2B, { hidden_size: 6, attn_logit_softcapping: 0.5, final_logit_softcapping: 0.8 }),
    dtype: 'f32',
  },
  {
    name: 'gemma2 in bf16 (sqrt(6) rounded to bf16 as HF rounds the normalizer)',
    config: tinyGemma(GEMMA2_2B, { hidden_size: 6 }),
    dtype: 'bf16',
  },
  {
    name: 'gemma3_text (q/k norms, local theta 10 / global 1e4 with linear x2, window 2)',
    config: tinyGemma(GEMMA3_1B, {
      hidden_size: 6,
      layer_types: ['sliding_attention', 'full_attention'],
      rope_theta: 10000,
      rope_local_base_freq: 10,
      rope_scaling: { rope_type: 'linear', factor: 2 },
    }),
    dtype: 'f32',
  },
  {
    name: 'gemma3_text, transformers 5 rope_parameters, untied head',
    config: tinyGemma(gemma3V5(GEMMA3_1B, { rope_type: 'linear', factor: 2 }), {
      hidden_size: 6,
      final_logit_softcapping: 1.5,
      tie_word_embeddings: false,
    }),
    dtype: 'f32',
  },
];

describe('the Gemma PyTorch reference against a hand computation', () => {
  for (const c of CASES)
    test(c.name, () =>
      withSeed(async (rng) => {
        const dir = mkdtempSync(join(tmpdir(), 'spinlm-gemma-torch-'));
        try {
          const model = join(dir, 'model');
          runPython(ORACLE, ['make', model, JSON.stringify(c.config), String(rng.int(0, 1e6)), c.dtype]);
          const cfg = parseConfig(JSON.parse(readFileSync(join(model, 'config.json'), 'utf8')), 'config.json');
          const w = await readWeights(model);
          assert.deepEqual(
            [...w.keys()].sort(),
            expectedTensors(cfg)
              .map((s) => s.name)
              .sort(),
            'the reference writes the HF names',
          );
          const rows = [0, 1].map(() => Array.from({ length: 5 }, () => rng.int(0, cfg.vocabSize - 1)));
          const req = writeRequest(dir, rows);
          runPython(ORACLE, ['run', model, req]);
          const logits = f32(join(req, 'logits.out.bin'));
          const V = cfg.vocabSize;
          const close = (got: number, want: number, what: string, tol = 1e-5) =>
            assert.ok(Math.abs(got - want) <= tol * Math.max(1, Math.abs(want)), `${what}: reference ${got}, hand ${want}`);
          rows.forEach((r, i) => {
            const hand = handLogits(cfg, w, r);
            hand.forEach((row, t) => row.forEach((z, j) => close(logits[(i * r.length + t) * V + j], z, `logit row ${i} t ${t} id ${j}`)));
          });
          const seq = f32(join(req, 'seq.out.bin'));
          rows.forEach((r, i) => close(seq[i], handSeq(cfg, w, r), `seq ${i}`));
          const loss = JSON.parse(readFileSync(join(req, 'loss.json'), 'utf8')).loss as number;
          close(loss, handLoss(cfg, w, rows), 'loss');
          assert.ok(Number.isFinite(loss) && loss > 0);
          // gradients: two entries of every tensor against central differences of the hand loss
          const h = 1e-6;
          for (const [name, t] of w) {
            const grad = f32(join(req, 'grad', `${name}.bin`));
            assert.equal(grad.length, t.length, name);
            for (let k = 0; k < 2; k++) {
              const i = rng.int(0, t.length - 1);
              const x0 = t[i];
              t[i] = x0 + h;
              const up = handLoss(cfg, w, rows);
              t[i] = x0 - h;
              const down = handLoss(cfg, w, rows);
              t[i] = x0;
              const fd = (up - down) / (2 * h);
              assert.ok(
                Math.abs(grad[i] - fd) <= 1e-5 + 1e-4 * Math.abs(fd),
                `d loss / d ${name}[${i}]: reference ${grad[i]}, finite differences ${fd}`,
              );
            }
          }
        } finally {
          rmSync(dir, { recursive: true, force: true });
        }
      }),
    );
});
