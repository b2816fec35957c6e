// LoRA against full fine-tuning (issue 30's goals), one machine, every cell in a fresh process (bench/lora_probe.ts):
//   1b: the 1.1B TinyLlama shape (bench/make_model.ts 'tinyllama', bf16), one SPIN step on 2 pairs of a
//       128-token prompt and two 128-token answers (each pair one packed sequence of 384 positions),
//       gradient checkpointing on, RMSProp: LoRA (r 16, all-linear) and full fine-tuning, interleaved
//       (full, lora, full, lora), best of 2 for steps/s, the larger peak RSS of the two. Goals: the LoRA
//       step <= 4 GB peak RSS; its steps/s >= 1.3x full fine-tuning's.
//   7b: the Mistral-7B shape ('mistral-7b', bf16, 14.5 GB), LoRA r 16 all-linear, 2 pairs of 128 + 128 + 128
//       tokens, ONE step and no warm-up (many minutes on 2 cores): the load's peak RSS against the weights'
//       bytes (no second copy), the step's peak RSS (goal <= 20 GB), time per step and tokens/s.
// Usage: node --import tsx bench/lora.bench.ts [--cells 1b,7b] [--steps 2] [--reps 2]
// Peak RSS is VmHWM of the probe's process (load included), in MiB and GB (1e9 bytes).
import { execFileSync } from 'node:child_process';
import { parseArgs } from 'node:util';
import { table } from './harness.js';
import { makeRandomModel } from './make_model.js';

const { values: args } = parseArgs({
  options: {
    cells: { type: 'string', default: '1b' },
    steps: { type: 'string', default: '2' },
    reps: { type: 'string', default: '2' },
  },
});
const probe = new URL('./lora_probe.ts', import.meta.url).pathname;
type Result = Record<string, number>;
const run = (dir: string, work: object): Result => {
  const out = execFileSync(process.execPath, ['--import', 'tsx', probe, dir, JSON.stringify(work)], {
    encoding: 'utf8',
    maxBuffer: 1 << 24,
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  const r = JSON.parse(out.trim().split('\n').pop()!) as Result;
  console.error(JSON.stringify(r));
  return r;
};
const gb = (mib: number) => ((mib * 2 ** 20) / 1e9).toFixed(2);
const pair = [128, 128, 128];
const cells = String(args.cells).split(',');

if (cells.includes('1b')) {
  const dir = await makeRandomModel('tinyllama');
  const best: Record<string, Result> = {};
  const pairsOfRuns: (string | number)[][] = [];
  let fullS = NaN;
  // interleaved (full, lora, full, lora) so that a machine shared with other work weighs on both alike
  for (let rep = 0; rep < Number(args.reps); rep++)
    for (const mode of ['full', 'lora']) {
      const r = run(dir, { mode, lengths: [pair, pair], steps: Number(args.steps), warmup: 1, r: 16 });
      const sec = r.ms_per_step / 1000;
      if (mode === 'full') fullS = sec;
      else pairsOfRuns.push([`${rep + 1}`, fullS, sec, fullS / sec]);
      const b = best[mode];
      best[mode] = !b
        ? r
        : {
            ...(r.steps_per_s > b.steps_per_s ? r : b),
            peak_rss_mb: Math.max(r.peak_rss_mb, b.peak_rss_mb),
            load_peak_rss_mb: Math.max(r.load_peak_rss_mb, b.load_peak_rss_mb),
          };
    }
  const rows = (['full', 'lora'] as const).map((m) => {
    const r = best[m];
    return [
      m === 'lora' ? 'LoRA r 16 all-linear' : 'full fine-tuning',
      r.adapter_params || r.params,
      r.load_peak_rss_mb,
      r.peak_rss_mb,
      gb(r.peak_rss_mb),
      r.peak_live_mb,
      r.ms_per_step / 1000,
      r.steps_per_s.toPrecision(3),
      r.tokens_per_s,
    ];
  });
  rows.push([
    'LoRA / full',
    '',
    '',
    best.lora.peak_rss_mb / best.full.peak_rss_mb,
    '',
    '',
    '',
    best.lora.steps_per_s / best.full.steps_per_s,
    '',
  ]);
  console.log(`1.1B (TinyLlama shape, bf16), one SPIN step on 2 pairs of 128 + 128 + 128 tokens (${best.lora.step_tokens} positions),`);
  console.log(`gradient checkpointing, RMSProp; best of ${args.reps} interleaved runs (peak RSS: the larger)`);
  console.log(
    table(['run', 'trained params', 'load peak RSS MiB', 'peak RSS MiB', 'GB', 'peak live MiB', 's / step', 'steps/s', 'tokens/s'], rows),
  );
  console.log('each pair of runs (s / step):');
  console.log(table(['rep', 'full', 'LoRA', 'LoRA speed-up'], pairsOfRuns));
}
if (cells.includes('7b')) {
  const dir = await makeRandomModel('mistral-7b');
  const r = run(dir, { mode: 'lora', lengths: [pair, pair], steps: 1, warmup: 0, r: 16 });
  const weightsMib = (r.params * 2) / 2 ** 20;
  console.log(`7B (Mistral-7B shape, bf16, ${(r.params / 1e9).toFixed(3)}e9 parameters, ${gb(weightsMib)} GB of weights), LoRA r 16`);
  console.log(`all-linear, one SPIN step on 2 pairs of 128 + 128 + 128 tokens (${r.step_tokens} positions), gradient checkpointing`);
  console.log(
    table(
      ['weights MiB', 'load s', 'load peak RSS MiB', 'load peak - weights MiB', 'step peak RSS MiB', 'GB', 's / step', 'tokens/s'],
      [
        [
          weightsMib,
          r.load_s,
          r.load_peak_rss_mb,
          r.load_peak_rss_mb - weightsMib,
          r.peak_rss_mb,
          gb(r.peak_rss_mb),
          r.ms_per_step / 1000,
          r.tokens_per_s,
        ],
      ],
    ),
  );
}
