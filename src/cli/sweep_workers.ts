// `spinlm sweep --jobs N`: N worker processes (this command again, with SPINLM_SWEEP_WORKER=k/N) run
// the (arm, seed) runs k, k + N, ... of the seed-major order, each on cores / N threads
// (SPINLM_NUM_THREADS and OPENBLAS_NUM_THREADS, unless set). A worker prints RUN_DONE on stdout after
// each finished run and the parent rebuilds the table on it. A failed worker stops the others; a rerun
// resumes every run where it stopped, as without --jobs.
import { spawn } from 'node:child_process';
import { availableParallelism } from 'node:os';
import { createInterface } from 'node:readline';

/** The line a worker prints on stdout after each finished run (the parent rebuilds the table on it). */
export const RUN_DONE = 'spinlm-sweep-run-done';

/**
 * This process's slot when it is a worker of `--jobs N` (set by the parent in SPINLM_SWEEP_WORKER as
 * "k/N"): it runs the runs whose index in the seed-major order is k mod N and nothing else (the parent
 * holds the lock, writes the fingerprints, evaluates θ0 and writes the tables). null in the parent.
 */
export function workerSlot(): { k: number; n: number } | null {
  const v = process.env.SPINLM_SWEEP_WORKER;
  if (!v) return null;
  const m = /^(\d+)\/(\d+)$/.exec(v);
  if (!m || Number(m[1]) >= Number(m[2]))
    throw new Error(`SPINLM_SWEEP_WORKER=${v}: expected k/N with k < N (set by spinlm sweep --jobs, not by hand)`);
  return { k: Number(m[1]), n: Number(m[2]) };
}

/** Starts `jobs` workers running `args` (the spinlm script and its arguments); resolves when all have finished. */
export async function runWorkers(
  args: readonly string[],
  jobs: number,
  say: (line: string) => void,
  onRunDone: () => Promise<unknown>,
): Promise<void> {
  const threads = String(Math.max(1, Math.floor(availableParallelism() / jobs)));
  say(`${jobs} workers, ${process.env.SPINLM_NUM_THREADS ?? threads} kernel thread(s) each`);
  let tables = Promise.resolve();
  const children = Array.from({ length: jobs }, (_, k) =>
    spawn(process.execPath, [...process.execArgv, ...args], {
      env: {
        ...process.env,
        SPINLM_SWEEP_WORKER: `${k}/${jobs}`,
        SPINLM_NUM_THREADS: process.env.SPINLM_NUM_THREADS ?? threads,
        OPENBLAS_NUM_THREADS: process.env.OPENBLAS_NUM_THREADS ?? process.env.SPINLM_NUM_THREADS ?? threads,
      },
      stdio: ['ignore', 'pipe', 'inherit'],
    }),
  );
  const exits = children.map(
    (child, k) =>
      new Promise<void>((resolve, reject) => {
        createInterface({ input: child.stdout! }).on('line', (line) => {
          if (line.startsWith(RUN_DONE)) tables = tables.then(() => onRunDone()).then(() => undefined);
        });
        child.on('error', reject);
        child.on('exit', (code, signal) => {
          if (code === 0) resolve();
          else reject(new Error(`worker ${k + 1} of ${jobs} stopped (${signal ?? `exit code ${code}`}); rerun the same command to resume`));
        });
      }),
  );
  try {
    await Promise.all(exits);
  } catch (err) {
    for (const c of children) if (c.exitCode === null) c.kill('SIGTERM');
    await Promise.allSettled(exits);
    throw err;
  } finally {
    await tables;
  }
}
