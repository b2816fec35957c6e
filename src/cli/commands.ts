// The `spinlm` commands. Each parses its options (src/cli/args.ts) and calls the library; printing and
// progress bars happen here only. Modules are imported statically (the CLI is one process that needs
// them all, and a missing module fails at start rather than mid-run).
import { existsSync, writeFileSync } from 'node:fs';
import { cp, readFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import type { SpinLossType } from '../backend/backend.js';
import { packageRoot } from '../backend/native/addon.js';
import { loadSftPairs, writeChatRows } from '../data/sft.js';
import { readSpinPairs, writeSpinPairs } from '../data/spin_pairs.js';
import { generateSyntheticTasks, syntheticChatRows, type SyntheticTask } from '../data/synthetic.js';
import { answerPrompts } from '../generate/answers.js';
import { parseConfig } from '../model/config.js';
import { initLlama } from '../model/init.js';
import { tokenizePair } from '../spin/batch.js';
import { DEMO_ARMS, runDemo } from '../spin/demo.js';
import { exactMatchEval, heldoutLogp } from '../spin/evaluate.js';
import { MetricsWriter, readMetrics } from '../spin/metrics.js';
import { writeReport } from '../spin/report.js';
import { scorePairs } from '../spin/score.js';
import { referenceStage, runSelfPlay, saveModelStage, spinTrainStage } from '../spin/self_play.js';
import { padIdOf, runSft } from '../spin/sft.js';
import { type StepLog, stepsPerEpoch } from '../spin/train_loop.js';
import { formatPrompt, type PromptTemplate } from '../text/templates.js';
import { type HfTokenizer, loadTokenizer } from '../text/tokenizer.js';
import { makeDirs, OutputError, resolveOutput, writeFileAtomic } from '../util/atomic.js';
import { type OptionSpec, type Parsed, positive, UsageError } from './args.js';
import {
  backend,
  barrier,
  computeDtypeOf,
  decoderFor,
  fmt,
  isMain,
  loadModelAndTokenizer,
  loop,
  prepareOut,
  resolveTemplate,
  selfPlayFlags,
  stopSequences,
  truncation,
} from './common.js';
import { checkOverlap, lockDir, registerOptionDefaults } from './run_dir.js';
import {
  computeDtypeOption,
  dataOption,
  deviceOption,
  distOptions,
  evalBatchOption,
  generationOptions,
  loopOptions,
  selfPlayLoopOptions,
  modelOption,
  nprocOption,
  outOption,
  textOptions,
  trainOptions,
} from './options.js';
import type { LlamaModel } from '../model/llama.js';
import { launchedByMpi, processGroup } from '../dist/process_group.js';
import { shardByItem } from '../dist/shard.js';
import { progressBar } from './progress.js';
import { defaultSweepOut, readSweepConfig, sweepCommand } from './sweep.js';

export interface Command {
  name: string;
  summary: string;
  options: OptionSpec[];
  /** Picks a backend from --device before it runs. */
  usesDevice?: boolean;
  /** A first argument that is not an option (e.g. sweep's CONFIG.yaml), stored in the options under `name`. */
  positional?: { name: string; usage: string };
  run(o: Parsed): Promise<void>;
}

const quietOption: OptionSpec = { name: 'quiet', type: 'bool', default: false, help: 'no progress bars' };
const nOption: OptionSpec = { name: 'n', type: 'int', check: positive, help: 'use n prompts (a seeded random sample; default all)' };
const skipInvalid: OptionSpec = {
  name: 'skip_invalid',
  type: 'bool',
  default: false,
  help: 'skip malformed rows (and report how many) instead of stopping at the first',
};
const overwriteOption: OptionSpec = {
  name: 'overwrite_output_dir',
  type: 'bool',
  default: false,
  help: 'start over: clear what an earlier run left in --out instead of resuming it (needed when the settings differ)',
};

/** Refuses a file output (--out) that is an input or replaces a file inside one; and an output that cannot be written. */
async function checkFileOut(command: string, o: Parsed, inputs: string[]): Promise<void> {
  if (o.out === undefined) return;
  checkOverlap(
    command,
    { flag: 'out', path: String(o.out), kind: 'file' },
    inputs.filter((k) => typeof o[k] === 'string').map((k) => ({ flag: k, path: String(o[k]) })),
  );
  try {
    await resolveOutput(String(o.out));
  } catch (e) {
    if (e instanceof OutputError) throw new UsageError(`spinlm ${command}: --out ${e.message}`);
    throw e;
  }
}

/**
 * A row check for commands that generate from the prompts: the templated prompt must leave room
 * for at least one new token within the model's context, so that a long row is reported (file and
 * row, honoring --skip_invalid) before the first stage, not after hours of work.
 */
function promptFits(model: LlamaModel, tok: HfTokenizer, template: PromptTemplate) {
  const context = model.cfg.maxPositionEmbeddings;
  return (p: { prompt: string }): string | null => {
    const text = formatPrompt(tok, template, p.prompt);
    // a token covers at most maxTokenChars characters: a longer text needs no tokenizing to know
    const n = text.length >= context * tok.maxTokenChars ? null : tok.encode(text).length;
    if (n !== null && n < context) return null;
    return `the prompt is ${n === null ? `over ${context}` : n} tokens with the prompt template, which leaves no room to generate within the model's context of ${context} tokens (max_position_embeddings); shorten the prompt or drop the row (--skip_invalid skips such rows)`;
  };
}

function stepLine(prefix: string, l: StepLog): string {
  const keys = ['loss', 'rewards/margins', 'rewards/accuracies', 'logps/real', 'logps/generated'].filter((k) => typeof l[k] === 'number');
  return `${prefix} step ${l.step} epoch ${fmt(l.epoch, 2)} ${keys.map((k) => `${k} ${fmt(l[k])}`).join(' ')} lr ${l.learning_rate.toExponential(2)} grad_norm ${fmt(l.grad_norm, 3)} ${fmt(l.tokens_per_s, 0)} tok/s`;
}

async function sftData(o: Parsed, check?: (p: { prompt: string }) => string | null) {
  const r = await loadSftPairs(String(o.data), {
    n: o.n as number | undefined,
    seed: o.n ? Number(o.seed) : undefined,
    skipInvalid: Boolean(o.skip_invalid),
    check,
  });
  if (r.skipped) process.stderr.write(`spinlm: skipped ${r.skipped} malformed rows of ${o.data}, e.g. ${r.problems[0]}\n`);
  return r.pairs;
}

const score: Command = {
  name: 'score',
  summary: 'S(theta, y) of (prompt, real, generated) pairs: the summed log-prob of each answer and its EOS.',
  options: [
    modelOption,
    { ...dataOption, help: 'pair file: {prompt, real, generated} strings or official SPIN rows (JSONL or Parquet)' },
    outOption('scores JSONL, one row per pair in input order'),
    evalBatchOption(8, 'pairs per forward pass'),
    computeDtypeOption,
    ...textOptions,
    quietOption,
  ],
  async run(o) {
    await checkFileOut('score', o, ['model', 'data']);
    const { model, tok, template } = await loadModelAndTokenizer(o);
    const trunc = truncation(o, model.cfg.maxPositionEmbeddings);
    const pairs = await readSpinPairs(String(o.data));
    const bar = progressBar('scoring', pairs.length, 'pairs', { quiet: Boolean(o.quiet) });
    const scores = await scorePairs(model, tok, pairs, {
      ...trunc,
      template,
      batchSize: Number(o.per_device_eval_batch_size),
      padId: padIdOf(tok),
      computeDtype: computeDtypeOf(o, model),
      onProgress: (d) => bar.update(d),
    });
    bar.stop();
    await writeFileAtomic(String(o.out), scores.map((s) => JSON.stringify(s)).join('\n') + '\n');
    process.stderr.write(`spinlm: scored ${pairs.length} pairs -> ${o.out}\n`);
  },
};

const generate: Command = {
  name: 'generate',
  summary: "The opponent's step: the model answers the SFT prompts; writes SPIN pair rows (prompt, real, generated). Resumable.",
  options: [
    modelOption,
    dataOption,
    outOption('pair file (.jsonl or .parquet)'),
    nOption,
    skipInvalid,
    ...generationOptions.map((s) => (s.name === 'generation_batch_size' ? { ...s, aliases: [...(s.aliases ?? []), 'batch_size'] } : s)),
    {
      name: 'seed',
      type: 'int',
      default: 42,
      help: 'sampling seed (each prompt samples from its own stream of it, so a resumed run writes the same text)',
    },
    ...textOptions.filter((t) => t.name === 'template' || t.name === 'dtype'),
    nprocOption,
    quietOption,
  ],
  async run(o) {
    await checkFileOut('generate', o, ['model', 'data']);
    const { model, tok, template } = await loadModelAndTokenizer(o);
    const pairs = await sftData(o, promptFits(model, tok, template));
    stopSequences(o, tok);
    // the resume journal sits beside a file output; a stream output (FIFO, /dev/stdout) has none
    const group = launchedByMpi() ? processGroup() : null;
    // data parallel: prompts sharded by index across the ranks (one journal each), merged in input order
    const journal =
      (await resolveOutput(String(o.out))).kind === 'file'
        ? group
          ? `${o.out}.partial.rank-${group.rank}-of-${group.size}.jsonl`
          : `${o.out}.partial.jsonl`
        : undefined;
    const prompts = pairs.map((p) => formatPrompt(tok, template, p.prompt));
    const bar = progressBar('generating', prompts.length, 'prompts', { quiet: Boolean(o.quiet) });
    const t0 = Date.now();
    const answerMine = (mine: string[]) =>
      answerPrompts(decoderFor(o, model), tok, mine, {
        temperature: Number(o.temperature),
        topP: Number(o.top_p),
        topK: Number(o.top_k),
        maxNewTokens: Number(o.max_new_tokens),
        seed: Number(o.seed),
        batchSize: Number(o.generation_batch_size),
        stopSequences: stopSequences(o, tok),
        journal,
        onProgress: (d, _t, toks) => bar.update(d, { 'tok/s': (toks / ((Date.now() - t0) / 1000)).toFixed(0) }),
      });
    const answers = group ? await shardByItem(group, prompts, answerMine) : await answerMine(prompts);
    bar.stop();
    if (isMain())
      await writeSpinPairs(
        String(o.out),
        pairs.map((p, i) => ({ prompt: p.prompt, real: p.real, generated: answers[i] })),
      );
    barrier();
    if (journal) await rm(journal, { force: true });
    process.stderr.write(`spinlm: wrote ${pairs.length} pairs -> ${o.out}\n`);
  },
};

const train: Command = {
  name: 'train',
  summary: 'One SPIN iteration from a pair file: reference log-probs of --model, then train; writes the new model (HF format) and metrics.',
  options: [
    modelOption,
    {
      ...dataOption,
      help: 'pair file (JSONL or Parquet): from `spinlm generate`, official SPIN rows, or {prompt, real, generated} strings',
    },
    outOption('output directory (model/, metrics.jsonl, checkpoint/)'),
    ...trainOptions,
    overwriteOption,
    quietOption,
  ],
  async run(o) {
    const out = String(o.out);
    const cfg = loop(o, (o.learning_rate as number[])[0]); // checked before anything is written
    await prepareOut('train', o, ['model', 'data'], 'single');
    const pairs = await readSpinPairs(String(o.data));
    const { model, tok, template } = await loadModelAndTokenizer(o);
    const trunc = truncation(o, model.cfg.maxPositionEmbeddings);
    const tokenized = pairs.map((p) => tokenizePair(tok, formatPrompt(tok, template, p.prompt), p.real, p.generated, trunc));
    const refBar = progressBar('reference log-probs', pairs.length, 'pairs', { quiet: Boolean(o.quiet) });
    const ref = await referenceStage(model, tokenized, tok, cfg, join(out, 'ref_logps.json'), (d) => refBar.update(d));
    refBar.stop();
    const metrics = new MetricsWriter(join(out, 'metrics.jsonl'));
    const total = stepsPerEpoch(pairs.length, cfg) * cfg.numTrainEpochs;
    const bar = progressBar('training', total, 'steps', { quiet: Boolean(o.quiet) });
    const spin = {
      beta: (o.beta as number[])[0],
      lossType: o.loss_type as SpinLossType,
      nllAlpha: Number(o.nll_alpha),
      dropIdentical: Boolean(o.drop_identical_pairs),
      lengthNormalized: Boolean(o.length_normalized),
    };
    await spinTrainStage(model, tokenized, ref, tok, spin, cfg, join(out, 'checkpoint'), {
      onStep: (l) => {
        metrics.write({ kind: 'step', iteration: 0, ...l });
        bar.update(l.step, { loss: fmt(l.loss), margin: fmt(l['rewards/margins'] ?? 0, 3) });
      },
    });
    bar.stop();
    const modelDir = join(out, 'model');
    if (isMain()) {
      await saveModelStage(model, modelDir, String(o.model), join(out, 'checkpoint'));
      await writeReport(out, readMetrics(join(out, 'metrics.jsonl')).rows, { title: 'spinlm train', evalColumns: [] });
    }
    barrier();
    process.stderr.write(`spinlm: trained ${total} steps -> ${modelDir} (report: ${join(out, 'report.html')})\n`);
  },
};

const run: Command = {
  name: 'run',
  summary:
    'Self-play: per iteration generate -> reference log-probs -> train -> checkpoint -> evaluate; the new model is the next opponent. Killed runs resume.',
  options: [
    modelOption,
    dataOption,
    outOption('run directory (iter-t/..., metrics.jsonl, report.html)'),
    { name: 'iterations', type: 'int', default: 3, check: positive, help: 'self-play iterations' },
    ...selfPlayLoopOptions,
    { name: 'eval_data', type: 'string', help: 'held-out file for the per-iteration evaluation (mean real-answer log-prob per token)' },
    nOption,
    skipInvalid,
    ...trainOptions,
    ...generationOptions,
    overwriteOption,
    quietOption,
  ],
  async run(o) {
    const out = String(o.out);
    const flags = selfPlayFlags(o); // checked before anything is written
    const base = loop(o, 0);
    await prepareOut('run', o, ['model', 'data', 'eval_data'], 'run');
    const { model, tok, template } = await loadModelAndTokenizer(o);
    const trunc = truncation(o, model.cfg.maxPositionEmbeddings);
    stopSequences(o, tok);
    computeDtypeOf(o, model);
    // every row's length is checked here, before the first stage, naming the file and row
    const fits = promptFits(model, tok, template);
    model.weights.free();
    const sft = await sftData(o, fits);
    const heldout = o.eval_data ? (await loadSftPairs(String(o.eval_data), { check: fits })).pairs : null;
    const metrics = new MetricsWriter(join(out, 'metrics.jsonl'));
    const final = await runSelfPlay(
      backend(),
      String(o.model),
      tok,
      sft,
      {
        outDir: out,
        iterations: Number(o.iterations),
        arm: 'spin',
        ...flags,
        loop: base,
        truncation: trunc,
        template,
      },
      {
        generate: (m, prompts, t, file, sample) => {
          const bar = progressBar(`iter ${t} generating${sample > 0 ? ` (draw ${sample + 1})` : ''}`, prompts.length, 'prompts', {
            quiet: Boolean(o.quiet),
          });
          return answerPrompts(decoderFor(o, m), tok, prompts, {
            temperature: Number(o.temperature),
            topP: Number(o.top_p),
            topK: Number(o.top_k),
            maxNewTokens: Number(o.max_new_tokens),
            seed: Number(o.seed) + t,
            streamOffset: sample * prompts.length,
            batchSize: Number(o.generation_batch_size),
            stopSequences: stopSequences(o, tok),
            journal: file,
            onProgress: (d) => bar.update(d),
          }).finally(() => bar.stop());
        },
        evaluate: heldout
          ? async (m, t) => {
              const r: Record<string, unknown> = {
                heldout_logp: await heldoutLogp(m, tok, heldout, { ...trunc, template, batchSize: Number(o.per_device_train_batch_size) }),
              };
              // synthetic tasks (rows with a "task" field) are also scored by exact match of greedy answers
              if (heldout.every((p) => typeof (p as { task?: string }).task === 'string')) {
                const tasks = heldout.map((p) => ({ task: (p as { task: string }).task, prompt: p.prompt, answer: p.real }));
                const em = await exactMatchEval(m, tok, tasks, {
                  template,
                  batchSize: Number(o.generation_batch_size),
                  maxNewTokens: Number(o.max_new_tokens),
                });
                r.exact_match = em.accuracy;
              }
              if (isMain()) metrics.write({ kind: 'eval', iteration: t + 1, ...r });
              process.stderr.write(
                `iteration ${t}: ${Object.entries(r)
                  .map(([k, v]) => `${k} ${fmt(Number(v))}`)
                  .join(', ')}\n`,
              );
              return r;
            }
          : undefined,
        onStep: (t, l) => {
          metrics.write({ kind: 'step', iteration: t, ...l });
          if (!o.quiet && l.step % 10 === 0) process.stderr.write(`${stepLine(`iter ${t}`, l)}\n`);
        },
        onStage: (t, s) => process.stderr.write(`iteration ${t}: ${s}\n`),
        // fault injection for the resume tests: SPINLM_KILL_AT=iteration:step kills this process (SIGKILL)
        afterStep: (t, s) => {
          if (process.env.SPINLM_KILL_AT === `${t}:${s}`) process.kill(process.pid, 'SIGKILL');
        },
      },
    );
    const evalColumns = heldout
      ? heldout.every((p) => typeof (p as { task?: string }).task === 'string')
        ? ['exact_match', 'heldout_logp']
        : ['heldout_logp']
      : [];
    if (isMain()) await writeReport(out, readMetrics(join(out, 'metrics.jsonl')).rows, { title: 'spinlm run', evalColumns });
    process.stderr.write(`spinlm: final model ${final}; report ${join(out, 'report.html')}\n`);
  },
};

const sftCmd: Command = {
  name: 'sft',
  summary: "Supervised fine-tuning on (prompt, answer) data: makes the demo's weak model and serves users without an SFT model.",
  options: [
    { ...modelOption, help: 'start from this HF model directory (or give --init_config)', required: false },
    { name: 'init_config', type: 'string', help: 'train from scratch: a config.json for a fresh model (needs --tokenizer)' },
    { name: 'tokenizer', type: 'string', help: 'directory with tokenizer.json (with --init_config)' },
    dataOption,
    outOption('output model directory (HF format), with metrics.jsonl and report.html'),
    nOption,
    skipInvalid,
    ...loopOptions({ lr: [2e-5], optim: 'adamw', epochs: 3, batch: 16, accum: 1 }),
    ...textOptions,
    ...distOptions,
    overwriteOption,
    quietOption,
  ],
  async run(o) {
    const out = String(o.out);
    if (o.init_config && o.model)
      throw new UsageError('spinlm sft: give either --model DIR (fine-tune it) or --init_config config.json (a fresh model), not both');
    if (o.tokenizer && o.model)
      throw new UsageError('spinlm sft: --tokenizer goes with --init_config; --model DIR brings its own tokenizer');
    if (!o.init_config && !o.model) throw new UsageError('spinlm sft: give --model DIR or --init_config config.json');
    const cfg = loop(o, (o.learning_rate as number[])[0]);
    await prepareOut('sft', o, ['model', 'data', 'init_config', 'tokenizer'], 'single');
    let model, tok, template;
    if (o.init_config) {
      if (!o.tokenizer) throw new UsageError('spinlm sft: --init_config needs --tokenizer DIR');
      tok = await loadTokenizer(String(o.tokenizer));
      model = initLlama(backend(), parseConfig(JSON.parse(await readFile(String(o.init_config), 'utf8')), String(o.init_config)), {
        seed: Number(o.seed),
        dtype: o.dtype === 'bf16' ? 'bf16' : 'f32',
      });
      template = resolveTemplate(o, tok);
    } else if (o.model) ({ model, tok, template } = await loadModelAndTokenizer(o));
    else throw new UsageError('spinlm sft: give --model DIR or --init_config config.json');
    const pairs = await sftData(o);
    const trunc = truncation(o, model.cfg.maxPositionEmbeddings);
    const metrics = new MetricsWriter(join(out, 'metrics.jsonl'));
    const bar = progressBar('sft', stepsPerEpoch(pairs.length, cfg) * cfg.numTrainEpochs, 'steps', { quiet: Boolean(o.quiet) });
    await runSft(
      model,
      tok,
      pairs,
      { loop: cfg, truncation: trunc, template },
      {
        checkpointDir: join(out, 'checkpoint'),
        onStep: (l) => {
          metrics.write({ kind: 'step', iteration: 0, ...l });
          bar.update(l.step, { loss: fmt(l.loss) });
        },
      },
    );
    bar.stop();
    if (isMain()) {
      await model.save(out);
      await rm(join(out, 'checkpoint'), { recursive: true, force: true });
      const tokDir = o.init_config ? String(o.tokenizer) : String(o.model);
      for (const f of ['tokenizer.json', 'tokenizer_config.json']) if (existsSync(join(tokDir, f))) await cp(join(tokDir, f), join(out, f));
      await writeReport(out, readMetrics(join(out, 'metrics.jsonl')).rows, { title: 'spinlm sft', evalColumns: [] });
    }
    barrier();
    process.stderr.write(`spinlm: wrote ${out}\n`);
  },
};

const evalCmd: Command = {
  name: 'eval',
  summary:
    'Held-out evaluation: mean real-answer log-prob per token on any data; exact match of greedy answers on synthetic tasks (rows with a "task" field).',
  options: [
    modelOption,
    dataOption,
    nOption,
    skipInvalid,
    evalBatchOption(32, 'prompts per batch'),
    { name: 'max_new_tokens', type: 'int', default: 64, check: positive, help: 'longest greedy answer for exact match' },
    { name: 'seed', type: 'int', default: 42, help: 'sampling seed for --n' },
    ...textOptions,
    {
      name: 'out',
      type: 'string',
      check: (v: string) => (v === '' ? 'must not be empty' : null),
      help: 'also write the results as JSON here',
    },
    quietOption,
  ],
  async run(o) {
    await checkFileOut('eval', o, ['model', 'data']);
    const { model, tok, template } = await loadModelAndTokenizer(o);
    const trunc = truncation(o, model.cfg.maxPositionEmbeddings);
    const pairs = await sftData(o, promptFits(model, tok, template));
    const result: Record<string, unknown> = { n: pairs.length };
    result.heldout_logp = await heldoutLogp(model, tok, pairs, { ...trunc, template, batchSize: Number(o.per_device_eval_batch_size) });
    const tasks = pairs.filter((p) => typeof (p as { task?: string }).task === 'string');
    if (tasks.length === pairs.length) {
      const em = await exactMatchEval(
        model,
        tok,
        pairs.map((p) => ({ task: (p as { task: string }).task, prompt: p.prompt, answer: p.real })) as SyntheticTask[],
        { template, batchSize: Number(o.per_device_eval_batch_size), maxNewTokens: Number(o.max_new_tokens) },
      );
      result.exact_match = em.accuracy;
      result.by_task = em.byTask;
    }
    console.log(JSON.stringify(result, null, 2));
    if (o.out) await writeFileAtomic(String(o.out), JSON.stringify(result, null, 2));
  },
};

const synth: Command = {
  name: 'synthetic',
  summary: 'Writes synthetic instruction tasks with exact answers (UltraChat messages layout, with a "task" field) for sft / run / eval.',
  options: [
    outOption('JSONL or Parquet file'),
    { name: 'size', type: 'int', default: 1000, check: positive, help: 'tasks' },
    { name: 'seed', type: 'int', default: 1, help: 'seed' },
    { name: 'families', type: 'string', help: 'comma-separated subset of task families (default all)' },
  ],
  async run(o) {
    await checkFileOut('synthetic', o, []);
    const tasks = generateSyntheticTasks({
      seed: Number(o.seed),
      size: Number(o.size),
      families: o.families ? String(o.families).split(',') : undefined,
    });
    await writeChatRows(String(o.out), syntheticChatRows(tasks));
    process.stderr.write(`spinlm: wrote ${tasks.length} tasks -> ${o.out}\n`);
  },
};

const demo: Command = {
  name: 'demo',
  summary:
    'The embedded default: from a shipped weak model θ0, 3 SPIN iterations, SPIN + NLL, and continued SFT on synthetic tasks; a table and a report. No downloads.',
  options: [
    { name: 'out', type: 'string', default: 'spinlm-demo', help: 'output directory (resumable)' },
    { name: 'from_scratch', type: 'bool', default: false, help: 'retrain θ0 with the documented SFT recipe instead of the shipped one' },
    { name: 'iterations', type: 'int', default: 3, check: positive, help: 'self-play iterations per arm' },
    { name: 'prompts', type: 'int', default: 1000, check: positive, help: 'SFT prompts answered per iteration' },
    { name: 'eval_tasks', type: 'int', default: 300, check: positive, help: 'held-out tasks' },
    { name: 'quick', type: 'bool', default: false, help: 'a shortened demo (for CI): fewer epochs and smaller batches' },
    quietOption,
  ],
  async run(o) {
    const out = String(o.out);
    const t0 = Date.now();
    const secs = () => `${((Date.now() - t0) / 1000).toFixed(0)}s`;
    const metrics = new MetricsWriter(join(out, 'metrics.jsonl'));
    try {
      await makeDirs(out);
    } catch (e) {
      if (e instanceof OutputError) throw new UsageError(`spinlm demo: --out ${out}: ${e.message}`);
      throw e;
    }
    await lockDir('demo', out);
    const rows = await runDemo(
      backend(),
      {
        outDir: out,
        theta0Dir: join(packageRoot, 'assets', 'theta0'),
        fromScratch: Boolean(o.from_scratch),
        iterations: Number(o.iterations),
        prompts: Number(o.prompts),
        evalTasks: Number(o.eval_tasks),
        quick: Boolean(o.quick),
      },
      {
        onStage: (arm, t, s) => {
          if (!o.quiet) process.stderr.write(`[${secs()}] ${arm} iteration ${t}: ${s}\n`);
        },
        onStep: (arm, t, l) => {
          metrics.write({ kind: 'step', arm, iteration: t, ...l });
          if (!o.quiet && l.step % 10 === 0) process.stderr.write(`[${secs()}] ${stepLine(`${arm} iter ${t}`, l)}\n`);
        },
        onSftStep: (l) => {
          if (!o.quiet && l.step % 50 === 0) process.stderr.write(`[${secs()}] θ0 sft step ${l.step} loss ${fmt(l.loss)}\n`);
        },
        onRow: (r) => {
          metrics.write({
            kind: 'eval',
            arm: r.arm,
            iteration: r.iteration,
            exact_match: r.exactMatch,
            heldout_logp: r.heldoutLogp,
            by_task: r.byTask,
          });
          process.stderr.write(
            `[${secs()}] ${r.arm} after iteration ${r.iteration}: exact match ${fmt(r.exactMatch, 3)}, held-out log-prob/token ${fmt(r.heldoutLogp)}\n`,
          );
        },
      },
    );
    const lines = [
      '| iteration | ' + DEMO_ARMS.map((a) => `${a.name} exact match | ${a.name} log-prob/token`).join(' | ') + ' |',
      '| --- |' + DEMO_ARMS.map(() => ' --- | --- |').join(''),
    ];
    const iters = [...new Set(rows.map((r) => r.iteration))].sort((a, b) => a - b);
    for (const it of iters)
      lines.push(
        `| ${it} | ` +
          DEMO_ARMS.map((a) => {
            const r = rows.find((x) => x.arm === a.name && x.iteration === it);
            return r ? `${fmt(r.exactMatch, 3)} | ${fmt(r.heldoutLogp)}` : ' | ';
          }).join(' | ') +
          ' |',
      );
    const table = lines.join('\n');
    const notes = `Held-out: ${o.eval_tasks} synthetic tasks never trained on. Arms: ${DEMO_ARMS.map((a) => `${a.name} = ${a.description}`).join('; ')}. Iteration 0 is θ0.`;
    const { rows: mrows } = readMetrics(join(out, 'metrics.jsonl'));
    await writeReport(out, mrows, {
      title: 'spinlm demo: SPIN vs SPIN+NLL vs continued SFT',
      evalColumns: ['exact_match', 'heldout_logp'],
      notes,
    });
    writeFileSync(join(out, 'table.md'), `${table}\n`);
    console.log(`\n${table}\n\n${notes}\nReport: ${join(out, 'report.html')} (plots), ${join(out, 'report.md')}; total ${secs()}.`);
  },
};

const sweep: Command = {
  name: 'sweep',
  summary:
    'A grid of self-play arms x seeds from a YAML config (docs/science.md); resumable; writes sweep.md / sweep.json / sweep.svg with paired standard errors against a baseline arm.',
  positional: { name: 'sweep_config', usage: 'CONFIG.yaml' },
  options: [
    {
      name: 'out',
      type: 'string',
      check: (v: string) => (v === '' ? 'must not be empty' : null),
      help: "output directory (default: the config's name, e.g. sweep-demo for sweep-demo.yaml)",
    },
    {
      name: 'jobs',
      type: 'int',
      default: 1,
      check: positive,
      help: 'runs at a time, each in its own process on cores / jobs threads (small models run faster side by side than on more threads)',
    },
    overwriteOption,
    quietOption,
  ],
  async run(o) {
    const file = String(o.sweep_config);
    const cfg = readSweepConfig(file);
    const out = o.out === undefined ? defaultSweepOut(file) : String(o.out);
    const t0 = Date.now();
    const table = await sweepCommand(cfg, {
      out,
      overwrite: Boolean(o.overwrite_output_dir),
      device: String(o.device ?? 'auto'),
      quiet: Boolean(o.quiet),
      jobs: Number(o.jobs),
    });
    if (process.env.SPINLM_SWEEP_WORKER) return; // a --jobs worker: the parent prints the table
    console.log(
      `\n${table}\n\nΔ: mean paired difference in exact match vs ${cfg.baseline} (same seed, iteration and tasks); paired SE = sd/sqrt(n) over the ${cfg.seeds.length} seeds.\nTables: ${join(out, 'sweep.md')} (per task family too), ${join(out, 'sweep.json')}; plot: ${join(out, 'sweep.svg')}; total ${((Date.now() - t0) / 1000).toFixed(0)}s.`,
    );
  },
};

/** Commands that compute take --device (synthetic only writes data). */
for (const c of [demo, run, train, sftCmd, generate, score, evalCmd, sweep]) {
  c.options = [...c.options, deviceOption];
  c.usesDevice = true;
}

export const COMMANDS: Command[] = [demo, run, sweep, train, sftCmd, generate, score, evalCmd, synth];

// what an option that a run directory predates meant (run_dir.ts fingerprintDiff)
for (const c of COMMANDS) registerOptionDefaults(c.name, Object.fromEntries(c.options.map((s) => [s.name, s.default])));
