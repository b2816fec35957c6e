// metrics.jsonl: one JSON object per line — a row per optimizer step ({kind: 'step', arm, iteration,
// step, loss, rewards/..., learning_rate, grad_norm, tokens_per_s}) and a row per evaluation ({kind:
// 'eval', arm, iteration, exact_match, heldout_logp, ...}). Appended and flushed line by line, so a
// killed run loses at most its last line; the reader skips a torn last line and says so.
import { existsSync, readFileSync } from 'node:fs';
import { appendFileNamed } from '../util/atomic.js';

export type MetricsRow = Record<string, unknown> & { kind: 'step' | 'eval'; arm?: string; iteration: number };

export class MetricsWriter {
  constructor(readonly file: string) {}

  write(row: MetricsRow): void {
    appendFileNamed(this.file, `${JSON.stringify(row)}\n`);
  }
}

export function readMetrics(file: string): { rows: MetricsRow[]; torn: number } {
  if (!existsSync(file)) return { rows: [], torn: 0 };
  const rows: MetricsRow[] = [];
  let torn = 0;
  for (const line of readFileSync(file, 'utf8').split('\n')) {
    if (!line.trim()) continue;
    try {
      rows.push(JSON.parse(line));
    } catch {
      torn++;
    }
  }
  return { rows, torn };
}
