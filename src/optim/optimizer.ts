// Optimizers over a model's parameters: RMSprop (the SPIN paper's) and AdamW, as torch.optim defines
// them, with gradient clipping by global norm (torch.nn.utils.clip_grad_norm_) fused into the step:
// per-tensor sums of squares -> [total norm, coefficient] on the device -> every step multiplies its
// gradient by the coefficient (element 1 of that tensor). No host round trip: the returned tensor is
// read asynchronously for logging.
import type { Backend } from '../backend/backend.js';
import type { Tensor } from '../tensor/tensor.js';
import * as ops from '../ops/index.js';

export type OptimizerConfig =
  | { type: 'rmsprop'; alpha?: number; eps?: number; weightDecay?: number }
  | { type: 'adamw'; beta1?: number; beta2?: number; eps?: number; weightDecay?: number };

/** One trainable tensor: what the model computes with, its f32 master (bf16 params) and its f32 gradient. */
export interface Parameter {
  name: string;
  param: Tensor;
  master?: Tensor<'f32'>;
  /** Absent with fused updates (updateOne gets each gradient as it completes). */
  grad?: Tensor<'f32'>;
}

interface SlotState {
  p: Parameter;
  /** RMSprop: [square_avg]; AdamW: [exp_avg, exp_avg_sq]. */
  states: Tensor<'f32'>[];
}

function checkLr(lr: number): void {
  if (!(lr >= 0) || !Number.isFinite(lr)) throw new RangeError(`learning rate must be a finite number >= 0, got ${lr}`);
}

export class Optimizer {
  /** Steps taken (AdamW's bias correction counts from 1). */
  stepCount = 0;
  private readonly slots: SlotState[];
  private readonly sumsq: Tensor<'f32'>;

  constructor(
    readonly backend: Backend,
    params: Parameter[],
    readonly config: OptimizerConfig,
    /**
     * Sharded training (src/dist/zero.ts): sums the per-parameter sums of squares f32 [params] over
     * every rank in place, so the clip norm is the global one.
     */
    private readonly reduceSumSquares?: (sumsq: Tensor<'f32'>) => void,
  ) {
    if (params.length === 0) throw new RangeError('the optimizer needs at least one parameter');
    const names = new Set<string>();
    for (const p of params) {
      if (names.has(p.name)) throw new RangeError(`parameter '${p.name}' is listed twice`);
      names.add(p.name);
    }
    const nStates = config.type === 'rmsprop' ? 1 : 2;
    this.slots = params.map((p) => ({
      p,
      states: Array.from({ length: nStates }, () => ops.zeros(backend, 'f32', p.param.shape)),
    }));
    this.sumsq = ops.empty(backend, 'f32', [params.length]);
    this.index = new Map(params.map((p, i) => [p.name, i]));
  }

  private readonly index: Map<string, number>;

  /** State tensor names as torch.optim names them (for checkpoints): `<param>.square_avg`, `.exp_avg`, `.exp_avg_sq`. */
  stateTensors(): { name: string; tensor: Tensor<'f32'> }[] {
    const suffixes = this.config.type === 'rmsprop' ? ['square_avg'] : ['exp_avg', 'exp_avg_sq'];
    return this.slots.flatMap((s) => s.states.map((t, i) => ({ name: `${s.p.name}.${suffixes[i]}`, tensor: t })));
  }

  /**
   * One update of every parameter with learning rate `lr`. With `maxGradNorm`, gradients are first
   * scaled by min(1, maxGradNorm / (norm + 1e-6)). Returns f32 [2] = [gradient norm before clipping,
   * coefficient applied]; the caller frees it. Gradients are left as they were (zero them yourself).
   */
  step(lr: number, maxGradNorm: number | null): Tensor<'f32'> {
    checkLr(lr);
    const grads = this.slots.map((s) => {
      if (!s.p.grad) throw new Error(`parameter '${s.p.name}' has no gradient: fused updates step it with updateOne`);
      return s.p.grad;
    });
    grads.forEach((g, i) => ops.sumSquares(g, this.sumsq, i));
    this.reduceSumSquares?.(this.sumsq);
    const norm = ops.clipCoefficient(this.sumsq, maxGradNorm ?? Infinity);
    const clip = maxGradNorm === null ? undefined : norm;
    this.stepCount++;
    this.slots.forEach((s, i) => this.apply(s, grads[i], lr, clip));
    return norm;
  }

  /**
   * Fused updates (LOMO-style, src/optim/fused_update.ts): one optimizer step issued parameter by
   * parameter while the backward runs, without clipping. beginFusedStep() counts the step,
   * updateOne() updates one parameter from its just-completed gradient (the same arithmetic as
   * step(lr, null)) and records its sum of squares, endFusedStep() returns [gradient norm, 1] as
   * step() does (the caller frees it).
   */
  beginFusedStep(): void {
    this.stepCount++;
    ops.fill(this.sumsq, 0);
  }

  updateOne(name: string, grad: Tensor<'f32'>, lr: number): void {
    checkLr(lr);
    const i = this.index.get(name);
    if (i === undefined) throw new Error(`the optimizer has no parameter '${name}'`);
    ops.sumSquares(grad, this.sumsq, i);
    this.apply(this.slots[i], grad, lr, undefined);
  }

  endFusedStep(): Tensor<'f32'> {
    return ops.clipCoefficient(this.sumsq, Infinity);
  }

  private apply({ p, states }: SlotState, grad: Tensor<'f32'>, lr: number, clip: Tensor<'f32'> | undefined): void {
    const c = this.config;
    if (c.type === 'rmsprop') {
      ops.rmspropStep(
        { ...p, grad, squareAvg: states[0] },
        { lr, alpha: c.alpha ?? 0.99, eps: c.eps ?? 1e-8, weightDecay: c.weightDecay ?? 0 },
        clip,
      );
    } else {
      ops.adamwStep(
        { ...p, grad, expAvg: states[0], expAvgSq: states[1] },
        { lr, beta1: c.beta1 ?? 0.9, beta2: c.beta2 ?? 0.999, eps: c.eps ?? 1e-8, weightDecay: c.weightDecay ?? 0, step: this.stepCount },
        clip,
      );
    }
  }

  free(): void {
    for (const s of this.slots) for (const t of s.states) t.free();
    this.sumsq.free();
  }
}
