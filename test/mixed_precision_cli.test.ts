// `--compute_dtype` of the training commands (docs/numerics.md "Mixed precision"): `spinlm train
// --compute_dtype bf16` on the CPU trains in bf16 mixed precision (step 0: loss exactly log 2, the
// reference file's fingerprint records compute_dtype bf16), and --help names the choices and auto's rule.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { writeTinyModelDir } from './helpers/tiny_model.js';

const BIN = new URL('../bin/spinlm.js', import.meta.url).pathname;
const spinlm = (args: string[], cwd: string) =>
  spawnSync(process.execPath, [BIN, ...args], { cwd, encoding: 'utf8', env: { ...process.env, SPINLM_NUM_THREADS: '2' } });

test('spinlm train --compute_dtype bf16 (cpu): u = 0 at step 0, the reference fingerprint records bf16; --help explains auto', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'spinlm-mp-cli-'));
  try {
    const model = await writeTinyModelDir(join(dir, 'model'));
    const rows = Array.from({ length: 6 }, (_, i) => ({ prompt: `q ${i} ?`, real: `answer ${i}`, generated: `other ${i * 7}` }));
    writeFileSync(join(dir, 'pairs.jsonl'), rows.map((r) => JSON.stringify(r)).join('\n') + '\n');
    const small = ['--per_device_train_batch_size', '3', '--gradient_accumulation_steps', '1', '--num_train_epochs', '1', '--quiet'];
    const text = ['--max_length', '64', '--max_prompt_length', '32', '--template', 'instruction', '--device', 'cpu'];
    const r = spinlm(
      ['train', '--model', model, '--data', 'pairs.jsonl', '--out', 'trained', '--compute_dtype', 'bf16', ...text, ...small],
      dir,
    );
    assert.equal(r.status, 0, r.stderr);
    const first = JSON.parse(readFileSync(join(dir, 'trained', 'metrics.jsonl'), 'utf8').split('\n')[0]) as { loss: number };
    assert.equal(first.loss, Math.fround(Math.LN2), 'step 0 of an iteration: loss log 2');
    const fp = readdirSync(join(dir, 'trained'), { recursive: true }).find((f) => String(f).endsWith('ref_logps.fingerprint.json'));
    assert.ok(fp, 'the reference file has a fingerprint');
    assert.equal((JSON.parse(readFileSync(join(dir, 'trained', String(fp)), 'utf8')) as { compute_dtype: string }).compute_dtype, 'bf16');
    const help = spinlm(['train', '--help'], dir);
    assert.equal(help.status, 0, help.stderr);
    assert.match(help.stdout, /--compute_dtype[\s\S]*auto[\s\S]*bf16 on --device cuda, f32 on cpu and webgpu/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
