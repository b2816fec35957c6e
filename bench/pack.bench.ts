// The packed pair layout (issue 27) before / after, one machine, every cell a fresh process (bench/pack_probe.ts)
// run against two spinlm trees: --base (a checkout of the commit before the layout, built) and this one.
// One SPIN step (gradient checkpointing on, as a 350M step at these lengths needs on a small machine) at the
// 350M matrix shape, interleaved before / after, best of the reps:
//   shared-512: 2 pairs of a 512-token prompt and two 256-token answers (the shape): padded, 4 rows of 768;
//               packed, one row of 2 x 1024
//   mixed:      4 pairs of 128-token prompts, answers mostly short (16-48 tokens), one of each side 256: padded to
//               the longest; packed, no padding
//   no-sharing: 1 pair of a 16-token prompt and two 256-token answers: almost nothing to share or pad, so the
//               layout's own cost (spans attention) shows
// Usage: node --import tsx bench/pack.bench.ts --base /path/to/old/tree [--also name=/another/tree] [--cells shared-512,mixed,no-sharing] [--reps 2]
// (--also: a third tree, e.g. an intermediate commit, measured in the same interleaving)
import { execFileSync } from 'node:child_process';
import { parseArgs } from 'node:util';
import { table } from './harness.js';
import { makeRandomModel } from './make_model.js';

const { values: args } = parseArgs({
  options: {
    base: { type: 'string' },
    also: { type: 'string' },
    cells: { type: 'string', default: 'shared-512,mixed,no-sharing' },
    reps: { type: 'string', default: '2' },
  },
});
if (!args.base) throw new Error('--base: a checkout of the tree before the packed layout, with its addon built');
const here = new URL('..', import.meta.url).pathname;
const also = args.also ? [args.also.split('=') as [string, string]] : [];
const trees: [string, string][] = [['before', String(args.base)], ...also, ['after', here]];
const probe = new URL('./pack_probe.ts', import.meta.url).pathname;
const run = (root: string, dir: string, work: object) =>
  JSON.parse(
    execFileSync(process.execPath, ['--import', 'tsx', probe, root, 'spin', dir, JSON.stringify(work)], {
      encoding: 'utf8',
      maxBuffer: 1 << 24,
    })
      .trim()
      .split('\n')
      .pop()!,
  ) as Record<string, number>;

const CELLS: Record<string, number[][]> = {
  'shared-512': [
    [512, 256, 256],
    [512, 256, 256],
  ],
  mixed: [
    [128, 24, 40],
    [128, 256, 16],
    [128, 48, 32],
    [128, 20, 256],
  ],
  'no-sharing': [[16, 256, 256]],
};
const dir = await makeRandomModel('350m');
const rows: (string | number)[][] = [];
for (const cell of String(args.cells).split(',')) {
  const lengths = CELLS[cell];
  if (!lengths) throw new Error(`unknown cell ${cell} (known: ${Object.keys(CELLS).join(', ')})`);
  const best: Record<string, Record<string, number>> = {};
  for (let rep = 0; rep < Number(args.reps); rep++)
    for (const [name, root] of trees) {
      const r = run(root, dir, { lengths, steps: 1, ckpt: 1 });
      const b = (best[name] ??= { steps_per_s: 0, peak_rss_mb: 0, cpu_s: Infinity });
      b.cpu_s = Math.min(b.cpu_s, r.cpu_s_per_step);
      b.steps_per_s = Math.max(b.steps_per_s, r.steps_per_s);
      b.peak_rss_mb = Math.max(b.peak_rss_mb, r.peak_rss_mb);
      b.tokens = name === 'before' ? r.padded_tokens : r.packed_tokens;
    }
  for (const [name] of trees)
    rows.push([
      cell,
      name,
      best[name].tokens,
      best[name].steps_per_s,
      best[name].steps_per_s / best.before.steps_per_s,
      best[name].cpu_s,
      best.before.cpu_s / best[name].cpu_s,
      best[name].peak_rss_mb,
    ]);
}
console.log('SPIN step at the 350M shape, gradient checkpointing, best of interleaved runs');
console.log(
  table(['case', 'tree', 'tokens computed', 'steps/s (wall)', 'vs before', 'CPU s per step', 'vs before (CPU)', 'peak RSS MiB'], rows),
);
