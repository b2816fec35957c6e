// The fused LM head (issue 26) before / after, one machine, every cell in a fresh process (bench/head_probe.ts)
// run against two spinlm trees: --base (a checkout of the commit before the fused head, built) and this one.
//   memory: peak RSS of one SPIN step on a small model with Llama 3's 128,256-token vocabulary, 4 pairs of
//           ~250-token prompts and ~250-token answers against one short pair (the goal: the 4-pair step
//           holds <= 256 MiB more than the short one), and the tensor allocator's peak live bytes
//   speed:  SPIN steps/s and scoring batches/s at the 350M matrix shape with 256-token prompts
//   speed-128k: the same on the small model with the 128,256-token vocabulary (the head most of the work)
//   attention: the attention kernels alone (forward + backward, 4 x 512 positions, 8/4 heads of 64,
//           no soft-cap): the soft-cap and head_dim 256 work (issue 29) must not slow the other families
// Usage: node --import tsx bench/head.bench.ts --base /path/to/old/tree [--cells memory,speed] [--steps 2]
import { execFileSync } from 'node:child_process';
import { parseArgs } from 'node:util';
import { table } from './harness.js';
import { makeRandomModel } from './make_model.js';

const { values: args } = parseArgs({
  options: {
    base: { type: 'string' },
    cells: { type: 'string', default: 'memory,speed' },
    steps: { type: 'string', default: '2' },
  },
});
if (!args.base) throw new Error('--base: a checkout of the tree before the fused head, with its addon built');
const here = new URL('..', import.meta.url).pathname;
const trees = [
  ['before', String(args.base)],
  ['after', here],
] as const;
const probe = new URL('./head_probe.ts', import.meta.url).pathname;
const run = (root: string, mode: string, dir: string, work: object) =>
  JSON.parse(
    execFileSync(process.execPath, ['--import', 'tsx', probe, root, mode, dir, JSON.stringify(work)], {
      encoding: 'utf8',
      maxBuffer: 1 << 24,
    })
      .trim()
      .split('\n')
      .pop()!,
  ) as Record<string, number>;

const cells = String(args.cells).split(',');
const steps = Number(args.steps);
if (cells.includes('memory')) {
  const dir = await makeRandomModel('small-128k');
  const rows: (string | number)[][] = [];
  // without and with gradient checkpointing: the activations of 4 x 2 x 500 tokens (~125 KB per token
  // here without checkpointing) are the step's own, not the head's; checkpointing leaves ~39 KB
  for (const ckpt of [0, 1])
    for (const [name, root] of trees) {
      const big = run(root, 'spin', dir, { pairs: 4, len: 500, prompt: 250, steps: 1, ckpt });
      const small = run(root, 'spin', dir, { pairs: 1, len: 24, prompt: 8, steps: 1, ckpt });
      rows.push([
        name,
        ckpt ? 'yes' : 'no',
        small.peak_rss_mb,
        big.peak_rss_mb,
        big.peak_rss_mb - small.peak_rss_mb,
        small.peak_live_mb,
        big.peak_live_mb,
      ]);
    }
  // the op alone on this tree: fused against the unfused chain it replaced, 4000 rows
  const op = [1, 0].map((fused) => run(here, 'op', dir, { pairs: 8, len: 500, fused }));
  console.log('Head + log-prob forward and backward alone, 4000 rows x 512 x 128,256 (this tree)');
  console.log(
    table(
      ['path', 'peak live MiB above inputs', 'ms'],
      [
        ['fused (headLogprob)', op[0].op_peak_live_mb, op[0].ms],
        [`unfused (logits ${op[1].logits_mb.toFixed(0)} MiB)`, op[1].op_peak_live_mb, op[1].ms],
      ],
    ),
  );
  console.log('SPIN step, small model with a 128,256-token vocabulary (MiB)');
  console.log(
    table(['tree', 'checkpointing', '1 short pair RSS', '4 x (250 + 250) RSS', 'difference', '1 short pair live', '4 pairs live'], rows),
  );
}
if (cells.includes('speed')) {
  const dir = await makeRandomModel('350m');
  const rows: (string | number)[][] = [];
  const res: Record<string, Record<string, number>> = {};
  // interleaved (before, after, before, after) so that a machine shared with other work weighs on both alike
  for (let rep = 0; rep < 2; rep++)
    for (const [name, root] of trees) {
      const spin = run(root, 'spin', dir, { pairs: 1, len: 512, prompt: 256, steps });
      const score = run(root, 'score', dir, { pairs: 2, len: 512, prompt: 256, steps: 3 });
      const r = (res[name] ??= { spin: 0, score: 0 });
      r.spin = Math.max(r.spin, spin.steps_per_s);
      r.score = Math.max(r.score, score.batches_per_s);
    }
  for (const [name] of trees) rows.push([name, res[name].spin, res[name].score]);
  rows.push(['after / before', res.after.spin / res.before.spin, res.after.score / res.before.score]);
  console.log('350M shape, 256-token prompts and 256-token answers (best of 2 interleaved runs)');
  console.log(table(['tree', 'SPIN steps/s (1 pair)', 'score batches/s (2 pairs)'], rows));
}
if (cells.includes('speed-128k')) {
  // where the head is most of the step: the small model with Llama 3's vocabulary
  const dir = await makeRandomModel('small-128k');
  const res: Record<string, Record<string, number>> = {};
  for (let rep = 0; rep < 2; rep++)
    for (const [name, root] of trees) {
      const spin = run(root, 'spin', dir, { pairs: 2, len: 512, prompt: 256, steps });
      const score = run(root, 'score', dir, { pairs: 4, len: 512, prompt: 256, steps: 3 });
      const r = (res[name] ??= { spin: 0, score: 0 });
      r.spin = Math.max(r.spin, spin.steps_per_s);
      r.score = Math.max(r.score, score.batches_per_s);
    }
  const rows: (string | number)[][] = trees.map(([name]) => [name, res[name].spin, res[name].score]);
  rows.push(['after / before', res.after.spin / res.before.spin, res.after.score / res.before.score]);
  console.log('small model with a 128,256-token vocabulary, 256-token prompts and answers (best of 2 interleaved runs)');
  console.log(table(['tree', 'SPIN steps/s (2 pairs)', 'score batches/s (4 pairs)'], rows));
}
if (cells.includes('attention')) {
  const dir = await makeRandomModel('32m');
  const res: Record<string, number> = {};
  for (let rep = 0; rep < 2; rep++)
    for (const [name, root] of trees) {
      const r = run(root, 'attention', dir, { len: 512, steps: 5 });
      res[name] = Math.min(res[name] ?? Infinity, r.ms);
    }
  console.log('attention forward + backward, 4 x 512 positions, 8/4 heads of 64 (ms, best of 2 interleaved runs)');
  console.log(table(['before', 'after', 'after / before'], [[res.before, res.after, res.after / res.before]]));
}
