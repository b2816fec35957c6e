// The tensors of a Hugging Face model directory: one model.safetensors, or shards named by
// model.safetensors.index.json ({ metadata, weight_map: tensor name -> shard file }).
import { readdir, rm, stat } from 'node:fs/promises';
import { INPUT_CAPS, type InputFileError, readInputFile } from '../util/input_file.js';
import { basename, join } from 'node:path';
import { dtypeSize, numelOf } from '../tensor/dtype.js';
import { writeFileAtomic } from '../util/atomic.js';
import {
  type HostTensor,
  type ReadOptions,
  SafetensorsError,
  type SafetensorsFile,
  type TensorInfo,
  type TensorToWrite,
  openSafetensors,
  writeSafetensors,
} from './safetensors.js';

export const SINGLE_FILE = 'model.safetensors';
export const INDEX_FILE = 'model.safetensors.index.json';
const SHARD_NAME = /^model-\d{5}-of-\d{5}\.safetensors$/;

/** What model.safetensors.index.json says, checked. */
export interface ShardIndex {
  /** The index's "metadata" object as written (HF puts total_size there). */
  metadata: Record<string, unknown>;
  /** Tensor name -> shard file name (a bare name in the same directory). */
  weightMap: Map<string, string>;
}

/** Parses an index file's JSON; `file` names it in errors. */
export function parseShardIndex(json: unknown, file: string): ShardIndex {
  const err = (problem: string) => new SafetensorsError(file, null, problem);
  if (typeof json !== 'object' || json === null || Array.isArray(json)) throw err('expected a JSON object with "weight_map"');
  const { metadata = {}, weight_map: map } = json as Record<string, unknown>;
  if (typeof metadata !== 'object' || metadata === null || Array.isArray(metadata)) throw err('"metadata" must be an object');
  if (typeof map !== 'object' || map === null || Array.isArray(map))
    throw err('"weight_map" must be an object of tensor name -> file name');
  const weightMap = new Map<string, string>();
  for (const [name, shard] of Object.entries(map)) {
    if (typeof shard !== 'string' || shard === '' || shard !== basename(shard) || shard === '.' || shard === '..' || shard.includes('\\')) {
      throw err(`weight_map[${JSON.stringify(name)}] must be a file name in the same directory, got ${JSON.stringify(shard)}`);
    }
    weightMap.set(name, shard);
  }
  if (weightMap.size === 0) throw err('"weight_map" names no tensors');
  return { metadata: metadata as Record<string, unknown>, weightMap };
}

async function readJson(file: string): Promise<unknown> {
  let text: string;
  try {
    text = await readInputFile(file, INPUT_CAPS.json);
  } catch (e) {
    const { code, message } = e as InputFileError;
    throw new SafetensorsError(file, null, code ? `cannot read (${code})` : message);
  }
  try {
    return JSON.parse(text);
  } catch (e) {
    throw new SafetensorsError(file, null, `not valid JSON (${(e as Error).message})`);
  }
}

async function exists(path: string): Promise<boolean> {
  try {
    await stat(path);
    return true;
  } catch {
    return false;
  }
}

/** All tensors of a model directory, whichever layout it uses. Call close() when done. */
export class CheckpointTensors {
  private constructor(
    readonly dir: string,
    /** Shard files, as opened (one for a single-file model). */
    private readonly files: Map<string, SafetensorsFile>,
    /** Tensor name -> the file holding it. */
    private readonly where: Map<string, SafetensorsFile>,
  ) {}

  /**
   * Opens `dir/model.safetensors` if present (as transformers prefers it), else the shards of
   * `dir/model.safetensors.index.json`, checking every shard exists and holds the tensors the
   * index puts in it.
   */
  static async open(dir: string): Promise<CheckpointTensors> {
    const single = join(dir, SINGLE_FILE);
    if (await exists(single)) {
      const f = await openSafetensors(single);
      return new CheckpointTensors(dir, new Map([[SINGLE_FILE, f]]), new Map(f.names().map((n) => [n, f])));
    }
    const indexPath = join(dir, INDEX_FILE);
    if (!(await exists(indexPath))) {
      throw new SafetensorsError(dir, null, `no ${SINGLE_FILE} or ${INDEX_FILE} in this directory`);
    }
    const index = parseShardIndex(await readJson(indexPath), indexPath);
    const files = new Map<string, SafetensorsFile>();
    try {
      for (const shard of new Set(index.weightMap.values())) {
        const path = join(dir, shard);
        if (!(await exists(path)))
          throw new SafetensorsError(indexPath, null, `names shard ${JSON.stringify(shard)}, which does not exist`);
        files.set(shard, await openSafetensors(path));
      }
      const where = new Map<string, SafetensorsFile>();
      for (const [name, shard] of index.weightMap) {
        const f = files.get(shard)!;
        if (!f.has(name)) throw new SafetensorsError(indexPath, name, `is mapped to ${shard}, which does not contain it`);
        where.set(name, f);
      }
      return new CheckpointTensors(dir, files, where);
    } catch (e) {
      await Promise.all([...files.values()].map((f) => f.close()));
      throw e;
    }
  }

  /** Tensor names (single file: in data order; sharded: in index order). */
  names(): string[] {
    return [...this.where.keys()];
  }

  has(name: string): boolean {
    return this.where.has(name);
  }

  /** Header entry of a tensor (offsets are within its own shard). */
  info(name: string): TensorInfo & { file: string } {
    const f = this.where.get(name);
    if (!f) throw new SafetensorsError(this.dir, name, 'not in this checkpoint');
    return { ...f.info(name), file: f.path };
  }

  async readTensor(name: string, opts: ReadOptions = {}): Promise<HostTensor> {
    const f = this.where.get(name);
    if (!f) throw new SafetensorsError(this.dir, name, 'not in this checkpoint');
    return f.readTensor(name, opts);
  }

  /** Streams a float tensor in converted chunks (SafetensorsFile.readTensorChunks). */
  async readTensorChunks(
    name: string,
    dtype: 'bf16' | 'f32',
    chunkElements: number,
    onChunk: (data: Uint16Array | Float32Array, elementOffset: number) => void | Promise<void>,
  ): Promise<void> {
    const f = this.where.get(name);
    if (!f) throw new SafetensorsError(this.dir, name, 'not in this checkpoint');
    return f.readTensorChunks(name, dtype, chunkElements, onChunk);
  }

  async close(): Promise<void> {
    await Promise.all([...this.files.values()].map((f) => f.close()));
  }
}

export function openCheckpointTensors(dir: string): Promise<CheckpointTensors> {
  return CheckpointTensors.open(dir);
}

export interface WriteCheckpointOptions {
  /** Start a new shard before a shard would exceed this many data bytes (one tensor larger than it gets a shard alone). */
  maxShardBytes?: number;
  /** Metadata for every shard's header; default {format: "pt"}, which transformers checks for. */
  metadata?: Record<string, string>;
}

/**
 * Writes the tensors of a model directory: `model.safetensors` when everything fits in one shard,
 * else `model-0000i-of-0000n.safetensors` plus the index (weight_map sorted by name, metadata
 * total_size in bytes). Tensors are split into shards in the order given. Each file is written
 * atomically; afterwards files of the other layout or stale shards that would shadow or confuse
 * the new one are removed. Returns the file names written.
 */
export async function writeCheckpointTensors(
  dir: string,
  tensors: readonly TensorToWrite[],
  opts: WriteCheckpointOptions = {},
): Promise<string[]> {
  const max = opts.maxShardBytes ?? Infinity;
  if (!(max > 0)) throw new RangeError(`maxShardBytes must be positive, got ${max}`);
  const metadata = opts.metadata ?? { format: 'pt' };
  const bytesOf = (t: TensorToWrite) => numelOf(t.shape, t.name) * dtypeSize(t.dtype);
  const seen = new Set<string>();
  for (const t of tensors) {
    if (seen.has(t.name)) throw new SafetensorsError(dir, t.name, 'given twice');
    seen.add(t.name);
  }

  const shards: TensorToWrite[][] = [[]];
  let size = 0;
  for (const t of tensors) {
    const b = bytesOf(t);
    if (size > 0 && size + b > max) {
      shards.push([]);
      size = 0;
    }
    shards[shards.length - 1].push(t);
    size += b;
  }

  let written: string[];
  if (shards.length === 1) {
    await writeSafetensors(join(dir, SINGLE_FILE), tensors, metadata);
    written = [SINGLE_FILE];
  } else {
    const n = shards.length;
    const pad = (i: number) => String(i).padStart(5, '0');
    written = shards.map((_, i) => `model-${pad(i + 1)}-of-${pad(n)}.safetensors`);
    const weightMap: [string, string][] = [];
    for (let i = 0; i < n; i++) {
      await writeSafetensors(join(dir, written[i]), shards[i], metadata);
      for (const t of shards[i]) weightMap.push([t.name, written[i]]);
    }
    weightMap.sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0));
    const total = tensors.reduce((s, t) => s + bytesOf(t), 0);
    const index = { metadata: { total_size: total }, weight_map: Object.fromEntries(weightMap) };
    await writeFileAtomic(join(dir, INDEX_FILE), `${JSON.stringify(index, null, 2)}\n`);
    written.push(INDEX_FILE);
  }

  const keep = new Set(written);
  for (const name of await readdir(dir)) {
    if (keep.has(name)) continue;
    if (name === SINGLE_FILE || name === INDEX_FILE || SHARD_NAME.test(name)) await rm(join(dir, name), { force: true });
  }
  return written;
}
