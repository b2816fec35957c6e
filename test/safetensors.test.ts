// src/model/safetensors.ts and src/model/checkpoint_files.ts: bit-exact round trips, files written
// and read by PyTorch (by hand, as safetensors has no python package here), shards, the exhaustive
// f16 conversion, one test per header validation rule, and a seeded mutation fuzz.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdir, mkdtemp, open, readFile, readdir, rm, truncate, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { INDEX_FILE, SINGLE_FILE, openCheckpointTensors, writeCheckpointTensors } from '../src/model/checkpoint_files.js';
import {
  MAX_HEADER_BYTES,
  SafetensorsError,
  type TensorToWrite,
  f16ArrayToF32,
  f16ToF32,
  openSafetensors,
  writeSafetensors,
} from '../src/model/safetensors.js';
import { bf16ArrayToF32, f32ArrayToBf16 } from '../src/tensor/bf16.js';
import type { DType, HostArray } from '../src/tensor/dtype.js';
import type { Rng } from '../src/util/rng.js';
import { PYTHON } from './helpers/python.js';
import { testBackends } from './helpers/backends.js';
import { tinyConfig } from './helpers/tiny_model.js';
import { expectedTensors } from '../src/model/config.js';
import { LOAD_CHUNK_ELEMENTS, Weights } from '../src/model/weights.js';
import * as ops from '../src/ops/index.js';
import { withSeed } from './helpers/random.js';

let dir = '';
before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'spinlm-st-'));
});
after(async () => {
  await rm(dir, { recursive: true, force: true });
});

// ---- helpers ----

function randomBits(rng: Rng, dtype: DType, n: number): HostArray {
  const u32 = new Uint32Array(n);
  for (let i = 0; i < n; i++) u32[i] = rng.nextU32();
  if (dtype === 'f32') return new Float32Array(u32.buffer); // any bit pattern, NaN payloads included
  if (dtype === 'i32') return new Int32Array(u32.buffer);
  return Uint16Array.from(u32, (x) => x & 0xffff);
}

function randomShape(rng: Rng): number[] {
  const rank = rng.int(0, 3);
  return Array.from({ length: rank }, () => rng.int(rng.int(0, 9) === 0 ? 0 : 1, 6));
}

function randomTensors(rng: Rng, count: number, prefix = 't'): TensorToWrite[] {
  const dtypes: DType[] = ['bf16', 'f32', 'i32'];
  return Array.from({ length: count }, (_, i) => {
    const dtype = dtypes[rng.int(0, 2)];
    const shape = randomShape(rng);
    return {
      name: `${prefix}.${i}.${rng.int(0, 999)}`,
      dtype,
      shape,
      data: randomBits(
        rng,
        dtype,
        shape.reduce((a, b) => a * b, 1),
      ),
    };
  });
}

function bytesOf(a: ArrayBufferView): Uint8Array {
  return new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
}

function assertSameBits(actual: ArrayBufferView, expected: ArrayBufferView, what: string): void {
  assert.equal(actual.byteLength, expected.byteLength, `${what}: byte length`);
  assert.ok(Buffer.from(bytesOf(actual)).equals(Buffer.from(bytesOf(expected))), `${what}: bits differ`);
}

/** A file from raw parts: 8-byte length (the header's unless overridden), header text, data bytes. */
async function rawFile(name: string, header: string | Uint8Array, data: Uint8Array = new Uint8Array(0), len?: bigint): Promise<string> {
  const h = typeof header === 'string' ? new TextEncoder().encode(header) : header;
  const buf = new Uint8Array(8 + h.length + data.length);
  new DataView(buf.buffer).setBigUint64(0, len ?? BigInt(h.length), true);
  buf.set(h, 8);
  buf.set(data, 8 + h.length);
  const path = join(dir, name);
  await writeFile(path, buf);
  return path;
}

async function expectStError(p: Promise<unknown>, file: string, re: RegExp, tensor?: string): Promise<void> {
  await assert.rejects(p, (err: unknown) => {
    assert.ok(err instanceof SafetensorsError, `expected a SafetensorsError, got ${String(err)}`);
    assert.ok(err.message.includes(file), `message names the file: ${err.message}`);
    if (tensor !== undefined) assert.ok(err.message.includes(JSON.stringify(tensor)), `message names tensor ${tensor}: ${err.message}`);
    assert.match(err.message, re);
    return true;
  });
}

/** Opens a file and reads every tensor, closing it whatever happens. */
async function openAndReadAll(path: string): Promise<number> {
  const f = await openSafetensors(path);
  try {
    let n = 0;
    for (const name of f.names()) {
      const t = await f.readTensor(name);
      assert.equal(
        t.data.length,
        t.shape.reduce((a, b) => a * b, 1),
      );
      n++;
    }
    return n;
  } finally {
    await f.close();
  }
}

// ---- round trips ----

/** Consecutive pieces of `n` elements (the last shorter), as an async iterable. */
async function* chunksOf(a: HostArray, n: number): AsyncGenerator<HostArray> {
  for (let i = 0; i < a.length; i += n) yield a.subarray(i, i + n);
}

describe('writeSafetensors / openSafetensors', () => {
  test('round trip is bit-exact for random bf16, f32 and i32 tensors, with layout checks', () =>
    withSeed(async (rng) => {
      const tensors = randomTensors(rng, 12);
      const lazyData = randomBits(rng, 'bf16', 9);
      tensors.push({ name: 'lazy', dtype: 'bf16', shape: [3, 3], data: async () => lazyData }); // pulled only while writing
      const path = join(dir, 'round.safetensors');
      const metadata = { format: 'pt', note: 'é "quoted" \n' };
      const size = await writeSafetensors(path, tensors, metadata);

      const raw = await readFile(path);
      assert.equal(raw.length, size);
      const n = Number(raw.readBigUInt64LE(0));
      assert.equal((8 + n) % 8, 0, 'header padded to 8 bytes');
      assert.match(raw.subarray(8, 8 + n).toString('utf8'), /^\{.*\} *$/s);
      assert.deepEqual(await readdir(dir).then((fs) => fs.filter((f) => f.includes('.tmp-'))), [], 'no temp files left');

      const f = await openSafetensors(path);
      try {
        assert.deepEqual(f.metadata, metadata);
        assert.deepEqual(new Set(f.names()), new Set(tensors.map((t) => t.name)));
        for (const t of tensors) {
          const info = f.info(t.name);
          const elem = t.dtype === 'bf16' ? 2 : 4;
          assert.equal(info.begin % elem, 0, `${t.name} aligned to its element size`);
          const got = await f.readTensor(t.name);
          assert.equal(got.dtype, t.dtype);
          assert.deepEqual(got.shape, t.shape);
          const want = (typeof t.data === 'function' ? await t.data() : t.data) as HostArray;
          assertSameBits(got.data, want, t.name);
          if (t.dtype === 'bf16') {
            const asF32 = await f.readTensor(t.name, { dtype: 'f32' });
            assert.equal(asF32.dtype, 'f32');
            assertSameBits(asF32.data, bf16ArrayToF32(want as Uint16Array), `${t.name} as f32`);
          } else if (t.dtype === 'f32') {
            const asBf16 = await f.readTensor(t.name, { dtype: 'bf16' });
            assert.equal(asBf16.dtype, 'bf16');
            assertSameBits(asBf16.data, f32ArrayToBf16(want as Float32Array), `${t.name} as bf16`);
          } else {
            await expectStError(f.readTensor(t.name, { dtype: 'f32' }), path, /cannot be converted/, t.name);
          }
        }
        await expectStError(f.readTensor('nope'), path, /no such tensor/, 'nope');
      } finally {
        await f.close();
      }
    }));

  test('tensors given as chunks (ops.readChunks) make the same file as whole arrays', () =>
    withSeed(async (rng) => {
      const tensors = randomTensors(rng, 6);
      const whole = join(dir, 'whole.safetensors');
      const chunked = join(dir, 'chunked.safetensors');
      await writeSafetensors(whole, tensors, { format: 'pt' });
      await writeSafetensors(
        chunked,
        tensors.map((t) => ({ ...t, data: () => chunksOf(t.data as HostArray, rng.int(1, 40)) })),
        { format: 'pt' },
      );
      assert.deepEqual(await readFile(chunked), await readFile(whole));
    }));

  test('writer refuses bad input, leaving no file and no temp file', () =>
    withSeed(async (rng) => {
      const path = join(dir, 'refused.safetensors');
      const good = randomTensors(rng, 2);
      const bad: [TensorToWrite[], RegExp, Record<string, string>?][] = [
        [[...good, { ...good[0] }], /given twice/],
        [[{ name: '__metadata__', dtype: 'f32', shape: [1], data: new Float32Array(1) }], /reserved/],
        [[{ name: 'short', dtype: 'f32', shape: [2, 3], data: new Float32Array(5) }], /needs 6 elements/],
        [[{ name: 'type', dtype: 'bf16', shape: [2], data: new Float32Array(2) }], /Uint16Array/],
        [[{ name: 'neg', dtype: 'f32', shape: [-1], data: new Float32Array(0) }], /non-negative/],
        // chunked data: too few or too many elements in all
        [[{ name: 'few', dtype: 'f32', shape: [4], data: () => chunksOf(new Float32Array(3), 2) }], /needs 4 elements, data has 3/],
        [
          [{ name: 'many', dtype: 'f32', shape: [4], data: () => chunksOf(new Float32Array(5), 2) }],
          /needs 4 elements, data has more than 4/,
        ],
        [good, /must be a string/, { a: 1 as unknown as string }],
      ];
      for (const [tensors, re, metadata] of bad) {
        await expectStError(writeSafetensors(path, tensors, metadata), path, re);
        assert.deepEqual(
          (await readdir(dir)).filter((f) => f.startsWith('refused') || f.includes('.tmp-')),
          [],
        );
      }
    }));

  test('reads past 2 GiB with positioned reads (sparse file)', () =>
    withSeed(async (rng) => {
      const filler = 2 ** 31 + 8 * rng.int(1, 64); // U8 filler pushes the tensor past the 2 GiB mark
      const values = randomBits(rng, 'f32', 6) as Float32Array;
      const header = JSON.stringify({
        filler: { dtype: 'U8', shape: [filler], data_offsets: [0, filler] },
        far: { dtype: 'F32', shape: [2, 3], data_offsets: [filler, filler + 24] },
      });
      const h = new TextEncoder().encode(header + ' '.repeat((8 - ((8 + header.length) % 8)) % 8));
      const path = join(dir, 'sparse.safetensors');
      const fh = await open(path, 'w');
      try {
        const len = Buffer.alloc(8);
        len.writeBigUInt64LE(BigInt(h.length));
        await fh.write(len, 0, 8, 0);
        await fh.write(h, 0, h.length, 8);
        await fh.write(bytesOf(values), 0, 24, 8 + h.length + filler);
      } finally {
        await fh.close();
      }
      const f = await openSafetensors(path);
      try {
        assert.ok(f.info('far').begin > 2 ** 31);
        assertSameBits((await f.readTensor('far')).data, values, 'far');
        await expectStError(f.readTensor('filler'), path, /U8 is not supported/, 'filler');
      } finally {
        await f.close();
        await rm(path);
      }
    }));
});

// ---- PyTorch ----

const TORCH_SCRIPT = String.raw`
import sys, json, struct, torch
seed, d = int(sys.argv[1]), sys.argv[2]
g = torch.Generator().manual_seed(seed)
ts = {}
ts['w.bf16'] = (torch.randn(3, 5, generator=g) * 3).to(torch.bfloat16)
h = (torch.randn(4, 7, generator=g) * 100).to(torch.float16)
h.view(-1)[:7] = torch.tensor([float('inf'), float('-inf'), 0.0, -0.0, 6e-8, 65504.0, float('nan')], dtype=torch.float16)
ts['h.f16'] = h
ts['x.f32'] = torch.randn(2, 3, 4, generator=g)
ts['scalar'] = torch.randn((), generator=g)
ts['empty'] = torch.zeros(0, 3)
ts['ids.i64'] = torch.randint(-2**31, 2**31, (5,), generator=g, dtype=torch.int64)
ts['ids.i32'] = torch.randint(-2**31, 2**31, (3,), generator=g, dtype=torch.int64).to(torch.int32)
names = ['x.f32', 'w.bf16', 'ids.i64', 'h.f16', 'scalar', 'empty', 'ids.i32']
DT = {torch.bfloat16: 'BF16', torch.float16: 'F16', torch.float32: 'F32', torch.int64: 'I64', torch.int32: 'I32'}
def raw(t):
    t = t.contiguous()
    return (t.view(torch.int16) if t.dtype == torch.bfloat16 else t).numpy().tobytes()
header = {'__metadata__': {'format': 'pt', 'seed': str(seed)}}
blobs, off = [], 0
for n in names:
    b = raw(ts[n])
    header[n] = {'dtype': DT[ts[n].dtype], 'shape': list(ts[n].shape), 'data_offsets': [off, off + len(b)]}
    off += len(b)
    blobs.append(b)
hb = json.dumps(header).encode()
hb += b' ' * ((8 - len(hb) % 8) % 8)
with open(d + '/torch.safetensors', 'wb') as f:
    f.write(struct.pack('<Q', len(hb)))
    f.write(hb)
    for b in blobs:
        f.write(b)
exp = {}
for n in names:
    t = ts[n]
    e = {'shape': list(t.shape)}
    if t.dtype in (torch.int64, torch.int32):
        e['ints'] = [str(v) for v in t.reshape(-1).tolist()]
    else:
        e['f32hex'] = t.to(torch.float32).contiguous().numpy().tobytes().hex()
    if t.dtype == torch.bfloat16:
        e['bits'] = t.contiguous().view(torch.int16).reshape(-1).tolist()
    exp[n] = e
# the file spinlm wrote, parsed by hand and converted by torch
with open(d + '/ours.safetensors', 'rb') as f:
    buf = f.read()
n = struct.unpack('<Q', buf[:8])[0]
hdr = json.loads(buf[8:8 + n].decode('utf-8'))
data = buf[8 + n:]
ours = {'header_end': 8 + n}
for k, v in hdr.items():
    if k == '__metadata__':
        ours[k] = v
        continue
    b, e = v['data_offsets']
    chunk = bytearray(data[b:e])
    if v['dtype'] == 'BF16':
        t = torch.frombuffer(chunk, dtype=torch.int16).view(torch.bfloat16)
    else:
        t = torch.frombuffer(chunk, dtype={'F32': torch.float32, 'I32': torch.int32}[v['dtype']])
    t = t.reshape(v['shape'])
    ours[k] = {'shape': list(t.shape), 'f32hex': t.to(torch.float32).numpy().tobytes().hex() if v['dtype'] != 'I32' else None,
               'ints': t.reshape(-1).tolist() if v['dtype'] == 'I32' else None}
print(json.dumps({'expected': exp, 'ours': ours}))
`;

describe('PyTorch interop', () => {
  test('a file torch wrote reads back equal; a file spinlm wrote reads in torch', () =>
    withSeed(async (rng, seed) => {
      const ours: TensorToWrite[] = [
        { name: 'a.bf16', dtype: 'bf16', shape: [4, 3], data: f32ArrayToBf16(Float32Array.from({ length: 12 }, () => rng.normal() * 5)) },
        { name: 'b.f32', dtype: 'f32', shape: [5], data: Float32Array.from({ length: 5 }, () => rng.normal()) },
        { name: 'c.i32', dtype: 'i32', shape: [2, 2], data: Int32Array.from({ length: 4 }, () => rng.int(-1e9, 1e9)) },
      ];
      await writeSafetensors(join(dir, 'ours.safetensors'), ours, { format: 'pt' });
      const out = JSON.parse(
        execFileSync(PYTHON, ['-c', TORCH_SCRIPT, String(seed), dir], {
          encoding: 'utf8',
          env: { ...process.env, OMP_NUM_THREADS: '1' },
          timeout: 120_000,
        }),
      );

      // torch -> spinlm
      const path = join(dir, 'torch.safetensors');
      const f = await openSafetensors(path);
      try {
        assert.deepEqual(f.metadata, { format: 'pt', seed: String(seed) });
        assert.deepEqual(f.names(), ['x.f32', 'w.bf16', 'ids.i64', 'h.f16', 'scalar', 'empty', 'ids.i32']);
        for (const [name, e] of Object.entries(
          out.expected as Record<string, { shape: number[]; f32hex?: string; ints?: string[]; bits?: number[] }>,
        )) {
          const t = await f.readTensor(name);
          assert.deepEqual(t.shape, e.shape, name);
          if (e.ints) {
            assert.equal(t.dtype, 'i32');
            assert.deepEqual(Array.from(t.data as Int32Array, String), e.ints, name);
          } else {
            const asF32 = await f.readTensor(name, { dtype: 'f32' });
            assert.equal(Buffer.from(bytesOf(asF32.data)).toString('hex'), e.f32hex, `${name} as f32`);
          }
          if (e.bits)
            assert.deepEqual(
              Array.from(t.data as Uint16Array),
              e.bits.map((b) => b & 0xffff),
              `${name} raw bf16`,
            );
        }
        assert.equal((await f.readTensor('h.f16')).dtype, 'f32', 'F16 arrives as f32');
        // streamed reads (the loader's path) convert F16 / BF16 / F32 as readTensor does
        for (const name of ['x.f32', 'w.bf16', 'h.f16', 'scalar', 'empty']) {
          for (const target of ['bf16', 'f32'] as const) {
            const want = (await f.readTensor(name, { dtype: target })).data;
            const got = target === 'bf16' ? new Uint16Array(want.length) : new Float32Array(want.length);
            await f.readTensorChunks(name, target, rng.int(1, 4), (data, offset) => got.set(data, offset));
            assertSameBits(got, want, `${name} streamed as ${target}`);
          }
        }
      } finally {
        await f.close();
      }

      // spinlm -> torch
      assert.equal(out.ours.header_end % 8, 0);
      assert.deepEqual(out.ours.__metadata__, { format: 'pt' });
      for (const t of ours) {
        const got = out.ours[t.name];
        assert.deepEqual(got.shape, t.shape, t.name);
        if (t.dtype === 'i32') assert.deepEqual(got.ints, Array.from(t.data as Int32Array), t.name);
        else {
          const f32 = t.dtype === 'bf16' ? bf16ArrayToF32(t.data as Uint16Array) : (t.data as Float32Array);
          assert.equal(got.f32hex, Buffer.from(bytesOf(f32)).toString('hex'), t.name);
        }
      }
    }));
});

// ---- f16 ----

describe('f16 -> f32', () => {
  test('all 65536 values equal a float64 evaluation of the binary16 format', () => {
    const all = Uint16Array.from({ length: 65536 }, (_, i) => i);
    const out = f16ArrayToF32(all);
    const bits = new Uint32Array(out.buffer);
    let nans = 0;
    for (let h = 0; h < 65536; h++) {
      const sign = h >> 15 ? -1 : 1;
      const e = (h >> 10) & 31;
      const m = h & 1023;
      let want: number;
      if (e === 31) want = m === 0 ? sign * Infinity : NaN;
      else if (e === 0) want = sign * Math.pow(2, -14) * (m / 1024);
      else want = sign * Math.pow(2, e - 15) * (1 + m / 1024);
      if (Number.isNaN(want)) {
        nans++;
        assert.ok(Number.isNaN(out[h]), `0x${h.toString(16)} should be NaN`);
        assert.equal(bits[h], (((h & 0x8000) << 16) | 0x7f800000 | (m << 13)) >>> 0, `0x${h.toString(16)}: NaN payload kept`);
      } else {
        assert.ok(Object.is(out[h], want), `0x${h.toString(16)}: got ${out[h]}, want ${want}`);
      }
      assert.ok(Object.is(f16ToF32(h), out[h]) || (Number.isNaN(out[h]) && Number.isNaN(f16ToF32(h))));
    }
    assert.equal(nans, 2046);
  });
});

// ---- validation, one rule at a time ----

describe('header validation', () => {
  const entry = (dtype: string, shape: unknown, offsets: unknown) => ({ dtype, shape, data_offsets: offsets });
  const f32Data = (n: number) => bytesOf(Float32Array.from({ length: n }, (_, i) => i + 0.5));

  test('file shorter than 8 bytes; unreadable file', async () => {
    const p = join(dir, 'short.safetensors');
    await writeFile(p, Buffer.from([1, 0, 0, 0, 0]));
    await expectStError(openSafetensors(p), p, /too short/);
    await expectStError(openSafetensors(join(dir, 'missing.safetensors')), 'missing.safetensors', /cannot open \(ENOENT\)/);
  });

  test('header length over the cap, or past the end of the file', async () => {
    const p1 = await rawFile('huge.safetensors', '{}', undefined, 2n ** 63n + 5n);
    await expectStError(openSafetensors(p1), p1, new RegExp(`over the ${MAX_HEADER_BYTES}-byte limit`));
    const p2 = await rawFile('capped.safetensors', '{}', undefined, BigInt(MAX_HEADER_BYTES) + 1n);
    await expectStError(openSafetensors(p2), p2, /over the/);
    const p3 = await rawFile('past.safetensors', '{}', undefined, 3n);
    await expectStError(openSafetensors(p3), p3, /runs past the end/);
  });

  test('header not UTF-8, not JSON, not an object', async () => {
    const p1 = await rawFile('utf8.safetensors', new Uint8Array([0x7b, 0xff, 0xfe, 0x7d]));
    await expectStError(openSafetensors(p1), p1, /not valid UTF-8/);
    const p2 = await rawFile('json.safetensors', '{"a": ');
    await expectStError(openSafetensors(p2), p2, /not valid JSON/);
    const p3 = await rawFile('arr.safetensors', '[1, 2]');
    await expectStError(openSafetensors(p3), p3, /not a JSON object/);
    const p4 = await rawFile('empty-header.safetensors', '');
    await expectStError(openSafetensors(p4), p4, /not valid JSON/);
  });

  test('entries must be objects with dtype, shape, data_offsets', async () => {
    const cases: [string, unknown, RegExp][] = [
      ['not-object', 5, /entry must be an object/],
      ['list', [1], /entry must be an object/],
      ['no-dtype', { shape: [1], data_offsets: [0, 4] }, /unknown dtype/],
      ['bad-dtype', entry('Q4', [1], [0, 4]), /unknown dtype "Q4"/],
      ['shape-str', entry('F32', '1', [0, 4]), /shape must be a list/],
      ['shape-neg', entry('F32', [-1], [0, 4]), /shape must be a list/],
      ['shape-frac', entry('F32', [0.5], [0, 4]), /shape must be a list/],
      ['shape-unsafe', entry('F32', [2 ** 53], [0, 4]), /shape must be a list/],
      ['no-offsets', { dtype: 'F32', shape: [1] }, /data_offsets must be/],
      ['offsets-3', entry('F32', [1], [0, 4, 8]), /data_offsets must be/],
      ['offsets-str', entry('F32', [1], ['0', '4']), /data_offsets must be/],
      ['offsets-neg', entry('F32', [1], [-4, 0]), /data_offsets must be/],
      ['end-before-begin', entry('F32', [1], [4, 0]), /end before they begin/],
      ['size-mismatch', entry('F32', [2], [0, 4]), /needs 8 bytes but data_offsets \[0, 4\] hold 4/],
      ['giant-shape', entry('BF16', [2 ** 40, 2 ** 40], [0, 4]), /needs 2417851639229258349412352 bytes/],
      ['out-of-bounds', entry('F32', [2], [0, 8]), /run past the data section \(4 bytes\)/],
    ];
    for (const [name, e, re] of cases) {
      const p = await rawFile(`${name}.safetensors`, JSON.stringify({ [name]: e }), f32Data(1));
      await expectStError(openSafetensors(p), p, re, name);
    }
  });

  test('overlaps, gaps and trailing bytes', async () => {
    const p1 = await rawFile(
      'overlap.safetensors',
      JSON.stringify({ a: entry('F32', [2], [0, 8]), b: entry('F32', [2], [4, 12]) }),
      f32Data(3),
    );
    await expectStError(openSafetensors(p1), p1, /overlaps tensor "a"/, 'b');
    const p2 = await rawFile(
      'same.safetensors',
      JSON.stringify({ a: entry('F32', [1], [0, 4]), b: entry('F32', [1], [0, 4]) }),
      f32Data(1),
    );
    await expectStError(openSafetensors(p2), p2, /overlaps/);
    const p3 = await rawFile(
      'gap.safetensors',
      JSON.stringify({ a: entry('F32', [1], [0, 4]), b: entry('F32', [1], [8, 12]) }),
      f32Data(3),
    );
    await expectStError(openSafetensors(p3), p3, /bytes 4\.\.8 of the data section belong to no tensor/);
    const p4 = await rawFile('trailing.safetensors', JSON.stringify({ a: entry('F32', [1], [0, 4]) }), f32Data(2));
    await expectStError(openSafetensors(p4), p4, /last 4 bytes of the data section belong to no tensor/);
    // zero-size tensors may sit anywhere on a boundary
    const p5 = await rawFile(
      'zero.safetensors',
      JSON.stringify({ z: entry('F32', [0, 2 ** 52], [4, 4]), a: entry('F32', [1], [0, 4]) }),
      f32Data(1),
    );
    assert.equal(await openAndReadAll(p5), 2);
  });

  test('duplicate names and duplicate fields (which JSON.parse would hide)', async () => {
    const e = JSON.stringify(entry('F32', [1], [0, 4]));
    const p1 = await rawFile('dup.safetensors', `{"a": ${e}, "\\u0061": ${e}}`, f32Data(1));
    await expectStError(openSafetensors(p1), p1, /names tensor "a" twice/);
    const p2 = await rawFile(
      'dupfield.safetensors',
      '{"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4], "shape": [1]}}',
      f32Data(1),
    );
    await expectStError(openSafetensors(p2), p2, /repeats the key "shape"/);
    // the same key in different objects is fine
    const p3 = await rawFile('nodup.safetensors', `{"__metadata__": {"a": "x"}, "a": ${e}}`, f32Data(1));
    assert.equal(await openAndReadAll(p3), 1);
  });

  test('__metadata__ must map strings to strings', async () => {
    const e = entry('F32', [1], [0, 4]);
    const p1 = await rawFile('meta-num.safetensors', JSON.stringify({ __metadata__: { format: 1 }, a: e }), f32Data(1));
    await expectStError(openSafetensors(p1), p1, /__metadata__\["format"\] must be a string, got 1/);
    const p2 = await rawFile('meta-list.safetensors', JSON.stringify({ __metadata__: ['pt'], a: e }), f32Data(1));
    await expectStError(openSafetensors(p2), p2, /__metadata__ must be an object of strings/);
    const p3 = await rawFile('meta-proto.safetensors', `{"__metadata__": {"__proto__": "x"}, "a": ${JSON.stringify(e)}}`, f32Data(1));
    const f = await openSafetensors(p3);
    assert.deepEqual(Object.entries(f.metadata), [['__proto__', 'x']]);
    await f.close();
  });

  test('I64 beyond i32, and a file truncated after its header was read', async () => {
    const big = new BigInt64Array([5n, -(2n ** 31n), 2n ** 31n]);
    const p1 = await rawFile('i64.safetensors', JSON.stringify({ a: entry('I64', [3], [0, 24]) }), bytesOf(big));
    const f1 = await openSafetensors(p1);
    await expectStError(f1.readTensor('a'), p1, /element 2 = 2147483648 does not fit in i32/, 'a');
    await f1.close();

    const p2 = await rawFile('trunc.safetensors', JSON.stringify({ a: entry('F32', [2], [0, 8]) }), f32Data(2));
    const f2 = await openSafetensors(p2);
    await truncate(p2, 12);
    await expectStError(f2.readTensor('a'), p2, /file ended at byte/, 'a');
    await f2.close();
  });
});

// ---- shards ----

describe('sharded checkpoints', () => {
  test('write shards + index, read back, switch layouts without stale files', () =>
    withSeed(async (rng) => {
      const ckpt = await mkdtemp(join(dir, 'ckpt-'));
      const tensors = randomTensors(rng, 9, 'model.layers').map((t) => ({ ...t, shape: [rng.int(2, 8), rng.int(1, 8)] }));
      for (const t of tensors) (t as { data: HostArray }).data = randomBits(rng, t.dtype, t.shape[0] * t.shape[1]);
      const sizes = tensors.map((t) => t.shape[0] * t.shape[1] * (t.dtype === 'bf16' ? 2 : 4));
      const total = sizes.reduce((a, b) => a + b, 0);
      const max = Math.max(...sizes) + 1;

      const written = await writeCheckpointTensors(ckpt, tensors, { maxShardBytes: max });
      assert.ok(written.length >= 3, `expected at least 2 shards, got ${written.join(', ')}`);
      const n = written.length - 1;
      assert.deepEqual(written, [
        ...Array.from({ length: n }, (_, i) => `model-${String(i + 1).padStart(5, '0')}-of-${String(n).padStart(5, '0')}.safetensors`),
        INDEX_FILE,
      ]);
      const index = JSON.parse(await readFile(join(ckpt, INDEX_FILE), 'utf8'));
      assert.equal(index.metadata.total_size, total);
      const keys = Object.keys(index.weight_map);
      assert.deepEqual(keys, [...keys].sort(), 'weight_map sorted by name');
      assert.deepEqual(new Set(keys), new Set(tensors.map((t) => t.name)));

      const readBack = async () => {
        const c = await openCheckpointTensors(ckpt);
        try {
          assert.deepEqual(new Set(c.names()), new Set(tensors.map((t) => t.name)));
          for (const t of tensors) assertSameBits((await c.readTensor(t.name)).data, t.data as HostArray, t.name);
        } finally {
          await c.close();
        }
      };
      await readBack();
      for (const shard of written.slice(0, -1)) {
        const f = await openSafetensors(join(ckpt, shard));
        assert.deepEqual(f.metadata, { format: 'pt' });
        await f.close();
      }

      assert.deepEqual(await writeCheckpointTensors(ckpt, tensors), [SINGLE_FILE]);
      assert.deepEqual((await readdir(ckpt)).sort(), [SINGLE_FILE], 'index and shards removed');
      await readBack();
      await writeCheckpointTensors(ckpt, tensors, { maxShardBytes: max });
      assert.deepEqual((await readdir(ckpt)).sort(), [...written].sort(), 'single file removed');
      await readBack();
      await rm(ckpt, { recursive: true });
    }));

  test('index problems: missing shard, wrong shard, path escape, bad JSON, nothing there', () =>
    withSeed(async (rng) => {
      const ckpt = await mkdtemp(join(dir, 'bad-'));
      const tensors = randomTensors(rng, 4, 'w').map((t) => ({ ...t, dtype: 'f32' as const, shape: [4], data: randomBits(rng, 'f32', 4) }));
      const written = await writeCheckpointTensors(ckpt, tensors, { maxShardBytes: 16 });
      const indexPath = join(ckpt, INDEX_FILE);
      const index = JSON.parse(await readFile(indexPath, 'utf8'));
      const setIndex = (v: unknown) => writeFile(indexPath, typeof v === 'string' ? v : JSON.stringify(v));
      const [first, second] = [tensors[0].name, tensors[1].name];

      await setIndex({ ...index, weight_map: { ...index.weight_map, [first]: index.weight_map[second] } });
      await expectStError(openCheckpointTensors(ckpt), indexPath, /does not contain it/, first);
      await setIndex({ ...index, weight_map: { ...index.weight_map, [first]: '../escape.safetensors' } });
      await expectStError(openCheckpointTensors(ckpt), indexPath, /must be a file name in the same directory/);
      await setIndex({ ...index, weight_map: { ...index.weight_map, [first]: 7 } });
      await expectStError(openCheckpointTensors(ckpt), indexPath, /must be a file name/);
      await setIndex({ metadata: {} });
      await expectStError(openCheckpointTensors(ckpt), indexPath, /"weight_map" must be an object/);
      await setIndex('{"weight_map": ');
      await expectStError(openCheckpointTensors(ckpt), indexPath, /not valid JSON/);
      await setIndex(index);
      await rm(join(ckpt, written[1]));
      await expectStError(openCheckpointTensors(ckpt), indexPath, new RegExp(`names shard "${written[1]}", which does not exist`));
      await rm(indexPath);
      await expectStError(openCheckpointTensors(ckpt), ckpt, /no model.safetensors or model.safetensors.index.json/);
      await rm(ckpt, { recursive: true });
    }));
});

// ---- fuzz ----

describe('fuzz', () => {
  test('hundreds of mutated files each parse to a valid result or throw a SafetensorsError, quickly', () =>
    withSeed(async (rng) => {
      const base = join(dir, 'fuzz-base.safetensors');
      await writeSafetensors(
        base,
        [
          { name: 'w', dtype: 'bf16', shape: [3, 4], data: randomBits(rng, 'bf16', 12) },
          { name: 'b', dtype: 'f32', shape: [5], data: randomBits(rng, 'f32', 5) },
          { name: 'ids', dtype: 'i32', shape: [2, 2], data: randomBits(rng, 'i32', 4) },
        ],
        { format: 'pt' },
      );
      const orig = new Uint8Array(await readFile(base));
      const headerLen = Number(new DataView(orig.buffer).getBigUint64(0, true));
      const headerText = new TextDecoder().decode(orig.subarray(8, 8 + headerLen));
      const data = orig.subarray(8 + headerLen);
      const path = join(dir, 'fuzz.safetensors');
      const randInt = () =>
        [rng.int(-3, 3), rng.int(0, 200), rng.int(0, 2 ** 40), -rng.int(1, 100), rng.next() * 50, 2 ** 53 + rng.int(0, 9)][rng.int(0, 5)];
      const kinds = [0, 0, 0, 0, 0, 0];
      let ok = 0;
      let worstMs = 0;

      for (let iter = 0; iter < 300; iter++) {
        const kind = rng.int(0, 5);
        kinds[kind]++;
        let bytes: Uint8Array;
        if (kind === 0) {
          // flip a few bytes of the length field or header
          bytes = orig.slice();
          for (let k = rng.int(1, 4); k > 0; k--) bytes[rng.int(0, 8 + headerLen - 1)] = rng.int(0, 255);
        } else if (kind === 1) {
          // a wrong header length
          bytes = orig.slice();
          const choices = [
            0n,
            BigInt(rng.int(0, orig.length)),
            BigInt(headerLen + rng.int(-9, 9)),
            BigInt(rng.nextU32()) * BigInt(rng.nextU32()),
            2n ** 64n - 1n,
          ];
          new DataView(bytes.buffer).setBigUint64(0, BigInt.asUintN(64, choices[rng.int(0, choices.length - 1)]), true);
        } else if (kind === 2) {
          // truncated
          bytes = orig.slice(0, rng.int(0, orig.length - 1));
        } else if (kind === 3) {
          // a structurally valid header with one field of one entry changed
          const h = JSON.parse(headerText) as Record<string, Record<string, unknown>>;
          const name = ['w', 'b', 'ids', '__metadata__'][rng.int(0, 3)];
          const field = ['dtype', 'shape', 'data_offsets', 'extra'][rng.int(0, 3)];
          const values: unknown[] = [
            [randInt(), randInt()],
            [randInt()],
            ['F32', 'BF16', 'I32', 'I64', 'F16', 'U8', 'X', 7][rng.int(0, 7)],
            null,
            {},
            [rng.int(0, 4), rng.int(0, 4)],
            randInt(),
          ];
          h[name] = { ...(h[name] as object), [field]: values[rng.int(0, values.length - 1)] };
          if (rng.int(0, 4) === 0)
            h[`n${rng.int(0, 9)}`] = { dtype: 'U8', shape: [rng.int(0, 8)], data_offsets: [rng.int(0, 60), rng.int(0, 60)] };
          const text = new TextEncoder().encode(JSON.stringify(h));
          bytes = new Uint8Array(8 + text.length + data.length);
          new DataView(bytes.buffer).setBigUint64(0, BigInt(text.length), true);
          bytes.set(text, 8);
          bytes.set(data, 8 + text.length);
        } else if (kind === 4) {
          // data section grows or shrinks
          const delta = rng.int(-8, 8);
          bytes = new Uint8Array(Math.max(8 + headerLen, orig.length + delta));
          bytes.set(orig.subarray(0, Math.min(orig.length, bytes.length)));
        } else {
          // a span of the header replaced by random printable bytes (quotes, brackets, digits, escapes)
          bytes = orig.slice();
          const start = rng.int(8, 8 + headerLen - 1);
          const alphabet = '{}[]":,0123456789-.eE \\ux';
          for (let i = start; i < Math.min(8 + headerLen, start + rng.int(1, 12)); i++)
            bytes[i] = alphabet.charCodeAt(rng.int(0, alphabet.length - 1));
        }
        await writeFile(path, bytes);
        const t0 = performance.now();
        try {
          await openAndReadAll(path);
          ok++;
        } catch (err) {
          if (!(err instanceof SafetensorsError)) {
            assert.fail(`mutation ${iter} (kind ${kind}) threw a non-SafetensorsError: ${err instanceof Error ? err.stack : String(err)}`);
          }
          assert.ok(err.message.startsWith(path), err.message);
        }
        worstMs = Math.max(worstMs, performance.now() - t0);
      }
      assert.ok(worstMs < 1000, `slowest mutation took ${worstMs.toFixed(1)} ms`);
      assert.ok(ok < 300, 'some mutations must be rejected');
      assert.ok(
        kinds.every((k) => k > 0),
        `every mutation kind ran: ${kinds.join(', ')}`,
      );
    }));
});

const loadBackends = await testBackends();

describe('streamed loading', () => {
  test("readTensorChunks in chunks of any size gives readTensor's converted data (bf16 and f32 files, both targets)", () =>
    withSeed(async (rng) => {
      const tensors = Array.from({ length: 8 }, (_, i) => {
        const dtype: DType = i % 2 ? 'f32' : 'bf16';
        const shape = i === 0 ? [0] : [rng.int(1, 40), rng.int(1, 40)];
        return { name: `c.${i}`, dtype, shape, data: randomBits(rng, dtype, shape[0] * (shape[1] ?? 1)) };
      });
      const path = join(dir, 'chunks.safetensors');
      await writeSafetensors(path, tensors);
      const f = await openSafetensors(path);
      try {
        for (const t of tensors) {
          for (const target of ['bf16', 'f32'] as const) {
            const want = (await f.readTensor(t.name, { dtype: target })).data;
            const chunk = rng.int(1, 50);
            const got = target === 'bf16' ? new Uint16Array(want.length) : new Float32Array(want.length);
            let next = 0;
            await f.readTensorChunks(t.name, target, chunk, (data, offset) => {
              assert.equal(offset, next, 'chunks arrive in order');
              assert.ok(data.length <= chunk && data.length > 0);
              got.set(data, offset);
              next += data.length;
            });
            assert.equal(next, want.length);
            assertSameBits(got, want, `${t.name} as ${target} in chunks of ${chunk}`);
          }
        }
        await assert.rejects(
          f.readTensorChunks('c.0', 'f32', 0, () => {}),
          RangeError,
        );
      } finally {
        await f.close();
      }
    }));

  for (const be of loadBackends) {
    test(`Weights.load streams tensors larger than a chunk into the device bit-exactly, and names a NaN's element (${be.name})`, () =>
      withSeed(async (rng) => {
        // vocab x hidden > LOAD_CHUNK_ELEMENTS: the embedding and the LM head span two chunks
        const cfg = tinyConfig({ vocab: Math.ceil(LOAD_CHUNK_ELEMENTS / 64) + rng.int(1, 500), hidden: 64 });
        const specs = expectedTensors(cfg);
        const model = join(dir, `stream-${be.name}`);
        await mkdir(model, { recursive: true });
        const src = specs.map((s, i) => {
          const n = s.shape.reduce((a, b) => a * b, 1);
          const dtype: DType = i % 3 === 0 ? 'f32' : 'bf16';
          const data =
            dtype === 'f32'
              ? Float32Array.from({ length: n }, () => rng.normal())
              : f32ArrayToBf16(Float32Array.from({ length: n }, () => rng.normal()));
          return { name: s.name, dtype, shape: s.shape, data };
        });
        await writeSafetensors(join(model, SINGLE_FILE), src);
        for (const dtype of ['bf16', 'f32'] as const) {
          const files = await openCheckpointTensors(model);
          try {
            const w = await Weights.load(be, cfg, files, dtype);
            for (const s of src) {
              const want = (await files.readTensor(s.name, { dtype })).data;
              assertSameBits(await ops.read(w.get(s.name)), want, `${s.name} loaded as ${dtype}`);
            }
            w.free();
          } finally {
            await files.close();
          }
        }
        // a NaN in the second chunk of the embedding is reported at its element
        const emb = src[0];
        const at = LOAD_CHUNK_ELEMENTS + rng.int(0, emb.shape[0] * emb.shape[1] - LOAD_CHUNK_ELEMENTS - 1);
        if (emb.dtype === 'f32') (emb.data as Float32Array)[at] = NaN;
        else (emb.data as Uint16Array)[at] = 0x7fc0;
        await writeSafetensors(join(model, SINGLE_FILE), src);
        const files = await openCheckpointTensors(model);
        try {
          await expectStError(Weights.load(be, cfg, files, 'bf16'), model, new RegExp(`element ${at} is NaN`), emb.name);
        } finally {
          await files.close();
        }
      }));
  }
});
