// The `spinlm` command line. It only parses arguments and calls the library.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { cpuBackend } from '../backend/cpu/cpu_backend.js';
import { packageRoot } from '../backend/cpu/addon.js';

const USAGE = `spinlm — SPIN (Self-Play fIne-tuNing) for Node.js

Usage: spinlm <command> [options]

Commands:
  info        the native addon, its threads and memory; the package version
  help        this text

Run \`spinlm <command> --help\` for a command's options.`;

function version(): string {
  return JSON.parse(readFileSync(join(packageRoot, 'package.json'), 'utf8')).version;
}

function info(): void {
  const be = cpuBackend();
  console.log(`spinlm ${version()} (node ${process.version}, ${process.platform}-${process.arch})`);
  console.log(`cpu backend: ${be.threads} kernel threads (SPINLM_NUM_THREADS overrides), ${(be.native.cachedBytes() / 2 ** 20).toFixed(0)} MiB recycled memory`);
}

export function main(argv: string[]): number {
  const [cmd, ...rest] = argv;
  switch (cmd) {
    case undefined:
    case 'help':
    case '--help':
    case '-h':
      console.log(USAGE);
      return 0;
    case '--version':
    case '-v':
      console.log(version());
      return 0;
    case 'info':
      if (rest.includes('--help')) {
        console.log('Usage: spinlm info\n\nPrints the package version, the native addon in use and its thread count.');
        return 0;
      }
      info();
      return 0;
    default:
      console.error(`spinlm: unknown command '${cmd}'.\n\n${USAGE}`);
      return 2;
  }
}

try {
  process.exitCode = main(process.argv.slice(2));
} catch (err) {
  console.error(`spinlm: ${(err as Error).message}`);
  process.exitCode = 1;
}
