// Issue 24, items 5, 10, 11 and 12: input files that are not regular files or too big (--config
// /dev/zero filled 16.8 GB), write errors that named no file (ENOSPC from the generate journal and the
// lock's pid file), a deeply nested JSON row (a stack overflow with no file or line), invalid UTF-8 in
// data (silently U+FFFD) and Dawn's two limit warnings printed even with --quiet.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, unlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { CpuBackend } from '../src/backend/cpu/cpu_backend.js';
import { invalidUtf8Bytes, jsonDepth, MAX_ROW_DEPTH } from '../src/data/jsonl.js';
import { answerPrompts } from '../src/generate/answers.js';
import { LlamaDecoder } from '../src/model/decoder.js';
import { LlamaModel } from '../src/model/llama.js';
import { MetricsWriter } from '../src/spin/metrics.js';
import { loadTokenizer } from '../src/text/tokenizer.js';
import { INPUT_CAPS, readInputFileSync } from '../src/util/input_file.js';
import { PYTHON } from './helpers/python.js';
import { withSeed } from './helpers/random.js';
import { writeTinyModelDir } from './helpers/tiny_model.js';

const BIN = new URL('../bin/spinlm.js', import.meta.url).pathname;
const spinlm = (args: string[], timeout = 60_000) => {
  const t0 = performance.now();
  const r = spawnSync(process.execPath, [BIN, ...args], {
    cwd: dir,
    encoding: 'utf8',
    timeout,
    env: { ...process.env, SPINLM_NUM_THREADS: '2' },
  });
  return { ...r, secs: (performance.now() - t0) / 1000 };
};
/** Exit code, one line on stderr matching `pattern`, within `secs`. */
function refused(r: ReturnType<typeof spinlm>, code: number, pattern: RegExp, secs = 15): void {
  assert.equal(r.status, code, `${r.signal ?? ''} ${r.stderr}`);
  assert.equal(r.stderr.trim().split('\n').length, 1, r.stderr);
  assert.match(r.stderr, pattern);
  assert.ok(r.secs < secs, `${r.secs.toFixed(1)} s`);
}

let dir = '';
before(async () => {
  dir = mkdtempSync(join(tmpdir(), 'spinlm-inputs-'));
  await writeTinyModelDir(join(dir, 'model'));
  writeFileSync(join(dir, 'sft.jsonl'), '{"prompt":"a","completion":"b"}\n{"prompt":"c","completion":"d"}\n');
  spawnSync('mkfifo', [join(dir, 'fifo')]);
});
after(() => rmSync(dir, { recursive: true, force: true }));

const sft = (out: string, ...extra: string[]) => [
  'sft',
  '--model',
  'model',
  '--data',
  'sft.jsonl',
  '--out',
  out,
  '--quiet',
  '--num_train_epochs',
  '1',
  ...extra,
];

describe('5. file flags refuse non-regular files and cap sizes before reading', () => {
  test('--config /dev/zero, a FIFO, a file over the cap: one line at once (exit 2)', () => {
    refused(spinlm(sft('c1', '--config', '/dev/zero')), 2, /^--config \/dev\/zero: is a character device, not a regular file$/m);
    refused(spinlm(sft('c1', '--config', 'fifo')), 2, /^--config fifo: is a FIFO \(named pipe\), not a regular file$/m);
    writeFileSync(join(dir, 'big.yaml'), Buffer.alloc(INPUT_CAPS.config + 1, 0x20));
    refused(spinlm(sft('c1', '--config', 'big.yaml')), 2, /^--config big\.yaml: is 16 MiB, over the 16 MiB limit for this file$/m);
  });

  test('--init_config, --data, a sweep config, a model config.json, a tokenizer.json: the same refusal', () => {
    refused(
      spinlm(['sft', '--init_config', '/dev/zero', '--tokenizer', 'model', '--data', 'sft.jsonl', '--out', 'c2', '--quiet']),
      2,
      /--init_config \/dev\/zero is a character device/,
    );
    refused(
      spinlm(['sft', '--model', 'model', '--data', '/dev/zero', '--out', 'c3', '--quiet']),
      2,
      /--data \/dev\/zero is a character device/,
    );
    refused(spinlm(['sweep', '/dev/zero', '--out', 'c4', '--quiet']), 2, /the config \/dev\/zero is a character device/);
    for (const [file, pattern] of [
      ['config.json', /config\.json: is a character device/],
      ['tokenizer.json', /tokenizer\.json: is a FIFO/],
    ] as const) {
      const m = join(dir, `m-${file}`);
      mkdirSync(m);
      for (const f of ['config.json', 'tokenizer.json', 'tokenizer_config.json', 'model.safetensors'])
        if (f !== file) symlinkSync(join(dir, 'model', f), join(m, f));
      symlinkSync(file === 'config.json' ? '/dev/zero' : join(dir, 'fifo'), join(m, file));
      const r = spinlm(['generate', '--model', m, '--data', 'sft.jsonl', '--out', 'g.jsonl', '--max_new_tokens', '2', '--quiet']);
      refused(r, r.status === 2 ? 2 : 1, pattern);
    }
  });

  test('a file that reports no size (/proc) is read, and stopped one byte past the cap', () => {
    assert.match(readInputFileSync('/proc/self/status', INPUT_CAPS.config), /^Name:/);
    assert.throws(() => readInputFileSync('/proc/self/status', 10), /holds more than the 0\.00 MiB limit/);
  });
});

describe('10. write errors name the file', () => {
  test("the lock's pid file: ENOSPC names it", () => {
    mkdirSync(join(dir, 'full'));
    symlinkSync('/dev/full', join(dir, 'full', '.spinlm.pid'));
    refused(spinlm(sft('full')), 1, /full\/\.spinlm\.pid: cannot write it \(ENOSPC: no space left on device, write\)/);
  });

  test('the generate journal and metrics.jsonl: ENOSPC names them', async () => {
    const be = new CpuBackend();
    const model = await LlamaModel.load(be, join(dir, 'model'));
    const tok = await loadTokenizer(join(dir, 'model'));
    const journal = join(dir, 'answers.journal');
    const opts = { temperature: 0, topP: 1, topK: 0, maxNewTokens: 2, seed: 1, batchSize: 1, journal };
    try {
      await assert.rejects(
        answerPrompts(new LlamaDecoder(model), tok, ['a', 'b', 'c'], {
          ...opts,
          // after the first answer is journaled, the journal's disk is full
          onProgress: (done) => {
            if (done === 1) {
              unlinkSync(journal);
              symlinkSync('/dev/full', journal);
            }
          },
        }),
        (e: Error) => e.message === `${journal}: cannot write it (ENOSPC: no space left on device, write)`,
      );
    } finally {
      model.weights.free();
    }
    assert.throws(
      () => new MetricsWriter('/dev/full').write({ kind: 'step', iteration: 0 }),
      /\/dev\/full: cannot write it \(ENOSPC: no space left on device, write\)/,
    );
  });
});

describe('11. a deeply nested row is named by file and line', () => {
  test('JSONL and JSON array: exit 1, one line, no stack overflow', () => {
    const deep = (d: number) => `${'['.repeat(d)}${']'.repeat(d)}`;
    writeFileSync(join(dir, 'deep.jsonl'), `{"prompt":"a","completion":"b"}\n{"prompt":${deep(100_000)},"completion":"x"}\n`);
    refused(spinlm(sft('d1', '--data', 'deep.jsonl')), 1, /deep\.jsonl: line 2: the row nests arrays \/ objects more than 64 levels deep/);
    writeFileSync(join(dir, 'deep.json'), `[{"prompt":"a","completion":"b"},{"prompt":${deep(100_000)},"completion":"x"}]`);
    refused(spinlm(sft('d2', '--data', 'deep.json')), 1, /deep\.json: row index 1: the row nests/);
  });

  test('jsonDepth counts levels without recursion', () => {
    assert.equal(jsonDepth('x'), 0);
    assert.equal(jsonDepth({ a: [1, { b: [] }] }), 4);
    assert.equal(jsonDepth(JSON.parse(`${'['.repeat(MAX_ROW_DEPTH)}${']'.repeat(MAX_ROW_DEPTH)}`)), MAX_ROW_DEPTH);
  });
});

describe('12. invalid UTF-8 is warned about per file, refused with --strict', () => {
  test('a warning with rows and bytes; --strict refuses naming the line', () => {
    // é in Latin-1 (1 bad byte) and FF FE (2) on line 1, a genuine U+FFFD (valid) on line 2, a cut C3 on line 3
    const bytes = Buffer.concat([
      Buffer.from('{"prompt":"caf'),
      Buffer.from([0xe9]),
      Buffer.from('","completion":"x'),
      Buffer.from([0xff, 0xfe]),
      Buffer.from('y"}\n{"prompt":"ok \uFFFD","completion":"y"}\n{"prompt":"a","completion":"b'),
      Buffer.from([0xc3]),
      Buffer.from('"}\n'),
    ]);
    writeFileSync(join(dir, 'latin.jsonl'), bytes);
    const r = spinlm(sft('u1', '--data', 'latin.jsonl'));
    assert.equal(r.status, 0, r.stderr);
    const warnings = r.stderr.split('\n').filter((l) => l.includes('invalid UTF-8'));
    assert.deepEqual(warnings, [
      'spinlm: warning: latin.jsonl: 2 row(s) hold 4 byte(s) of invalid UTF-8, read as U+FFFD (the replacement character); --strict refuses such a file',
    ]);
    refused(spinlm(sft('u2', '--data', 'latin.jsonl', '--strict')), 1, /latin\.jsonl: line 1: 3 byte\(s\) of invalid UTF-8 \(--strict\)/);
  });

  test("invalidUtf8Bytes on random bytes matches Python's decoder (bytes it drops with errors='ignore')", async () => {
    await withSeed((rng) => {
      const cases = Array.from({ length: 200 }, () => {
        const n = rng.int(0, 40);
        // mostly ASCII and well-formed multi-byte characters, with random bytes mixed in
        const parts: Buffer[] = [];
        for (let i = 0; i < n; i++) {
          const k = rng.int(0, 4);
          parts.push(
            k === 0
              ? Buffer.from([rng.int(0, 256)])
              : Buffer.from(
                  String.fromCodePoint(rng.int(0x20, k === 1 ? 0x80 : k === 2 ? 0x800 : 0x10000)).replace(/[\uD800-\uDFFF]/g, 'x'),
                ),
          );
        }
        return Buffer.concat(parts);
      });
      const py = spawnSync(
        PYTHON,
        [
          '-c',
          "import sys,json\nfor h in json.load(sys.stdin):\n b=bytes.fromhex(h); print(len(b)-len(b.decode('utf-8','ignore').encode('utf-8')))",
        ],
        { input: JSON.stringify(cases.map((c) => c.toString('hex'))), encoding: 'utf8' },
      );
      assert.equal(py.status, 0, py.stderr);
      const expected = py.stdout.trim().split('\n').map(Number);
      cases.forEach((c, i) => assert.equal(invalidUtf8Bytes(c), expected[i], c.toString('hex')));
    });
  });
});

describe("12. Dawn's two limit warnings are not printed", () => {
  const webgpu = /webgpu: available/.test(spawnSync(process.execPath, [BIN, 'info'], { encoding: 'utf8' }).stdout);
  test('info and a --device webgpu command print no "artificially reduced" line', { skip: !webgpu && 'no WebGPU adapter here' }, () => {
    const info = spinlm(['info']);
    assert.equal(info.status, 0, info.stderr);
    assert.doesNotMatch(info.stderr + info.stdout, /artificially reduced/);
    const gen = spinlm(
      ['generate', '--model', 'model', '--data', 'sft.jsonl', '--out', 'w.jsonl', '--max_new_tokens', '2', '--device', 'webgpu', '--quiet'],
      120_000,
    );
    assert.equal(gen.status, 0, gen.stderr);
    assert.doesNotMatch(gen.stderr, /artificially reduced|^Warning:/m);
  });

  test('the capture passes anything else Dawn prints on to stderr', () => {
    const script = `
      import { writeSync } from 'node:fs';
      import { withoutDawnNoise } from ${JSON.stringify(new URL('../src/backend/webgpu/device.ts', import.meta.url).pathname)};
      const v = withoutDawnNoise(() => {
        writeSync(2, 'Warning: maxDynamicUniformBuffersPerPipelineLayout artificially reduced from 1000000 to 16 to fit dynamic offset allocation limit.\\n');
        writeSync(2, 'Error: something Dawn says that matters\\n');
        writeSync(2, 'Warning: maxDynamicStorageBuffersPerPipelineLayout artificially reduced from 1000000 to 16 to fit dynamic offset allocation limit.\\n');
        return 7;
      });
      process.stdout.write(String(v));`;
    const r = spawnSync(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], { encoding: 'utf8' });
    assert.equal(r.stdout, '7', r.stderr);
    assert.equal(r.stderr, 'Error: something Dawn says that matters\n');
  });
});

test('the caps are documented where the guarantees are', () => {
  const doc = readFileSync(new URL('../docs/reliability.md', import.meta.url), 'utf8');
  for (const name of ['input_guards.test.ts', 'divergence.test.ts', 'dist_refusal.test.ts']) assert.ok(doc.includes(name), name);
});
