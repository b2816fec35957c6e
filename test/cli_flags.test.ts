// Flag names: one set across the commands (old spellings kept as aliases), and every flag that
// README.md or a command's --help shows parses for the command it is shown with.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import { type OptionSpec, parseOptions, UsageError } from '../src/cli/args.js';
import { COMMANDS, type Command } from '../src/cli/commands.js';
import { SPIN_LOSS_TYPES } from '../src/backend/backend.js';

const BIN = new URL('../bin/spinlm.js', import.meta.url).pathname;
const README = new URL('../README.md', import.meta.url).pathname;
const GLOBAL_FLAGS = new Set(['help', 'version', 'config']);

const command = (name: string): Command => {
  const c = COMMANDS.find((x) => x.name === name);
  assert.ok(c, `no command ${name}`);
  return c;
};
const canonical = (flag: string) => flag.replace(/-/g, '_');
const specFor = (c: Command, flag: string): OptionSpec | undefined =>
  c.options.find((s) => s.name === canonical(flag) || (s.aliases ?? []).includes(canonical(flag)));

/** A value of the option's type that passes its check. */
function sampleValue(s: OptionSpec): string {
  if (typeof s.type === 'object') return s.type.oneOf[s.type.oneOf.length - 1];
  return { string: 'x', number: '0.5', int: '2', bool: 'true', numbers: '0.5' }[s.type];
}

/** The command's required options that `argv` does not give, with placeholder values. */
function withRequired(c: Command, argv: string[]): string[] {
  const given = new Set(argv.filter((a) => a.startsWith('--')).map((a) => specFor(c, a.slice(2).split('=')[0])?.name));
  return [...argv, ...c.options.filter((s) => s.required && !given.has(s.name)).flatMap((s) => [`--${s.name}`, 'x'])];
}

function parsesFor(c: Command, argv: string[], where: string) {
  try {
    return parseOptions(withRequired(c, argv), c.options, c.name);
  } catch (err) {
    assert.ok(err instanceof UsageError, String(err));
    assert.fail(`${where}: \`spinlm ${c.name} ${argv.join(' ')}\` does not parse: ${err.message}`);
  }
}

describe('flag names', () => {
  test('batch sizes: one name per meaning, the old spellings still parse (flags and config files)', () => {
    const cases: [string, string, string][] = [
      ['score', 'batch_size', 'per_device_eval_batch_size'],
      ['score', 'batch-size', 'per_device_eval_batch_size'],
      ['eval', 'batch_size', 'per_device_eval_batch_size'],
      ['generate', 'gen_batch_size', 'generation_batch_size'],
      ['generate', 'batch-size', 'generation_batch_size'],
      ['run', 'gen-batch-size', 'generation_batch_size'],
    ];
    const dir = mkdtempSync(join(tmpdir(), 'spinlm-flags-'));
    try {
      for (const [name, alias, canon] of cases) {
        const c = command(name);
        const n = 1 + Math.floor(Math.random() * 64);
        const o = parsesFor(c, [`--${alias}`, String(n)], name);
        assert.equal(o[canon], n, `${name} --${alias}`);
        assert.equal(o[canonical(alias)], undefined, 'the alias is stored under the canonical name only');
        const file = join(dir, `${name}.json`);
        writeFileSync(file, JSON.stringify({ [alias]: n + 1 }));
        assert.equal(parsesFor(c, ['--config', file], name)[canon], n + 1, `${name}: config key ${alias}`);
      }
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test('the same meaning has the same name in every command', () => {
    const byName = new Map<string, Set<string>>();
    for (const c of COMMANDS)
      for (const s of c.options) for (const a of s.aliases ?? []) (byName.get(a) ?? byName.set(a, new Set()).get(a)!).add(c.name);
    for (const c of COMMANDS) {
      for (const s of c.options) {
        // a canonical name is never another command's alias (e.g. batch_size canonical here, alias there)
        assert.ok(!byName.has(s.name), `${c.name} --${s.name} is an alias in ${[...(byName.get(s.name) ?? [])].join(', ')}`);
      }
    }
    for (const name of ['score', 'eval']) assert.ok(specFor(command(name), 'per_device_eval_batch_size'));
    for (const name of ['generate', 'run']) assert.ok(specFor(command(name), 'generation_batch_size'));
  });

  test('--loss_type takes every loss type in run and train (flag and config file); an unknown one is one line, exit 2', () => {
    const dir = mkdtempSync(join(tmpdir(), 'spinlm-loss-type-'));
    try {
      for (const name of ['run', 'train']) {
        const c = command(name);
        assert.equal(parsesFor(c, [], name).loss_type, 'sigmoid', `${name}: the default is the official loss`);
        for (const t of SPIN_LOSS_TYPES) {
          assert.equal(parsesFor(c, ['--loss_type', t], name).loss_type, t, `${name} --loss_type ${t}`);
          assert.equal(parsesFor(c, [`--loss-type=${t}`], name).loss_type, t, `${name} --loss-type=${t}`);
          const file = join(dir, `${name}-${t}.yaml`);
          writeFileSync(file, `loss_type: ${t}\n`);
          assert.equal(parsesFor(c, ['--config', file], name).loss_type, t, `${name}: config loss_type ${t}`);
        }
        const help = spawnSync(process.execPath, [BIN, name, '--help'], { encoding: 'utf8' });
        assert.match(help.stdout, /--loss_type .*\{sigmoid\|hinge\|ipo\|sppo_hard\}/, `${name} --help lists the loss types`);
        // unknown names fail in the parser, before any file is read
        const bad = spawnSync(
          process.execPath,
          [BIN, name, '--loss_type', 'dpo', '--model', join(dir, 'm'), '--data', join(dir, 'd.jsonl'), '--out', join(dir, 'o')],
          { encoding: 'utf8' },
        );
        assert.equal(bad.status, 2, bad.stderr);
        const lines = bad.stderr.trim().split('\n');
        assert.equal(lines.length, 1, `one line: ${bad.stderr}`);
        assert.match(lines[0], /--loss_type: got "dpo", expected one of sigmoid, hinge, ipo, sppo_hard/);
      }
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test('--opponent_samples > 1 needs sampling: with greedy answers it is one line, exit 2, before anything is written', () => {
    const dir = mkdtempSync(join(tmpdir(), 'spinlm-opponent-samples-'));
    try {
      const base = ['run', '--device', 'cpu', '--model', join(dir, 'm'), '--data', join(dir, 'd.jsonl'), '--out', join(dir, 'o')];
      const r = spawnSync(process.execPath, [BIN, ...base, '--opponent_samples', '4'], { encoding: 'utf8' });
      assert.equal(r.status, 2, r.stderr);
      assert.equal(r.stderr.trim().split('\n').length, 1, r.stderr);
      assert.match(r.stderr, /--opponent_samples 4 needs sampled answers.*--temperature/);
      assert.equal(parsesFor(command('run'), ['--opponent_samples', '4', '--temperature', '1'], 'run').opponent_samples, 4);
      const yaml = join(dir, 'sweep.yaml');
      writeFileSync(
        yaml,
        'arms:\n  - name: sft\n    options: { objective: sft }\n  - name: k4\n    options: { opponent_samples: 4 }\nbaseline: sft\n',
      );
      const s = spawnSync(process.execPath, [BIN, 'sweep', yaml, '--device', 'cpu', '--out', join(dir, 's')], { encoding: 'utf8' });
      assert.equal(s.status, 2, s.stderr);
      assert.match(s.stderr, /arms\[1\] \(k4\): options.opponent_samples 4 needs sampled answers/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test('--fused_update with clipping or accumulation is one line naming each conflict, exit 2, before anything is written', () => {
    const dir = mkdtempSync(join(tmpdir(), 'spinlm-fused-'));
    try {
      for (const name of ['train', 'run', 'sft']) {
        const args = [BIN, name, '--device', 'cpu', '--model', join(dir, 'm'), '--data', join(dir, 'd.jsonl'), '--out', join(dir, 'o')];
        const r = spawnSync(process.execPath, [...args, '--fused_update', '--gradient_accumulation_steps', '2'], { encoding: 'utf8' });
        assert.equal(r.status, 2, r.stderr);
        assert.equal(r.stderr.trim().split('\n').length, 1, r.stderr);
        assert.match(
          r.stderr,
          /--fused_update cannot go with --max_grad_norm 1 .*give --max_grad_norm 0.*; nor with --gradient_accumulation_steps 2/,
        );
        assert.ok(!existsSync(join(dir, 'o')), `${name}: nothing written`);
      }
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test("every flag in each command's --help parses for that command; aliases are listed", () => {
    for (const c of COMMANDS) {
      const r = spawnSync(process.execPath, [BIN, c.name, '--help'], { encoding: 'utf8' });
      assert.equal(r.status, 0, r.stderr);
      const flags = [...r.stdout.matchAll(/--([a-z][a-z0-9_-]*)/g)].map((m) => m[1]).filter((f) => !GLOBAL_FLAGS.has(f));
      assert.ok(flags.length >= c.options.length, `${c.name} --help lists its options`);
      for (const flag of flags) {
        const spec = specFor(c, flag);
        assert.ok(spec, `spinlm ${c.name} --help shows --${flag}, which the command does not take`);
        const o = parsesFor(c, [`--${flag}`, sampleValue(spec)], `${c.name} --help`);
        assert.notEqual(o[spec.name], undefined);
      }
      for (const s of c.options)
        for (const a of s.aliases ?? []) assert.ok(r.stdout.includes(`--${a}`), `${c.name} --help names the alias --${a}`);
    }
  });

  test('every flag written in README.md parses for the command it is shown with', () => {
    const text = readFileSync(README, 'utf8');
    const names = new Set(COMMANDS.map((c) => c.name));
    const covered = new Set<number>(); // offsets of flags checked on a command line
    let lines = 0;
    for (const m of text.matchAll(/spinlm ([a-z]+)([^\n`]*)/g)) {
      if (!names.has(m[1])) continue;
      const c = command(m[1]);
      const tokens = m[2].trim().split(/\s+/).filter(Boolean);
      const argv: string[] = [];
      for (let i = 0; i < tokens.length && tokens[i].startsWith('--'); i++) {
        argv.push(tokens[i]);
        const spec = specFor(c, tokens[i].slice(2).split('=')[0]);
        if (spec && spec.type !== 'bool' && !tokens[i].includes('=') && i + 1 < tokens.length) argv.push(tokens[++i]);
      }
      if (argv.some((a) => a === '--help')) continue;
      parsesFor(c, argv, 'README.md');
      let at = m.index! + m[0].indexOf(m[2]);
      for (const a of argv) {
        if (!a.startsWith('--')) continue;
        covered.add(text.indexOf(a, at));
        at = text.indexOf(a, at) + 1;
      }
      lines++;
    }
    assert.ok(lines >= 8, `README.md shows the commands (${lines} command lines found)`);
    // flags mentioned in prose (not on a `spinlm <command>` line): some command takes each, with the value shown
    for (const m of text.matchAll(/`--([a-z][a-z0-9_-]*)(?:[ =]([^`\s]+))?`?/g)) {
      if (covered.has(m.index! + 1) || GLOBAL_FLAGS.has(m[1])) continue;
      const c = COMMANDS.find((x) => specFor(x, m[1]));
      assert.ok(c, `README.md mentions --${m[1]}, which no command takes`);
      parsesFor(
        c,
        [`--${m[1]}`, ...(m[2] !== undefined ? [m[2]] : specFor(c, m[1])!.type === 'bool' ? [] : [sampleValue(specFor(c, m[1])!)])],
        'README.md',
      );
    }
  });
});

test('resuming after an upgrade: an option the run predates counts as its default; any other change is named', async () => {
  await import('../src/cli/commands.js'); // registers every command's option defaults
  const { fingerprintDiff } = await import('../src/cli/run_dir.js');
  const now = { command: 'run', options: { beta: [0.1], fused_update: false, opponent_samples: 1 }, inputs: {} };
  const old = { command: 'run', options: { beta: [0.1] }, inputs: {} };
  assert.deepEqual(fingerprintDiff(old, now), []);
  assert.deepEqual(fingerprintDiff(old, { ...now, options: { ...now.options, opponent_samples: 4 } }), [
    '--opponent_samples (was 1, now 4)',
  ]);
  assert.deepEqual(fingerprintDiff({ ...old, options: { beta: [0.5] } }, now), ['--beta (was 0.5, now 0.1)']);
  // an explicit table of defaults (a sweep's arm options) wins over the command's
  assert.deepEqual(fingerprintDiff(old, now, { fused_update: true, opponent_samples: 1 }), ['--fused_update (was true, now false)']);
});
