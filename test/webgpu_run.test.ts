// End to end on WebGPU: `spinlm run --device webgpu` for one iteration on a tiny model gives the same
// greedy answers as `--device cpu`, the same reference log-probs and the same per-step metrics within
// f32 tolerance. Runs when the test backends include webgpu (CI: SPINLM_TEST_BACKENDS=cpu,webgpu).
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { CpuBackend } from '../src/backend/cpu/cpu_backend.js';
import { WebGpuBackend } from '../src/backend/webgpu/webgpu_backend.js';
import { initLlama } from '../src/model/init.js';
import { writeByteTokenizer } from '../src/text/byte_tokenizer.js';
import { testBackends } from './helpers/backends.js';
import { tinyConfig } from './helpers/tiny_model.js';

const BIN = new URL('../bin/spinlm.js', import.meta.url).pathname;
const spinlm = (args: string[], cwd: string) =>
  spawnSync(process.execPath, [BIN, ...args], { cwd, encoding: 'utf8', env: { ...process.env, SPINLM_NUM_THREADS: '2' } });

if ((await testBackends()).some((b) => b instanceof WebGpuBackend)) {
  describe('spinlm run --device webgpu', () => {
    let dir = '';
    before(async () => {
      dir = mkdtempSync(join(tmpdir(), 'spinlm-webgpu-'));
      mkdirSync(join(dir, 'model'));
      await writeByteTokenizer(join(dir, 'model'));
      await initLlama(new CpuBackend(), tinyConfig({ vocab: 260 }), { seed: 5, std: 0.05 }).save(join(dir, 'model'));
      assert.equal(spinlm(['synthetic', '--out', 'tasks.jsonl', '--size', '12', '--families', 'minutes,date'], dir).status, 0);
    });
    after(() => rmSync(dir, { recursive: true, force: true }));

    test('one iteration: the greedy pairs, reference log-probs and per-step metrics of --device cpu', () => {
      const args = (device: string) => [
        'run',
        '--device',
        device,
        '--model',
        'model',
        '--data',
        'tasks.jsonl',
        '--out',
        `run-${device}`,
        '--iterations',
        '1',
        '--max_new_tokens',
        '6',
        '--max_length',
        '96',
        '--max_prompt_length',
        '64',
        '--per_device_train_batch_size',
        '4',
        '--gradient_accumulation_steps',
        '1',
        '--num_train_epochs',
        '1',
        '--learning_rate',
        '1e-3',
        '--quiet',
      ];
      for (const d of ['cpu', 'webgpu']) {
        const r = spinlm(args(d), dir);
        assert.equal(r.status, 0, `${d}: ${r.stderr}`);
      }
      const file = (d: string, f: string) => readFileSync(join(dir, `run-${d}`, f), 'utf8');
      assert.deepEqual(
        JSON.parse(file('webgpu', 'iter-0/generated.json')),
        JSON.parse(file('cpu', 'iter-0/generated.json')),
        'greedy answers',
      );
      const refW: number[] = JSON.parse(file('webgpu', 'iter-0/ref_logps.json'));
      const refC: number[] = JSON.parse(file('cpu', 'iter-0/ref_logps.json'));
      assert.equal(refW.length, refC.length);
      refW.forEach((x, i) => assert.ok(Math.abs(x - refC[i]) <= 1e-5 * Math.abs(refC[i]), `ref log-prob ${i}: ${x} vs ${refC[i]}`));
      const steps = (d: string) =>
        file(d, 'metrics.jsonl')
          .trim()
          .split('\n')
          .map((l) => JSON.parse(l))
          .filter((m) => m.kind === 'step');
      const mw = steps('webgpu');
      const mc = steps('cpu');
      assert.ok(mc.length >= 2);
      assert.equal(mw.length, mc.length);
      mc.forEach((c, s) => {
        for (const [k, v] of Object.entries(c)) {
          if (k === 'tokens_per_s') continue;
          if (typeof v !== 'number') assert.deepEqual(mw[s][k], v, `step ${s} ${k}`);
          else assert.ok(Math.abs(mw[s][k] - v) <= 1e-4 * Math.max(1, Math.abs(v)), `step ${s} ${k}: webgpu ${mw[s][k]} vs cpu ${v}`);
        }
      });
    });
  });
}
