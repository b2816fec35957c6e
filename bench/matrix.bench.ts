// The benchmark matrix (issue 13): score, generate, train and one SPIN step at three model sizes, each
// beside PyTorch eager in the same run.
//   sizes: the 32M benchmark config, a ~350M and TinyLlama-1.1B's shape, random bf16 weights made by
//          bench/make_model.ts (cached under the temp dir: made once, ~2.2 GB for 1.1B)
//   spinlm: every cell in a fresh process (bench/model_probe.ts with the model directory: bf16
//          parameters as stored, fp32 compute (--compute bf16: bf16 compute in score and generate),
//          fp32 masters when training), so peak RSS is its own
//   PyTorch: bench/peer/torch_llama_peer.py with the same config and workload, at each thread count of
//          --torch-threads, in fp32 and (score, generate) bf16; the best is reported
// Workloads shrink with the model so the matrix finishes in ~15-20 minutes on 2 cores; the sizes are
// in the table. GFLOP/s count 2 (forward) or 6 (forward + backward) x non-embedding parameters x tokens.
// Usage: node --import tsx bench/matrix.bench.ts [--sizes 32m,350m,tinyllama] [--modes score,generate,train,spin]
//        [--torch-threads 1,2] [--compute f32|bf16] [--json FILE]
import { execFileSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { runPeer, table } from './harness.js';
import { makeRandomModel, SHAPES } from './make_model.js';
import { DEFAULT_WORK } from './model_probe_work.js';

const { values: args } = parseArgs({
  options: {
    sizes: { type: 'string', default: '32m,350m,tinyllama' },
    modes: { type: 'string', default: 'score,generate,train,spin' },
    'torch-threads': { type: 'string', default: '1,2' },
    // spinlm's arithmetic in score and generate: f32, or bf16 (--compute_dtype bf16; the models are bf16)
    compute: { type: 'string', default: 'f32' },
    json: { type: 'string' },
  },
});

type Work = typeof DEFAULT_WORK;
/** Per size: timed repetitions (after one warm-up) and the workload. */
// The 1.1B row runs PyTorch at 2 threads only (each of its cells takes minutes; the smaller rows
// show which thread count wins at large GEMMs).
const PLAN: Record<string, { label: string; steps: number; work: Partial<Work>; torchThreads?: number[] }> = {
  '32m': { label: '32M', steps: 3, work: {} },
  '350m': { label: '350M', steps: 2, work: { rows: 2, genBatch: 8, genNew: 32, pairs: 2 } },
  tinyllama: { label: '1.1B', steps: 1, work: { rows: 1, genBatch: 4, genNew: 16, pairs: 1 }, torchThreads: [2] },
};
const sizes = String(args.sizes).split(',');
for (const s of sizes)
  if (!(s in SHAPES) || !(s in PLAN)) throw new Error(`--sizes: unknown size ${s} (known: ${Object.keys(PLAN).join(', ')})`);
const modes = String(args.modes).split(',');
const threads = String(args['torch-threads']).split(',').map(Number);
const compute = String(args.compute);
if (compute !== 'f32' && compute !== 'bf16') throw new Error(`--compute: f32 or bf16, got ${compute}`);

const probe = (mode: string, steps: number, dir = '', work: Partial<Work> = {}): Record<string, number> => {
  const out = execFileSync(
    process.execPath,
    ['--import', 'tsx', new URL('./model_probe.ts', import.meta.url).pathname, mode, String(steps), dir, JSON.stringify(work)],
    { encoding: 'utf8', maxBuffer: 1 << 24 },
  );
  return JSON.parse(out.trim().split('\n').pop() ?? '{}');
};
const workText = (mode: string, w: Work) =>
  ({
    score: `${w.rows} x ${w.len} tokens`,
    train: `${w.rows} x ${w.len} tokens`,
    generate: `${w.genBatch} prompts x ${w.genPrompt}, ${w.genNew} new`,
    spin: `${w.pairs} pairs x ${w.len} (prompt ${w.prompt})`,
  })[mode] ?? '';

const t0 = performance.now();
const gemm = probe('gemm', 5);
const rows: (string | number)[][] = [];
const results: Record<string, unknown> = { gemm, torch_threads: threads };
for (const size of sizes) {
  const plan = PLAN[size];
  const dir = await makeRandomModel(size as keyof typeof SHAPES);
  const work = { ...DEFAULT_WORK, ...plan.work };
  for (const mode of modes) {
    const inference = mode === 'score' || mode === 'generate';
    const ours = probe(mode, plan.steps, dir, inference ? { ...plan.work, compute: compute as Work['compute'] } : plan.work);
    // PyTorch in fp32 and, where its CPU path has bf16 (score, generate: no autograd), in bf16 too
    const dtypes = mode === 'score' || mode === 'generate' ? ['f32', 'bf16'] : ['f32'];
    const settings = (plan.torchThreads ?? threads).flatMap((n) => dtypes.map((dtype) => ({ n, dtype })));
    const peers = settings.map(({ n, dtype }) =>
      runPeer(new URL('./peer/torch_llama_peer.py', import.meta.url).pathname, [
        '--mode',
        mode,
        '--dtype',
        dtype,
        '--threads',
        String(n),
        '--steps',
        String(plan.steps),
        '--config',
        join(dir, 'config.json'),
        '--work',
        JSON.stringify(plan.work),
        '--json',
      ]),
    );
    const metric = mode === 'spin' ? 'steps_per_s' : 'tokens_per_s';
    const best = peers.reduce((a, b) => (Number(b[metric]) > Number(a[metric]) ? b : a));
    results[`${size}/${mode}`] = { work, spinlm: ours, torch: peers };
    rows.push([
      plan.label,
      mode,
      workText(mode, work),
      metric,
      ours[metric].toPrecision(3),
      Number(best[metric]).toPrecision(3),
      `${(ours[metric] / Number(best[metric])).toFixed(2)}x`,
      `${best.threads}, ${best.dtype}`,
      ours.gflops,
      `${((100 * ours.gflops) / gemm.gflops).toFixed(0)}%`,
      ours.peak_rss_mb,
      Number(best.peak_rss_bytes) / 2 ** 20,
    ]);
    process.stderr.write(
      `${plan.label} ${mode}: spinlm ${ours[metric].toPrecision(3)}, PyTorch ${Number(best[metric]).toPrecision(3)} ${metric}\n`,
    );
  }
}
const minutes = (performance.now() - t0) / 60000;
console.log(
  `\nsgemm rate measured here (2048^3, OpenBLAS's ${gemm.blas_core} kernels through spinlm's matmul): ${gemm.gflops.toFixed(0)} GFLOP/s; spinlm's score and generate in ${compute} compute; matrix took ${minutes.toFixed(1)} min\n`,
);
console.log(
  table(
    [
      'size',
      'mode',
      'workload',
      'metric',
      'spinlm',
      'PyTorch',
      'spinlm / PyTorch',
      'PyTorch threads, dtype',
      'spinlm GFLOP/s',
      'of sgemm',
      'spinlm peak RSS MiB',
      'PyTorch peak RSS MiB',
    ],
    rows,
  ),
);
results.minutes = minutes;
if (args.json) writeFileSync(args.json, JSON.stringify(results, null, 2));
