// The commands that read and write data files: `score` (log-probs of pairs), `generate` (the
// opponent's answers), `eval` (held-out metrics) and `synthetic` (tasks with exact answers).
import { rm } from 'node:fs/promises';
import { writeChatRows } from '../data/sft.js';
import { readSpinPairs, writeSpinPairs } from '../data/spin_pairs.js';
import { generateSyntheticTasks, syntheticChatRows, type SyntheticTask } from '../data/synthetic.js';
import type { WordProblemKind } from '../data/word_problems.js';
import { generateWordProblems } from '../data/word_teacher.js';
import { launchedByMpi, processGroup } from '../dist/process_group.js';
import { shardByItem } from '../dist/shard.js';
import { answerPrompts, JournalMismatchError, journalTemplateDate } from '../generate/answers.js';
import { stopIdsOf } from '../generate/stops.js';
import { LlamaDecoder } from '../model/decoder.js';
import { exactMatchEval, heldoutLogp } from '../spin/evaluate.js';
import { scorePairs } from '../spin/score.js';
import { areWordProblems, majorityAccuracy, teacherStats } from '../spin/word_eval.js';
import { formatPrompt } from '../text/templates.js';
import { resolveOutput, writeFileAtomic } from '../util/atomic.js';
import { positive, UsageError } from './args.js';
import { checkFileOut, type Command, promptFits, sftData } from './command.js';
import { barrier, isMain, loadModelAndTokenizer } from './common.js';
import {
  bool,
  checkComputeDtype,
  dataConfig,
  generationConfig,
  generationSettingsOf,
  modelConfig,
  num,
  optStr,
  str,
  stopSequencesOf,
  truncationOf,
} from './config.js';
import {
  adapterOption,
  computeDtypeOption,
  dataOption,
  evalBatchOption,
  evalTokensOption,
  generationOptions,
  modelOption,
  nOption,
  nprocOption,
  outOption,
  oversubscribeOption,
  quietOption,
  skipInvalidOption,
  strictOption,
  textOptions,
} from './options.js';
import { progressBar } from './progress.js';
import { type Fingerprint, fingerprintDiff, fingerprintOf } from './run_dir.js';

export const score: Command = {
  name: 'score',
  summary: 'S(theta, y) of (prompt, real, generated) pairs: the summed log-prob of each answer and its EOS.',
  options: [
    modelOption,
    adapterOption,
    { ...dataOption, help: 'pair file: {prompt, real, generated} strings or official SPIN rows (JSONL or Parquet)' },
    strictOption,
    outOption('scores JSONL, one row per pair in input order'),
    evalBatchOption(8, 'pairs per forward pass'),
    evalTokensOption,
    computeDtypeOption,
    ...textOptions,
    quietOption,
  ],
  async run(o) {
    const m = modelConfig(o);
    const [data, out] = [str(o, 'data'), str(o, 'out')];
    await checkFileOut('score', out, { model: m.dir, adapter: m.adapter, data });
    const { model, tok, template, rounds } = await loadModelAndTokenizer(m);
    const trunc = truncationOf(m, model.maxPositions);
    const pairs = await readSpinPairs(data, { rounds, strictUtf8: bool(o, 'strict') });
    const bar = progressBar('scoring', pairs.length, 'pairs', { quiet: bool(o, 'quiet') });
    const scores = await scorePairs(model, tok, pairs, {
      ...trunc,
      template,
      batchSize: num(o, 'per_device_eval_batch_size'),
      maxTokensPerBatch: num(o, 'max_tokens_per_batch'),
      computeDtype: checkComputeDtype(m, model.weights.dtype),
      onProgress: (d) => bar.update(d),
    });
    bar.stop();
    await writeFileAtomic(out, scores.map((s) => JSON.stringify(s)).join('\n') + '\n');
    process.stderr.write(`spinlm: scored ${pairs.length} pairs -> ${out}\n`);
  },
};

export const generate: Command = {
  name: 'generate',
  summary: "The opponent's step: the model answers the SFT prompts; writes SPIN pair rows (prompt, real, generated). Resumable.",
  options: [
    modelOption,
    adapterOption,
    dataOption,
    strictOption,
    outOption('pair file (.jsonl or .parquet)'),
    nOption,
    skipInvalidOption,
    ...generationOptions.map((s) => (s.name === 'generation_batch_size' ? { ...s, aliases: [...(s.aliases ?? []), 'batch_size'] } : s)),
    {
      name: 'seed',
      type: 'int',
      default: 42,
      help: 'sampling seed (each prompt samples from its own stream of it, so a resumed run writes the same text)',
    },
    ...textOptions.filter((t) => ['template', 'dtype', 'first_round_only', 'empty_system_turn', 'template_date'].includes(t.name)),
    nprocOption,
    oversubscribeOption,
    quietOption,
  ],
  async run(o) {
    const m = modelConfig(o);
    const d = dataConfig(o);
    const gen = generationConfig(o);
    const [out, seed] = [str(o, 'out'), num(o, 'seed')];
    await checkFileOut('generate', out, { model: m.dir, adapter: m.adapter, data: d.path });
    // the resume journal sits beside a file output; a stream output (FIFO, /dev/stdout) has none
    const group = launchedByMpi() ? processGroup() : null;
    // data parallel: prompts sharded by index across the ranks (one journal each), merged in input order
    const journal =
      (await resolveOutput(out)).kind === 'file'
        ? group
          ? `${out}.partial.rank-${group.rank}-of-${group.size}.jsonl`
          : `${out}.partial.jsonl`
        : undefined;
    // a resumed journal keeps the day its prompts were rendered with
    m.templateDate ??= journal ? journalTemplateDate(journal) : undefined;
    const { model, tok, template, rounds } = await loadModelAndTokenizer(m);
    const pairs = await sftData(d, promptFits(model, tok, template), rounds);
    stopSequencesOf(gen.stop, tok);
    const prompts = pairs.map((p) => formatPrompt(tok, template, p));
    const bar = progressBar('generating', prompts.length, 'prompts', { quiet: bool(o, 'quiet') });
    const t0 = Date.now();
    const g = generationSettingsOf(gen, tok, await stopIdsOf(m.dir, model.cfg.eosTokenIds, tok, template));
    // the journal's fingerprint: every option that changes the answers, the model's and the data's files,
    // and the day the chat template saw (kept, never compared: a resume renders the same prompts)
    const produced = await fingerprintOf('generate', o, [
      { flag: 'model', path: m.dir },
      ...(m.adapter !== undefined ? [{ flag: 'adapter', path: m.adapter }] : []),
      { flag: 'data', path: d.path },
    ]);
    if (typeof template === 'object' && template.date) produced.template_date = template.date;
    const journalKey = { value: produced, diff: (was: unknown) => journalDiff(was, produced) };
    const answerMine = (mine: string[]) =>
      answerPrompts(new LlamaDecoder(model, g.kvCacheDtype, checkComputeDtype(m, model.weights.dtype)), tok, mine, {
        temperature: g.temperature,
        topP: g.topP,
        topK: g.topK,
        maxNewTokens: g.maxNewTokens,
        seed,
        batchSize: g.batchSize,
        stopSequences: g.stopSequences,
        stopIds: g.stopIds,
        journal,
        journalKey,
        onProgress: (done, _t, toks) => bar.update(done, { 'tok/s': (toks / ((Date.now() - t0) / 1000)).toFixed(0) }),
      });
    let answers: string[];
    try {
      answers = group ? await shardByItem(group, prompts, answerMine) : await answerMine(prompts);
    } catch (e) {
      if (e instanceof JournalMismatchError) throw new UsageError(`spinlm generate: ${e.message}`);
      throw e;
    }
    bar.stop();
    if (isMain())
      await writeSpinPairs(
        out,
        pairs.map((p, i) => ({ prompt: p.prompt, real: p.real, generated: answers[i], ...(p.messages ? { messages: p.messages } : {}) })),
      );
    barrier();
    if (journal) await rm(journal, { force: true });
    process.stderr.write(`spinlm: wrote ${pairs.length} pairs -> ${out}\n`);
  },
};

/** The differences between a journal's recorded fingerprint and this run's (a fingerprint of another shape: all of it). */
function journalDiff(was: unknown, now: Fingerprint): string[] {
  const w = was as Fingerprint | undefined;
  if (!w || typeof w !== 'object' || typeof w.options !== 'object' || typeof w.inputs !== 'object')
    return ['the model and options are not recorded'];
  return fingerprintDiff(w, now);
}

export const evalCmd: Command = {
  name: 'eval',
  summary:
    'Held-out evaluation: mean real-answer log-prob per token on any data; exact match of greedy answers on synthetic tasks (rows with a "task" field); on word problems final-answer accuracy, the teacher\'s likelihood of the greedy solutions and a majority vote of sampled ones.',
  options: [
    modelOption,
    adapterOption,
    dataOption,
    strictOption,
    nOption,
    skipInvalidOption,
    evalBatchOption(32, 'prompts per batch'),
    { name: 'max_new_tokens', type: 'int', default: 64, check: positive, help: 'longest greedy answer for exact match' },
    { name: 'seed', type: 'int', default: 42, help: 'sampling seed for --n (and of the majority vote)' },
    {
      name: 'majority_samples',
      type: 'int',
      default: 8,
      check: (v: number) => (v >= 0 ? null : 'must be >= 0'),
      help: 'word problems (task wp_*): also the final-answer accuracy of the majority vote over this many sampled solutions (0 = off)',
    },
    { name: 'majority_temperature', type: 'number', default: 0.7, check: positive, help: 'sampling temperature of the majority vote' },
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
    const m = modelConfig(o);
    const d = dataConfig(o);
    const out = optStr(o, 'out');
    const batchSize = num(o, 'per_device_eval_batch_size');
    await checkFileOut('eval', out, { model: m.dir, adapter: m.adapter, data: d.path });
    const { model, tok, template, rounds } = await loadModelAndTokenizer(m);
    const trunc = truncationOf(m, model.maxPositions);
    const pairs = await sftData(d, promptFits(model, tok, template), rounds);
    const result: Record<string, unknown> = { n: pairs.length };
    result.heldout_logp = await heldoutLogp(model, tok, pairs, { ...trunc, template, batchSize });
    const tasks = pairs.filter((p) => typeof (p as { task?: string }).task === 'string');
    if (tasks.length === pairs.length) {
      const heldout = pairs.map((p) => ({ task: (p as { task: string }).task, prompt: p.prompt, answer: p.real })) as SyntheticTask[];
      const gen = {
        template,
        batchSize,
        maxNewTokens: num(o, 'max_new_tokens'),
        stopIds: await stopIdsOf(m.dir, model.cfg.eosTokenIds, tok, template),
      };
      const em = await exactMatchEval(model, tok, heldout, gen);
      result.exact_match = em.accuracy;
      result.by_task = em.byTask;
      if (areWordProblems(heldout)) {
        // exact_match is final-answer accuracy here (synthetic.ts answerCorrect)
        const t = teacherStats(heldout, em.answers);
        result.teacher_logp = t.teacherLogp;
        result.teacher_impossible = t.teacherImpossible;
        result.greedy_equals_real = em.answers.filter((a, i) => a === heldout[i].answer).length / heldout.length;
        const samples = num(o, 'majority_samples');
        if (samples > 0) {
          const acc = await majorityAccuracy(model, tok, heldout, {
            ...gen,
            samples,
            temperature: num(o, 'majority_temperature'),
            seed: num(o, 'seed'),
          });
          result[`majority_at_${samples}`] = acc;
        }
      }
    }
    console.log(JSON.stringify(result, null, 2));
    if (out) await writeFileAtomic(out, JSON.stringify(result, null, 2));
  },
};

export const synth: Command = {
  name: 'synthetic',
  summary:
    'Writes synthetic instruction tasks with exact answers (UltraChat messages layout, with a "task" field) for sft / run / eval; --task wordproblems writes multi-step word problems with teacher-sampled solutions.',
  options: [
    outOption('JSONL or Parquet file'),
    { name: 'size', type: 'int', default: 1000, check: positive, help: 'tasks' },
    { name: 'seed', type: 'int', default: 1, help: 'seed' },
    {
      name: 'task',
      type: { oneOf: ['families', 'wordproblems'] },
      default: 'families',
      help: 'families: the one-line tasks (exact answers); wordproblems: multi-step word problems, each real answer one sample of a stochastic teacher (docs/science.md, "Second study")',
    },
    {
      name: 'families',
      type: 'string',
      help: 'comma-separated subset of task families (default all); with --task wordproblems: of wp_shop, wp_units, wp_time',
    },
    {
      name: 'split',
      type: { oneOf: ['train', 'heldout'] },
      default: 'train',
      help: 'with --task wordproblems: draw from the training or the held-out part of the problem space (disjoint problem keys)',
    },
  ],
  async run(o) {
    const out = str(o, 'out');
    await checkFileOut('synthetic', out, {});
    const families = optStr(o, 'families');
    if (str(o, 'task') === 'wordproblems') {
      const rows = generateWordProblems({
        seed: num(o, 'seed'),
        size: num(o, 'size'),
        split: str(o, 'split') as 'train' | 'heldout',
        kinds: families ? (families.split(',') as WordProblemKind[]) : undefined,
      });
      await writeChatRows(out, rows);
      process.stderr.write(`spinlm: wrote ${rows.length} ${str(o, 'split')} word problems -> ${out}\n`);
      return;
    }
    const tasks = generateSyntheticTasks({
      seed: num(o, 'seed'),
      size: num(o, 'size'),
      families: families ? families.split(',') : undefined,
    });
    await writeChatRows(out, syntheticChatRows(tasks));
    process.stderr.write(`spinlm: wrote ${tasks.length} tasks -> ${out}\n`);
  },
};
