// The row-invariant CPU GEMM (native/cpu/gemm_rows.cc) against OpenBLAS's sgemm and against the kernel
// it replaced, in one run: C = A W^T, A [M, K] f32, W [N, K] f32 or bf16, on 1 and 2 threads.
//   blas: ops.matmul without rowInvariant (cblas_sgemm; a bf16 W widened to f32 in panels first)
//   old:  ops.matmul with rowInvariant on another build of the addon (--old: a spinlm.node built from the
//         commit before the packed kernel; skipped when the file is missing)
//   new:  ops.matmul with rowInvariant on this tree's addon
// Every (kernel, thread count) runs in a fresh process (OpenBLAS's spinning threads would otherwise share
// the cores with the pool's). A cell's time is the fastest of its repetitions (one warm-up, then at least
// two, until --ms milliseconds have passed), by the wall clock and by the process's CPU time (below).
// Usage: node --import tsx bench/gemm_rows.bench.ts [--old build-old/spinlm.node] [--threads 1,2]
//        [--m 1,16,64,512,2048] [--nk 1024x1024,2816x1024,1024x2816,4096x4096] [--dtypes f32,bf16] [--ms 400]
import { execFileSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { table } from './harness.js';

const { values: args } = parseArgs({
  options: {
    old: { type: 'string', default: 'build-old/spinlm.node' },
    threads: { type: 'string', default: '1,2' },
    m: { type: 'string', default: '1,16,64,512,2048' },
    nk: { type: 'string', default: '1024x1024,2816x1024,1024x2816,4096x4096' },
    dtypes: { type: 'string', default: 'f32,bf16' },
    ms: { type: 'string', default: '400' },
    child: { type: 'string' }, // internal: "kernel,threads"
  },
});
const ms = Number(args.ms);
const ms_ = String(args.m).split(',').map(Number);
const nks = String(args.nk)
  .split(',')
  .map((s) => s.split('x').map(Number) as [number, number]);
const dtypes = String(args.dtypes).split(',') as ('f32' | 'bf16')[];
type Cell = { kernel: string; threads: number; dtype: string; m: number; n: number; k: number; gflops: number; cpuGflops: number };

if (args.child) {
  const [kernel] = args.child.split(',');
  const { CpuBackend } = await import('../src/backend/cpu/cpu_backend.js');
  const ops = await import('../src/ops/index.js');
  const { f32ArrayToBf16 } = await import('../src/tensor/bf16.js');
  const be = new CpuBackend();
  let seed = 1;
  const rand = (n: number) => Float32Array.from({ length: n }, () => ((seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31) * 2 - 1);
  const cells: Cell[] = [];
  for (const dtype of dtypes)
    for (const [n, k] of nks) {
      const wf = rand(n * k);
      const w =
        dtype === 'f32'
          ? ops.upload(be, { dtype: 'f32', data: wf }, [n, k])
          : ops.upload(be, { dtype: 'bf16', data: f32ArrayToBf16(wf) }, [n, k]);
      for (const m of ms_) {
        const x = ops.upload(be, { dtype: 'f32', data: rand(m * k) }, [m, k]);
        const out = ops.empty(be, 'f32', [m, n]);
        const run = () => ops.matmul(x, w, { transB: true, rowInvariant: kernel !== 'blas', out });
        run();
        let wall = Infinity,
          cpu = Infinity;
        const start = performance.now();
        for (let rep = 0; rep < 2 || performance.now() - start < ms; rep++) {
          const t0 = performance.now(),
            c0 = process.cpuUsage();
          run();
          const c = process.cpuUsage(c0);
          wall = Math.min(wall, performance.now() - t0);
          cpu = Math.min(cpu, (c.user + c.system) / 1000);
        }
        const flop = 2 * m * n * k;
        cells.push({ kernel, threads: be.threads, dtype, m, n, k, gflops: flop / (wall * 1e6), cpuGflops: flop / (cpu * 1e6) });
        x.free();
        out.free();
      }
      w.free();
    }
  console.log(JSON.stringify({ core: be.blasCore(), cells }));
  process.exit(0);
}

const here = new URL('..', import.meta.url).pathname;
const oldAddon = resolve(here, String(args.old));
const kernels = ['blas', ...(existsSync(oldAddon) ? ['old'] : []), 'new'];
if (!kernels.includes('old')) console.log(`(no old kernel: ${oldAddon} is missing)`);
const threadCounts = String(args.threads).split(',').map(Number);
const all: Cell[] = [];
let core = '';
for (const threads of threadCounts)
  for (const kernel of kernels) {
    const env: NodeJS.ProcessEnv = {
      ...process.env,
      SPINLM_NUM_THREADS: String(threads),
      OPENBLAS_NUM_THREADS: String(threads),
      ...(kernel === 'old' ? { SPINLM_ADDON: oldAddon } : {}),
    };
    const out = execFileSync(
      process.execPath,
      ['--import', 'tsx', new URL(import.meta.url).pathname, ...process.argv.slice(2), '--child', `${kernel},${threads}`],
      { encoding: 'utf8', env, maxBuffer: 1 << 24 },
    );
    const r = JSON.parse(out.trim().split('\n').pop()!) as { core: string; cells: Cell[] };
    core = r.core;
    all.push(...r.cells);
    console.error(`done: ${kernel}, ${threads} thread(s)`);
  }

const flags = readFileSync('/proc/cpuinfo', 'utf8');
const cpu = /model name\s*:\s*(.*)/.exec(flags)?.[1] ?? 'unknown CPU';
const set = /\bavx512f\b/.test(flags) ? 'AVX-512' : /\bavx2\b/.test(flags) ? 'AVX2' : 'scalar';
console.log(`${cpu}; row-invariant kernel set: ${set}; OpenBLAS core: ${core}; GFLOP/s`);
const get = (kernel: string, c: Cell) =>
  all.find((x) => x.kernel === kernel && x.threads === c.threads && x.dtype === c.dtype && x.m === c.m && x.n === c.n && x.k === c.k);
// wall: GFLOP/s of the fastest wall-clock repetition; cpu: GFLOP per CPU-second (per core) of the
// repetition with the least CPU time, all of the process's threads counted (spinning waits included):
// on a machine shared with other jobs the wall clock counts their time slices too, CPU time only this
// process's. With 2 threads, cpu x 2 is the speed when both threads work the whole call (large M).
const rows: (string | number)[][] = [];
const ratio = (a: number | undefined, b: number | undefined) => (a && b ? (a / b).toFixed(2) : '-');
for (const c of all.filter((x) => x.kernel === 'blas')) {
  const old = get('old', c),
    neu = get('new', c)!;
  rows.push([
    String(c.threads),
    c.dtype,
    String(c.m),
    `${c.n} x ${c.k}`,
    c.cpuGflops,
    old?.cpuGflops ?? '-',
    neu.cpuGflops,
    ratio(neu.cpuGflops, c.cpuGflops),
    ratio(neu.cpuGflops, old?.cpuGflops),
    c.gflops,
    old?.gflops ?? '-',
    neu.gflops,
    ratio(neu.gflops, c.gflops),
  ]);
}
console.log(
  table(
    [
      'threads',
      'W',
      'M',
      'N x K',
      'OpenBLAS cpu',
      'old cpu',
      'new cpu',
      'new / OpenBLAS cpu',
      'new / old cpu',
      'OpenBLAS wall',
      'old wall',
      'new wall',
      'new / OpenBLAS wall',
    ],
    rows,
  ),
);
