// Safety of the commands' outputs before any work starts (docs/reliability.md):
//  - inputs and outputs are compared by real path: an output that is (or holds) an input is refused;
//  - one process per output directory: a lock (proper-lockfile, with the holder's pid beside it, so a
//    killed holder's lock is taken over at once and a live one is named);
//  - a fingerprint of what determines the result (resolved options, model and data file digests):
//    a rerun on a directory made with other settings is refused, naming them, unless
//    --overwrite_output_dir asks to start over;
//  - metrics.jsonl cut back to the rows the checkpoints on disk account for, so a resumed run has no
//    duplicate step rows.
import { createHash } from 'node:crypto';
import { createReadStream, existsSync, readdirSync, readFileSync, realpathSync, rmSync, statSync } from 'node:fs';
import { hostname } from 'node:os';
import { basename, dirname, join, resolve, sep } from 'node:path';
import lockfile from 'proper-lockfile';
import { makeDirs, OutputError, writeFileAtomic, writeFileNamed } from '../util/atomic.js';
import { unreadableKind } from '../util/input_file.js';
import type { Parsed } from './args.js';
import { UsageError } from './args.js';
import { bool, str } from './config.js';
import { todayUtc } from '../text/templates.js';
import { checkOwnership, claimDir, clearOwned } from './ownership.js';

export interface Input {
  /** The flag that named it, e.g. 'model'. */
  flag: string;
  path: string;
}

/** realpath of an existing path; for a missing one, the realpath of its deepest existing ancestor + the rest. */
function realish(p: string): string {
  const abs = resolve(p);
  let head = abs;
  const rest: string[] = [];
  while (!existsSync(head) && dirname(head) !== head) {
    rest.unshift(basename(head));
    head = dirname(head);
  }
  try {
    return join(realpathSync(head), ...rest);
  } catch {
    return abs;
  }
}

const inside = (child: string, parent: string) =>
  child !== parent && (child + sep).startsWith(parent.endsWith(sep) ? parent : parent + sep);

/**
 * Refuses (UsageError, one line) an output that would destroy an input: the same path (after
 * symlinks), an output directory that holds an input, or an output file replacing a file inside an
 * input directory (e.g. a model's model.safetensors).
 */
export function checkOverlap(
  command: string,
  out: { flag: string; path: string; kind: 'dir' | 'file'; clears?: boolean },
  inputs: readonly Input[],
): void {
  const o = realish(out.path);
  for (const input of inputs) {
    if (!existsSync(input.path)) continue; // the command reports a missing input itself
    const i = realish(input.path);
    const fix = `choose another --${out.flag}`;
    if (o === i)
      throw new UsageError(
        `spinlm ${command}: --${out.flag} ${out.path} is the same path as --${input.flag} ${input.path}; writing it would destroy the input: ${fix}`,
      );
    // a model directory inside the output directory is written over; a data file there only when the directory is cleared
    if (out.kind === 'dir' && inside(i, o) && (out.clears || statSync(i).isDirectory())) {
      throw new UsageError(
        `spinlm ${command}: --${input.flag} ${input.path} lies inside --${out.flag} ${out.path}, which this command ${out.clears ? 'clears (--overwrite_output_dir)' : 'writes'}: ${fix}`,
      );
    }
    if (out.kind === 'file' && inside(o, i) && existsSync(o))
      throw new UsageError(
        `spinlm ${command}: --${out.flag} ${out.path} would replace a file inside --${input.flag} ${input.path}: ${fix}`,
      );
  }
}

// ---- the lock ----

const LOCK = '.spinlm.lock';
const PID_FILE = '.spinlm.pid';
const releases: (() => Promise<void>)[] = [];

function holder(dir: string): { pid: number; host: string } | null {
  try {
    const [pid, host] = readFileSync(join(dir, PID_FILE), 'utf8').trim().split(/\s+/);
    return Number.isSafeInteger(Number(pid)) ? { pid: Number(pid), host: host ?? '' } : null;
  } catch {
    return null;
  }
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/**
 * Takes the lock of an output directory for this process (released by releaseLocks() or at exit).
 * A second spinlm on the same directory gets a UsageError naming the holder's pid. A lock whose
 * holder is gone (killed on this host, or not refreshed for a minute) is taken over.
 */
export async function lockDir(command: string, dir: string): Promise<void> {
  const opts = {
    lockfilePath: join(dir, LOCK),
    realpath: false,
    stale: 60_000,
    update: 10_000,
    retries: 0,
    // a long synchronous kernel call can delay the refresh; warn, do not crash the run
    onCompromised: (err: Error) =>
      process.stderr.write(`spinlm ${command}: warning: the lock of ${dir} could not be refreshed (${err.message})\n`),
  };
  for (let attempt = 0; ; attempt++) {
    try {
      const release = await lockfile.lock(dir, opts);
      releases.push(async () => {
        rmSync(join(dir, PID_FILE), { force: true });
        await release().catch(() => {});
      });
      writeFileNamed(join(dir, PID_FILE), `${process.pid} ${hostname()}\n`); // a write error names the file
      return;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ELOCKED') throw e;
      const h = holder(dir);
      if (attempt === 0 && h && h.host === hostname() && !alive(h.pid)) {
        // the holder was killed (SIGKILL leaves its lock): take the lock over
        rmSync(join(dir, LOCK), { recursive: true, force: true });
        continue;
      }
      if (attempt < 3 && !h) {
        await new Promise((r) => setTimeout(r, 200)); // the holder is between taking the lock and writing its pid
        continue;
      }
      throw new UsageError(
        `spinlm ${command}: ${dir} is in use by another spinlm process (pid ${h ? h.pid : 'unknown'}${h && h.host !== hostname() ? ` on ${h.host}` : ''}); wait for it to finish or stop it, or choose another --out`,
      );
    }
  }
}

export async function releaseLocks(): Promise<void> {
  while (releases.length) await releases.pop()!();
}

// ---- the fingerprint ----

function readFingerprint(file: string): Fingerprint | null {
  try {
    return JSON.parse(readFileSync(file, 'utf8')) as Fingerprint;
  } catch {
    return null;
  }
}

/**
 * The day a run directory's chat templates read: --template_date, else its fingerprint's (a resume),
 * else today (a new run, or --overwrite_output_dir). Reads only: prepareRunDir records it.
 */
export function runTemplateDate(dir: string, o: Parsed): string {
  if (typeof o.template_date === 'string') return o.template_date;
  if (bool(o, 'overwrite_output_dir')) return todayUtc();
  const d = readFingerprint(join(dir, FINGERPRINT))?.template_date;
  return typeof d === 'string' ? d : todayUtc();
}

const FINGERPRINT = 'fingerprint.json';
/** Options that do not change the result: where it goes, how it is shown, how far it goes. */
const NOT_RESULT = new Set(['out', 'config', 'quiet', 'iterations', 'overwrite_output_dir', 'skip_invalid', 'oversubscribe', 'strict']);
const HASH_LIMIT = 64 * 2 ** 20;

async function fileDigest(file: string): Promise<string> {
  const st = statSync(file);
  if (st.size > HASH_LIMIT) return `size ${st.size}, mtime ${new Date(st.mtimeMs).toISOString()}`;
  const h = createHash('sha256');
  for await (const chunk of createReadStream(file)) h.update(chunk as Buffer);
  return `sha256 ${h.digest('hex')}`;
}

/** Digest of a file, or of the files of a model / tokenizer directory (name -> digest). */
async function inputDigest(path: string): Promise<string | Record<string, string>> {
  if (!statSync(path).isDirectory()) return fileDigest(path);
  const out: Record<string, string> = {};
  for (const f of readdirSync(path).sort()) {
    if (!/\.(json|safetensors|jinja|model|txt)$/.test(f) || !statSync(join(path, f)).isFile()) continue;
    out[f] = await fileDigest(join(path, f));
  }
  return out;
}

export interface Fingerprint {
  command: string;
  options: Record<string, unknown>;
  inputs: Record<string, string | Record<string, string>>;
  /**
   * The day chat templates read (strftime_now): --template_date, else the day the run started, kept
   * by every resume (never compared: a resume on another day renders the same prompts).
   */
  template_date?: string;
}

/** Refuses (UsageError) an input flag naming a FIFO, a device or a socket: never read (or hashed) forever. */
export function checkInputKinds(command: string, inputs: readonly Input[]): void {
  for (const i of inputs) {
    const why = unreadableKind(i.path);
    if (why) throw new UsageError(`spinlm ${command}: --${i.flag} ${i.path} ${why}`);
  }
}

export async function fingerprintOf(command: string, o: Parsed, inputs: readonly Input[]): Promise<Fingerprint> {
  checkInputKinds(command, inputs);
  const inputFlags = new Set(inputs.map((i) => i.flag));
  const options: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(o)) if (!NOT_RESULT.has(k) && !inputFlags.has(k) && v !== undefined) options[k] = v;
  const digests: Fingerprint['inputs'] = {};
  for (const i of inputs) if (existsSync(i.path)) digests[i.flag] = await inputDigest(i.path);
  return { command, options, inputs: digests };
}

const show = (v: unknown) => (v === undefined ? '(not set)' : Array.isArray(v) ? v.join(',') : String(v));

/** Each command's option defaults (commands.ts registers them): what an option a run predates meant. */
const optionDefaults = new Map<string, Record<string, unknown>>();
export function registerOptionDefaults(command: string, defaults: Record<string, unknown>): void {
  optionDefaults.set(command, defaults);
}

/**
 * The settings in which two fingerprints differ, one phrase each. An option missing from `was` (a run
 * written by a spinlm that did not have it yet) counts as its default, `defaults[k]` (by default the
 * registered defaults of was's command), so upgrading spinlm does not invalidate a resumable run.
 */
export function fingerprintDiff(was: Fingerprint, now: Fingerprint, defaults = optionDefaults.get(was.command) ?? {}): string[] {
  const diffs: string[] = [];
  if (was.command !== now.command) diffs.push(`command (was ${was.command}, now ${now.command})`);
  for (const k of [...new Set([...Object.keys(was.options), ...Object.keys(now.options)])].sort()) {
    const before = k in was.options ? was.options[k] : defaults[k];
    if (JSON.stringify(before) !== JSON.stringify(now.options[k])) diffs.push(`--${k} (was ${show(before)}, now ${show(now.options[k])})`);
  }
  for (const k of [...new Set([...Object.keys(was.inputs), ...Object.keys(now.inputs)])].sort()) {
    const a = was.inputs[k],
      b = now.inputs[k];
    if (JSON.stringify(a) === JSON.stringify(b)) continue;
    if (a && b && typeof a === 'object' && typeof b === 'object') {
      const files = [...new Set([...Object.keys(a), ...Object.keys(b)])].filter((f) => a[f] !== b[f]).sort();
      diffs.push(`--${k} (files differ: ${files.join(', ')})`);
    } else diffs.push(`--${k} (${a === undefined ? 'not given before' : b === undefined ? 'not given now' : 'file content differs'})`);
  }
  return diffs;
}

// ---- metrics.jsonl vs the checkpoints on disk ----

function checkpointStep(dir: string): number {
  try {
    const s = JSON.parse(readFileSync(join(dir, 'checkpoint', 'trainer_state.json'), 'utf8')).step;
    return Number.isSafeInteger(s) ? s : 0;
  } catch {
    return 0;
  }
}

/**
 * Drops the metrics rows that the next run will write again: step rows after the step a checkpoint
 * holds (or all of an iteration with neither a checkpoint nor a finished model), and evaluation rows
 * whose eval.json was never written. layout 'run': iteration t lives in dir/iter-t; 'single': one
 * training in dir (train, sft), whose finished model is trained again by a rerun.
 */
export async function truncateMetrics(dir: string, layout: 'run' | 'single'): Promise<number> {
  const file = join(dir, 'metrics.jsonl');
  if (!existsSync(file)) return 0;
  const lines = readFileSync(file, 'utf8')
    .split('\n')
    .filter((l) => l.trim() !== '');
  const keep = (row: { kind?: string; iteration?: number; step?: number }): boolean => {
    if (layout === 'single') return row.kind === 'step' && typeof row.step === 'number' && row.step <= checkpointStep(dir);
    const t = row.kind === 'eval' ? Number(row.iteration) - 1 : Number(row.iteration);
    const it = join(dir, `iter-${t}`);
    if (row.kind === 'eval') return existsSync(join(it, 'eval.json'));
    if (existsSync(join(it, 'model', 'config.json'))) return true;
    return typeof row.step === 'number' && row.step <= checkpointStep(it);
  };
  const kept: string[] = [];
  for (const line of lines) {
    let row;
    try {
      row = JSON.parse(line);
    } catch {
      continue; // a torn last line of a killed run
    }
    if (keep(row)) kept.push(line);
  }
  const dropped = lines.length - kept.length;
  if (dropped > 0) await writeFileAtomic(file, kept.map((l) => `${l}\n`).join(''));
  return dropped;
}

/**
 * Refuses (UsageError, one line) an input that is not there, before anything is written: a mistyped
 * path must leave no trace (no directory, no fingerprint) that a corrected rerun would trip over.
 */
export function checkInputsExist(command: string, inputs: readonly Input[]): void {
  for (const i of inputs)
    if (!existsSync(i.path)) throw new UsageError(`spinlm ${command}: --${i.flag} ${i.path}: no such file or directory`);
}

/** Each input is there and is a regular file or a directory (checkInputsExist, then checkInputKinds). */
export function checkInputs(command: string, inputs: readonly Input[]): void {
  checkInputsExist(command, inputs);
  checkInputKinds(command, inputs);
}

/**
 * Everything a directory-writing command (run, train, sft) does before its work, in this order, so
 * that nothing is written or removed before every input is checked: inputs exist, overlap check,
 * ownership (a non-empty directory not spinlm's is refused), directory, lock, the marker, the
 * fingerprint check (or --overwrite_output_dir, which removes only what spinlm wrote), metrics.jsonl
 * cut back to the checkpoints, and the resolved options written beside the outputs.
 */
export async function prepareRunDir(
  command: string,
  o: Parsed,
  inputs: readonly Input[],
  layout: 'run' | 'single',
  /** The day the run's chat templates saw (runTemplateDate), recorded in fingerprint.json. */
  templateDate?: string,
): Promise<void> {
  const dir = str(o, 'out');
  const overwrite = bool(o, 'overwrite_output_dir');
  if (dir === '') throw new UsageError(`spinlm ${command}: --out is empty; give an output directory`);
  checkInputs(command, inputs);
  checkOverlap(command, { flag: 'out', path: dir, kind: 'dir', clears: overwrite }, inputs);
  checkOwnership(command, dir);
  const now = await fingerprintOf(command, o, inputs);
  try {
    await makeDirs(dir);
  } catch (e) {
    if (e instanceof OutputError)
      throw new UsageError(`spinlm ${command}: --out ${dir}: ${e.path === resolve(dir) ? e.message.slice(e.path.length + 2) : e.message}`);
    throw e;
  }
  await lockDir(command, dir);
  const fpFile = join(dir, FINGERPRINT);
  const resolvedFile = join(dir, `${command}.resolved.json`);
  if (overwrite) clearOwnedSaying(command, dir);
  else if (existsSync(fpFile)) {
    let was: Fingerprint | null;
    try {
      was = JSON.parse(readFileSync(fpFile, 'utf8'));
    } catch {
      was = null;
    }
    const diffs = was ? fingerprintDiff(was, now) : ['fingerprint.json is unreadable'];
    if (diffs.length) {
      throw new UsageError(
        `spinlm ${command}: ${dir} holds a ${was?.command ?? 'previous'} run with other settings: ${diffs.join('; ')}. Rerun with the same settings to resume, choose another --out, or add --overwrite_output_dir to start over`,
      );
    }
  }
  await claimDir(command, dir);
  await truncateMetrics(dir, layout);
  now.template_date = templateDate ?? runTemplateDate(dir, o);
  await writeFileAtomic(fpFile, `${JSON.stringify(now, null, 2)}\n`);
  await writeFileAtomic(resolvedFile, `${JSON.stringify({ command, ...o }, null, 2)}\n`);
}

/** --overwrite_output_dir: removes what spinlm wrote in `dir`, and says on stderr what it kept. */
export function clearOwnedSaying(command: string, dir: string): void {
  const kept = clearOwned(dir);
  if (kept.length)
    process.stderr.write(`spinlm ${command}: --overwrite_output_dir kept what spinlm did not write in ${dir}: ${kept.join(', ')}\n`);
}
