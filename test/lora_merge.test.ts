// Merging an adapter into its base (src/model/lora_merge.ts): W' = W + s B A, against a float64 merge
// written here from PEFT's get_delta_weight (B @ A * scaling, fused modules over their stacked rows):
// every merged element must be the bf16 (f32) nearest to the float64 value (at most half a unit in
// the last place away, and no neighbour closer). One rounding, not two: f64ToBf16 vs double rounding.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { CpuBackend } from '../src/backend/cpu/cpu_backend.js';
import { checkpointLayout, parseConfig, type LlamaConfig } from '../src/model/config.js';
import { initLlama } from '../src/model/init.js';
import { adapterTensors, loraModules, type LoraConfig } from '../src/model/lora.js';
import { f64ToBf16, mergeAdapterIntoWeights } from '../src/model/lora_merge.js';
import type { HostAdapter } from '../src/model/peft.js';
import { bf16ToF32, f32ToBf16 } from '../src/tensor/bf16.js';
import * as ops from '../src/ops/index.js';
import { PHI3_CONFIG, tinyConfig } from './helpers/tiny_model.js';
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

for (const [family, cfg, dtype, targets] of [
  ['llama bf16', tinyConfig({ hidden: 64, intermediate: 96 }), 'bf16', 'all-linear'],
  ['llama f32', tinyConfig({ hidden: 64, intermediate: 96 }), 'f32', ['q_proj', 'down_proj']],
  ['phi3 bf16 (fused qkv_proj / gate_up_proj)', parseConfig(PHI3_CONFIG, 'phi3'), 'bf16', 'all-linear'],
] as const) {
  test(`merge into a ${family} model: every element is the nearest ${dtype} to the float64 W + s B A`, async () => {
    await withSeed(async (rng, seed) => {
      const lora: LoraConfig = {
        r: 8,
        alpha: 16,
        dropout: 0,
        targetModules: targets as LoraConfig['targetModules'],
        useRslora: seed % 2 === 0,
      };
      const s = lora.useRslora ? 16 / Math.sqrt(8) : 2;
      const model = initLlama(be, cfg, { seed, dtype, std: 0.05 });
      try {
        const before = new Map<string, number[]>();
        for (const [name, t] of model.weights.params) {
          const h = await ops.read(t);
          before.set(name, Array.from(h instanceof Uint16Array ? Array.from(h, bf16ToF32) : h));
        }
        const adapter = randomAdapter(rng, cfg, lora);
        await mergeAdapterIntoWeights(model.weights, cfg, adapter);
        const adapted = new Set<string>();
        for (const m of loraModules(cfg, lora)) {
          const A = adapter.tensors.get(`${m.path}.lora_A.weight`)!.data;
          const B = adapter.tensors.get(`${m.path}.lora_B.weight`)!.data;
          let row0 = 0;
          for (const part of m.parts) {
            adapted.add(part.weight);
            const w0 = before.get(part.weight)!;
            const got = await ops.read(model.weights.get(part.weight));
            for (let o = 0; o < part.rows; o++) {
              for (let i = 0; i < m.inFeatures; i++) {
                let d = 0;
                for (let k = 0; k < lora.r; k++) d += B[(row0 + o) * lora.r + k] * A[k * m.inFeatures + i];
                const exact = w0[o * m.inFeatures + i] + s * d;
                const at = o * m.inFeatures + i;
                if (got instanceof Uint16Array) {
                  const g = got[at];
                  assertNearest(bf16ToF32(g), exact, [bf16ToF32(g - 1), bf16ToF32(g + 1)], `${part.weight}[${o}, ${i}]`);
                } else {
                  const g = (got as Float32Array)[at];
                  const u = new Uint32Array(new Float32Array([g]).buffer)[0];
                  const nb = (k: number) => new Float32Array(new Uint32Array([k]).buffer)[0];
                  assertNearest(g, exact, [nb(u - 1), nb(u + 1)], `${part.weight}[${o}, ${i}]`);
                }
              }
            }
            row0 += part.rows;
          }
        }
        // the others are untouched, bit for bit
        for (const spec of checkpointLayout(cfg).flatMap((c) => c.parts)) {
          if (adapted.has(spec.name)) continue;
          const h = await ops.read(model.weights.get(spec.name));
          assert.deepEqual(Array.from(h instanceof Uint16Array ? Array.from(h, bf16ToF32) : h), before.get(spec.name), spec.name);
        }
      } finally {
        model.weights.free();
      }
    });
  });
}
