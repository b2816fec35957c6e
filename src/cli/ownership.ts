// Who owns an output directory (docs/reliability.md, "Ownership of output directories"). spinlm
// writes into a directory only when it is new, empty, or spinlm's own; it marks what it takes with
// `.spinlm-owner.json`, which lists the names it writes there (name patterns of the command's layout,
// plus names only known at run time, such as a sweep's arms). --overwrite_output_dir removes those
// names and nothing else. A directory written before the marker existed is recognized by spinlm's own
// files (fingerprint.json, COMMAND.resolved.json, the demo's results) and counts as spinlm's.
import { existsSync, readdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { SIDE_FILES } from '../model/side_files.js';
import { DEMO_ARMS } from '../spin/demo.js';
import { writeFileAtomic } from '../util/atomic.js';
import { UsageError } from './args.js';

export const OWNER_FILE = '.spinlm-owner.json';
/** The lock and its pid file, taken before the marker is written: never a reason to refuse. */
const LOCK_NAMES = new Set(['.spinlm.lock', '.spinlm.pid']);

const REPORT = ['metrics.jsonl', 'report.html', 'report.md'];
/** The top-level names each directory-writing command writes (`*`: any run of characters). */
const LAYOUT: Record<string, readonly string[]> = {
  run: ['iter-*', ...REPORT, 'fingerprint.json', 'run.resolved.json'],
  train: [
    'model',
    'model.tmp',
    'adapter',
    'adapter.tmp',
    'checkpoint',
    'checkpoint.tmp',
    'ref_logps.json',
    'ref_logps.fingerprint.json',
    ...REPORT,
    'fingerprint.json',
    'train.resolved.json',
  ],
  sft: [
    'config.json',
    'model.safetensors',
    'model-*.safetensors',
    'model.safetensors.index.json',
    'tokenizer.json',
    'tokenizer_config.json',
    'adapter',
    'checkpoint',
    'checkpoint.tmp',
    ...REPORT,
    'fingerprint.json',
    'sft.resolved.json',
  ],
  merge: [
    'config.json',
    'model.safetensors',
    'model-*.safetensors',
    'model.safetensors.index.json',
    ...SIDE_FILES,
    'fingerprint.json',
    'merge.resolved.json',
  ],
  sweep: [
    'theta0',
    'sweep.md',
    'sweep.json',
    'sweep.svg',
    'sweep-delta.svg',
    'sweep-teacher.svg',
    'fingerprint.json',
    'sweep.resolved.json',
  ],
  demo: ['theta0', 'theta0.partial', ...DEMO_ARMS.map((a) => a.name), ...REPORT, 'table.md', 'demo_results.json'],
};
/** Written by every command: the lock, the marker, the hidden temp files of atomic writes (src/util/atomic.ts). */
const ALWAYS = [...LOCK_NAMES, OWNER_FILE, '.*.tmp-*'];

export interface Owner {
  owner: 'spinlm';
  command: string;
  /** Top-level names (patterns) spinlm writes in the directory. */
  writes: string[];
}

const glob = (pattern: string) => new RegExp(`^${pattern.replace(/[.+?^${}()|[\]\\]/g, '\\$&').replace(/\*/g, '.*')}$`);

function readJsonOr(file: string): unknown {
  try {
    return JSON.parse(readFileSync(file, 'utf8'));
  } catch {
    return null;
  }
}

/** The entries of a directory that count for "non-empty" (all but the lock). */
function entries(dir: string): string[] {
  return readdirSync(dir).filter((f) => !LOCK_NAMES.has(f));
}

/**
 * The owner of an existing directory: its marker, or for a directory of an earlier spinlm (no marker)
 * the command its fingerprint.json or COMMAND.resolved.json names (a sweep's arm directories, which
 * hold a fingerprint.json, and the demo's layout included). null: not spinlm's.
 */
export function ownerOf(dir: string): Owner | null {
  const marker = readJsonOr(join(dir, OWNER_FILE)) as Partial<Owner> | null;
  if (marker && marker.owner === 'spinlm' && typeof marker.command === 'string' && Array.isArray(marker.writes))
    return { owner: 'spinlm', command: marker.command, writes: marker.writes.filter((w) => typeof w === 'string') };
  const fp = readJsonOr(join(dir, 'fingerprint.json')) as { command?: unknown } | null;
  let command = fp && typeof fp.command === 'string' && fp.command in LAYOUT ? fp.command : undefined;
  command ??= Object.keys(LAYOUT).find((c) => existsSync(join(dir, `${c}.resolved.json`)));
  if (!command && (existsSync(join(dir, 'demo_results.json')) || (existsSync(join(dir, 'theta0')) && existsSync(join(dir, 'spin')))))
    command = 'demo';
  if (!command) return null;
  const writes = [...LAYOUT[command]];
  // a sweep's arms: the subdirectories holding a sweep fingerprint
  if (command === 'sweep')
    for (const f of readdirSync(dir))
      if ((readJsonOr(join(dir, f, 'fingerprint.json')) as { command?: unknown } | null)?.command === 'sweep') writes.push(f);
  return { owner: 'spinlm', command, writes };
}

/**
 * Refuses (UsageError, one line naming the directory and the fix) a directory that exists, is not
 * empty and is not spinlm's. Writes nothing: call it after the inputs are checked, before the
 * directory is created or locked.
 */
export function checkOwnership(command: string, dir: string, flag = 'out'): void {
  if (!existsSync(dir) || !statSync(dir).isDirectory()) return; // created, or refused by makeDirs
  const found = entries(dir);
  if (found.length === 0 || ownerOf(dir)) return;
  const shown = found.slice(0, 3).join(', ') + (found.length > 3 ? `, ... (${found.length} entries)` : '');
  throw new UsageError(
    `spinlm ${command}: --${flag} ${dir} is not empty and was not written by spinlm (it holds ${shown}); spinlm writes only into a new or empty directory or one of its own: choose another --${flag}`,
  );
}

/** Marks `dir` as spinlm's (after the lock is taken): the command's layout, `extra` names and what an earlier marker listed. */
export async function claimDir(command: string, dir: string, extra: readonly string[] = []): Promise<void> {
  const was = ownerOf(dir);
  const writes = [...new Set([...(was?.writes ?? []), ...(LAYOUT[command] ?? []), ...extra])];
  const owner: Owner = { owner: 'spinlm', command, writes };
  await writeFileAtomic(join(dir, OWNER_FILE), `${JSON.stringify(owner, null, 2)}\n`);
}

/**
 * --overwrite_output_dir: removes what spinlm wrote in `dir` (the names its owner lists, the marker
 * included) and keeps the rest; returns the names kept. A directory that is not spinlm's is left alone.
 */
export function clearOwned(dir: string): string[] {
  const owner = ownerOf(dir);
  if (!owner) return entries(dir);
  const patterns = [...owner.writes, ...ALWAYS].map(glob);
  const kept: string[] = [];
  for (const f of readdirSync(dir)) {
    if (LOCK_NAMES.has(f)) continue; // held by this process
    if (patterns.some((p) => p.test(f))) rmSync(join(dir, f), { recursive: true, force: true });
    else kept.push(f);
  }
  return kept;
}
