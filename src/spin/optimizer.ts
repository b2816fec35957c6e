// Optimizers over a model's parameters: RMSprop (the SPIN paper's) and AdamW, as torch.optim defines
// them, with gradient clipping by global norm (torch.nn.utils.clip_grad_norm_) fused into the step:
// per-tensor sums of squares -> [total norm, coefficient] on the device -> every step multiplies its
// gradient by the coefficient. No host round trip; read `gradNorm` asynchronously for logging.
import type { Backend } from '../backend/backend.js';
import type { Tensor } from '../tensor/tensor.js';

export type OptimizerConfig =
  | { type: 'rmsprop'; alpha?: number; eps?: number; weightDecay?: number }
  | { type: 'adamw'; beta1?: number; beta2?: number; eps?: number; weightDecay?: number };

/** One trainable tensor: what the model computes with, its f32 master (bf16 params) and its f32 gradient. */
export interface Parameter {
  name: string;
  param: Tensor;
  master?: Tensor<'f32'>;
  grad: Tensor<'f32'>;
}

interface SlotState {
  p: Parameter;
  /** RMSprop: [square_avg]; AdamW: [exp_avg, exp_avg_sq]. */
  states: Tensor<'f32'>[];
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
      states: Array.from({ length: nStates }, () => {
        const t = backend.empty('f32', p.param.shape);
        backend.fill(t, 0);
        return t;
      }),
    }));
    this.sumsq = backend.empty('f32', [params.length]);
  }

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
    if (!(lr >= 0) || !Number.isFinite(lr)) throw new RangeError(`learning rate must be a finite number >= 0, got ${lr}`);
    const be = this.backend;
    this.slots.forEach((s, i) => be.sumSquares(s.p.grad, this.sumsq, i));
    const norm = be.clipCoefficient(this.sumsq, maxGradNorm ?? Infinity);
    const scale = maxGradNorm === null ? undefined : norm.view(1, [1]);
    this.stepCount++;
    const c = this.config;
    for (const { p, states } of this.slots) {
      if (c.type === 'rmsprop') {
        be.rmspropStep({ ...p, squareAvg: states[0] }, { lr, alpha: c.alpha ?? 0.99, eps: c.eps ?? 1e-8, weightDecay: c.weightDecay ?? 0 }, scale);
      } else {
        be.adamwStep(
          { ...p, expAvg: states[0], expAvgSq: states[1] },
          { lr, beta1: c.beta1 ?? 0.9, beta2: c.beta2 ?? 0.999, eps: c.eps ?? 1e-8, weightDecay: c.weightDecay ?? 0, step: this.stepCount },
          scale,
        );
      }
    }
    return norm;
  }

  free(): void {
    for (const s of this.slots) for (const t of s.states) t.free();
    this.sumsq.free();
  }
}
