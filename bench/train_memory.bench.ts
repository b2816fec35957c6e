// Peak RSS of one `spinlm train` SPIN step on the 1.1B shape (docs/memory.md, issue 13's memory goals):
// the model of bench/make_model.ts, N pairs of random common words, each configuration in a fresh
// process, its VmHWM sampled every 200 ms from /proc until it exits (the step's peak comes long before).
// Usage: node --import tsx bench/train_memory.bench.ts [--pairs 2] [--prompt-chars 90] [--answer-chars 190]
//        [--configs checkpointing,fused,default] [--shape tinyllama]
// 2 pairs of ~283 templated tokens take ~3 minutes per configuration on 2 cores; 8 pairs of 100 + 390
// characters (~512 tokens per sequence) with checkpointing ~11 minutes.
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { table } from './harness.js';
import { makeRandomModel, SHAPES } from './make_model.js';

const { values: args } = parseArgs({
  options: {
    pairs: { type: 'string', default: '2' },
    'prompt-chars': { type: 'string', default: '90' },
    'answer-chars': { type: 'string', default: '190' },
    configs: { type: 'string', default: 'checkpointing,fused,default' },
    shape: { type: 'string', default: 'tinyllama' },
  },
});
const CONFIGS: Record<string, string[]> = {
  default: [],
  checkpointing: ['--gradient_checkpointing'],
  fused: ['--gradient_checkpointing', '--fused_update', '--max_grad_norm', '0'],
};
const configs = String(args.configs).split(',');
for (const c of configs) if (!(c in CONFIGS)) throw new Error(`--configs: unknown ${c} (known: ${Object.keys(CONFIGS).join(', ')})`);
if (!(String(args.shape) in SHAPES)) throw new Error(`--shape must be one of ${Object.keys(SHAPES).join(', ')}`);
const pairs = Number(args.pairs);

// random text of common words, `chars` long (the byte tokenizer: one token per character)
const WORDS =
  'the of and to in is was he for it with as his on be at by had are but from or have an they which one you were her all she there would their we him been has when who will no more if out so said what up its about into than them can only other new some could time these two may then do first any my now such like our over man me even most made after also did many before must through back years where much your way well down should because each just those people how too little state good very make world still own see men work long get here between both life being under never day same another know while last might us great old year off come since against go came right used take three'.split(
    ' ',
  );
let state = 0x2545f491;
const word = () => {
  state ^= state << 13;
  state ^= state >>> 17;
  state ^= state << 5;
  return WORDS[(state >>> 0) % WORDS.length];
};
const text = (chars: number) => {
  let s = word();
  while (s.length < chars) s += ` ${word()}`;
  return s.slice(0, chars);
};

const model = await makeRandomModel(String(args.shape) as keyof typeof SHAPES);
const dir = mkdtempSync(join(tmpdir(), 'spinlm-train-memory-'));
process.on('exit', () => rmSync(dir, { recursive: true, force: true }));
const data = join(dir, 'pairs.jsonl');
const row = () => ({
  prompt: text(Number(args['prompt-chars'])),
  real: text(Number(args['answer-chars'])),
  generated: text(Number(args['answer-chars'])),
});
writeFileSync(data, Array.from({ length: pairs }, () => JSON.stringify(row())).join('\n') + '\n');

/** Runs one configuration; resolves with its peak RSS (bytes), wall seconds and the step's gradient norm. */
function run(config: string): Promise<{ peak: number; seconds: number; gradNorm: number }> {
  const out = join(dir, config);
  const cli = new URL('../bin/spinlm.js', import.meta.url).pathname;
  const argv = [cli, 'train', '--model', model, '--data', data, '--out', out, '--per_device_train_batch_size', String(pairs)];
  argv.push('--gradient_accumulation_steps', '1', '--num_train_epochs', '1', '--device', 'cpu', ...CONFIGS[config]);
  const t0 = performance.now();
  const child = spawn(process.execPath, argv, { stdio: ['ignore', 'ignore', 'inherit'] });
  let peak = 0;
  const sample = setInterval(() => {
    try {
      const m = /VmHWM:\s+(\d+) kB/.exec(readFileSync(`/proc/${child.pid}/status`, 'utf8'));
      if (m) peak = Math.max(peak, Number(m[1]) * 1024);
    } catch {
      // the process has just exited
    }
  }, 200);
  return new Promise((resolve, reject) => {
    child.on('exit', (code) => {
      clearInterval(sample);
      if (code !== 0) return reject(new Error(`spinlm train (${config}) exited with ${code}`));
      const step = JSON.parse(readFileSync(join(out, 'metrics.jsonl'), 'utf8').split('\n')[0]) as { grad_norm: number };
      resolve({ peak, seconds: (performance.now() - t0) / 1000, gradNorm: step.grad_norm });
    });
  });
}

const rows: (string | number)[][] = [];
for (const c of configs) {
  const r = await run(c);
  rows.push([c, CONFIGS[c].join(' ') || '(none)', r.peak / 2 ** 20, (r.peak / 1e9).toFixed(2), r.seconds, r.gradNorm.toPrecision(10)]);
  console.error(`${c}: ${(r.peak / 1e9).toFixed(2)} GB`);
}
console.log(
  `\n${args.shape}, ${pairs} pairs (prompt ${args['prompt-chars']} and answers ${args['answer-chars']} characters), one SPIN step:\n`,
);
console.log(table(['config', 'flags', 'peak RSS MiB', 'GB', 'wall s', 'grad_norm'], rows));
