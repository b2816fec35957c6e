// A shortened `spinlm demo` from the shipped θ0: three arms, two iterations, the table and the report.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';

const BIN = new URL('../bin/spinlm.js', import.meta.url).pathname;

test('spinlm demo --quick: table of three arms per iteration, report with plots, resumable', () => {
  const dir = mkdtempSync(join(tmpdir(), 'spinlm-demo-'));
  try {
    const args = [
      BIN,
      'demo',
      '--quick',
      '--prompts',
      '32',
      '--eval_tasks',
      '24',
      '--iterations',
      '2',
      '--out',
      join(dir, 'demo'),
      '--quiet',
    ];
    const r = spawnSync(process.execPath, args, { encoding: 'utf8' });
    assert.equal(r.status, 0, r.stderr);
    const table = readFileSync(join(dir, 'demo', 'table.md'), 'utf8');
    for (const arm of ['spin', 'spin+nll', 'sft']) assert.ok(table.includes(`${arm} exact match`), arm);
    assert.equal(table.trim().split('\n').length, 2 + 3, 'header + iterations 0, 1, 2');
    assert.ok(r.stdout.includes(table.trim().split('\n')[2]), 'the table is printed');
    const html = readFileSync(join(dir, 'demo', 'report.html'), 'utf8');
    assert.ok((html.match(/<svg/g) ?? []).length >= 5, 'loss, margins, accuracies and two evaluation plots');
    for (const arm of ['spin', 'spin+nll', 'sft'])
      assert.ok(existsSync(join(dir, 'demo', arm, 'iter-1', 'model', 'model.safetensors')), arm);
    // a rerun finds everything done and only re-prints
    const again = spawnSync(process.execPath, args, { encoding: 'utf8' });
    assert.equal(again.status, 0, again.stderr);
    assert.ok(again.stdout.includes(table.trim().split('\n')[3]));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
