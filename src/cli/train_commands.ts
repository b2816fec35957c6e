// The commands that train one model: `train` (one SPIN iteration from a pair file) and `sft`
// (supervised fine-tuning, from a model or a fresh config).
import { rm } from 'node:fs/promises';
import { INPUT_CAPS, type InputFileError, readInputFile } from '../util/input_file.js';
import { join } from 'node:path';
import { readSpinPairs } from '../data/spin_pairs.js';
import { mergeOwnAdapter, saveAdapter } from '../model/adapter.js';
import { parseConfig } from '../model/config.js';
import { initLlama } from '../model/init.js';
import { saveDerivedModel, TOKENIZER_FILES } from '../model/side_files.js';
import { MetricsWriter, readMetrics } from '../spin/metrics.js';
import { writeReport } from '../spin/report.js';
import { referenceStage, saveModelStage, spinTrainStage } from '../spin/self_play.js';
import { tokenizePairs } from '../spin/score.js';
import { runSft } from '../spin/sft.js';
import { stepsPerEpoch } from '../spin/train_loop.js';
import { loadTokenizer } from '../text/tokenizer.js';
import { UsageError } from './args.js';
import { type Command, sftData } from './command.js';
import { backend, barrier, checkInputPaths, fmt, isMain, loadModelAndTokenizer, prepareOut, templateDateOf } from './common.js';
import {
  bool,
  dataConfig,
  checkLoraFor,
  loopConfig,
  modelConfig,
  nums,
  num,
  optStr,
  roundsOf,
  spinStageConfig,
  str,
  templateOf,
  truncationOf,
} from './config.js';
import {
  adapterOption,
  dataOption,
  distOptions,
  computeDtypeOption,
  loopOptions,
  modelOption,
  nOption,
  outOption,
  overwriteOption,
  quietOption,
  skipInvalidOption,
  strictOption,
  textOptions,
  trainOptions,
} from './options.js';
import { progressBar } from './progress.js';

export const train: Command = {
  name: 'train',
  summary: 'One SPIN iteration from a pair file: reference log-probs of --model, then train; writes the new model (HF format) and metrics.',
  options: [
    modelOption,
    { ...adapterOption, help: `${adapterOption.help}; it is the reference and the adapter that trains` },
    {
      ...dataOption,
      help: 'pair file (JSONL or Parquet): from `spinlm generate`, official SPIN rows, or {prompt, real, generated} strings',
    },
    strictOption,
    outOption('output directory (model/, metrics.jsonl, checkpoint/; with LoRA adapter/ too)'),
    ...trainOptions,
    computeDtypeOption,
    overwriteOption,
    quietOption,
  ],
  async run(o) {
    const [out, data, quiet] = [str(o, 'out'), str(o, 'data'), bool(o, 'quiet')];
    const m = modelConfig(o);
    const cfg = loopConfig(o, nums(o, 'learning_rate')[0]); // checked before anything is written
    const spin = spinStageConfig(o);
    // every input is read and checked before the output directory is touched
    checkInputPaths('train', o, ['model', 'adapter', 'data']);
    m.templateDate ??= templateDateOf(o);
    const { model, tok, template, rounds } = await loadModelAndTokenizer(m);
    checkLoraFor(cfg.lora, model.cfg.modelType);
    const pairs = await readSpinPairs(data, { rounds, strictUtf8: bool(o, 'strict') });
    const trunc = truncationOf(m, model.maxPositions);
    const tokenized = tokenizePairs(tok, pairs, { ...trunc, template, batchSize: 1 });
    await prepareOut('train', o, ['model', 'adapter', 'data'], 'single', m.templateDate);
    const refBar = progressBar('reference log-probs', pairs.length, 'pairs', { quiet });
    const ref = await referenceStage(model, tokenized, tok, cfg, join(out, 'ref_logps.json'), (d) => refBar.update(d));
    refBar.stop();
    const metrics = new MetricsWriter(join(out, 'metrics.jsonl'));
    const total = stepsPerEpoch(pairs.length, cfg) * cfg.numTrainEpochs;
    const bar = progressBar('training', total, 'steps', { quiet });
    await spinTrainStage(model, tokenized, ref, tok, spin, cfg, join(out, 'checkpoint'), {
      onStep: (l) => {
        metrics.write({ kind: 'step', iteration: 0, ...l });
        bar.update(l.step, { loss: fmt(l.loss), margin: fmt(l['rewards/margins'] ?? 0, 3) });
      },
    });
    bar.stop();
    const modelDir = join(out, 'model');
    if (isMain()) {
      // with LoRA: out/adapter (PEFT files), then out/model with it merged
      await saveModelStage(model, modelDir, m.dir, join(out, 'checkpoint'), { adapterDir: join(out, 'adapter') });
      await writeReport(out, readMetrics(join(out, 'metrics.jsonl')).rows, { title: 'spinlm train', evalColumns: [] });
    }
    barrier();
    process.stderr.write(`spinlm: trained ${total} steps -> ${modelDir} (report: ${join(out, 'report.html')})\n`);
  },
};

export const sftCmd: Command = {
  name: 'sft',
  summary: "Supervised fine-tuning on (prompt, answer) data: makes the demo's weak model and serves users without an SFT model.",
  options: [
    { ...modelOption, help: 'start from this HF model directory (or give --init_config)', required: false },
    { name: 'init_config', type: 'string', help: 'train from scratch: a config.json for a fresh model (needs --tokenizer)' },
    { name: 'tokenizer', type: 'string', help: 'directory with tokenizer.json (with --init_config)' },
    dataOption,
    strictOption,
    outOption('output model directory (HF format), with metrics.jsonl and report.html'),
    nOption,
    skipInvalidOption,
    ...loopOptions({ lr: [2e-5], optim: 'adamw', epochs: 3, batch: 16, accum: 1 }),
    computeDtypeOption,
    ...textOptions,
    ...distOptions,
    overwriteOption,
    quietOption,
  ],
  async run(o) {
    const out = str(o, 'out');
    const m = modelConfig(o);
    const [initConfig, tokenizerDir, modelDir] = [optStr(o, 'init_config'), optStr(o, 'tokenizer'), optStr(o, 'model')];
    if (initConfig && modelDir)
      throw new UsageError('spinlm sft: give either --model DIR (fine-tune it) or --init_config config.json (a fresh model), not both');
    if (tokenizerDir && modelDir)
      throw new UsageError('spinlm sft: --tokenizer goes with --init_config; --model DIR brings its own tokenizer');
    if (!initConfig && !modelDir) throw new UsageError('spinlm sft: give --model DIR or --init_config config.json');
    const cfg = loopConfig(o, nums(o, 'learning_rate')[0]);
    if (initConfig && !tokenizerDir) throw new UsageError('spinlm sft: --init_config needs --tokenizer DIR');
    // every input is read and checked before the output directory is touched
    checkInputPaths('sft', o, ['model', 'data', 'init_config', 'tokenizer']);
    m.templateDate ??= templateDateOf(o);
    let model, tok, template;
    if (initConfig && tokenizerDir) {
      tok = await loadTokenizer(tokenizerDir);
      const text = await readInputFile(initConfig, INPUT_CAPS.config).catch((e: InputFileError) => {
        throw new UsageError(`spinlm sft: --init_config ${initConfig} ${e.code ? `cannot be read (${e.code})` : e.message}`);
      });
      const fresh = parseConfig(JSON.parse(text), initConfig);
      tok.checkModelVocab(fresh.vocabSize, initConfig);
      model = initLlama(await backend(), fresh, {
        seed: num(o, 'seed'),
        dtype: m.dtype === 'bf16' ? 'bf16' : 'f32',
      });
      template = templateOf(m, tok);
    } else ({ model, tok, template } = await loadModelAndTokenizer(m));
    checkLoraFor(cfg.lora, model.cfg.modelType);
    const pairs = await sftData(dataConfig(o), undefined, roundsOf(m, template));
    await prepareOut('sft', o, ['model', 'data', 'init_config', 'tokenizer'], 'single', m.templateDate);
    const trunc = truncationOf(m, model.maxPositions);
    const metrics = new MetricsWriter(join(out, 'metrics.jsonl'));
    const bar = progressBar('sft', stepsPerEpoch(pairs.length, cfg) * cfg.numTrainEpochs, 'steps', { quiet: bool(o, 'quiet') });
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
      // the source's config.json and side files (a fresh model: its config file and the tokenizer's files)
      // with LoRA: out/adapter (PEFT files, base --model), then out with the adapter merged
      if (model.weights.lora && modelDir) {
        await saveAdapter(model, join(out, 'adapter'), modelDir);
        await mergeOwnAdapter(model);
      }
      await saveDerivedModel(model, out, initConfig ? { dir: tokenizerDir!, config: initConfig, files: TOKENIZER_FILES } : { dir: m.dir });
      await rm(join(out, 'checkpoint'), { recursive: true, force: true });
      await writeReport(out, readMetrics(join(out, 'metrics.jsonl')).rows, { title: 'spinlm sft', evalColumns: [] });
    }
    barrier();
    process.stderr.write(`spinlm: wrote ${out}\n`);
  },
};
