// GPU benchmarks of the CUDA backend against PyTorch on the same GPU (scripts/gpu-check.sh runs this), each
// row beside the prediction of docs/cuda.md "Performance model (written before the GPU)" (bench/gpu_roofline.ts,
// for the H100 SXM, or the H200 when the device says so). Modes, in order of value (the default order):
//   attention: ops.attention bf16, B 8 x L 2048 x 16 heads x hd 128, causal: fwd and bwd TFLOP/s (FlashAttention's
//              count: fwd 4 B H L^2 d / 2, bwd 2.5x) vs torch SDPA (flash backend) bf16 (goal fwd >= 35% of peak)
//   gemm:      ops.matmul computeDtype 'bf16' at the 1.1B and 7B linear shapes, 8192 tokens, vs torch.matmul bf16
//   decode:    row-invariant ops.matmul bf16 at M = 1, 8, 32, 64 x the 7B shapes vs torch.matmul bf16
//              (cuBLASLt) on the same shapes (goal >= 60% of cuBLASLt)
//   head:      fused headLogprob fwd / bwd at 8192 x 4096 x 32000 vs the GEMM rate of that shape (goal >= 60%)
//   spin:      SPIN step of a 1.1B Llama-shaped model, 8 pairs x 1024 tokens: tokens/s and peak device memory
//              vs PyTorch eager under bf16 autocast (goals >= 1.2x faster, <= 0.8x memory)
//   generate:  32 prompts x 128, 256 new, greedy: tokens/s vs transformers generate (goal >= 1.0x), else
//              PyTorch eager with a KV cache
//   loss:      logprobGather bf16 N = 8192 x V = 128256 GB/s vs the device-to-device copy measured in the
//              same run (goal >= 80%), its in-place backward (goal >= 80%), vs PyTorch eager / torch.compile
// The kernel modes (attention, gemm, decode, head) run in one spinlm process (bench/gpu_kernel_probe.ts) and
// one PyTorch process; spin, generate and loss each in fresh ones (bench/gpu_probe.ts, bench/peer/torch_gpu.py),
// so peak memory is the mode's own. Without a CUDA device it prints why and exits 0.
// Each mode's rows are printed, and appended to --jsonl FILE, the moment they are measured (the GPU kit
// streams them into its results: a time-out loses only the mode it cut). --backend cuda-emu --size tiny
// is the kit's dry run: the same code at tiny shapes on the emulator, no peer (not a measurement).
// Usage: node --import tsx bench/gpu.bench.ts [--modes attention,gemm,decode,head,spin,generate,loss] [--steps 3]
//        [--json FILE] [--jsonl FILE] [--backend cuda|cuda-emu] [--size full|tiny]
import { spawn } from 'node:child_process';
import { appendFileSync, writeFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { cudaStatus } from '../src/backend/cuda/cuda_backend.js';
import { PYTHON, table } from './harness.js';
import {
  EFF,
  H100,
  H200,
  attention as attnModel,
  causalPairs,
  decodeGemm,
  decodeStep,
  gemm as gemmModel,
  LLAMA_1B,
  spinStep,
  trainMemoryBytes,
} from './gpu_roofline.js';

const { values: args } = parseArgs({
  options: {
    modes: { type: 'string', default: 'attention,gemm,decode,head,spin,generate,loss' },
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
type Rows = Row & { rows?: Row[] };
const KERNEL_MODES = ['attention', 'gemm', 'decode', 'head'];
/**
 * Runs a probe and calls `onLine` with each JSON line as it is printed (a mode's result the moment it is
 * measured); a probe that fails part-way keeps its earlier lines and adds {"skipped": why}.
 */
function streamJson(file: string, argv: string[], onLine: (l: Rows) => void, env?: NodeJS.ProcessEnv): Promise<void> {
  return new Promise((done) => {
    const child = spawn(file, argv, { env, stdio: ['ignore', 'pipe', 'pipe'] });
    let buf = '',
      err = '';
    child.stdout.on('data', (d: Buffer) => {
      buf += d.toString();
      for (let i = buf.indexOf('\n'); i >= 0; i = buf.indexOf('\n')) {
        const line = buf.slice(0, i).trim();
        buf = buf.slice(i + 1);
        if (line.startsWith('{')) onLine(JSON.parse(line) as Rows);
      }
    });
    child.stderr.on('data', (d: Buffer) => (err = (err + d.toString()).slice(-2000)));
    child.on('close', (code) => {
      if (buf.trim().startsWith('{')) onLine(JSON.parse(buf) as Rows);
      if (code !== 0) onLine({ skipped: `exit ${code}: ${err.trim().split('\n').slice(-1)[0] ?? ''}` });
      done();
    });
  });
}
const kitEnv = { ...process.env, SPINLM_KIT_BACKEND: String(args.backend), SPINLM_KIT_SIZE: String(args.size) };
const script = (name: string) => new URL(name, import.meta.url).pathname;
/** Measures `modes` (one kernel group or one whole-model mode) with spinlm, then PyTorch; `got` sees each line. */
async function measure(modes: string[], got: (side: 'spinlm' | 'torch', mode: string, r: Rows) => void): Promise<void> {
  const kernel = KERNEL_MODES.includes(modes[0]);
  // a line without a mode belongs to the next mode not yet seen (a single-mode probe, or a failure)
  const route = (side: 'spinlm' | 'torch') => {
    const seen = new Set<string>();
    let failure = '';
    return (l: Rows) => {
      const mode = typeof l.mode === 'string' && modes.includes(l.mode) ? l.mode : modes.find((m) => !seen.has(m));
      if (!mode || (l.fallback && seen.has(mode))) return;
      if (l.skipped && !l.fallback) failure = String(l.skipped);
      seen.add(mode);
      got(side, mode, l.fallback ? { mode, skipped: failure || 'no output' } : l);
    };
  };
  const probe = kernel ? ['gpu_kernel_probe.ts', modes.join(',')] : ['gpu_probe.ts', modes[0]];
  const ours = route('spinlm');
  await streamJson(process.execPath, ['--import', 'tsx', script(`./${probe[0]}`), probe[1], String(args.steps)], ours, kitEnv);
  const theirs = route('torch');
  if (dryRun) for (const m of modes) theirs({ mode: m, skipped: 'dry run on the emulator: no peer' });
  else await streamJson(PYTHON, [script('./peer/torch_gpu.py'), '--mode', modes.join(','), '--steps', String(args.steps)], theirs);
  for (const m of modes) {
    ours({ mode: m, fallback: 1 });
    theirs({ mode: m, fallback: 1 });
  }
}
const num = (x: unknown) => (typeof x === 'number' ? x : NaN);
const ratio = (a: unknown, b: unknown) => (Number.isFinite(num(a) / num(b)) ? `${(num(a) / num(b)).toFixed(2)}x` : 'n/a');
const gib = (x: unknown) => num(x) / 2 ** 30;

const gpu = status.available && /H200/i.test(status.info.device) ? H200 : H100;
const pct = (x: number) => (Number.isFinite(x) ? `${(100 * x).toFixed(0)}%` : 'n/a');
const byName = (r: Rows | undefined, name: unknown) => r?.rows?.find((x) => x.name === name) ?? {};
const pctOf = (x: unknown, peak: number) => (Number.isFinite(num(x)) ? pct((num(x) * 1e12) / peak) : 'n/a');

/** The table rows of one mode: measurement, unit, spinlm, PyTorch, spinlm / PyTorch, predicted (gpu), measured / predicted, note. */
function modeRows(mode: string, a: Rows, p: Rows): (string | number)[][] {
  const out: (string | number)[][] = [];
  const skip = (r: Row) => (r.skipped ? `skipped: ${String(r.skipped)}` : '');
  if (mode === 'gemm' || mode === 'decode')
    for (const r of a.rows ?? []) {
      const t = byName(p, r.name);
      const s = { name: String(r.name), m: num(r.m), n: num(r.n), k: num(r.k) };
      if (mode === 'gemm') {
        const want = s.m * s.n * s.k ? (2 * s.m * s.n * s.k) / gemmModel(gpu, s).s / 1e12 : NaN;
        out.push([
          `GEMM ${s.name} ${s.m} x ${s.n} x ${s.k}`,
          'TFLOP/s',
          num(r.tflops),
          num(t.tflops),
          ratio(r.tflops, t.tflops),
          want,
          ratio(r.tflops, want),
          skip(r) || `${pctOf(r.tflops, gpu.bf16)} of bf16 peak`,
        ]);
      } else {
        const want = (2 * s.n * s.k) / decodeGemm(gpu, s, EFF.decodeOurs).s / 1e9;
        out.push([
          `decode ${s.name} M ${s.m} (${s.n} x ${s.k})`,
          'GB/s of weights',
          num(r.weight_gbs),
          num(t.weight_gbs),
          ratio(r.weight_gbs, t.weight_gbs),
          want,
          ratio(r.weight_gbs, want),
          skip(r) || 'goal >= 0.60x cuBLASLt',
        ]);
      }
    }
  else if (mode === 'attention')
    for (const r of a.rows ?? []) {
      const t = byName(p, r.name);
      const [b, l, h, d] = [num(r.b), num(r.l), num(r.heads), num(r.hd)];
      const vis = causalPairs(b, l) - (b * l) / 2; // FlashAttention's count: L^2 / 2 per sequence
      const f = attnModel(gpu, vis, b * l, h, h, d, EFF.flashFwd),
        g = attnModel(gpu, vis, b * l, h, h, d, EFF.flashBwd, true);
      out.push([
        `attention fwd ${String(r.name)}`,
        'TFLOP/s',
        num(r.fwd_tflops),
        num(t.fwd_tflops),
        ratio(r.fwd_tflops, t.fwd_tflops),
        f.flops / f.s / 1e12,
        ratio(r.fwd_tflops, f.flops / f.s / 1e12),
        skip(r) || `${pctOf(r.fwd_tflops, gpu.bf16)} of bf16 peak (goal 35%)`,
      ]);
      out.push([
        '  backward',
        'TFLOP/s',
        num(r.bwd_tflops),
        num(t.bwd_tflops),
        ratio(r.bwd_tflops, t.bwd_tflops),
        g.flops / g.s / 1e12,
        ratio(r.bwd_tflops, g.flops / g.s / 1e12),
        `${pctOf(r.bwd_tflops, gpu.bf16)} of bf16 peak`,
      ]);
    }
  else if (mode === 'head') {
    const gemm = (a.rows ?? [])[0] ?? {};
    const tg = byName(p, gemm.name);
    out.push([
      `GEMM ${String(gemm.name ?? '')} ${num(gemm.m)} x ${num(gemm.n)} x ${num(gemm.k)}`,
      'TFLOP/s',
      num(gemm.tflops),
      num(tg.tflops),
      ratio(gemm.tflops, tg.tflops),
      '',
      '',
      skip(gemm),
    ]);
    for (const r of (a.rows ?? []).slice(1)) {
      const t = byName(p, r.name);
      out.push([
        `${String(r.name)} fwd (${String(r.compute)})`,
        'TFLOP/s',
        num(r.fwd_tflops),
        num(t.fwd_tflops),
        ratio(r.fwd_tflops, t.fwd_tflops),
        EFF.headOfGemm * num(gemm.tflops),
        ratio(r.fwd_of_gemm, EFF.headOfGemm),
        skip(r) || `${pct(num(r.fwd_of_gemm))} of the GEMM rate (goal 60%); PyTorch unfused`,
      ]);
      out.push([
        `  backward (3 GEMMs of work; ${String(r.bwd_compute)})`,
        'TFLOP/s',
        num(r.bwd_tflops),
        num(t.bwd_tflops),
        ratio(r.bwd_tflops, t.bwd_tflops),
        EFF.headOfGemm * num(gemm.tflops),
        ratio(r.bwd_of_gemm, EFF.headOfGemm),
        `${pct(num(r.bwd_of_gemm))} of the GEMM rate`,
      ]);
    }
  } else if (mode === 'loss') {
    out.push([
      'device-to-device copy',
      'GB/s (read + write)',
      num(a.copy_rw_gbs),
      '',
      '',
      gpu.hbm / 1e9,
      ratio(a.copy_rw_gbs, gpu.hbm / 1e9),
      '',
    ]);
    out.push([
      'logprobGather bf16 8192 x 128256',
      'GB/s (logits read once)',
      num(a.gather_gbs),
      num(p.eager_gbs),
      ratio(p.eager_ms, a.gather_ms),
      (EFF.stream * gpu.hbm) / 1e9,
      ratio(a.gather_gbs, (EFF.stream * gpu.hbm) / 1e9),
      `${pct(num(a.gather_of_copy))} of copy (goal 80%)`,
    ]);
    out.push([
      '  vs torch.compile',
      'GB/s',
      num(a.gather_gbs),
      p.compiled_gbs ?? String(p.compiled_error ?? 'n/a'),
      ratio(p.compiled_ms, a.gather_ms),
      '',
      '',
      'goal 1.5x',
    ]);
    out.push([
      'logprobGather backward, in place',
      'GB/s (read + write)',
      num(a.backward_rw_gbs),
      '',
      '',
      (EFF.stream * gpu.hbm) / 1e9,
      ratio(a.backward_rw_gbs, (EFF.stream * gpu.hbm) / 1e9),
      `${pct(num(a.backward_of_copy))} of copy (goal 80%)`,
    ]);
  } else if (mode === 'spin') {
    const memWant = trainMemoryBytes(LLAMA_1B, 8 * (128 + 2 * 896));
    const want =
      16384 /
      spinStep(gpu, LLAMA_1B, { pairs: 8, prompt: 128, answer: 896, recompute: false, lora: false, act: 4, optimBytesPerParam: 20 }).totalS;
    out.push([
      `SPIN step 1.1B, 8 pairs x 1024 (compute ${String(a.compute ?? 'f32')})`,
      'tokens/s',
      num(a.tokens_per_s),
      num(p.tokens_per_s),
      ratio(a.tokens_per_s, p.tokens_per_s),
      want,
      ratio(a.tokens_per_s, want),
      skip(a) || 'goal 1.2x vs autocast eager',
    ]);
    out.push([
      '  peak device memory',
      'GiB (reserved)',
      gib(a.peak_reserved_bytes),
      gib(p.peak_reserved_bytes),
      ratio(a.peak_reserved_bytes, p.peak_reserved_bytes),
      gib(memWant),
      ratio(a.peak_reserved_bytes, memWant),
      'goal <= 0.8x; predicted: allocated, f32 activations',
    ]);
  } else if (mode === 'generate') {
    // the mean cached length over 256 new tokens after a 128-token prompt: 256
    const genWant = decodeStep(gpu, LLAMA_1B, 32, 256).tokensPerS;
    out.push([
      'generate 32 x 128 + 256 greedy',
      'tokens/s',
      num(a.tokens_per_s),
      num(p.tokens_per_s),
      ratio(a.tokens_per_s, p.tokens_per_s),
      genWant,
      ratio(a.tokens_per_s, genWant),
      skip(a) || `goal 1.0x vs ${String(p.peer ?? 'the peer')}`,
    ]);
  }
  return out;
}

const results: Record<string, { spinlm: Rows; torch: Rows }> = {};
const rows: (string | number)[][] = [];
const HEAD = ['measurement', 'unit', 'spinlm', 'PyTorch', 'spinlm / PyTorch', `predicted (${gpu.name})`, 'measured / predicted', 'note'];
// consecutive kernel modes share a process on each side
const groups: string[][] = [];
for (const m of String(args.modes).split(','))
  if (KERNEL_MODES.includes(m) && KERNEL_MODES.includes(groups.at(-1)?.[0] ?? '')) groups.at(-1)!.push(m);
  else groups.push([m]);
for (const group of groups)
  await measure(group, (side, mode, r) => {
    results[mode] ??= { spinlm: {}, torch: {} };
    results[mode][side] = r;
    const { spinlm: a, torch: p } = results[mode];
    if (args.jsonl)
      appendFileSync(
        args.jsonl,
        JSON.stringify({ step: 'bench', mode, side, backend: args.backend, size: args.size, spinlm: a, torch: p }) + '\n',
      );
    if (side === 'torch') {
      const mine = modeRows(mode, a, p);
      rows.push(...mine);
      console.log(table(HEAD, mine));
    }
  });
const first = Object.values(results)[0]?.spinlm ?? {};
console.log(`GPU: ${String(first.device ?? '')}; spinlm GEMM: ${String(first.gemm ?? '')}; predictions for the ${gpu.name} (docs/cuda.md)`);
console.log(table(HEAD, rows));
for (const [mode, r] of Object.entries(results)) if (r.torch.skipped) console.log(`${mode}: PyTorch ${String(r.torch.skipped)}`);
if (args.json) writeFileSync(args.json, JSON.stringify(results, null, 2));
