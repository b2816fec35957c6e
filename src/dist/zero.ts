// Data-parallel optimizer steps with ZeRO-style sharding (DeepSpeed's stage numbers), over a
// ProcessGroup. The parameters are grouped into units (src/model/param_units.ts unitOf): one per
// decoder layer, the embedding, and the head (final norm, untied LM head). A unit's tensors sit in
// one buffer (each at a multiple of 128 elements: 256-byte views for bf16 and f32), padded to a
// multiple of 128 x N elements, so the unit splits into N equal parts; rank r owns part r of every
// unit. Units are the communication buckets.
//
//   stage 0  every rank holds everything; gradients all-reduced per unit; every rank steps all.
//   stage 1  f32 masters and optimizer state exist only for the own part; gradients reduce-scattered
//            per unit into the own part (the full gradient buffer stays allocated); each rank steps
//            its part, then the parameters are all-gathered per unit.
//   stage 2  as 1, and the full gradient buffer exists only from zeroGrad to the reduce-scatter.
//   stage 3  as 2, and parameters too exist only as the own part: LlamaModel.paramHook all-gathers a
//            unit just before its forward / backward and frees it after; in the backward its
//            gradient is reduce-scattered into the own part as soon as the unit is done.
//
// LoRA (src/model/lora.ts): the units hold the adapters only (f32), sharded as above at every stage;
// the frozen base is not the engine's: every rank keeps its whole copy in its stored dtype (replicated,
// stage 3 included), with no gradient, master or optimizer state. The embedding and head units do not
// exist (no adapters there): their acquire / release do nothing.
//
// Overlap (on unless `overlap: false` or SPINLM_ZERO_OVERLAP=0): the model calls the engine's
// ParamHook at every stage. Stages 0-2, on the last micro-batch of a step, issue each unit's gradient
// reduction (all-reduce / reduce-scatter) as soon as the unit's backward is done, non-blocking; the
// step waits for them. Stage 3 prefetches the next unit's parameters (non-blocking all-gather issued
// when a unit is acquired) and issues each unit's gradient reduce-scatter non-blocking, completing
// it (and adding it to the own part) at most two units later. The collectives, their buffers and the
// order of additions are those of the blocking path, so results are bit-identical to it (tested); only
// when the communication happens changes. Every rank issues the same collectives in the same order.
//
// Bytes per optimizer step (one micro-batch per rank; Ψ parameters, b bytes per element) follow
// ZeRO's analysis: stages 0-2 send 2Ψ·(N-1)/N elements per rank (all-reduce = reduce-scatter +
// all-gather), stage 3 3Ψ·(N-1)/N (two all-gathers and one reduce-scatter). Gradients are f32 here.
import type { LlamaModel, ParamHook } from '../model/llama.js';
import { EMBED_UNIT, HEAD_UNIT, unitOf } from '../model/param_units.js';
import type { Tensor } from '../tensor/tensor.js';
import { dtypeSize } from '../tensor/dtype.js';
import { Optimizer, type OptimizerConfig, type Parameter } from '../optim/optimizer.js';
import type { ProcessGroup, Work } from './process_group.js';
import * as ops from '../ops/index.js';

export type ZeroStage = 0 | 1 | 2 | 3;
export const ZERO_STAGES: readonly ZeroStage[] = [0, 1, 2, 3];

/** Element alignment of every tensor and part inside a unit buffer (256 bytes of bf16). */
const ALIGN = 128;

interface Unit {
  /** Layer index, EMBED_UNIT or HEAD_UNIT (src/model/param_units.ts). */
  index: number;
  names: string[];
  shapes: (readonly number[])[];
  /** Element offset of each tensor in the unit buffer. */
  offsets: number[];
  /** Padded element count (a multiple of ALIGN x N). */
  size: number;
  /** size / N. */
  part: number;
  /** Stage 0-2: the whole unit; stage 3: only while acquired. */
  params: Tensor | null;
  /** Stage 3: the own part of the parameters. */
  paramPart: Tensor | null;
  /** The full f32 gradient (stage 0, 1: always; 2: between zeroGrad and the step; 3: during the unit's backward). */
  grads: Tensor<'f32'> | null;
  /** Stage >= 1: the reduced gradient of the own part. */
  gradPart: Tensor<'f32'> | null;
  /** f32 masters (bf16 parameters): the whole unit (stage 0) or the own part. */
  master: Tensor<'f32'> | null;
  /** Stage 3: how many acquires are outstanding. */
  held: number;
}

/** Bytes of the persistent training state one rank holds (what ZeRO shards). */
export interface ZeroMemory {
  params: number;
  grads: number;
  masters: number;
  optimizer: number;
}

const roundUp = (x: number, m: number) => Math.ceil(x / m) * m;

/** An issued collective and what to do once it is complete. */
interface Pending {
  work: Work;
  then: () => void;
}

export interface ZeroOptions {
  /** Overlap communication with computation (default: on unless SPINLM_ZERO_OVERLAP=0). */
  overlap?: boolean;
}

export class ZeroEngine implements ParamHook {
  readonly units: Unit[];
  readonly opt: Optimizer;
  readonly overlap: boolean;
  private readonly dtype: 'f32' | 'bf16';
  private readonly layers: number;
  /** Issued collectives, completed in issue order. */
  private pending: Pending[] = [];
  /** Stage 3: units whose parameters are being gathered ahead of their acquire. */
  private prefetched = new Map<number, { buf: Tensor; work: Work }>();
  /** Stages 0-2: reduce each unit's gradient as its backward ends (the step's last micro-batch). */
  private reduceInBackward = false;
  private reduced = new Set<Unit>();

  private constructor(
    readonly model: LlamaModel,
    readonly group: ProcessGroup,
    readonly stage: ZeroStage,
    units: Unit[],
    optim: OptimizerConfig,
    opts: ZeroOptions,
  ) {
    this.units = units;
    this.overlap = opts.overlap ?? process.env.SPINLM_ZERO_OVERLAP !== '0';
    this.layers = units.filter((u) => u.index >= 0).length;
    this.dtype = unitDtype(model);
    const w = model.weights;
    const be = model.backend;
    const { rank } = group;
    // drop the full gradients / masters enableTraining made: this engine owns the training state
    for (const m of [w.grads, w.masters]) {
      for (const t of m.values()) if (!t.base) t.free();
      m.clear();
    }
    const ownOf = (u: Unit, t: Tensor) => t.view(rank * u.part, [u.part]);
    for (const u of units) {
      const own = (t: Tensor) => ownOf(u, t);
      if (stage < 3) {
        if (this.dtype === 'bf16') u.master = ops.cast(stage === 0 ? u.params! : own(u.params!), 'f32');
        if (stage <= 1) u.grads = ops.zeros(be, 'f32', [u.size]);
      } else {
        u.paramPart = ops.cast(own(u.params!), this.dtype);
        if (this.dtype === 'bf16') u.master = ops.cast(u.paramPart, 'f32');
        u.params!.free();
        u.params = null;
      }
      if (stage >= 1) u.gradPart = ops.zeros(be, 'f32', [u.part]);
      this.bind(u);
    }
    w.sharded = stage === 3;
    if (stage === 3 || this.overlap) model.paramHook = this;
    const params: Parameter[] = units.map((u) => ({
      name: `unit${u.index}`,
      param: stage === 0 ? u.params! : stage < 3 ? ownOf(u, u.params!) : u.paramPart!,
      master: u.master ?? undefined,
      grad: stage === 0 ? u.grads! : u.gradPart!,
    }));
    this.opt = new Optimizer(be, params, optim, stage === 0 ? undefined : (sumsq) => group.allReduce(sumsq, 'sum'));
  }

  /**
   * Shards `model` (loaded in full and identically on every rank; checked here) for `stage`. The
   * model's training tensors are replaced by views into the engine's buffers until finish().
   */
  static async create(model: LlamaModel, group: ProcessGroup, stage: ZeroStage, optim: OptimizerConfig, opts: ZeroOptions = {}): Promise<ZeroEngine> {
    if (!ZERO_STAGES.includes(stage)) throw new RangeError(`zero_stage must be 0, 1, 2 or 3, got ${stage}`);
    const w = model.weights;
    const be = model.backend;
    const N = group.size;
    const byUnit = new Map<number, string[]>();
    for (const name of w.trainableNames()) {
      const idx = unitOf(name);
      if (!byUnit.has(idx)) byUnit.set(idx, []);
      byUnit.get(idx)!.push(name);
    }
    // backward order: the head, the layers from the last, the embedding
    const rank = (u: number) => (u === HEAD_UNIT ? -Infinity : u === EMBED_UNIT ? Infinity : -u);
    const order = [...byUnit.keys()].sort((a, b) => rank(a) - rank(b));
    const units: Unit[] = [];
    let hash = 0x811c9dc5;
    const mix = (bytes: Uint8Array) => {
      for (let i = 0; i < bytes.length; i += 7) hash = Math.imul(hash ^ bytes[i], 0x01000193) >>> 0;
    };
    for (const index of order) {
      const names = byUnit.get(index)!.sort();
      const shapes = names.map((n) => w.get(n).shape);
      const offsets: number[] = [];
      let end = 0;
      for (const n of names) {
        offsets.push(end);
        end = roundUp(end + w.get(n).numel, ALIGN);
      }
      const size = roundUp(Math.max(end, 1), ALIGN * N);
      const params = ops.zeros(be, unitDtype(model), [size]);
      for (let k = 0; k < names.length; k++) {
        const src = w.get(names[k]);
        const host = await ops.read(src);
        mix(new Uint8Array(host.buffer, host.byteOffset, host.byteLength));
        ops.write(params.view(offsets[k], shapes[k]), { dtype: src.dtype, data: host } as never);
      }
      units.push({ index, names, shapes, offsets, size, part: size / N, params, paramPart: null, grads: null, gradPart: null, master: null, held: 0 });
    }
    // ranks that disagree on the model (or its dtype) are found here, before any step
    const fingerprint = new TextEncoder().encode(JSON.stringify({ hash, dtype: w.dtype, units: units.map((u) => [u.index, u.size]), stage }));
    const all = group.allGatherBytes(fingerprint);
    const mine = Buffer.from(fingerprint).toString();
    const bad = all.findIndex((b) => Buffer.from(b).toString() !== Buffer.from(all[0]).toString());
    if (bad >= 0) throw new Error(`spinlm: rank ${bad} has a different model, dtype or zero_stage than rank 0 (fingerprints differ; this rank: ${mine === Buffer.from(all[0]).toString() ? 'same as rank 0' : 'differs'}): every rank must load the same --model with the same options`);
    // the model's own (trainable) tensors are replaced by views into the unit buffers
    for (const u of units)
      for (const name of u.names) {
        w.get(name).free();
        w.params.delete(name);
      }
    return new ZeroEngine(model, group, stage, units, optim, opts);
  }

  /** Points the model's parameter / gradient names at the unit's buffers (or removes them). */
  private bind(u: Unit): void {
    const w = this.model.weights;
    u.names.forEach((n, k) => {
      if (u.params) w.params.set(n, u.params.view(u.offsets[k], u.shapes[k]));
      else w.params.delete(n);
      if (u.grads) w.grads.set(n, u.grads.view(u.offsets[k], u.shapes[k]) as Tensor<'f32'>);
      else w.grads.delete(n);
    });
  }

  private unit(index: number): Unit {
    const u = this.units.find((x) => x.index === index);
    if (!u) throw new RangeError(`no parameter unit ${index}`);
    return u;
  }

  /** A unit the model acquires that has no trainable tensors (LoRA: the embedding, the head). */
  private absent(index: number): boolean {
    return !this.units.some((x) => x.index === index);
  }

  // ---- overlap -------------------------------------------------------------------------------
  /** Completes issued collectives in issue order until at most `keep` are outstanding. */
  private drain(keep = 0): void {
    while (this.pending.length > keep) {
      const p = this.pending.shift()!;
      p.work.wait();
      p.then();
    }
  }

  /** Stage 3: completes and frees the parameter gathers issued ahead (before the parameters change). */
  private dropPrefetches(): void {
    for (const { buf, work } of this.prefetched.values()) {
      work.wait();
      buf.free();
    }
    this.prefetched.clear();
  }

  /** The unit acquired after (index, phase) in a forward + backward (LlamaModel's order), or null. */
  private nextUnit(index: number, phase: 'forward' | 'backward'): number | null {
    const L = this.layers;
    if (phase === 'forward') {
      if (index === HEAD_UNIT) return null;
      const next = index === EMBED_UNIT ? 0 : index + 1;
      return next < L ? next : HEAD_UNIT;
    }
    if (index === EMBED_UNIT) return null;
    const next = index === HEAD_UNIT ? L - 1 : index - 1;
    return next >= 0 ? next : EMBED_UNIT;
  }

  /** Stages 0-2: issues unit u's gradient reduction (non-blocking). */
  private issueReduce(u: Unit): void {
    this.reduced.add(u);
    const work = this.stage === 0 ? this.group.allReduceAsync(u.grads!, 'sum') : this.group.reduceScatterAsync(u.grads!, u.gradPart!);
    this.pending.push({
      work,
      then: () => {
        if (this.stage !== 2) return;
        u.grads!.free();
        u.grads = null;
        this.bind(u);
      },
    });
  }

  /** Called by the training loop before each micro-batch of this rank; `last`: the step's last one. */
  beginMicroStep(last: boolean): void {
    this.reduceInBackward = this.overlap && this.stage < 3 && last;
  }

  // ---- ParamHook (stage 3; stages 0-2 with overlap: the end of each unit's backward) ------------
  acquire(index: number, phase: 'forward' | 'backward'): void {
    if (this.stage < 3 || this.absent(index)) return;
    const u = this.unit(index);
    if (u.held++ === 0) {
      const pre = this.prefetched.get(index);
      if (pre) {
        this.prefetched.delete(index);
        pre.work.wait();
        u.params = pre.buf;
      } else {
        u.params = ops.empty(this.model.backend, this.dtype, [u.size]);
        this.group.allGather(u.params, u.paramPart!);
      }
    }
    if (phase === 'backward' && !u.grads) u.grads = ops.zeros(this.model.backend, 'f32', [u.size]);
    this.bind(u);
    const next = this.overlap ? this.nextUnit(index, phase) : null;
    // (a unit still held needs no gather: the tied embedding is held from the head to its backward)
    if (next !== null && !this.absent(next) && !this.prefetched.has(next) && this.unit(next).held === 0) {
      const v = this.unit(next);
      const buf = ops.empty(this.model.backend, this.dtype, [v.size]);
      this.prefetched.set(next, { buf, work: this.group.allGatherAsync(buf, v.paramPart!) });
    }
  }

  release(index: number, phase: 'forward' | 'backward'): void {
    if (this.absent(index)) return;
    const u = this.unit(index);
    if (this.stage < 3) {
      if (phase === 'backward' && this.reduceInBackward && !this.reduced.has(u)) this.issueReduce(u);
      return;
    }
    if (phase === 'backward' && u.grads) {
      const mine = ops.empty(this.model.backend, 'f32', [u.part]);
      const grads = u.grads;
      u.grads = null;
      const then = () => {
        ops.accumulate(u.gradPart!, mine, 1);
        mine.free();
        grads.free();
      };
      if (this.overlap) {
        this.pending.push({ work: this.group.reduceScatterAsync(grads, mine), then });
        // at most two full unit gradients in flight (memory stays ~ one unit's)
        this.drain(1);
      } else {
        this.group.reduceScatter(grads, mine);
        then();
      }
    }
    if (--u.held === 0) {
      u.params!.free();
      u.params = null;
    }
    this.bind(u);
  }

  /**
   * Stage 3, a rank with fewer micro-batches than rank 0 in this step: the collectives of one
   * forward + backward with zero gradients, so every rank issues the same sequence.
   */
  idleMicroStep(): void {
    if (this.stage !== 3) return;
    const layers = this.units.filter((u) => u.index >= 0).map((u) => u.index).sort((a, b) => a - b);
    // LlamaModel.forward and backward's calls, in their order (ParamHook's comment)
    const tied = this.model.cfg.tieWordEmbeddings;
    this.acquire(EMBED_UNIT, 'forward');
    if (!tied) this.release(EMBED_UNIT, 'forward');
    for (const i of layers) {
      this.acquire(i, 'forward');
      this.release(i, 'forward');
    }
    this.acquire(HEAD_UNIT, 'forward');
    this.release(HEAD_UNIT, 'forward');
    if (tied) this.release(EMBED_UNIT, 'forward');
    this.acquire(HEAD_UNIT, 'backward');
    if (tied) this.acquire(EMBED_UNIT, 'backward');
    this.release(HEAD_UNIT, 'backward');
    for (const i of [...layers].reverse()) {
      this.acquire(i, 'backward');
      this.release(i, 'backward');
    }
    if (!tied) this.acquire(EMBED_UNIT, 'backward');
    this.release(EMBED_UNIT, 'backward');
  }

  // ---- the optimizer step ----------------------------------------------------------------------
  zeroGrad(): void {
    for (const u of this.units) {
      if (this.stage === 2) {
        u.grads ??= ops.empty(this.model.backend, 'f32', [u.size]);
        this.bind(u);
      }
      if (u.grads) ops.fill(u.grads, 0);
      if (u.gradPart) ops.fill(u.gradPart, 0);
    }
  }

  /** Reduces the gradients, steps (own part), gathers the parameters. Returns f32 [2] = [global norm, clip coefficient]. */
  step(lr: number, maxGradNorm: number | null): Tensor<'f32'> {
    const { group, stage, units } = this;
    if (this.overlap) {
      // the units not reduced during the backward (a rank without micro-batches in this step: all)
      if (stage < 3) for (const u of units) if (!this.reduced.has(u)) this.issueReduce(u);
      this.drain();
      this.dropPrefetches();
      this.reduced.clear();
      this.reduceInBackward = false;
    } else {
      for (const u of units) {
        if (stage === 0) group.allReduce(u.grads!, 'sum');
        else if (stage <= 2) group.reduceScatter(u.grads!, u.gradPart!);
        if (stage === 2) {
          u.grads!.free();
          u.grads = null;
          this.bind(u);
        }
      }
    }
    const norm = this.opt.step(lr, maxGradNorm);
    if (stage === 1 || stage === 2) {
      if (this.overlap) {
        const works = units.map((u) => group.allGatherAsync(u.params!));
        for (const w of works) w.wait();
      } else for (const u of units) group.allGather(u.params!);
    }
    return norm;
  }

  /** Optimizer state, masters and parameters this rank holds, for a per-rank checkpoint. */
  stateTensors(): { name: string; tensor: Tensor }[] {
    const out: { name: string; tensor: Tensor }[] = [];
    const states = this.opt.stateTensors();
    this.units.forEach((u) => {
      const p = this.stage < 3 ? (this.stage === 0 ? u.params! : u.params!.view(this.group.rank * u.part, [u.part])) : u.paramPart!;
      out.push({ name: `unit${u.index}.param`, tensor: p });
      if (u.master) out.push({ name: `unit${u.index}.master`, tensor: u.master });
      for (const s of states.filter((x) => x.name.startsWith(`unit${u.index}.`))) out.push({ name: s.name, tensor: s.tensor });
    });
    return out;
  }

  /** After loading stateTensors() from a checkpoint: every rank's parameters made whole again. */
  afterLoad(): void {
    if (this.stage === 1 || this.stage === 2) for (const u of this.units) this.group.allGather(u.params!);
  }

  /** Bytes of the persistent training state on this rank (between steps). */
  memory(): ZeroMemory {
    const b = (t: Tensor | null) => (t ? t.byteLength : 0);
    const m: ZeroMemory = { params: 0, grads: 0, masters: 0, optimizer: 0 };
    for (const u of this.units) {
      m.params += this.stage === 3 ? b(u.paramPart) : b(u.params);
      m.grads += (this.stage <= 1 ? b(u.grads) : 0) + b(u.gradPart);
      m.masters += b(u.master);
    }
    for (const s of this.opt.stateTensors()) m.optimizer += s.tensor.byteLength;
    return m;
  }

  /**
   * Ends sharded training: every rank's model holds the whole trained parameters again as its own
   * tensors (ready to save or generate with); gradients, masters and optimizer state are freed.
   */
  finish(): void {
    this.drain();
    this.dropPrefetches();
    const w = this.model.weights;
    this.model.paramHook = null;
    w.sharded = false;
    for (const u of this.units) {
      if (this.stage === 3) {
        u.params = ops.empty(this.model.backend, this.dtype, [u.size]);
        this.group.allGather(u.params, u.paramPart!);
      }
      u.names.forEach((n, k) => w.params.set(n, ops.cast(u.params!.view(u.offsets[k], u.shapes[k]), this.dtype)));
    }
    w.grads.clear();
    w.masters.clear();
    this.free();
  }

  free(): void {
    // outstanding collectives write into buffers freed below: complete them (an error here means the
    // job is ending anyway)
    try {
      this.drain();
      this.dropPrefetches();
    } catch {
      this.pending = [];
      this.prefetched.clear();
    }
    this.model.paramHook = null;
    this.opt.free();
    for (const u of this.units) {
      for (const t of [u.params, u.paramPart, u.grads, u.gradPart, u.master]) t?.free();
      u.params = u.paramPart = u.grads = u.gradPart = u.master = null;
    }
  }
}

/** The dtype of the unit buffers: the parameters', or f32 with LoRA (the adapters). */
function unitDtype(model: LlamaModel): 'f32' | 'bf16' {
  return model.weights.lora ? 'f32' : model.weights.dtype;
}

/** Element size of the parameters (for byte formulas). */
export function paramBytes(dtype: 'f32' | 'bf16'): number {
  return dtypeSize(dtype);
}
