// Pieces the commands share: the device, loading model + tokenizer, the output directory, ranks.
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import type { Backend } from '../backend/backend.js';
import { type BackendStatus, createBackend, type DeviceChoice, DeviceUnavailableError } from '../backend/registry.js';
import { launchedByMpi, processGroup } from '../dist/process_group.js';
import { loadConfig } from '../model/config.js';
import { loadAdapter } from '../model/adapter.js';
import { LlamaModel } from '../model/llama.js';
import { AdapterError } from '../model/peft.js';
import type { Rounds } from '../data/messages.js';
import type { PromptTemplate } from '../text/templates.js';
import { type HfTokenizer, loadTokenizer } from '../text/tokenizer.js';
import { type Parsed, UsageError } from './args.js';
import { type ModelConfig, roundsOf, str, templateOf } from './config.js';
import { checkInputs, type Input, prepareRunDir, runTemplateDate } from './run_dir.js';

let chosen: Backend | undefined;

/**
 * Picks the backend of a command from --device (before any work, so an unavailable device fails at
 * once with exit code 2). `auto` says on stderr which device it took and why the others were passed.
 */
export async function selectDevice(choice: DeviceChoice, quiet: boolean): Promise<Backend> {
  let passedOver: BackendStatus[];
  try {
    const made = await createBackend(choice);
    chosen = made.backend;
    passedOver = made.passed;
  } catch (err) {
    if (err instanceof DeviceUnavailableError) throw new UsageError(`spinlm: ${err.message}`);
    throw err;
  }
  if (choice === 'auto' && !quiet) {
    const passed = passedOver.map((s) => `${s.name}: ${s.reason}`);
    process.stderr.write(`spinlm: --device auto chose ${chosen.name}${passed.length ? ` (${passed.join('; ')})` : ''}\n`);
  }
  return chosen;
}

/** The backend selectDevice chose (the registry's CPU backend when none was chosen, e.g. in library use of the commands). */
export async function backend(): Promise<Backend> {
  chosen ??= (await createBackend('cpu')).backend;
  return chosen;
}

export async function loadModelAndTokenizer(
  m: ModelConfig,
): Promise<{ model: LlamaModel; tok: HfTokenizer; template: PromptTemplate; rounds: Rounds }> {
  if (!existsSync(join(m.dir, 'config.json')))
    throw new UsageError(`--model ${m.dir}: no config.json there (expected a Hugging Face model directory)`);
  const tok = await loadTokenizer(m.dir);
  tok.checkModelVocab((await loadConfig(m.dir)).vocabSize, join(m.dir, 'config.json'));
  const model = await LlamaModel.load(await backend(), m.dir, { dtype: m.dtype });
  if (m.adapter !== undefined) {
    try {
      await loadAdapter(model, m.adapter);
    } catch (e) {
      model.weights.free();
      if (e instanceof AdapterError) throw new UsageError(`--adapter ${e.message}`);
      throw e;
    }
  }
  const template = templateOf(m, tok);
  return { model, tok, template, rounds: roundsOf(m, template) };
}

/** Rank 0 of a data-parallel run, or a single process: the one that writes outputs. */
export function isMain(): boolean {
  return !launchedByMpi() || processGroup().isMain;
}

/** Waits for every rank (a no-op in one process). */
export function barrier(): void {
  if (launchedByMpi()) processGroup().barrier();
}

/**
 * Before a directory-writing command works: refuses outputs that overlap inputs, creates and locks
 * the directory, checks the fingerprint of a run to resume, cuts metrics.jsonl back to the
 * checkpoints and writes the resolved options beside the outputs (src/cli/run_dir.ts).
 */
const givenInputs = (o: Parsed, inputs: (keyof Parsed)[]): Input[] =>
  inputs.filter((k) => typeof o[k] === 'string').map((k) => ({ flag: String(k), path: String(o[k]) }));

/**
 * The input flags that name a path: each exists and is a regular file or a directory (not a FIFO or a
 * device), checked first of all, so a wrong path is one usage line (exit 2) before anything is read
 * or written.
 */
export function checkInputPaths(command: string, o: Parsed, inputs: (keyof Parsed)[]): void {
  checkInputs(command, givenInputs(o, inputs));
}

export async function prepareOut(
  command: string,
  o: Parsed,
  inputs: (keyof Parsed)[],
  layout: 'run' | 'single',
  /** The day the run's chat templates saw (runTemplateDate before the inputs were read), for fingerprint.json. */
  templateDate?: string,
): Promise<void> {
  const given = givenInputs(o, inputs);
  if (!launchedByMpi()) return prepareRunDir(command, o, given, layout, templateDate);
  // data parallel: rank 0 prepares (and locks) the directory; its verdict reaches every rank in the
  // first collective, so a refusal (busy directory, other settings, a bad --out) ends every rank at once
  let refusal: unknown = null;
  if (isMain()) await prepareRunDir(command, o, given, layout, templateDate).catch((e: unknown) => (refusal = e));
  shareRefusal(refusal);
}

/**
 * A refusal one rank made, as every other rank of the job receives it (shareRefusal): the rank that
 * refused reports it, the others end silently with its exit code.
 */
export class PeerRefusal extends Error {
  override name = 'PeerRefusal';
  constructor(
    message: string,
    readonly exitCode: number,
  ) {
    super(message);
  }
}

const sharedRefusals = new WeakSet<object>();

/** Whether every rank knows of this error (a PeerRefusal, or the refusal shareRefusal passed on): no rank waits for the one that threw it. */
export const isSharedRefusal = (err: unknown): boolean =>
  err instanceof PeerRefusal || (typeof err === 'object' && err !== null && sharedRefusals.has(err));

/** The exit code main() gives an error: 2 for a usage error, 1 for any other. */
export const exitCodeOf = (err: unknown): number => (err instanceof PeerRefusal ? err.exitCode : err instanceof UsageError ? 2 : 1);

/**
 * One collective that tells every rank whether any rank refused (`refusal`: its error, or null): the
 * rank that refused rethrows its error, the others throw a PeerRefusal with its exit code; when no
 * rank refused every rank goes on. A no-op in one process.
 */
export function shareRefusal(refusal: unknown): void {
  if (!launchedByMpi()) {
    if (refusal !== null) throw refusal;
    return;
  }
  const mine = refusal === null ? '' : JSON.stringify({ code: exitCodeOf(refusal), message: (refusal as Error).message });
  const all = processGroup().allGatherBytes(new TextEncoder().encode(mine));
  if (refusal !== null) {
    if (typeof refusal === 'object') sharedRefusals.add(refusal);
    throw refusal;
  }
  const first = all.find((b) => b.length > 0);
  if (first) {
    const { code, message } = JSON.parse(new TextDecoder().decode(first)) as { code: number; message: string };
    throw new PeerRefusal(message, code);
  }
}

/** The day a run directory's chat templates see (--template_date, a resumed run's, else today); reads only. */
export function templateDateOf(o: Parsed): string {
  return runTemplateDate(str(o, 'out'), o);
}

export const fmt = (x: number, d = 4) => (Number.isFinite(x) ? x.toFixed(d) : String(x));
