// The NCCL process group (src/dist/nccl.ts, native/comm/nccl.cc) without a GPU: NCCL is found at run
// time or the error says what to install; a stand-in libnccl (test/helpers/fake_nccl.c, built here
// with cc) receives the calls with the right device pointers, counts, NCCL types, ops, roots and
// stream; NCCL errors and asynchronous errors become one clear error. No GPU ran any of this.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { CpuBackend } from '../src/backend/cpu/cpu_backend.js';
import { commAddonPath, loadCommAddon } from '../src/dist/mpi.js';
import { deviceMemoryOf, loadNccl, NcclProcessGroup } from '../src/dist/nccl.js';
import { SoloGroup } from '../src/dist/process_group.js';
import type { Tensor } from '../src/tensor/tensor.js';
import * as ops from '../src/ops/index.js';
import { withSeed } from './helpers/random.js';

const dir = mkdtempSync(join(tmpdir(), 'spinlm-nccl-'));
process.on('exit', () => rmSync(dir, { recursive: true, force: true }));
const SRC = join(import.meta.dirname, 'helpers', 'fake_nccl.c');

function build(name: string, defines: string[] = []): string {
  const out = join(dir, name);
  execFileSync('cc', ['-shared', '-fPIC', '-O1', ...defines, '-o', out, SRC]);
  return out;
}

function withLibrary<T>(path: string | undefined, fn: () => T): T {
  const old = process.env.SPINLM_NCCL_LIBRARY;
  if (path === undefined) delete process.env.SPINLM_NCCL_LIBRARY;
  else process.env.SPINLM_NCCL_LIBRARY = path;
  try {
    return fn();
  } finally {
    if (old === undefined) delete process.env.SPINLM_NCCL_LIBRARY;
    else process.env.SPINLM_NCCL_LIBRARY = old;
  }
}

// one process loads one NCCL: the failing searches run first, the stand-in last
test('NCCL is searched at run time; missing or not-NCCL libraries give one error naming them and the fix', () => {
  assert.ok(existsSync(commAddonPath()), `${commAddonPath()} is missing: install Open MPI and rebuild`);
  const native = loadCommAddon();
  const missing = join(dir, 'nowhere', 'libnccl.so.2');
  assert.throws(
    () => withLibrary(missing, () => loadNccl(native)),
    (e: Error) => {
      assert.match(
        e.message,
        new RegExp(
          `^spinlm: several processes on --device cuda need NCCL: NCCL library not found \\(tried ${missing.replace(/[.]/g, '\\.')}\\)`,
        ),
      );
      assert.match(e.message, /cannot open shared object file/);
      assert.match(e.message, /apt-get install libnccl2\) or set SPINLM_NCCL_LIBRARY=/);
      return true;
    },
  );
  // the default search: libnccl.so.2 / libnccl.so on the loader's path and CUDA's directories
  const installed = /libnccl\.so/.test(execFileSync('sh', ['-c', 'ldconfig -p 2>/dev/null || true'], { encoding: 'utf8' }));
  if (installed) assert.match(withLibrary(undefined, () => loadNccl(native)).library, /libnccl\.so/);
  else
    assert.throws(
      () => withLibrary(undefined, () => loadNccl(native)),
      /NCCL library not found \(tried libnccl\.so\.2, libnccl\.so, \/usr\/local\/cuda\/lib64\/libnccl\.so\.2/,
    );
  const partial = build('libpartial.so', ['-DFAKE_NCCL_PARTIAL']);
  if (!installed) {
    assert.throws(
      () => withLibrary(partial, () => loadNccl(native)),
      new RegExp(
        `${partial.replace(/[.]/g, '\\.')} is not a usable NCCL library \\(missing ncclGetUniqueId, ncclCommInitRank, .*ncclBroadcast\\)`,
      ),
    );
  }
});

test('the NCCL group passes device pointers, counts, types, ops and the stream to libnccl (stand-in library, no GPU)', async () =>
  withSeed(async (rng) => {
    if (/libnccl\.so/.test(execFileSync('sh', ['-c', 'ldconfig -p 2>/dev/null || true'], { encoding: 'utf8' }))) return; // a real NCCL was loaded above
    const lib = build('libnccl.so.2');
    const log = join(dir, 'calls.log');
    writeFileSync(log, '');
    process.env.FAKE_NCCL_LOG = log;
    const be = new CpuBackend();
    // stand-in device memory: each tensor gets a random 256-aligned "address"; the stream a random handle
    const base = new Map<Tensor, bigint>();
    const address = (t: Tensor) => {
      if (!base.has(t)) base.set(t, BigInt(rng.int(1, 1 << 20)) << 8n);
      return base.get(t)!;
    };
    const stream = BigInt(rng.int(1, 1 << 30)) << 4n;
    const group = withLibrary(lib, () => new NcclProcessGroup(new SoloGroup(), { devicePointer: address, stream: () => stream }));
    assert.equal(group.version, 21903);
    const n = rng.int(2, 300);
    const f = ops.zeros(be, 'f32', [n]);
    const h = ops.zeros(be, 'bf16', [n]);
    const g = ops.zeros(be, 'f32', [n]);
    group.allReduce(f, 'max');
    group.reduceScatter(g, f);
    group.allGather(h);
    group.allGatherAsync(f, g).wait();
    group.broadcast(h, 0);
    const hex = (x: bigint) => `0x${x.toString(16)}`;
    const s = hex(stream);
    assert.deepEqual(readFileSync(log, 'utf8').trim().split('\n'), [
      'init nranks=1 rank=0 id0=1 id127=122',
      `allReduce send=${hex(address(f))} recv=${hex(address(f))} count=${n} type=7 op=2 stream=${s}`,
      `reduceScatter send=${hex(address(g))} recv=${hex(address(f))} count=${n} type=7 op=0 stream=${s}`,
      `allGather send=${hex(address(h))} recv=${hex(address(h))} count=${n} type=9 op=-1 stream=${s}`,
      `allGather send=${hex(address(g))} recv=${hex(address(f))} count=${n} type=7 op=-1 stream=${s}`,
      `broadcast send=${hex(address(h))} recv=${hex(address(h))} count=${n} type=9 root=0 stream=${s}`,
    ]);
    assert.equal(group.bytes.calls, 5);
    // an NCCL error is one error naming the rank and the collective
    const empty = ops.zeros(be, 'f32', [0]);
    assert.throws(
      () => group.allReduce(empty),
      /^CommError: spinlm: rank 0 of 1: NCCL allReduce: nccl allReduce failed: invalid argument \(fake\) \(NCCL error 4\)$/m,
    );
    // an asynchronous error (a dead peer) surfaces at the next barrier
    process.env.FAKE_NCCL_ASYNC_ERROR = '1';
    assert.throws(() => group.barrier(), /NCCL: invalid argument \(fake\); another rank died or the network failed/);
    delete process.env.FAKE_NCCL_ASYNC_ERROR;
    group.close();
    assert.match(readFileSync(log, 'utf8'), /destroy 1\n$/);
    for (const t of [f, g, h, empty]) t.free();
    // the CPU backend has no device pointers
    assert.throws(() => deviceMemoryOf(be), /needs CUDA tensors with device pointers; the cpu backend has none \(use the MPI group\)/);
  }));
