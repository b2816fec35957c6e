// GPU benchmarks of the CUDA backend against PyTorch on the same GPU (scripts/gpu-check.sh runs this):
//   loss:     logprobGather bf16 N = 8192 x V = 128256 GB/s vs the device-to-device copy measured in
//             the same run (goal >= 80%), its in-place backward vs the copy's read + write (goal >= 80%),
//             vs PyTorch eager / torch.compile'd log_softmax(x.float()).gather (goals 5x and 1.5x)
//   spin:     SPIN step of a 1.1B Llama-shaped model, 8 pairs x 1024 tokens: tokens/s and peak device
//             memory vs PyTorch bf16 eager (goals >= 1.2x faster, <= 0.8x memory)
//   generate: 64 prompts x 128, 256 new, greedy: tokens/s vs PyTorch eager with a KV cache (goal >= 2x)
// Each measurement runs in a fresh process (bench/gpu_probe.ts, bench/peer/torch_gpu.py). Without a
// CUDA device it prints why and exits 0: the emulator is not a performance measure.
// Each mode's rows are printed, and appended to --jsonl FILE, the moment they are measured (the GPU kit
// streams them into its results: a time-out loses only the mode it cut). --backend cuda-emu --size tiny
// is the kit's dry run: the same code at tiny shapes on the emulator, no peer (not a measurement).
// Usage: node --import tsx bench/gpu.bench.ts [--modes loss,spin,generate] [--steps 3] [--json FILE] [--jsonl FILE]
//        [--backend cuda|cuda-emu] [--size full|tiny]
import { execFileSync } from 'node:child_process';
import { appendFileSync, writeFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { cudaStatus } from '../src/backend/cuda/cuda_backend.js';
import { PYTHON, table } from './harness.js';

const { values: args } = parseArgs({
  options: {
    modes: { type: 'string', default: 'loss,spin,generate' },
    steps: { type: 'string', default: '3' },
    json: { type: 'string' },
    jsonl: { type: 'string' },
    backend: { type: 'string', default: 'cuda' },
    size: { type: 'string', default: 'full' },
  },
});
const dryRun = args.backend !== 'cuda';
const status = cudaStatus();
if (!dryRun && !status.available) {
  console.log(`gpu.bench: no GPU here (${status.reason}); nothing measured. The CUDA kernels are tested through the emulator instead.`);
  process.exit(0);
}

type Row = Record<string, number | string>;
const lastJson = (out: string): Row => JSON.parse(out.trim().split('\n').pop() ?? '{}');
const ours = (mode: string): Row =>
  lastJson(
    execFileSync(process.execPath, ['--import', 'tsx', new URL('./gpu_probe.ts', import.meta.url).pathname, mode, String(args.steps)], {
      encoding: 'utf8',
      maxBuffer: 1 << 24,
      env: { ...process.env, SPINLM_KIT_BACKEND: String(args.backend), SPINLM_KIT_SIZE: String(args.size) },
    }),
  );
const torch = (mode: string): Row => {
  if (dryRun) return { skipped: 'dry run on the emulator: no peer' };
  try {
    return lastJson(
      execFileSync(PYTHON, [new URL('./peer/torch_gpu.py', import.meta.url).pathname, '--mode', mode, '--steps', String(args.steps)], {
        encoding: 'utf8',
        maxBuffer: 1 << 24,
      }),
    );
  } catch (err) {
    return { skipped: `torch peer failed: ${(err as Error).message.split('\n')[0]}` };
  }
};
const num = (x: unknown) => (typeof x === 'number' ? x : NaN);
const ratio = (a: unknown, b: unknown) => (Number.isFinite(num(a) / num(b)) ? `${(num(a) / num(b)).toFixed(2)}x` : 'n/a');
const gib = (x: unknown) => num(x) / 2 ** 30;

const results: Record<string, { spinlm: Row; torch: Row }> = {};
const rows: (string | number)[][] = [];
const HEAD = ['measurement', 'unit', 'spinlm', 'PyTorch', 'spinlm / PyTorch', 'note'];
for (const mode of String(args.modes).split(',')) {
  const first = rows.length;
  const a = ours(mode),
    p = torch(mode);
  results[mode] = { spinlm: a, torch: p };
  if (args.jsonl)
    appendFileSync(args.jsonl, JSON.stringify({ step: 'bench', mode, backend: args.backend, size: args.size, spinlm: a, torch: p }) + '\n');
  if (mode === 'loss') {
    rows.push(['device-to-device copy', 'GB/s (read + write)', num(a.copy_rw_gbs), '', '', '']);
    rows.push([
      'logprobGather bf16 8192 x 128256',
      'GB/s (logits read once)',
      num(a.gather_gbs),
      num(p.eager_gbs),
      ratio(p.eager_ms, a.gather_ms),
      `${(100 * num(a.gather_of_copy)).toFixed(0)}% of copy (goal 80%)`,
    ]);
    rows.push([
      '  vs torch.compile',
      'GB/s',
      num(a.gather_gbs),
      p.compiled_gbs ?? String(p.compiled_error ?? 'n/a'),
      ratio(p.compiled_ms, a.gather_ms),
      'goal 1.5x',
    ]);
    rows.push([
      'logprobGather backward, in place',
      'GB/s (read + write)',
      num(a.backward_rw_gbs),
      '',
      '',
      `${(100 * num(a.backward_of_copy)).toFixed(0)}% of copy (goal 80%)`,
    ]);
  } else if (mode === 'spin') {
    rows.push([
      'SPIN step 1.1B, 8 pairs x 1024',
      'tokens/s',
      num(a.tokens_per_s),
      num(p.tokens_per_s),
      ratio(a.tokens_per_s, p.tokens_per_s),
      'goal 1.2x',
    ]);
    rows.push([
      '  peak device memory',
      'GiB (spinlm reserved / torch reserved)',
      gib(a.peak_reserved_bytes),
      gib(p.peak_reserved_bytes),
      ratio(a.peak_reserved_bytes, p.peak_reserved_bytes),
      'goal <= 0.8x',
    ]);
  } else if (mode === 'generate') {
    rows.push([
      'generate 64 x 128 + 256 greedy',
      'tokens/s',
      num(a.tokens_per_s),
      num(p.tokens_per_s),
      ratio(a.tokens_per_s, p.tokens_per_s),
      'goal 2x',
    ]);
  }
  console.log(table(HEAD, rows.slice(first)));
}
console.log(
  `GPU: ${String(results[Object.keys(results)[0]]?.spinlm.device ?? '')}; spinlm GEMM: ${String(results[Object.keys(results)[0]]?.spinlm.gemm ?? '')}`,
);
console.log(table(HEAD, rows));
for (const [mode, r] of Object.entries(results)) if (r.torch.skipped) console.log(`${mode}: PyTorch ${String(r.torch.skipped)}`);
if (args.json) writeFileSync(args.json, JSON.stringify(results, null, 2));
