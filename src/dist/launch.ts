// `spinlm <command> --nproc N`: starts the same command N times through mpirun (Open MPI) and waits.
// The ranks find each other through MPI (src/dist/process_group.ts); rank 0 alone prints and writes.
// When a rank dies, mpirun stops the others; this launcher then prints one line naming the rank.
import { spawn } from 'node:child_process';
import { availableParallelism } from 'node:os';

/** argv without `--nproc N` / `--nproc=N`. */
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
  if (n > availableParallelism()) flags.push('--oversubscribe');
  if (process.getuid?.() === 0) flags.push('--allow-run-as-root');
  return [...flags, process.execPath, ...execArgv, script, ...args];
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
    child.stderr!.on('data', (b: Buffer) => {
      process.stderr.write(b);
      tail = (tail + b.toString()).slice(-20000);
    });
    child.on('error', (err) => {
      process.stderr.write(`spinlm: --nproc ${n}: could not start mpirun (${err.message}); Debian/Ubuntu: apt-get install openmpi-bin libopenmpi-dev\n`);
      resolve(2);
    });
    child.on('close', (code, signal) => {
      const died = /process rank (\d+) with PID (\d+) on node (\S+) exited on signal (\d+) \(([^)]+)\)/.exec(tail);
      if (died) {
        process.stderr.write(`spinlm: rank ${died[1]} (pid ${died[2]} on ${died[3]}) died: signal ${died[4]} (${died[5]}); mpirun stopped the other ranks. Rerun the same command to resume from the last checkpoint.\n`);
      }
      resolve(code ?? (signal ? 1 : 0));
    });
  });
}
