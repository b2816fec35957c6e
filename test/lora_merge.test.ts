// Merging an adapter into its base (src/model/lora_merge.ts): W' = W + s B A, against a float64 merge
// written here from PEFT's get_delta_weight (B @ A * scaling, fused modules over their stacked rows):
// every merged element must be the bf16 (f32) nearest to the float64 value (at most half a unit in
// the last place away, and no neighbour closer). One rounding, not two: f64ToBf16 vs double rounding.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { Backend } from '../src/backend/backend.js';
import { CpuBackend } from '../src/backend/cpu/cpu_backend.js';
import { checkpointLayout, parseConfig, type LlamaConfig } from '../src/model/config.js';
import { initLlama } from '../src/model/init.js';
import { adapterTensors, loraModules, type LoraConfig } from '../src/model/lora.js';
import { f64ToBf16, mergeAdapterIntoWeights } from '../src/model/lora_merge.js';
import type { HostAdapter } from '../src/model/peft.js';
import { bf16ToF32, f32ToBf16 } from '../src/tensor/bf16.js';
import * as ops from '../src/ops/index.js';
import { PHI3_CONFIG, tinyConfig } from './helpers/tiny_model.js';
import { testBackends } from './helpers/backends.js';
import { randn, withSeed } from './helpers/random.js';
import type { Rng } from '../src/util/rng.js';

const be = new CpuBackend();

test('f64ToBf16 rounds once to the nearest bf16 (ties to even); on f32 inputs it equals f32ToBf16', async () => {
  await withSeed((rng) => {
    for (let i = 0; i < 20000; i++) {
      const x = Math.fround(rng.normal() * 2 ** Math.round(rng.normal() * 20));
      assert.equal(f64ToBf16(x), f32ToBf16(x), `x = ${x}`);
    }
  });
  // 1 + 2^-8 + 2^-30: just above the midpoint of 1 and 1 + 2^-7. Through f32 it becomes the midpoint
  // itself (2^-30 is under f32's half ulp) and then rounds to even (1.0): double rounding. Once: 1 + 2^-7.
  const x = 1 + 2 ** -8 + 2 ** -30;
  assert.equal(f32ToBf16(Math.fround(x)), 0x3f80);
  assert.equal(f64ToBf16(x), 0x3f81);
  assert.equal(f64ToBf16(-x), 0xbf81);
  assert.equal(f64ToBf16(1 + 2 ** -8), 0x3f80); // an exact tie goes to even
  assert.equal(f64ToBf16(3.5e38), 0x7f80); // past the largest bf16's half ulp: Inf
  assert.equal(f64ToBf16(0), 0);
});

/** A random adapter for `cfg` (B nonzero, as after training). */
function randomAdapter(rng: Rng, cfg: LlamaConfig, lora: LoraConfig): HostAdapter {
  return {
    lora,
    tensors: new Map(adapterTensors(cfg, lora).map((s) => [s.name, { shape: s.shape, data: randn(rng, s.shape[0] * s.shape[1], 0.2) }])),
  };
}

/** |v - x| is at most half the spacing around v, and neither neighbour of v is closer to x. */
function assertNearest(got: number, exact: number, neighbours: [number, number], what: string) {
  const err = Math.abs(got - exact);
  for (const n of neighbours) if (Number.isFinite(n)) assert.ok(Math.abs(n - exact) >= err, `${what}: ${n} is nearer ${exact} than ${got}`);
}

for (const [family, cfg, dtype, targets, stack] of [
  ['llama bf16', tinyConfig({ hidden: 64, intermediate: 96 }), 'bf16', 'all-linear', 1],
  ['llama f32', tinyConfig({ hidden: 64, intermediate: 96 }), 'f32', ['q_proj', 'down_proj'], 1],
  ['phi3 bf16 (fused qkv_proj / gate_up_proj)', parseConfig(PHI3_CONFIG, 'phi3'), 'bf16', 'all-linear', 1],
  [
    'llama bf16, a stack of 3 adapters merged as one sum',
    tinyConfig({ hidden: 64, intermediate: 96 }),
    'bf16',
    ['q_proj', 'v_proj', 'up_proj'],
    3,
  ],
] as const) {
  test(`merge into a ${family} model: every element is the nearest ${dtype} to the float64 W + sum s B A`, async () => {
    await withSeed(async (rng, seed) => {
      const model = initLlama(be, cfg, { seed, dtype, std: 0.05 });
      try {
        const before = new Map<string, number[]>();
        for (const [name, t] of model.weights.params) {
          const h = await ops.read(t);
          before.set(name, Array.from(h instanceof Uint16Array ? Array.from(h, bf16ToF32) : h));
        }
        const adapters = Array.from({ length: stack }, (_, j) => {
          const lora: LoraConfig = {
            r: 4 + 4 * j,
            alpha: 16,
            dropout: 0,
            targetModules: (j === 0 ? targets : ['q_proj', 'up_proj']) as LoraConfig['targetModules'],
            useRslora: (seed + j) % 2 === 0,
          };
          return randomAdapter(rng, cfg, lora);
        });
        await mergeAdapterIntoWeights(model.weights, cfg, ...adapters);
        // the float64 reference: W + sum over adapters of s B A (PEFT's get_delta_weight), per element
        const exact = new Map<string, Float64Array>();
        for (const adapter of adapters) {
          const { r, alpha, useRslora } = adapter.lora;
          const s = useRslora ? alpha / Math.sqrt(r) : alpha / r;
          for (const m of loraModules(cfg, adapter.lora)) {
            const A = adapter.tensors.get(`${m.path}.lora_A.weight`)!.data;
            const B = adapter.tensors.get(`${m.path}.lora_B.weight`)!.data;
            let row0 = 0;
            for (const part of m.parts) {
              let e = exact.get(part.weight);
              if (!e) exact.set(part.weight, (e = Float64Array.from(before.get(part.weight)!)));
              for (let o = 0; o < part.rows; o++)
                for (let i = 0; i < m.inFeatures; i++) {
                  let d = 0;
                  for (let k = 0; k < r; k++) d += B[(row0 + o) * r + k] * A[k * m.inFeatures + i];
                  e[o * m.inFeatures + i] += s * d;
                }
              row0 += part.rows;
            }
          }
        }
        for (const [name, e] of exact) {
          const got = await ops.read(model.weights.get(name));
          for (let at = 0; at < e.length; at++) {
            if (got instanceof Uint16Array) {
              const g = got[at];
              assertNearest(bf16ToF32(g), e[at], [bf16ToF32(g - 1), bf16ToF32(g + 1)], `${name}[${at}]`);
            } else {
              const g = (got as Float32Array)[at];
              const u = new Uint32Array(new Float32Array([g]).buffer)[0];
              const nb = (k: number) => new Float32Array(new Uint32Array([k]).buffer)[0];
              assertNearest(g, e[at], [nb(u - 1), nb(u + 1)], `${name}[${at}]`);
            }
          }
        }
        // the others are untouched, bit for bit
        for (const spec of checkpointLayout(cfg).flatMap((c) => c.parts)) {
          if (exact.has(spec.name)) continue;
          const h = await ops.read(model.weights.get(spec.name));
          assert.deepEqual(Array.from(h instanceof Uint16Array ? Array.from(h, bf16ToF32) : h), before.get(spec.name), spec.name);
        }
      } finally {
        model.weights.free();
      }
    });
  });
}

test('the merge gives the same bits on every test backend (weights read to the host, merged, written back)', async () => {
  await withSeed(async (rng, seed) => {
    const cfg = parseConfig(PHI3_CONFIG, 'phi3');
    const lora: LoraConfig = { r: 8, alpha: 16, dropout: 0, targetModules: 'all-linear', useRslora: false };
    const adapter = randomAdapter(rng, cfg, lora);
    const mergedOn = async (b: Backend) => {
      const m = initLlama(b, cfg, { seed, dtype: 'bf16', std: 0.05 });
      try {
        await mergeAdapterIntoWeights(m.weights, cfg, adapter);
        const out = new Map<string, number[]>();
        for (const [name, t] of m.weights.params) out.set(name, Array.from(await ops.read(t)));
        return out;
      } finally {
        m.weights.free();
      }
    };
    const want = await mergedOn(be);
    for (const b of await testBackends()) assert.deepEqual(await mergedOn(b), want, b.name);
  });
});
