// Issue 24, items 4 and 6: `--nproc N` through the real CLI (bin/spinlm.js -> mpirun). A refusal by
// rank 0 before the first collective (a busy directory, other settings, --out under /proc) reaches
// every rank in one collective (src/cli/common.ts shareRefusal) and the job ends within seconds with the
// refusal's exit code, the line printed once; before, rank 1 waited in a barrier until
// SPINLM_COMM_TIMEOUT (600 s; the test sets 60 s so a regression fails in a minute, not ten). --nproc
// above the cores is refused unless --oversubscribe is given.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { availableParallelism, hostname, tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { MpiOutputFilter } from '../src/dist/launch.js';
import { writeTinyModelDir } from './helpers/tiny_model.js';

const BIN = new URL('../bin/spinlm.js', import.meta.url).pathname;
const ENV = {
  ...process.env,
  SPINLM_NUM_THREADS: '1',
  SPINLM_COMM_TIMEOUT: '60',
  OMPI_ALLOW_RUN_AS_ROOT: '1',
  OMPI_ALLOW_RUN_AS_ROOT_CONFIRM: '1',
};
const mpi = spawnSync('mpirun', ['--version'], { encoding: 'utf8' }).status === 0;

let dir = '';
before(async () => {
  dir = mkdtempSync(join(tmpdir(), 'spinlm-nproc-'));
  await writeTinyModelDir(join(dir, 'model'));
  const rows = Array.from({ length: 4 }, (_, i) => ({ prompt: `say ${i}`, completion: `ok ${i}` }));
  writeFileSync(join(dir, 'sft.jsonl'), rows.map((r) => JSON.stringify(r)).join('\n') + '\n');
});
after(() => rmSync(dir, { recursive: true, force: true }));

const sft = (out: string, extra: string[] = []) => {
  const t0 = performance.now();
  const r = spawnSync(
    process.execPath,
    [
      BIN,
      'sft',
      '--model',
      'model',
      '--data',
      'sft.jsonl',
      '--out',
      out,
      '--num_train_epochs',
      '1',
      '--per_device_train_batch_size',
      '1',
      '--quiet',
      ...extra,
    ],
    { cwd: dir, encoding: 'utf8', timeout: 180_000, env: ENV },
  );
  return { ...r, secs: (performance.now() - t0) / 1000 };
};

describe('4. a refusal under --nproc 2 ends every rank at once with its exit code', { skip: !mpi && 'no mpirun' }, () => {
  const refused = (r: ReturnType<typeof sft>, pattern: RegExp) => {
    assert.equal(r.status, 2, r.stderr);
    assert.match(r.stderr, pattern);
    assert.equal(r.stderr.trim().split('\n').length, 1, `one line, printed once:\n${r.stderr}`);
    assert.doesNotMatch(r.stderr, /collective|barrier/);
    assert.ok(r.secs < 40, `ended in ${r.secs.toFixed(1)} s (the collective timeout is 60 s)`);
  };

  test('a busy directory', () => {
    const out = join(dir, 'busy');
    mkdirSync(join(out, '.spinlm.lock'), { recursive: true });
    writeFileSync(join(out, '.spinlm.pid'), `${process.pid} ${hostname()}\n`); // held by this live process
    refused(sft(out, ['--nproc', '2']), new RegExp(`is in use by another spinlm process \\(pid ${process.pid}\\)`));
  });

  test('a run with other settings', () => {
    const first = sft('changed');
    assert.equal(first.status, 0, first.stderr);
    refused(
      sft('changed', ['--nproc', '2', '--learning_rate', '0.5']),
      /holds a sft run with other settings: --learning_rate \(was 0\.00002, now 0\.5\)/,
    );
  });

  test('--out under /proc', () => {
    refused(sft('/proc/spinlm-x/y', ['--nproc', '2']), /--out \/proc\/spinlm-x\/y: .*cannot create the directory/);
  });
});

describe('6. --nproc is bounded by the cores unless --oversubscribe', () => {
  test('--nproc 999 is refused at once, naming the cores and the fix', () => {
    const r = sft('many', ['--nproc', '999']);
    assert.equal(r.status, 2, r.stderr);
    assert.equal(
      r.stderr.trim(),
      `spinlm sft: --nproc 999 is more processes than the ${availableParallelism()} cores here (each rank needs a core): give at most --nproc ${availableParallelism()}, or add --oversubscribe to share cores between ranks`,
    );
    assert.ok(r.secs < 10, `${r.secs.toFixed(1)} s`);
  });

  test('one rank more than the cores runs with --oversubscribe', { skip: !mpi && 'no mpirun' }, () => {
    const n = String(availableParallelism() + 1);
    assert.equal(sft('over', ['--nproc', n]).status, 2);
    const r = sft('over', ['--nproc', n, '--oversubscribe']);
    assert.equal(r.status, 0, r.stderr);
  });
});

test("MpiOutputFilter drops Open MPI's boxes about a non-zero exit or MPI_Abort, keeps the rest", () => {
  const rule = '-'.repeat(74);
  const exitBox = [
    rule,
    'Primary job  terminated normally, but 1 process returned',
    'a non-zero exit code. Per user-direction, the job has been aborted.',
    rule,
  ].join('\n');
  const otherBox = [rule, 'There are not enough slots available in the system', rule].join('\n');
  const f = new MpiOutputFilter();
  // fed in arbitrary pieces, as a pipe delivers them
  const text = `spinlm sft: refused\n${exitBox}\n${otherBox}\nlast`;
  let out = '';
  for (let i = 0; i < text.length; i += 7) out += f.push(text.slice(i, i + 7));
  out += f.end();
  assert.equal(out, `spinlm sft: refused\n${otherBox}\nlast`);
});
