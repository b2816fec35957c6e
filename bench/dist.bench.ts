// Data parallel benchmark (docs/distributed.md): bytes each rank sends per optimizer step for every
// ZeRO stage against ZeRO's analysis, and the step time at 1 and 2 processes. Runs the distributed
// test worker (test/helpers/dist_worker.ts) under mpirun on a small random Llama, one micro-batch per
// rank and step. Byte counts are the ProcessGroup's counters (what the ring algorithms send per rank:
// all-reduce 2(N-1)/N x bytes, reduce-scatter and all-gather (N-1)/N x the full buffer). Each stage
// runs with overlap (reductions issued during the backward, ZeRO-3 prefetch) and without.
//   node --import tsx bench/dist.bench.ts
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const WORKER = join(import.meta.dirname, '..', 'test', 'helpers', 'dist_worker.ts');
const env = {
  ...process.env,
  OMPI_ALLOW_RUN_AS_ROOT: '1',
  OMPI_ALLOW_RUN_AS_ROOT_CONFIRM: '1',
  SPINLM_NUM_THREADS: process.env.SPINLM_NUM_THREADS ?? '1',
};
const dir = mkdtempSync(join(tmpdir(), 'spinlm-bench-dist-'));
const job = { mode: 'train', seed: 1, dtype: 'bf16', optim: 'rmsprop', items: 32, micro: 4, accum: 1, epochs: 1, layers: 4, hidden: 256 };

function run(np: number, stage: number | null, overlap = true) {
  const out = join(dir, `np${np}-s${stage}-${overlap}`);
  const j = JSON.stringify({ ...job, stage, world: 2, out, overlap });
  const args = [process.execPath, '--import', 'tsx', WORKER, j];
  if (stage === null) execFileSync(args[0], args.slice(1), { env });
  else execFileSync('mpirun', ['-np', String(np), '--oversubscribe', ...args], { env });
  return JSON.parse(readFileSync(`${out}.json`, 'utf8')) as {
    seconds: number;
    logs: unknown[];
    sent: Record<string, number> | null;
    params: number;
  };
}

const one = run(1, null);
const psi = one.params;
console.log(`model: ${psi} parameters (bf16 weights, f32 gradients); 32 pairs, micro-batch 4, global batch 8`);
console.log(`1 process (accumulation 2): ${(one.seconds / one.logs.length).toFixed(3)} s/step`);
console.log(
  '| stage | bytes sent per rank per step | / (Psi x 4 B x (N-1)/N) | ZeRO (elements) | s/step at 2 processes, overlapped | blocking |',
);
console.log('| --- | --- | --- | --- | --- | --- |');
for (const stage of [0, 1, 2, 3]) {
  const r = run(2, stage);
  const blocking = run(2, stage, false);
  const steps = r.logs.length;
  const sent = r.sent!;
  const perStep = (sent.allReduce + sent.reduceScatter + sent.allGather + sent.broadcast) / steps;
  const unit = psi * 4 * 0.5; // Psi f32 elements x (N-1)/N at N = 2
  const detail = ['allReduce', 'reduceScatter', 'allGather']
    .filter((k) => sent[k] > 0)
    .map((k) => `${k} ${(sent[k] / steps / 2 ** 20).toFixed(2)} MiB`)
    .join(', ');
  console.log(
    `| ${stage} | ${(perStep / 2 ** 20).toFixed(2)} MiB (${detail}) | ${(perStep / unit).toFixed(2)} | ${stage === 3 ? '3Ψ' : '2Ψ'} | ${(r.seconds / steps).toFixed(3)} | ${(blocking.seconds / steps).toFixed(3)} |`,
  );
}
rmSync(dir, { recursive: true, force: true });
