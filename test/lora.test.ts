// LoRA (src/model/lora.ts, lora_linear.ts): the config and PEFT's names; a LoRA linear's forward and
// backward against a float64 reference written from PEFT's lora.Linear.forward
// (y = x W^T + s * lora_B(lora_A(dropout(x)))), for a plain module and Phi-3's fused qkv_proj.
// Tolerance: normwise relative error (max |diff| / max |ref|) <= 1e-5 (f32 GEMMs over <= 96 terms).
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { initLlama } from '../src/model/init.js';
import {
  adapterTensors,
  defaultTargetModules,
  type LoraConfig,
  loraModuleNames,
  loraScaling,
  resolveTargets,
  validateLoraConfig,
} from '../src/model/lora.js';
import { dropoutGateHost, loraBackward, loraForward } from '../src/model/lora_linear.js';
import type { Tensor } from '../src/tensor/tensor.js';
import * as ops from '../src/ops/index.js';
import { testBackends } from './helpers/backends.js';
import { relErr } from './helpers/loss_ref.js';
import { randn, withSeed } from './helpers/random.js';
import { tinyConfig } from './helpers/tiny_model.js';
import type { Rng } from '../src/util/rng.js';

const lc = (o: Partial<LoraConfig> = {}): LoraConfig => ({
  r: 4,
  alpha: 8,
  dropout: 0,
  targetModules: ['q_proj', 'v_proj'],
  useRslora: false,
  ...o,
});

describe('LoRA config and names', () => {
  test('scaling is alpha / r, or alpha / sqrt(r) with rsLoRA (PEFT LoraLayer.update_layer)', () => {
    assert.equal(loraScaling(lc({ r: 16, alpha: 32 })), 2);
    assert.equal(loraScaling(lc({ r: 16, alpha: 32, useRslora: true })), 8);
  });

  test('validation names the field and, for an unknown module, the valid ones', () => {
    assert.throws(() => validateLoraConfig(lc({ r: 0 }), 'llama'), /lora_r must be an integer >= 1/);
    assert.throws(() => validateLoraConfig(lc({ r: 2.5 }), 'llama'), /lora_r/);
    assert.throws(() => validateLoraConfig(lc({ alpha: 0 }), 'llama'), /lora_alpha must be a finite number > 0/);
    assert.throws(() => validateLoraConfig(lc({ alpha: Infinity }), 'llama'), /lora_alpha/);
    assert.throws(() => validateLoraConfig(lc({ dropout: 1 }), 'llama'), /lora_dropout must be in \[0, 1\)/);
    assert.throws(() => validateLoraConfig(lc({ dropout: -0.1 }), 'llama'), /lora_dropout/);
    assert.throws(
      () => validateLoraConfig(lc({ targetModules: ['q_proj', 'lm_head'] }), 'llama'),
      /'lm_head' is not a linear layer of a llama model; valid: q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj, all-linear/,
    );
    assert.throws(
      () => validateLoraConfig(lc({ targetModules: ['q_proj'] }), 'phi3'),
      /valid: qkv_proj, o_proj, gate_up_proj, down_proj.*fuse/,
    );
    assert.throws(() => validateLoraConfig(lc({ targetModules: ['v_proj', 'v_proj'] }), 'llama'), /listed twice/);
    assert.throws(() => validateLoraConfig(lc({ targetModules: [] }), 'llama'), /at least one/);
  });

  test("PEFT's default targets; all-linear is every decoder linear, not lm_head", () => {
    for (const f of ['llama', 'mistral', 'qwen2', 'qwen3', 'gemma2', 'gemma3_text'] as const) {
      assert.deepEqual(defaultTargetModules(f), ['q_proj', 'v_proj']);
      assert.deepEqual(resolveTargets(lc({ targetModules: 'all-linear' }), f), loraModuleNames(f));
    }
    assert.deepEqual(defaultTargetModules('phi3'), ['qkv_proj']);
    assert.deepEqual(resolveTargets(lc({ targetModules: 'all-linear' }), 'phi3'), ['qkv_proj', 'o_proj', 'gate_up_proj', 'down_proj']);
  });

  test('adapter names and shapes: A [r, in], B [out, r], PEFT names without base_model.model.', () => {
    const cfg = tinyConfig({ hidden: 64, heads: 4, kvHeads: 2, intermediate: 96, layers: 2 });
    const names = adapterTensors(cfg, lc({ targetModules: 'all-linear', r: 8 }));
    assert.equal(names.length, 2 * 7 * 2);
    const get = (n: string) => names.find((x) => x.name === n)?.shape;
    assert.deepEqual(get('model.layers.0.self_attn.q_proj.lora_A.weight'), [8, 64]);
    assert.deepEqual(get('model.layers.0.self_attn.q_proj.lora_B.weight'), [64, 8]);
    assert.deepEqual(get('model.layers.1.self_attn.k_proj.lora_B.weight'), [32, 8]);
    assert.deepEqual(get('model.layers.1.self_attn.o_proj.lora_A.weight'), [8, 64]);
    assert.deepEqual(get('model.layers.1.mlp.gate_proj.lora_B.weight'), [96, 8]);
    assert.deepEqual(get('model.layers.1.mlp.down_proj.lora_A.weight'), [8, 96]);
    assert.deepEqual(get('model.layers.1.mlp.down_proj.lora_B.weight'), [64, 8]);
    const phi = tinyConfig({ modelType: 'phi3', hidden: 64, heads: 4, kvHeads: 2, intermediate: 96, layers: 1 });
    const p = adapterTensors(phi, lc({ targetModules: ['qkv_proj', 'gate_up_proj'], r: 8 }));
    assert.deepEqual(
      p.map((x) => [x.name, x.shape]),
      [
        ['model.layers.0.self_attn.qkv_proj.lora_A.weight', [8, 64]],
        ['model.layers.0.self_attn.qkv_proj.lora_B.weight', [128, 8]], // (4 + 2 + 2) heads x 16
        ['model.layers.0.mlp.gate_up_proj.lora_A.weight', [8, 64]],
        ['model.layers.0.mlp.gate_up_proj.lora_B.weight', [192, 8]],
      ],
    );
  });
});

/** float64 [m, n] = a [m, k] b^T (b [n, k]). */
function mmT(a: ArrayLike<number>, b: ArrayLike<number>, m: number, k: number, n: number): Float64Array {
  const y = new Float64Array(m * n);
  for (let i = 0; i < m; i++) for (let j = 0; j < n; j++) for (let t = 0; t < k; t++) y[i * n + j] += a[i * k + t] * b[j * k + t];
  return y;
}
/** float64 [m, n] = a [m, k] b (b [k, n]). */
function mm(a: ArrayLike<number>, b: ArrayLike<number>, m: number, k: number, n: number): Float64Array {
  const y = new Float64Array(m * n);
  for (let i = 0; i < m; i++) for (let t = 0; t < k; t++) for (let j = 0; j < n; j++) y[i * n + j] += a[i * k + t] * b[t * n + j];
  return y;
}
const transpose = (a: ArrayLike<number>, r: number, c: number) => {
  const t = new Float64Array(r * c);
  for (let i = 0; i < r; i++) for (let j = 0; j < c; j++) t[j * r + i] = a[i * c + j];
  return t;
};

/**
 * PEFT's lora.Linear in float64 for x [T, in], W [out, in], A [r, in], B [out, r], scaling s, keep mask
 * (dropout(x) = x * keep / (1 - p)): y, and from dy the gradients dx, dA, dB.
 */
function loraLinearRef(
  x: Float32Array,
  W: Float32Array,
  A: Float32Array,
  B: Float32Array,
  dy: Float32Array,
  d: { T: number; inF: number; out: number; r: number; s: number; p: number; keep: Uint8Array | null },
) {
  const { T, inF, out, r, s, p, keep } = d;
  const xd = Float64Array.from(x, (v, i) => (keep ? (keep[i] ? v / (1 - p) : 0) : v));
  const u = mmT(xd, A, T, inF, r); // [T, r]
  const base = mmT(x, W, T, inF, out);
  const lora = mmT(u, B, T, r, out);
  const y = base.map((v, i) => v + s * lora[i]);
  const dB = mm(transpose(dy, T, out), u, out, T, r).map((v) => s * v); // s dy^T u
  const du = mm(dy, B, T, out, r).map((v) => s * v); // s dy B
  const dA = mm(transpose(du, T, r), xd, r, T, inF); // du^T dropout(x)
  const dxd = mm(du, A, T, r, inF);
  const dxBase = mm(dy, W, T, out, inF);
  const dx = dxBase.map((v, i) => v + (keep ? (keep[i] ? dxd[i] / (1 - p) : 0) : dxd[i]));
  return { y, dx, dA, dB };
}

async function read(t: Tensor): Promise<Float32Array> {
  return Float32Array.from((await ops.read(t)) as Float32Array);
}

const TOL = 1e-5;
function close(what: string, got: ArrayLike<number>, want: ArrayLike<number>, tol = TOL) {
  const e = relErr(got, want);
  assert.ok(e <= tol, `${what}: relative error ${e} > ${tol}`);
}

for (const be of await testBackends())
  describe(`LoRA linear on backend ${be.name}`, () => {
    /** One adapted module of a one-layer model, forward + backward against the float64 reference. */
    async function linearCase(rng: Rng, family: 'llama' | 'phi3', module: string, parts: string[], dropout: number) {
      const cfg = tinyConfig({ modelType: family, hidden: 64, heads: 4, kvHeads: 2, intermediate: 96, layers: 1 });
      const model = initLlama(be, cfg, { seed: rng.int(0, 1e9), std: 0.2 });
      const w = model.weights;
      const lora = w.addLora(cfg, lc({ r: 4, alpha: 6, dropout, targetModules: [module], useRslora: rng.next() < 0.5 }), rng.int(0, 1e9));
      const m = lora.modules[0];
      const [aName, bName] = [`${m.path}.lora_A.weight`, `${m.path}.lora_B.weight`];
      // B = 0 at init; a random B so that every path carries a signal
      const Bh = randn(rng, m.outFeatures * 4, 0.5);
      ops.write(w.get(bName) as Tensor<'f32'>, { dtype: 'f32', data: Bh });
      const Ah = await read(w.get(aName));
      w.enableTraining();
      const T = 5;
      const xh = randn(rng, T * m.inFeatures);
      const x = ops.upload(be, { dtype: 'f32', data: xh }, [T, m.inFeatures]);
      const names = parts.map((p) => `model.layers.0.${p}.weight`);
      if (dropout > 0) [lora.dropoutSeed, lora.dropoutKey] = [rng.int(0, 1e9), `${rng.int(0, 99)}/0/0`];
      const gate = dropoutGateHost(lora, m.path, T * m.inFeatures);
      const keep = gate ? Uint8Array.from(gate, (g) => (g > 0 ? 1 : 0)) : null;
      const ys = ops.linears(
        x,
        names.map((n) => w.get(n)),
      );
      loraForward(w, x, names, ys, {});
      const Wh = new Float32Array(m.outFeatures * m.inFeatures);
      let off = 0;
      for (const n of names) {
        const h = await read(w.get(n));
        Wh.set(h, off);
        off += h.length;
      }
      const dyh = randn(rng, T * m.outFeatures);
      const ref = loraLinearRef(xh, Wh, Ah, Bh, dyh, { T, inF: m.inFeatures, out: m.outFeatures, r: 4, s: lora.scaling, p: dropout, keep });
      // outputs and output gradients per part: columns [c0, c0 + rows) of the fused [T, out]
      let dx: Tensor<'f32'> | undefined;
      const pending = new Map();
      let c0 = 0;
      for (let i = 0; i < names.length; i++) {
        const rows = ys[i].shape[1];
        const cols = (a: ArrayLike<number>) =>
          Float64Array.from({ length: T * rows }, (_, j) => a[Math.floor(j / rows) * m.outFeatures + c0 + (j % rows)]);
        close(`y of ${names[i]}`, await read(ys[i]), cols(ref.y));
        const dyPart = ops.upload(be, { dtype: 'f32', data: Float32Array.from(cols(dyh)) }, [T, rows]);
        // dx as layer.ts's linearBackward makes it: dy W (into a fresh, NaN-poisoned buffer on the CPU), then the LoRA path
        dx = dx ? ops.matmul(dyPart, w.get(names[i]), { out: dx, accumulate: true }) : ops.matmul(dyPart, w.get(names[i]));
        loraBackward(w, pending, dyPart, x, names[i], dx);
        dyPart.free();
        c0 += rows;
      }
      assert.equal(pending.size, 0, 'the fused module finished');
      close('dx', await read(dx!), ref.dx);
      close('dA', await read(w.grad(aName)), ref.dA);
      close('dB', await read(w.grad(bName)), ref.dB);
      for (const t of [x, dx!, ...ys]) t.free();
      w.free();
    }

    test('q_proj: y, dx, dA, dB match the float64 reference of PEFT Linear.forward', () =>
      withSeed((rng) => linearCase(rng, 'llama', 'q_proj', ['self_attn.q_proj'], 0)));
    test('down_proj (in = intermediate)', () => withSeed((rng) => linearCase(rng, 'llama', 'down_proj', ['mlp.down_proj'], 0)));
    test("Phi-3's fused qkv_proj: one A, one B over q, k, v", () =>
      withSeed((rng) => linearCase(rng, 'phi3', 'qkv_proj', ['self_attn.q_proj', 'self_attn.k_proj', 'self_attn.v_proj'], 0)));
    test("Phi-3's fused gate_up_proj", () =>
      withSeed((rng) => linearCase(rng, 'phi3', 'gate_up_proj', ['mlp.gate_proj', 'mlp.up_proj'], 0)));
    test('with dropout 0.3: the mask on the LoRA input only, scaled by 1 / (1 - p)', () =>
      withSeed((rng) => linearCase(rng, 'llama', 'v_proj', ['self_attn.v_proj'], 0.3)));
    test('with dropout, fused', () =>
      withSeed((rng) => linearCase(rng, 'phi3', 'qkv_proj', ['self_attn.q_proj', 'self_attn.k_proj', 'self_attn.v_proj'], 0.5)));
  });

test('dropout masks: the rate is p, a mask is a function of (seed, key, module)', () =>
  withSeed((rng) => {
    const cfg = tinyConfig({ layers: 1 });
    const s = { cfg, config: lc({ dropout: 0.25 }), dropoutSeed: rng.int(0, 1e9), dropoutKey: '3/0/1' };
    const st = s as unknown as Parameters<typeof dropoutGateHost>[0];
    const g = dropoutGateHost(st, 'model.layers.0.self_attn.q_proj', 40000)!;
    const dropped = g.filter((v) => v === 0).length / g.length;
    assert.ok(Math.abs(dropped - 0.25) < 0.015, `dropped ${dropped}`);
    assert.deepEqual(dropoutGateHost(st, 'model.layers.0.self_attn.q_proj', 40000), g);
    assert.notDeepEqual(dropoutGateHost({ ...st, dropoutKey: '3/0/2' } as typeof st, 'model.layers.0.self_attn.q_proj', 40000), g);
    assert.equal(dropoutGateHost({ ...st, dropoutKey: null } as typeof st, 'model.layers.0.self_attn.q_proj', 10), null);
  }));
