// Float64 reference of the SPIN loss family, written from the formulas (docs/algorithm.md) and
// sharing no code with the kernels. Inputs are plain numbers (bf16 inputs already widened exactly).

export const IGNORE = -100;

/** logp[n] = z[n, y] - log(sum_v exp(z[n, v])); ignored rows give 0 and 0. */
export function logprobGatherRef(z: ArrayLike<number>, n: number, v: number, targets: ArrayLike<number>) {
  const logp = new Float64Array(n);
  const lse = new Float64Array(n);
  for (let r = 0; r < n; r++) {
    if (targets[r] === IGNORE) continue;
    let m = -Infinity;
    for (let j = 0; j < v; j++) m = Math.max(m, z[r * v + j]);
    let s = 0;
    for (let j = 0; j < v; j++) s += Math.exp(z[r * v + j] - m);
    lse[r] = m + Math.log(s);
    logp[r] = z[r * v + targets[r]] - lse[r];
  }
  return { logp, lse };
}

/** dz[n, v] = dlogp[n] * (1[v = y_n] - softmax(z[n])_v); ignored rows 0. */
export function logprobGatherBackwardRef(z: ArrayLike<number>, n: number, v: number, targets: ArrayLike<number>, dlogp: ArrayLike<number>) {
  const { lse } = logprobGatherRef(z, n, v, targets);
  const dz = new Float64Array(n * v);
  for (let r = 0; r < n; r++) {
    if (targets[r] === IGNORE) continue;
    for (let j = 0; j < v; j++) {
      const p = Math.exp(z[r * v + j] - lse[r]);
      dz[r * v + j] = dlogp[r] * ((j === targets[r] ? 1 : 0) - p);
    }
  }
  return dz;
}

/**
 * relErr's floor for a dlogits check at tolerance tol. The lse a kernel is given is f32, rounded by up
 * to |lse| * 2^-24, so where p_y is near 1 the target's 1 - p_y is known only to about
 * |dlogp| * |lse| * 2^-24 whatever the kernel does (PyTorch's f32 backward gives 0 there too). When every
 * counted row is like that (few rows, large logits, the target far above the rest), max |ref| is itself of
 * that size and the plain norm would ask for more than f32 holds; the floor allows 4 such roundings.
 */
export function dlogitsFloor(
  n: number,
  v: number,
  z: ArrayLike<number>,
  targets: ArrayLike<number>,
  dlogp: ArrayLike<number>,
  tol: number,
) {
  const { lse } = logprobGatherRef(z, n, v, targets);
  let worst = 0;
  for (let r = 0; r < n; r++) {
    if (targets[r] === IGNORE || !Number.isFinite(lse[r])) continue;
    worst = Math.max(worst, Math.abs(dlogp[r]) * Math.max(1, Math.abs(lse[r])) * 2 ** -24);
  }
  return (4 * worst) / tol || 1e-30;
}

export function sequenceLogprobRef(logp: ArrayLike<number>, segments: ArrayLike<number>, numSeqs: number) {
  const out = new Float64Array(numSeqs);
  for (let r = 0; r < segments.length; r++) if (segments[r] >= 0) out[segments[r]] += logp[r];
  return out;
}

export interface SpinRef {
  loss: number; // mean over counted pairs
  count: number; // counted pairs
  perPair: {
    loss: number;
    rewardsReal: number;
    rewardsGenerated: number;
    margins: number;
    accuracies: number;
    logpsReal: number;
    logpsGenerated: number;
    dReal: number;
    dGenerated: number;
  }[];
}

export type LossTypeRef = 'sigmoid' | 'hinge' | 'ipo' | 'sppo_hard';

/**
 * One pair's loss and its derivatives with respect to the two log-ratios a = pr - rr (real answer) and
 * b = pg - rg (generated answer), written from the papers' formulas:
 *   sigmoid  -log(sigmoid(u)), u = beta (a - b)                    (SPIN, DPO)
 *   hinge    max(0, 1 - u)                                         (SPIN's hinge option)
 *   ipo      (a - b - 1/(2 beta))^2                                (IPO, Azar et al. 2023, eq. 17)
 *   sppo_hard (a - 1/(2 beta))^2 + (b + 1/(2 beta))^2              (SPPO, Wu et al. 2024, P(real wins) = 1)
 */
export function pairLossRef(a: number, b: number, beta: number, lossType: LossTypeRef): { loss: number; da: number; db: number } {
  const u = beta * (a - b);
  switch (lossType) {
    case 'sigmoid': {
      // -log(sigmoid(u)) = log(1 + exp(-u)); derivative d/du = -1 / (1 + exp(u))
      const loss = u > 0 ? Math.log1p(Math.exp(-u)) : -u + Math.log1p(Math.exp(u));
      const dldu = -1 / (1 + Math.exp(u));
      return { loss, da: beta * dldu, db: -beta * dldu };
    }
    case 'hinge': {
      const dldu = u < 1 ? -1 : 0;
      return { loss: Math.max(0, 1 - u), da: beta * dldu, db: -beta * dldu };
    }
    case 'ipo': {
      const target = 1 / (2 * beta);
      const e = a - b - target;
      return { loss: e ** 2, da: 2 * e, db: -2 * e };
    }
    case 'sppo_hard': {
      const target = 1 / (2 * beta);
      return { loss: (a - target) ** 2 + (b + target) ** 2, da: 2 * (a - target), db: 2 * (b + target) };
    }
  }
}

/**
 * The SPIN loss family over a batch: each pair's loss (pairLossRef) of the log-ratios pr - rr and
 * pg - rg, averaged over the counted pairs; metrics as the official trainer logs them.
 */
export function spinLossRef(
  pr: ArrayLike<number>,
  pg: ArrayLike<number>,
  rr: ArrayLike<number>,
  rg: ArrayLike<number>,
  beta: number,
  lossType: LossTypeRef,
  mask?: ArrayLike<number>,
  nll?: { alpha: number; realTokens: ArrayLike<number> },
): SpinRef {
  const b = pr.length;
  let count = 0;
  for (let i = 0; i < b; i++) if (!mask || mask[i] !== 0) count++;
  const perPair: SpinRef['perPair'] = [];
  let total = 0;
  for (let i = 0; i < b; i++) {
    if (mask && mask[i] === 0) {
      perPair.push({
        loss: 0,
        rewardsReal: 0,
        rewardsGenerated: 0,
        margins: 0,
        accuracies: 0,
        logpsReal: 0,
        logpsGenerated: 0,
        dReal: 0,
        dGenerated: 0,
      });
      continue;
    }
    const u = beta * (pr[i] - rr[i] - (pg[i] - rg[i]));
    const { loss, da, db } = pairLossRef(pr[i] - rr[i], pg[i] - rg[i], beta, lossType);
    // NLL term: alpha * (-pr / n) added to the pair's loss; its derivative w.r.t. pr is -alpha / n
    const nllLoss = nll ? (nll.alpha * -pr[i]) / nll.realTokens[i] : 0;
    const nllGrad = nll ? -nll.alpha / nll.realTokens[i] : 0;
    total += loss + nllLoss;
    perPair.push({
      loss: loss + nllLoss,
      rewardsReal: beta * (pr[i] - rr[i]),
      rewardsGenerated: beta * (pg[i] - rg[i]),
      margins: u,
      accuracies: beta * (pr[i] - rr[i]) > beta * (pg[i] - rg[i]) ? 1 : 0,
      logpsReal: pr[i],
      logpsGenerated: pg[i],
      dReal: (da + nllGrad) / count,
      dGenerated: db / count,
    });
  }
  return { loss: count ? total / count : 0, count, perPair };
}

/** max |a - b| / max(max |b|, floor): the normwise relative error used by the tests. */
export function relErr(a: ArrayLike<number>, b: ArrayLike<number>, floor = 1e-30): number {
  if (a.length !== b.length) throw new Error(`length mismatch ${a.length} vs ${b.length}`);
  let num = 0;
  let den = floor;
  for (let i = 0; i < a.length; i++) {
    if (a[i] === b[i]) continue; // also equal infinities
    const d = Math.abs(a[i] - b[i]);
    if (!(d <= num)) num = Number.isNaN(d) ? Infinity : d;
    if (Number.isFinite(b[i])) den = Math.max(den, Math.abs(b[i]));
  }
  return num / den;
}
