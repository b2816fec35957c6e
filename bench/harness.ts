// Shared pieces of the benchmark suite: tinybench runs, peer scripts, peak RSS, markdown tables.
import { execFileSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { Bench } from 'tinybench';

export const PYTHON = process.env.SPINLM_PYTHON ?? (existsSync('/usr/bin/python3') ? '/usr/bin/python3' : 'python3');

/** Median milliseconds of fn over `iterations` runs after `warmup` runs (tinybench). */
export async function medianMs(name: string, fn: () => unknown, iterations = 10, warmup = 2): Promise<number> {
  const bench = new Bench({ name, iterations, warmupIterations: warmup, time: 0, warmupTime: 0 });
  bench.add(name, fn);
  await bench.run();
  const result = bench.tasks[0].result as { latency?: { p50: number }; error?: unknown };
  if (!result.latency) throw new Error(`benchmark ${name} failed: ${String(result.error)}`);
  return result.latency.p50;
}

/** Runs a peer script (PyTorch) and parses the JSON line it prints last. */
export function runPeer(script: string, args: string[]): Record<string, number | string> {
  const out = execFileSync(PYTHON, [script, ...args], { encoding: 'utf8', maxBuffer: 1 << 24, timeout: 1_800_000 });
  const last = out.trim().split('\n').pop() ?? '';
  return JSON.parse(last);
}

/**
 * Peak resident set size of this process so far, bytes (VmHWM: this address space's high-water mark;
 * getrusage's maxRSS would include the RSS of the process that spawned us, carried across exec).
 */
export function peakRss(): number {
  const m = /VmHWM:\s+(\d+) kB/.exec(readFileSync('/proc/self/status', 'utf8'));
  if (!m) throw new Error('no VmHWM in /proc/self/status');
  return Number(m[1]) * 1024;
}

export function table(headers: string[], rows: (string | number)[][]): string {
  const fmt = (x: string | number) =>
    typeof x === 'number' ? (Math.abs(x) >= 100 ? x.toFixed(0) : Math.abs(x) >= 10 ? x.toFixed(1) : x.toFixed(2)) : x;
  const lines = [`| ${headers.join(' | ')} |`, `| ${headers.map(() => '---').join(' | ')} |`];
  for (const r of rows) lines.push(`| ${r.map(fmt).join(' | ')} |`);
  return lines.join('\n');
}

export function gb(bytes: number, ms: number): number {
  return bytes / (ms * 1e6);
}
