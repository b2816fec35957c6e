// The `spinlm` command line: dispatch, --help, exit codes (0 ok, 1 runtime error, 2 usage error).
import { readFileSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { join } from 'node:path';
import { packageRoot } from '../backend/native/addon.js';
import { backendStatus } from '../backend/registry.js';
import { helpText, parseOptions, suggest, UsageError } from './args.js';
import { COMMANDS } from './commands.js';
import { exitCodeOf, isSharedRefusal, PeerRefusal, selectDevice } from './common.js';
import { DivergenceError } from '../model/divergence.js';
import { deviceConfig, optNum } from './config.js';
import { CommError, environmentRank, launchedByMpi, processGroup, closeProcessGroup, processGroupStarted } from '../dist/process_group.js';
import { launch, withoutNproc } from '../dist/launch.js';
import { fileURLToPath } from 'node:url';
import { releaseLocks } from './run_dir.js';

function version(): string {
  return JSON.parse(readFileSync(join(packageRoot, 'package.json'), 'utf8')).version;
}

function usage(): string {
  const width = Math.max(...COMMANDS.map((c) => c.name.length)) + 2;
  return [
    'spinlm — SPIN (Self-Play fIne-tuNing) for Node.js',
    '',
    'Usage: spinlm <command> [options]      spinlm <command> --help',
    '',
    'Commands:',
    ...COMMANDS.map((c) => `  ${c.name.padEnd(width)} ${c.summary}`),
    `  ${'info'.padEnd(width)} the native addon, threads and version`,
  ].join('\n');
}

export async function main(argv: string[]): Promise<number> {
  const [name, ...rest] = argv;
  if (name === undefined || name === 'help' || name === '--help' || name === '-h') {
    console.log(usage());
    return 0;
  }
  if (name === '--version' || name === '-v') {
    console.log(version());
    return 0;
  }
  const threadsProblem = checkThreadsEnv(process.env.SPINLM_NUM_THREADS);
  if (threadsProblem) {
    console.error(threadsProblem);
    return 2;
  }
  if (name === 'info') {
    if (rest.includes('--help') || rest.includes('-h')) {
      console.log('Usage: spinlm info\n\nThe version, and each backend (cpu, cuda, webgpu): available or not and why, with its device.');
      return 0;
    }
    try {
      parseOptions(rest, [], 'info');
    } catch (err) {
      console.error((err as Error).message);
      return 2;
    }
    console.log(`spinlm ${version()} (node ${process.version}, ${process.platform}-${process.arch})`);
    for (const s of await backendStatus()) {
      if (!s.available) {
        console.log(`${s.name}: not available: ${s.reason}`);
        continue;
      }
      const i = s.info!;
      const mem = i.memoryBytes !== undefined ? `, ${(i.memoryBytes / 2 ** 30).toFixed(1)} GiB` : '';
      console.log(`${s.name}: available: ${i.device}${mem}${i.details?.length ? ` (${i.details.join('; ')})` : ''}`);
    }
    console.log('SPINLM_NUM_THREADS sets the CPU kernel threads.');
    return 0;
  }
  const cmd = COMMANDS.find((c) => c.name === name);
  if (!cmd) {
    console.error(
      `spinlm: unknown command '${name}'.${suggest(name, [...COMMANDS.map((c) => c.name), 'info']).replace('--', '')}\n\n${usage()}`,
    );
    return 2;
  }
  if (rest.includes('--help') || rest.includes('-h')) {
    console.log(helpText(cmd.name, cmd.summary, cmd.options, cmd.positional?.usage));
    return 0;
  }
  // data parallel: rank 0 alone prints; the others only report their own errors (prefixed with the rank)
  const rank = environmentRank();
  const write = process.stderr.write.bind(process.stderr);
  const report = (line: string) => write(`${launchedByMpi() && rank !== 0 ? `[rank ${rank}] ` : ''}${line}\n`);
  try {
    let args = rest;
    let positional: string | undefined;
    if (cmd.positional) {
      if (rest.length === 0 || rest[0].startsWith('--'))
        throw new UsageError(
          `spinlm ${cmd.name}: give ${cmd.positional.usage} first: spinlm ${cmd.name} ${cmd.positional.usage} [options]`,
        );
      [positional, ...args] = rest;
    }
    const o = parseOptions(args, cmd.options, cmd.name);
    if (cmd.positional) o[cmd.positional.name] = positional;
    const nproc = optNum(o, 'nproc') ?? 1;
    if (nproc > 1 && !launchedByMpi()) {
      checkNproc(cmd.name, nproc, o.oversubscribe === true);
      return await launch(nproc, process.argv[1] ?? fileURLToPath(import.meta.url), [name, ...withoutNproc(rest)]);
    }
    if (launchedByMpi() && rank !== 0) {
      process.stderr.write = (() => true) as typeof process.stderr.write;
      o.quiet = true;
    }
    if (cmd.usesDevice) {
      const d = deviceConfig(o);
      await selectDevice(d.device, d.quiet);
    }
    await cmd.run(o);
    return 0;
  } catch (err) {
    // a refusal shared by every rank (common.ts shareRefusal) or a divergence (every rank sees the same
    // all-reduced loss) is reported by rank 0 alone, and every rank ends normally with its exit code
    const shared = isSharedRefusal(err) || (err instanceof DivergenceError && err.everyRank);
    const code = exitCodeOf(err);
    if (err instanceof PeerRefusal) return code;
    if (!shared || rank === 0)
      report(
        err instanceof UsageError
          ? err.message
          : `spinlm ${cmd.name}: ${process.env.SPINLM_DEBUG ? (err as Error).stack : (err as Error).message}`,
      );
    if (err instanceof CommError) processGroup().abort(3); // end the whole job, a hung peer included
    // an error of this rank alone: its peers may wait in a collective (and MPI_Finalize would wait for
    // them), so end the whole job now with this exit code
    if (!shared && launchedByMpi() && processGroupStarted()) processGroup().abort(code);
    return code;
  } finally {
    await releaseLocks();
  }
}

/**
 * --nproc is bounded by the cores (each MPI rank computes on CPU tensors, one core at least): more
 * ranks than cores only with --oversubscribe, so a mistyped --nproc 999 is refused instead of starting
 * 999 processes that crawl and hang the machine.
 */
export function checkNproc(command: string, nproc: number, oversubscribe: boolean, cores = availableParallelism()): void {
  if (nproc <= cores || oversubscribe) return;
  throw new UsageError(
    `spinlm ${command}: --nproc ${nproc} is more processes than the ${cores} cores here (each rank needs a core): give at most --nproc ${cores}, or add --oversubscribe to share cores between ranks`,
  );
}

/** Most kernel threads SPINLM_NUM_THREADS may ask for: more than this only oversubscribes the cores. */
export const MAX_THREADS = 1024;

/** SPINLM_NUM_THREADS, if set, must be an integer in [1, MAX_THREADS] (the native pool reads it at start-up). */
export function checkThreadsEnv(v: string | undefined): string | null {
  if (v === undefined) return null;
  const n = Number(v);
  if (v.trim() !== '' && Number.isSafeInteger(n) && n >= 1 && n <= MAX_THREADS) return null;
  return `spinlm: SPINLM_NUM_THREADS=${JSON.stringify(v)} is not a thread count: expected an integer from 1 to ${MAX_THREADS} (this machine has ${availableParallelism()} cores), or unset it to use them all`;
}

process.exitCode = await main(process.argv.slice(2));
closeProcessGroup();
