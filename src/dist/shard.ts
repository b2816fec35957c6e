// Work sharded by item across the ranks of a process group (generation, scoring): rank r takes items
// r, r + N, r + 2N, ... and every rank gets all results back in input order.
import type { ProcessGroup } from './process_group.js';

/** Runs `fn` on this rank's items and merges every rank's results (JSON-serializable) in input order. */
export async function shardByItem<T, R>(group: ProcessGroup, items: readonly T[], fn: (mine: T[], indices: number[]) => Promise<R[]>): Promise<R[]> {
  const indices = items.map((_, i) => i).filter((i) => i % group.size === group.rank);
  const mine = await fn(indices.map((i) => items[i]), indices);
  if (mine.length !== indices.length) throw new Error(`rank ${group.rank}: ${mine.length} results for ${indices.length} items`);
  if (group.size === 1) return mine;
  const all = group.allGatherBytes(new TextEncoder().encode(JSON.stringify(mine)));
  const out = new Array<R>(items.length);
  all.forEach((bytes, r) => {
    const rs = JSON.parse(new TextDecoder().decode(bytes)) as R[];
    rs.forEach((x, k) => (out[r + k * group.size] = x));
  });
  return out;
}
