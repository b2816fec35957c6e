// The `spinlm` commands, in the order `spinlm --help` lists them. Each command parses its options into
// a typed config (src/cli/config.ts) and calls the library; printing and progress bars happen in the
// CLI only. The commands live by what they do: src/cli/self_play_commands.ts (run, demo, sweep),
// src/cli/train_commands.ts (train, sft), src/cli/data_commands.ts (generate, score, eval, synthetic).
// Modules are imported statically (the CLI is one process that needs them all, and a missing module
// fails at start rather than mid-run).
import type { Command } from './command.js';
import { evalCmd, generate, score, synth } from './data_commands.js';
import { merge } from './merge_command.js';
import { deviceOption } from './options.js';
import { registerOptionDefaults } from './run_dir.js';
import { demo, run, sweep } from './self_play_commands.js';
import { sftCmd, train } from './train_commands.js';

export type { Command } from './command.js';

/** Commands that compute take --device (synthetic only writes data). */
for (const c of [demo, run, train, sftCmd, generate, score, evalCmd, sweep, merge]) {
  c.options = [...c.options, deviceOption];
  c.usesDevice = true;
}

export const COMMANDS: Command[] = [demo, run, sweep, train, sftCmd, merge, generate, score, evalCmd, synth];

// what an option that a run directory predates meant (run_dir.ts fingerprintDiff)
for (const c of COMMANDS) registerOptionDefaults(c.name, Object.fromEntries(c.options.map((s) => [s.name, s.default])));
