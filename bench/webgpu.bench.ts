// WebGPU beside the CPU backend in one run: GB/s of the loss family (logprobGather forward and in-place
// backward, f32 and bf16 logits) against the device's copy bandwidth, GFLOP/s of the GEMM (f32 and bf16
// weights) and of causal attention (forward, backward). Every timing ends with a read of a small result,
// so it covers the device's work, not only its recording.
//   node --import tsx bench/webgpu.bench.ts [--size small|large] [--backends cpu,webgpu] [--json out.json]
// small (default): shapes for lavapipe on 2 cores (regression numbers, not a performance target);
// large: shapes for a real GPU.
import { writeFileSync } from 'node:fs';
import type { Backend } from '../src/backend/backend.js';
import { CpuBackend } from '../src/backend/cpu/cpu_backend.js';
import { WebGpuBackend } from '../src/backend/webgpu/webgpu_backend.js';
import * as ops from '../src/ops/index.js';
import { f32ArrayToBf16 } from '../src/tensor/bf16.js';
import type { Tensor } from '../src/tensor/tensor.js';
import { Rng } from '../src/util/rng.js';
import { gb, medianMs, table } from './harness.js';

const argv = process.argv.slice(2);
const flag = (name: string, dflt: string) => {
  const i = argv.indexOf(`--${name}`);
  return i >= 0 ? argv[i + 1] : dflt;
};
const size = flag('size', 'small');
if (size !== 'small' && size !== 'large') throw new Error(`--size must be small or large, got ${size}`);
const large = size === 'large';
const names = flag('backends', 'cpu,webgpu').split(',');
const json = flag('json', '');

const S = large
  ? { n: 4096, v: 32000, m: 4096, gn: 4096, gk: 4096, b: 4, l: 1024, nh: 32, nkv: 8, hd: 128, iters: 20 }
  : { n: 256, v: 32000, m: 512, gn: 512, gk: 512, b: 1, l: 256, nh: 8, nkv: 2, hd: 64, iters: 5 };

const rng = new Rng(7);
function randn(n: number, scale = 1): Float32Array {
  const a = new Float32Array(n);
  for (let i = 0; i < n; i++) a[i] = rng.normal() * scale;
  return a;
}

async function sync(t: Tensor): Promise<void> {
  await ops.read(t.numel > 64 ? t.view(0, [64]) : t);
}

interface Row {
  backend: string;
  op: string;
  shape: string;
  ms: number;
  rate: number;
  unit: string;
}

async function benchBackend(be: Backend): Promise<Row[]> {
  const rows: Row[] = [];
  const add = (op: string, shape: string, ms: number, rate: number, unit: string) => {
    rows.push({ backend: be.name, op, shape, ms, rate, unit });
    process.stderr.write(`${be.name} ${op} ${shape}: ${ms.toFixed(2)} ms, ${rate.toFixed(2)} ${unit}\n`);
  };
  const { n, v } = S;
  const logits32 = randn(n * v, 3);
  const targets = ops.upload(be, { dtype: 'i32', data: Int32Array.from({ length: n }, () => rng.int(0, v - 1)) }, [n]);
  const dlogp = ops.upload(be, { dtype: 'f32', data: randn(n) }, [n]);
  // copy bandwidth: one f32 [n, v] copy (read + write)
  {
    const a = ops.upload(be, { dtype: 'f32', data: logits32 }, [n, v]);
    const out = ops.empty(be, 'f32', [n, v]);
    const ms = await medianMs(
      'copy',
      async () => {
        be.cast(a, out);
        await sync(out);
      },
      S.iters,
    );
    add('copy (f32)', `[${n}, ${v}]`, ms, gb(2 * n * v * 4, ms), 'GB/s');
    a.free();
    out.free();
  }
  for (const dtype of ['f32', 'bf16'] as const) {
    const z =
      dtype === 'f32'
        ? ops.upload(be, { dtype, data: logits32 }, [n, v])
        : ops.upload(be, { dtype, data: f32ArrayToBf16(logits32) }, [n, v]);
    const bytes = n * v * (dtype === 'f32' ? 4 : 2);
    let lse: Tensor<'f32'> | null = null;
    const fwd = await medianMs(
      `gather ${dtype}`,
      async () => {
        const g = ops.logprobGather(z, targets);
        lse = g.lse;
        await sync(g.logp);
      },
      S.iters,
    );
    add(`logprobGather (${dtype})`, `[${n}, ${v}]`, fwd, gb(bytes, fwd), 'GB/s');
    const bwd = await medianMs(
      `backward ${dtype}`,
      async () => {
        ops.logprobGatherBackward(z, targets, lse!, dlogp, { out: z });
        await sync(lse!);
      },
      S.iters,
    );
    add(`logprobGatherBackward in place (${dtype})`, `[${n}, ${v}]`, bwd, gb(2 * bytes, bwd), 'GB/s');
    z.free();
  }
  for (const wdt of ['f32', 'bf16'] as const) {
    const { m, gn, gk } = S;
    const a = ops.upload(be, { dtype: 'f32', data: randn(m * gk) }, [m, gk]);
    const wf = randn(gn * gk, 0.05);
    const w =
      wdt === 'f32'
        ? ops.upload(be, { dtype: 'f32', data: wf }, [gn, gk])
        : ops.upload(be, { dtype: 'bf16', data: f32ArrayToBf16(wf) }, [gn, gk]);
    const out = ops.empty(be, 'f32', [m, gn]);
    const ms = await medianMs(
      `gemm ${wdt}`,
      async () => {
        ops.matmul(a, w, { transB: true, out });
        await sync(out);
      },
      S.iters,
    );
    add(`matmul x W^T (${wdt} W)`, `${m}x${gk} . ${gn}x${gk}`, ms, (2 * m * gn * gk) / (ms * 1e6), 'GFLOP/s');
  }
  {
    const { b, l, nh, nkv, hd } = S;
    const q = ops.upload(be, { dtype: 'f32', data: randn(b * l * nh * hd) }, [b, l, nh, hd]);
    const k = ops.upload(be, { dtype: 'f32', data: randn(b * l * nkv * hd) }, [b, l, nkv, hd]);
    const vv = ops.upload(be, { dtype: 'f32', data: randn(b * l * nkv * hd) }, [b, l, nkv, hd]);
    const mask = ops.upload(be, { dtype: 'i32', data: new Int32Array(b * l).fill(1) }, [b, l]);
    const dout = ops.upload(be, { dtype: 'f32', data: randn(b * l * nh * hd) }, [b, l, nh, hd]);
    const causal = (b * nh * l * (l + 1)) / 2; // query-key pairs
    let res = ops.attention(q, k, vv, mask);
    const f = await medianMs(
      'attention',
      async () => {
        res = ops.attention(q, k, vv, mask);
        await sync(res.out);
      },
      S.iters,
    );
    add('attention forward', `B${b} L${l} H${nh}/${nkv} d${hd}`, f, (4 * causal * hd) / (f * 1e6), 'GFLOP/s');
    const bw = await medianMs(
      'attention backward',
      async () => {
        const g = ops.attentionBackward(q, k, vv, mask, res.out, res.lse, dout);
        await sync(g.dk);
      },
      S.iters,
    );
    add('attention backward', `B${b} L${l} H${nh}/${nkv} d${hd}`, bw, (10 * causal * hd) / (bw * 1e6), 'GFLOP/s');
  }
  return rows;
}

const backends: Backend[] = [];
for (const name of names) {
  if (name === 'cpu') backends.push(new CpuBackend());
  else if (name === 'webgpu') backends.push(await WebGpuBackend.create());
  else throw new Error(`--backends: unknown backend ${name} (cpu, webgpu)`);
}
const all: Row[] = [];
for (const be of backends) all.push(...(await benchBackend(be)));
const gpu = backends.find((b) => b instanceof WebGpuBackend) as WebGpuBackend | undefined;
console.log(`WebGPU benchmark (--size ${size}); webgpu device: ${gpu ? gpu.info().device : 'not run'}`);
const ops_ = [...new Set(all.map((r) => r.op))];
const header = ['op', 'shape', ...backends.flatMap((b) => [`${b.name} ms`, `${b.name} rate`])];
const body = ops_.map((op) => {
  const rs = backends.map((b) => all.find((r) => r.op === op && r.backend === b.name)!);
  return [op, rs[0].shape, ...rs.flatMap((r) => [r.ms, `${r.rate.toFixed(2)} ${r.unit}`])];
});
console.log(table(header, body));
if (gpu) {
  const copy = all.find((r) => r.backend === 'webgpu' && r.op === 'copy (f32)')!.rate;
  const g32 = all.find((r) => r.backend === 'webgpu' && r.op === 'logprobGather (f32)')!.rate;
  console.log(
    `webgpu logprobGather (f32) reaches ${((100 * g32) / copy).toFixed(0)}% of the measured copy bandwidth (${copy.toFixed(1)} GB/s)`,
  );
}
if (json) writeFileSync(json, JSON.stringify({ size, device: gpu?.info().device, rows: all }, null, 2));
for (const b of backends) if (b instanceof WebGpuBackend) b.destroy();
