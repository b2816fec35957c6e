// Fused updates (LOMO-style; Lv et al. 2023, "Full Parameter Fine-tuning for Large Language Models with
// Limited Resources"): the optimizer updates each unit of parameters (a decoder layer, the final norm
// and LM head, or the embedding) as soon as the backward has finished its gradient, and the gradient is
// freed right after. No full set of gradients is ever resident (1.1B: 4.4 GB less; docs/memory.md).
//
// The arithmetic is that of an ordinary step without clipping: a unit's backward has used its
// weights (to pass the gradient down) before the unit is updated, so every gradient is the one the
// unfused step would compute, and each parameter gets the same update (test/trainer.test.ts checks
// the weights bit for bit). What it cannot do: clip by the global norm (known only after the whole
// backward) or accumulate gradients over micro-batches; runTrainingLoop refuses both.
//
// Gradients are allocated when the backward first writes them (Weights.grad with gradsOnDemand), so
// the embedding's exists only at the very end of the backward. Through the model's ParamHook:
// release(unit, 'backward') updates the unit's parameters and frees each gradient right after its
// update (the head unit, the untied LM head and the final norm, right after the first backward
// matmuls). It wraps the hook already installed (the bf16 copies made from masters,
// src/model/master_params.ts), which sees every acquire and release first.
import type { LlamaModel } from '../model/llama.js';
import { type ParamHook, unitOf } from '../model/param_units.js';
import type { Optimizer } from './optimizer.js';

export class FusedUpdate implements ParamHook {
  /** Learning rate of the step being taken (set by the training loop before each step). */
  lr = 0;
  private readonly units = new Map<number, string[]>();
  private readonly held = new Map<number, number>();
  private readonly inner: ParamHook | null;

  /** `names`: every trainable tensor (what the optimizer was built with). */
  constructor(
    readonly model: LlamaModel,
    readonly opt: Optimizer,
    names: readonly string[],
  ) {
    for (const name of names) {
      const u = unitOf(name);
      if (!this.units.has(u)) this.units.set(u, []);
      this.units.get(u)!.push(name);
    }
    this.inner = model.paramHook;
    model.paramHook = this;
  }

  acquire(unit: number, phase: 'forward' | 'backward'): void {
    this.inner?.acquire(unit, phase);
    if (phase !== 'backward') return;
    const n = (this.held.get(unit) ?? 0) + 1;
    this.held.set(unit, n);
    if (n === 1) for (const name of this.units.get(unit) ?? []) this.updated.delete(name);
  }

  release(unit: number, phase: 'forward' | 'backward'): void {
    if (phase === 'backward') {
      const n = (this.held.get(unit) ?? 0) - 1;
      if (n < 0) throw new Error(`parameter unit ${unit} released more often than acquired`);
      this.held.set(unit, n);
      if (n === 0) for (const name of this.units.get(unit) ?? []) this.update(name);
    }
    this.inner?.release(unit, phase);
  }

  private readonly updated = new Set<string>();

  /** One parameter's update from its gradient (zeros if the backward never wrote one), then the gradient is freed. */
  private update(name: string): void {
    if (this.updated.has(name)) return;
    this.updated.add(name);
    const w = this.model.weights;
    const g = w.grad(name); // allocated (zeroed) here if this backward did not touch the parameter
    this.opt.updateOne(name, g, this.lr);
    g.free();
    w.grads.delete(name);
  }

  /** Puts the wrapped hook back. */
  end(): void {
    if (this.model.paramHook === this) this.model.paramHook = this.inner;
  }
}
