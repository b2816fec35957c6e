// Runs the PyTorch oracle scripts with Debian's python3 (which has torch; see docs/toolchain.md).
import { execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';

export const PYTHON = process.env.SPINLM_PYTHON ?? (existsSync('/usr/bin/python3') ? '/usr/bin/python3' : 'python3');

/** The first of SPINLM_PYTHON, Debian's python3 and the python3 on PATH that imports `module` (e.g. jinja2); PYTHON if none. */
export function pythonWith(module: string): string {
  for (const py of [process.env.SPINLM_PYTHON, '/usr/bin/python3', 'python3']) {
    if (py === undefined) continue;
    try {
      execFileSync(py, ['-c', `import ${module}`], { stdio: 'ignore', timeout: 30_000 });
      return py;
    } catch {
      // not there, or without the module
    }
  }
  return PYTHON;
}

/** Runs `python script args...`; throws with python's stderr on failure. */
export function runPython(script: string, args: string[], opts: { threads?: number; timeoutMs?: number; python?: string } = {}): string {
  const env = { ...process.env };
  if (opts.threads) env.OMP_NUM_THREADS = String(opts.threads);
  try {
    return execFileSync(opts.python ?? PYTHON, [script, ...args], {
      env,
      encoding: 'utf8',
      timeout: opts.timeoutMs ?? 120_000,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
  } catch (err) {
    const e = err as { stderr?: string; message: string };
    throw new Error(`${opts.python ?? PYTHON} ${script} failed: ${e.stderr || e.message}`, { cause: err });
  }
}
