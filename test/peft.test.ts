// PEFT adapter files (src/model/peft.ts): names, shapes, dtypes and config keys checked against PEFT's
// documented format, written down here from PEFT itself (huggingface/peft utils/save_and_load.py
// get_peft_model_state_dict: the state dict's `lora_` keys with ".default" removed, under the
// PeftModelForCausalLM prefix `base_model.model.`; tuners/lora/config.py LoraConfig's field names;
// tuners_utils _maybe_include_all_linear_layers: all-linear is saved as the module names it selected,
// lm_head excluded), and the reader's refusals.
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { parseConfig } from '../src/model/config.js';
import type { LoraConfig } from '../src/model/lora.js';
import { ADAPTER_CONFIG, ADAPTER_WEIGHTS, AdapterError, readPeftAdapter, writePeftAdapter } from '../src/model/peft.js';
import { writeSafetensors } from '../src/model/safetensors.js';
import { f32ArrayToBf16 } from '../src/tensor/bf16.js';
import { PHI3_CONFIG, tinyConfig } from './helpers/tiny_model.js';
import { randn, withSeed } from './helpers/random.js';
import type { Rng } from '../src/util/rng.js';

const tmp = () => mkdtempSync(join(tmpdir(), 'spinlm-peft-'));

/** The safetensors header of a file, parsed by hand (8-byte little-endian length, then JSON). */
function header(file: string): Record<string, { dtype: string; shape: number[]; data_offsets: number[] }> {
  const b = readFileSync(file);
  const n = Number(b.readBigUInt64LE(0));
  const h = JSON.parse(b.subarray(8, 8 + n).toString('utf8')) as Record<string, never>;
  delete h.__metadata__;
  return h;
}

/** Random adapter tensors for the PEFT names listed (model names, no prefix) with their shapes. */
function randomTensors(rng: Rng, specs: [string, number[]][]) {
  return specs.map(([name, shape]) => ({ name, shape, data: randn(rng, shape[0] * shape[1], 0.1) }));
}

const llama = tinyConfig({ hidden: 64, intermediate: 96, layers: 2, heads: 4, kvHeads: 2 }); // hd 16: q 64, k/v 32
const phi3 = parseConfig(PHI3_CONFIG, 'phi3'); // H 64, I 96, nH = nKV = 4, hd 16

/** PEFT's names and shapes for q_proj + v_proj LoRA on the tiny Llama, written out by hand. */
function llamaQV(r: number): [string, number[]][] {
  const out: [string, number[]][] = [];
  for (const i of [0, 1]) {
    out.push([`model.layers.${i}.self_attn.q_proj.lora_A.weight`, [r, 64]]);
    out.push([`model.layers.${i}.self_attn.q_proj.lora_B.weight`, [64, r]]);
    out.push([`model.layers.${i}.self_attn.v_proj.lora_A.weight`, [r, 64]]);
    out.push([`model.layers.${i}.self_attn.v_proj.lora_B.weight`, [32, r]]);
  }
  return out;
}

const qv = (r: number, extra: Partial<LoraConfig> = {}): LoraConfig => ({
  r,
  alpha: 16,
  dropout: 0,
  targetModules: ['v_proj', 'q_proj'],
  useRslora: false,
  ...extra,
});

test('PEFT round trip: tensor names, shapes, dtype and adapter_config.json keys as PEFT writes them', async () => {
  await withSeed(async (rng) => {
    const dir = tmp();
    try {
      const tensors = randomTensors(rng, llamaQV(8));
      await writePeftAdapter(dir, llama, qv(8, { useRslora: true }), tensors, { baseModel: 'org/base' });
      // the file: PEFT's names (prefix base_model.model., no adapter-name segment), F32, [r, in] / [out, r]
      const h = header(join(dir, ADAPTER_WEIGHTS));
      assert.deepEqual(
        Object.keys(h).sort(),
        llamaQV(8)
          .map(([n]) => `base_model.model.${n}`)
          .sort(),
      );
      for (const [n, shape] of llamaQV(8)) {
        assert.equal(h[`base_model.model.${n}`].dtype, 'F32');
        assert.deepEqual(h[`base_model.model.${n}`].shape, shape);
      }
      assert.ok(!Object.keys(h).some((n) => n.includes('.default.')));
      // the config: PEFT's LoraConfig keys and values
      const c = JSON.parse(readFileSync(join(dir, ADAPTER_CONFIG), 'utf8')) as Record<string, unknown>;
      const expected: Record<string, unknown> = {
        peft_type: 'LORA',
        task_type: 'CAUSAL_LM',
        base_model_name_or_path: 'org/base',
        r: 8,
        lora_alpha: 16,
        lora_dropout: 0,
        target_modules: ['q_proj', 'v_proj'],
        bias: 'none',
        use_rslora: true,
        use_dora: false,
        fan_in_fan_out: false,
        init_lora_weights: true,
        modules_to_save: null,
        inference_mode: true,
        revision: null,
        layers_to_transform: null,
        layers_pattern: null,
        rank_pattern: {},
        alpha_pattern: {},
      };
      for (const [k, v] of Object.entries(expected)) assert.deepEqual(c[k], v, `adapter_config.json "${k}"`);
      // read back: the same configuration and bit-identical tensors
      const back = await readPeftAdapter(dir, llama);
      assert.deepEqual(back.lora, { r: 8, alpha: 16, dropout: 0, targetModules: ['q_proj', 'v_proj'], useRslora: true });
      assert.equal(back.baseModel, 'org/base');
      assert.equal(back.tensors.size, tensors.length);
      for (const t of tensors) assert.deepEqual(back.tensors.get(t.name)?.data, t.data, t.name);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

test('PEFT all-linear is saved as the module names it selected; Phi-3 adapts its fused qkv_proj / gate_up_proj', async () => {
  await withSeed(async (rng) => {
    const dir = tmp();
    try {
      const r = 4;
      const llamaAll: [string, number[]][] = [];
      for (const i of [0, 1]) {
        const p = `model.layers.${i}`;
        for (const [m, inF, outF] of [
          ['self_attn.q_proj', 64, 64],
          ['self_attn.k_proj', 64, 32],
          ['self_attn.v_proj', 64, 32],
          ['self_attn.o_proj', 64, 64],
          ['mlp.gate_proj', 64, 96],
          ['mlp.up_proj', 64, 96],
          ['mlp.down_proj', 96, 64],
        ] as const) {
          llamaAll.push([`${p}.${m}.lora_A.weight`, [r, inF]], [`${p}.${m}.lora_B.weight`, [outF, r]]);
        }
      }
      await writePeftAdapter(dir, llama, { ...qv(r), targetModules: 'all-linear' }, randomTensors(rng, llamaAll), { baseModel: 'b' });
      const c = JSON.parse(readFileSync(join(dir, ADAPTER_CONFIG), 'utf8')) as Record<string, unknown>;
      assert.deepEqual(c.target_modules, ['down_proj', 'gate_proj', 'k_proj', 'o_proj', 'q_proj', 'up_proj', 'v_proj']);
      assert.equal(Object.keys(header(join(dir, ADAPTER_WEIGHTS))).length, 28);
      // a config that says "all-linear" (as a user writes it for PEFT) reads too
      writeFileSync(join(dir, ADAPTER_CONFIG), JSON.stringify({ ...c, target_modules: 'all-linear' }));
      assert.equal((await readPeftAdapter(dir, llama)).lora.targetModules, 'all-linear');

      const phiDir = join(dir, 'phi3');
      const phiAll: [string, number[]][] = [];
      for (const i of [0, 1]) {
        const p = `model.layers.${i}`;
        phiAll.push([`${p}.self_attn.qkv_proj.lora_A.weight`, [r, 64]], [`${p}.self_attn.qkv_proj.lora_B.weight`, [192, r]]);
        phiAll.push([`${p}.self_attn.o_proj.lora_A.weight`, [r, 64]], [`${p}.self_attn.o_proj.lora_B.weight`, [64, r]]);
        phiAll.push([`${p}.mlp.gate_up_proj.lora_A.weight`, [r, 64]], [`${p}.mlp.gate_up_proj.lora_B.weight`, [192, r]]);
        phiAll.push([`${p}.mlp.down_proj.lora_A.weight`, [r, 96]], [`${p}.mlp.down_proj.lora_B.weight`, [64, r]]);
      }
      await writePeftAdapter(phiDir, phi3, { ...qv(r), targetModules: 'all-linear' }, randomTensors(rng, phiAll), { baseModel: 'b' });
      const ph = header(join(phiDir, ADAPTER_WEIGHTS));
      assert.deepEqual(Object.keys(ph).sort(), phiAll.map(([n]) => `base_model.model.${n}`).sort());
      for (const [n, shape] of phiAll) assert.deepEqual(ph[`base_model.model.${n}`].shape, shape);
      const pc = JSON.parse(readFileSync(join(phiDir, ADAPTER_CONFIG), 'utf8')) as Record<string, unknown>;
      assert.deepEqual(pc.target_modules, ['down_proj', 'gate_up_proj', 'o_proj', 'qkv_proj']);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

/** An adapter directory as PEFT's save_pretrained leaves it: its config (PEFT 0.x keys) and BF16 tensors. */
async function peftDir(dir: string, rng: Rng, config: Record<string, unknown>, specs: [string, number[]][]) {
  writeFileSync(join(dir, ADAPTER_CONFIG), JSON.stringify(config));
  await writeSafetensors(
    join(dir, ADAPTER_WEIGHTS),
    specs.map(([n, shape]) => ({
      name: `base_model.model.${n}`,
      dtype: 'bf16',
      shape,
      data: f32ArrayToBf16(randn(rng, shape[0] * shape[1])),
    })),
    { format: 'pt' },
  );
}

const PEFT_CONFIG = {
  base_model_name_or_path: 'TinyLlama/TinyLlama-1.1B-Chat-v1.0',
  bias: 'none',
  fan_in_fan_out: false,
  inference_mode: true,
  init_lora_weights: true,
  lora_alpha: 16,
  lora_dropout: 0.05,
  modules_to_save: null,
  peft_type: 'LORA',
  r: 8,
  rank_pattern: {},
  alpha_pattern: {},
  target_modules: ['q_proj', 'v_proj'],
  task_type: 'CAUSAL_LM',
  use_dora: false,
  use_rslora: false,
};

test("PEFT's files read back (BF16 tensors as f32); each unsupported or inconsistent adapter is refused by name", async () => {
  await withSeed(async (rng) => {
    const dir = tmp();
    const refused = async (config: Record<string, unknown>, specs: [string, number[]][], pattern: RegExp) => {
      rmSync(join(dir, ADAPTER_WEIGHTS), { force: true });
      await peftDir(dir, rng, config, specs);
      await assert.rejects(readPeftAdapter(dir, llama), (e: unknown) => e instanceof AdapterError && pattern.test(e.message));
    };
    try {
      await peftDir(dir, rng, PEFT_CONFIG, llamaQV(8));
      const a = await readPeftAdapter(dir, llama);
      assert.deepEqual(a.lora, { r: 8, alpha: 16, dropout: 0.05, targetModules: ['q_proj', 'v_proj'], useRslora: false });
      assert.equal(a.baseModel, 'TinyLlama/TinyLlama-1.1B-Chat-v1.0');

      await refused(PEFT_CONFIG, llamaQV(8).slice(1), /q_proj\.lora_A\.weight is missing/);
      await refused(
        PEFT_CONFIG,
        [...llamaQV(8), ['model.layers.0.self_attn.k_proj.lora_A.weight', [8, 64]]],
        /k_proj\.lora_A\.weight is not a LoRA tensor/,
      );
      await refused(
        PEFT_CONFIG,
        [...llamaQV(8), ['model.layers.0.self_attn.q_proj.lora_magnitude_vector', [64, 1]]],
        /lora_magnitude_vector/,
      );
      await refused(PEFT_CONFIG, llamaQV(4), /rank 4 is not the config's r = 8/);
      await refused({ ...PEFT_CONFIG, bias: 'all' }, llamaQV(8), /"bias" is "all"/);
      await refused({ ...PEFT_CONFIG, use_dora: true }, llamaQV(8), /DoRA/);
      await refused({ ...PEFT_CONFIG, rank_pattern: { q_proj: 4 } }, llamaQV(8), /"rank_pattern"/);
      await refused({ ...PEFT_CONFIG, alpha_pattern: { q_proj: 4 } }, llamaQV(8), /"alpha_pattern"/);
      await refused(
        { ...PEFT_CONFIG, layers_pattern: 'layers', layers_to_transform: [0] },
        llamaQV(8),
        /"layers_to_transform"|"layers_pattern"/,
      );
      await refused({ ...PEFT_CONFIG, target_modules: '.*q_proj' }, llamaQV(8), /regular expression/);
      await refused({ ...PEFT_CONFIG, peft_type: 'IA3' }, llamaQV(8), /peft_type/);
      await refused({ ...PEFT_CONFIG, target_modules: ['lm_head'] }, llamaQV(8), /lm_head/);
      // a pickle is never read
      rmSync(join(dir, ADAPTER_WEIGHTS));
      writeFileSync(join(dir, 'adapter_model.bin'), 'not read');
      await assert.rejects(readPeftAdapter(dir, llama), /adapter_model\.bin is a pickle/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
