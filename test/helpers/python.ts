// Runs the PyTorch oracle scripts with Debian's python3 (which has torch; see docs/toolchain.md).
import { execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';

export const PYTHON = process.env.SPINLM_PYTHON ?? (existsSync('/usr/bin/python3') ? '/usr/bin/python3' : 'python3');

/** Runs `python script args...`; throws with python's stderr on failure. */
export function runPython(script: string, args: string[], opts: { threads?: number; timeoutMs?: number } = {}): string {
  const env = { ...process.env };
  if (opts.threads) env.OMP_NUM_THREADS = String(opts.threads);
  try {
    return execFileSync(PYTHON, [script, ...args], {
      env,
      encoding: 'utf8',
      timeout: opts.timeoutMs ?? 120_000,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
  } catch (err) {
    const e = err as { stderr?: string; message: string };
    throw new Error(`${PYTHON} ${script} failed: ${e.stderr || e.message}`, { cause: err });
  }
}
