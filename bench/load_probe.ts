// Where the load time of a model goes, in a fresh process: (1) reading every tensor's bytes in the
// loader's chunks (file system / page cache), (2) the same plus the NaN/Inf check, (3) the real
// LlamaModel.load (read + check + copy into device tensors). Prints one JSON line.
// Usage: node --import tsx bench/load_probe.ts MODEL_DIR [bf16|f32]
import { CpuBackend } from '../src/backend/cpu/cpu_backend.js';
import { openCheckpointTensors } from '../src/model/checkpoint_files.js';
import { LlamaModel } from '../src/model/llama.js';
import { firstNonFinite, LOAD_CHUNK_ELEMENTS } from '../src/model/weights.js';
import { peakRss } from './harness.js';

const dir = process.argv[2];
const dtype = (process.argv[3] ?? 'bf16') as 'bf16' | 'f32';
const be = new CpuBackend();

async function pass(check: boolean): Promise<number> {
  const t0 = performance.now();
  const files = await openCheckpointTensors(dir);
  let bad = 0;
  for (const name of files.names())
    await files.readTensorChunks(name, dtype, LOAD_CHUNK_ELEMENTS, (data) => void (check && firstNonFinite(data) >= 0 && bad++));
  await files.close();
  if (bad) throw new Error('non-finite weights');
  return (performance.now() - t0) / 1000;
}

const readS = await pass(false);
const readCheckS = await pass(true);
const t0 = performance.now();
const model = await LlamaModel.load(be, dir, { dtype });
const loadS = (performance.now() - t0) / 1000;
console.log(
  JSON.stringify({
    params: model.weights.count(),
    dtype,
    read_s: readS,
    read_check_s: readCheckS,
    load_s: loadS,
    peak_rss_mb: peakRss() / 2 ** 20,
  }),
);
