// Learning-rate schedules, as Hugging Face's get_linear_schedule_with_warmup / get_constant_schedule
// compute them: the multiplier applied to the base learning rate before optimizer step `step` (0-based).

export type ScheduleType = 'linear' | 'constant' | 'cosine';

/** Warm-up steps for a ratio, as HF TrainingArguments.get_warmup_steps: ceil(ratio * total). */
export function warmupSteps(totalSteps: number, warmupRatio: number): number {
  if (!(warmupRatio >= 0 && warmupRatio <= 1)) throw new RangeError(`warmup_ratio must be in [0, 1], got ${warmupRatio}`);
  return Math.ceil(totalSteps * warmupRatio);
}

export function lrMultiplier(type: ScheduleType, step: number, totalSteps: number, warmup: number): number {
  if (step < warmup) return step / Math.max(1, warmup);
  const progressDen = Math.max(1, totalSteps - warmup);
  switch (type) {
    case 'constant':
      return 1;
    case 'linear':
      return Math.max(0, (totalSteps - step) / progressDen);
    case 'cosine': {
      const progress = (step - warmup) / progressDen;
      return Math.max(0, 0.5 * (1 + Math.cos(Math.PI * progress)));
    }
  }
}
