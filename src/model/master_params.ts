// Training with bf16 parameters and f32 masters keeps only the masters during a step: the compute is
// fp32, and a bf16 parameter is by construction the rounding of its master (the optimizer writes
// param = bf16(master); enableTraining makes master = param exactly), so the model's bf16 copy of a
// layer can be made from the masters when the layer runs and dropped after it. Through the model's
// ParamHook (the ZeRO-3 mechanism): acquire(unit) casts that unit's masters to bf16, release(unit)
// frees them. runTrainingLoop begins this once training starts and ends it (every bf16 parameter
// rebuilt from its master) when training returns or fails, so saving and evaluation after training see
// a complete model; its checkpoints write each bf16 parameter from its master. Saves 2 bytes per
// parameter for the whole of training; costs one cast of the masters per forward and per backward
// (memory-bound, ~1% of a step here).
import type { Tensor } from '../tensor/tensor.js';
import type { LlamaModel } from './llama.js';
import { type ParamHook, unitOf } from './param_units.js';
import * as ops from '../ops/index.js';

export class MasterBackedParams implements ParamHook {
  private readonly units = new Map<number, string[]>();
  private readonly held = new Map<number, number>();
  /** The params map's names in their original order (restored by end()). */
  private readonly order: string[];
  private active = false;

  constructor(readonly model: LlamaModel) {
    const w = model.weights;
    this.order = [...w.params.keys()];
    for (const name of w.masters.keys()) {
      const u = unitOf(name);
      if (!this.units.has(u)) this.units.set(u, []);
      this.units.get(u)!.push(name);
    }
  }

  /** Every parameter name, in the params map's original order. */
  names(): string[] {
    return [...this.order];
  }

  /** Drops the bf16 copies of the parameters that have masters; the model acquires them unit by unit. */
  begin(): void {
    if (this.active) return;
    if (this.model.paramHook) throw new Error('the model already has a parameter hook');
    const w = this.model.weights;
    for (const names of this.units.values()) {
      for (const n of names) {
        w.params.get(n)?.free();
        w.params.delete(n);
      }
    }
    this.held.clear();
    this.model.paramHook = this;
    this.active = true;
  }

  acquire(unit: number): void {
    const n = (this.held.get(unit) ?? 0) + 1;
    this.held.set(unit, n);
    if (n > 1) return;
    const w = this.model.weights;
    for (const name of this.units.get(unit) ?? []) w.params.set(name, ops.cast(w.masters.get(name)!, 'bf16') as Tensor);
  }

  release(unit: number): void {
    const n = (this.held.get(unit) ?? 0) - 1;
    if (n < 0) throw new Error(`parameter unit ${unit} released more often than acquired`);
    this.held.set(unit, n);
    if (n > 0) return;
    const w = this.model.weights;
    for (const name of this.units.get(unit) ?? []) {
      w.params.get(name)?.free();
      w.params.delete(name);
    }
  }

  /** Every bf16 parameter from its (updated) master again, in the original order; the hook is removed. */
  end(): void {
    if (!this.active) return;
    const w = this.model.weights;
    this.model.paramHook = null;
    const all = new Map(w.params);
    w.params.clear();
    for (const name of this.order) w.params.set(name, all.get(name) ?? (ops.cast(w.masters.get(name)!, 'bf16') as Tensor));
    this.active = false;
  }
}
