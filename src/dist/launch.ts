// `spinlm <command> --nproc N`: starts the same command N times through mpirun (Open MPI) and waits.
// The ranks find each other through MPI (src/dist/process_group.ts); rank 0 alone prints and writes.
// When a rank dies, mpirun stops the others; this launcher then prints one line naming the rank.
import { spawn } from 'node:child_process';
import { availableParallelism } from 'node:os';

/** argv without `--nproc N` / `--nproc=N` (`--oversubscribe` stays: the ranks ignore it). */
export function withoutNproc(argv: readonly string[]): string[] {
  const out: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === '--nproc' || argv[i] === '--n-proc' || argv[i] === '--n_proc') i++;
    else if (!/^--nproc=/.test(argv[i])) out.push(argv[i]);
  }
  return out;
}

/** The mpirun command line for n ranks of `node <script> <args>`. */
export function mpirunArgs(n: number, script: string, args: readonly string[], execArgv: readonly string[] = process.execArgv): string[] {
  const flags = ['-np', String(n)];
  // more ranks than cores: only when the user gave --oversubscribe (main.ts checkNproc refuses it otherwise)
  if (n > availableParallelism()) flags.push('--oversubscribe');
  if (process.getuid?.() === 0) flags.push('--allow-run-as-root');
  return [...flags, process.execPath, ...execArgv, script, ...args];
}

/** Open MPI boxes that only repeat what a rank already printed (its non-zero exit, its MPI_Abort). */
const REDUNDANT_BOX = /returned\s+a non-zero exit code|exited with non-zero status|MPI_ABORT was invoked/;
const RULE = /^-{20,}$/;

/**
 * mpirun's stderr, line by line, less the boxes (between rules of dashes) that only say a rank exited
 * non-zero or called MPI_Abort: the rank's own one-line message already said why. push() returns what
 * to print now; end() the rest.
 */
export class MpiOutputFilter {
  private partial = '';
  private box: string[] | null = null;

  push(text: string): string {
    const lines = (this.partial + text).split('\n');
    this.partial = lines.pop()!;
    let out = '';
    for (const line of lines) {
      if (this.box === null) {
        if (RULE.test(line)) this.box = [line];
        else out += `${line}\n`;
      } else {
        this.box.push(line);
        if (RULE.test(line)) {
          const block = `${this.box.join('\n')}\n`;
          this.box = null;
          if (!REDUNDANT_BOX.test(block)) out += block;
        }
      }
    }
    return out;
  }

  end(): string {
    const rest = (this.box ? `${this.box.join('\n')}\n` : '') + this.partial;
    this.box = null;
    this.partial = '';
    return rest;
  }
}

/** Runs mpirun; resolves with the exit code to use (a dead rank is reported in one line). */
export function launch(n: number, script: string, args: readonly string[]): Promise<number> {
  const env = { ...process.env };
  // the ranks share the cores: split them unless the user chose
  env.SPINLM_NUM_THREADS ??= String(Math.max(1, Math.floor(availableParallelism() / n)));
  return new Promise((resolve) => {
    let child;
    try {
      child = spawn('mpirun', mpirunArgs(n, script, args), { env, stdio: ['inherit', 'inherit', 'pipe'] });
    } catch (err) {
      process.stderr.write(`spinlm: --nproc ${n} needs mpirun (${(err as Error).message}); Debian/Ubuntu: apt-get install openmpi-bin libopenmpi-dev\n`);
      resolve(2);
      return;
    }
    let tail = '';
    const filter = new MpiOutputFilter();
    child.stderr!.setEncoding('utf8');
    child.stderr!.on('data', (b: string) => {
      process.stderr.write(filter.push(b));
      tail = (tail + b).slice(-20000);
    });
    child.on('error', (err) => {
      process.stderr.write(`spinlm: --nproc ${n}: could not start mpirun (${err.message}); Debian/Ubuntu: apt-get install openmpi-bin libopenmpi-dev\n`);
      resolve(2);
    });
    child.on('close', (code, signal) => {
      process.stderr.write(filter.end());
      const died = /process rank (\d+) with PID (\d+) on node (\S+) exited on signal (\d+) \(([^)]+)\)/.exec(tail);
      if (died) {
        process.stderr.write(`spinlm: rank ${died[1]} (pid ${died[2]} on ${died[3]}) died: signal ${died[4]} (${died[5]}); mpirun stopped the other ranks. Rerun the same command to resume from the last checkpoint.\n`);
      }
      resolve(code ?? (signal ? 1 : 0));
    });
  });
}
