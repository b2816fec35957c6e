// Model benchmarks (issues 3-5), side by side with PyTorch eager in the same run:
//   train:    forward + backward tokens/s of the benchmark config (hidden 512, 8 layers, 8 heads, 4 kv
//             heads, intermediate 1408, vocab 8000, untied: ~32M parameters; 8 x 256 tokens)
//   generate: generated tokens/s, 32 prompts of 64 tokens, 128 new tokens each, greedy, KV cache
//   generate-mixed: 128 prompts (16-96 tokens), sampled, answers of mixed lengths (most short, some of
//             256 tokens), 32 slots: continuous batching vs the static schedule in the same process
//             (same outputs, checked); no PyTorch peer (it has no continuous batching to compare)
//   spin:     SPIN optimizer steps/s (8 pairs of 256-token sequences, prompt 64, sigmoid beta 0.1,
//             RMSprop, clipping 1.0, precomputed reference log-probs)
// Each spinlm measurement runs in a fresh process so peak RSS (VmHWM) is its own.
// Usage: node --import tsx bench/model.bench.ts [--modes train,generate,spin] [--steps 5] [--torch-threads 1]
import { execFileSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { runPeer, table } from './harness.js';

const { values: args } = parseArgs({
  options: {
    modes: { type: 'string', default: 'train,generate,generate-mixed,spin' },
    steps: { type: 'string', default: '5' },
    'torch-threads': { type: 'string', default: '1' },
    json: { type: 'string' },
  },
});
const modes = String(args.modes).split(',');
const steps = String(args.steps);

function ours(mode: string): Record<string, number> {
  const out = execFileSync(process.execPath, ['--import', 'tsx', new URL('./model_probe.ts', import.meta.url).pathname, mode, steps], {
    encoding: 'utf8',
    maxBuffer: 1 << 24,
  });
  return JSON.parse(out.trim().split('\n').pop() ?? '{}');
}

const gemm = ours('gemm');
const rows: (string | number)[][] = [];
const results: Record<string, unknown> = { gemm };
for (const mode of modes) {
  const a = ours(mode);
  if (mode === 'generate-mixed') {
    results[mode] = { spinlm: a };
    rows.push([
      `${mode} (continuous)`,
      'tokens_per_s',
      a.tokens_per_s,
      '',
      `${a.speedup.toFixed(2)}x static`,
      a.gflops,
      `${((100 * a.gflops) / gemm.gflops).toFixed(0)}%`,
      a.peak_rss_mb,
      '',
    ]);
    rows.push([`${mode} (static)`, 'tokens_per_s', a.tokens_per_s_static, '', '', '', '', '', '']);
    continue;
  }
  const peer = runPeer(new URL('./peer/torch_llama_peer.py', import.meta.url).pathname, [
    '--threads',
    String(args['torch-threads']),
    '--mode',
    mode,
    '--steps',
    steps,
    '--json',
  ]);
  results[mode] = { spinlm: a, torch: peer };
  const metric = mode === 'spin' ? 'steps_per_s' : 'tokens_per_s';
  const ratio = a[metric] / Number(peer[metric]);
  rows.push([
    mode,
    metric,
    a[metric],
    Number(peer[metric]),
    `${ratio.toFixed(2)}x`,
    a.gflops ?? '',
    a.gflops ? `${((100 * a.gflops) / gemm.gflops).toFixed(0)}%` : '',
    a.peak_rss_mb,
    Number(peer.peak_rss_bytes) / 2 ** 20,
  ]);
}
console.log(
  `\nsgemm rate measured here (2048^3, OpenBLAS's ${gemm.blas_core} kernels through spinlm's matmul): ${gemm.gflops.toFixed(0)} GFLOP/s; PyTorch on ${args['torch-threads']} thread(s)\n`,
);
console.log(
  table(
    [
      'mode',
      'metric',
      'spinlm',
      'PyTorch',
      'spinlm / PyTorch',
      'spinlm GFLOP/s',
      'of sgemm rate',
      'spinlm peak RSS MiB',
      'PyTorch peak RSS MiB',
    ],
    rows,
  ),
);
if (args.json) writeFileSync(args.json, JSON.stringify(results, null, 2));
