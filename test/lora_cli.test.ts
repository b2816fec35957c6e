// The LoRA flags (src/cli/options.ts loraOptions, config.ts loraOptionsOf / checkLoraFor): parsed into
// the loop config with PEFT's defaults, checked against the model's family with the valid names.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { parseOptions, UsageError } from '../src/cli/args.js';
import { COMMANDS } from '../src/cli/commands.js';
import { checkLoraFor, loraOptionsOf } from '../src/cli/config.js';

const train = COMMANDS.find((c) => c.name === 'train')!;
const parse = (argv: string[]) => parseOptions(['--model', 'm', '--data', 'd', '--out', 'o', ...argv], train.options, 'train');

test('LoRA flags are on the training commands, with --help text', () => {
  for (const name of ['train', 'run', 'sft'])
    for (const flag of ['lora_r', 'lora_alpha', 'lora_dropout', 'lora_target_modules', 'use_rslora']) {
      const spec = COMMANDS.find((c) => c.name === name)!.options.find((s) => s.name === flag);
      assert.ok(spec && spec.help.length > 20, `${name} --${flag}`);
    }
});

test("without --lora_r LoRA is off; with it PEFT's defaults (alpha 8, dropout 0, the family's targets)", () => {
  assert.equal(loraOptionsOf(parse([])), undefined);
  assert.deepEqual(loraOptionsOf(parse(['--lora_r', '16'])), { r: 16, alpha: 8, dropout: 0, useRslora: false, targetModules: null });
  assert.deepEqual(
    loraOptionsOf(
      parse(['--lora_r', '8', '--lora_alpha', '16', '--lora_dropout', '0.05', '--use_rslora', '--lora_target_modules', 'q_proj, o_proj']),
    ),
    { r: 8, alpha: 16, dropout: 0.05, useRslora: true, targetModules: ['q_proj', 'o_proj'] },
  );
  assert.equal(loraOptionsOf(parse(['--lora_r', '8', '--lora_target_modules', 'all-linear']))!.targetModules, 'all-linear');
  assert.throws(() => loraOptionsOf(parse(['--use_rslora'])), /--use_rslora needs --lora_r/);
  assert.throws(() => parse(['--lora_r', '0']), UsageError);
  assert.throws(() => parse(['--lora_dropout', '1']), UsageError);
});

test('--lora_target_modules is checked against the family, naming the valid modules', () => {
  const lora = loraOptionsOf(parse(['--lora_r', '8', '--lora_target_modules', 'q_proj,gate_up_proj']));
  assert.throws(
    () => checkLoraFor(lora, 'llama'),
    (e: Error) => e instanceof UsageError && /'gate_up_proj' is not a linear layer of a llama model; valid: q_proj, k_proj/.test(e.message),
  );
  assert.throws(() => checkLoraFor(lora, 'phi3'), /'q_proj' is not a linear layer of a phi3 model; valid: qkv_proj/);
  checkLoraFor(loraOptionsOf(parse(['--lora_r', '8'])), 'phi3'); // the default (qkv_proj) fits
});

test("a run directory's fingerprint records the LoRA settings: a rerun with others is refused, naming them", async () => {
  const { fingerprintDiff, fingerprintOf } = await import('../src/cli/run_dir.js');
  const was = await fingerprintOf('train', parse(['--lora_r', '16', '--lora_target_modules', 'all-linear']), []);
  assert.deepEqual(
    fingerprintDiff(was, await fingerprintOf('train', parse(['--lora_r', '16', '--lora_target_modules', 'all-linear']), [])),
    [],
  );
  assert.deepEqual(fingerprintDiff(was, await fingerprintOf('train', parse(['--lora_r', '8', '--use_rslora']), [])), [
    '--lora_r (was 16, now 8)',
    '--lora_target_modules (was all-linear, now (not set))',
    '--use_rslora (was false, now true)',
  ]);
  // a run from before LoRA existed (no lora_* options recorded) resumes without them
  const old = { ...(await fingerprintOf('train', parse([]), [])) };
  old.options = Object.fromEntries(Object.entries(old.options).filter(([k]) => !k.includes('lora')));
  assert.deepEqual(fingerprintDiff(old, await fingerprintOf('train', parse([]), [])), []);
});
