"""Coefficients of simd::exp_neg_deg5 (native/cpu/simd.h): e^r ~ 1 + c1 r + ... + c5 r^5 on |r| <= ln2/2.

Minimax for relative error with p(0) = 1 fixed, by Lawson's iteration (iteratively reweighted least
squares) on a dense grid, then a greedy search over float32 neighbours of each coefficient, scoring
float32 Horner with FMA (emulated: the exact product of two floats plus a float, rounded once) against
mpmath. Usage: /usr/bin/python3 bench/exp_fit.py [degree]   (numpy and mpmath; ~15 s)
"""

import sys

import mpmath
import numpy as np

mpmath.mp.prec = 120
DEG = int(sys.argv[1]) if len(sys.argv) > 1 else 5
R = 0.5 * float(np.log(2)) * 1.0005  # the reduction leaves |r| slightly above ln2/2

r = np.linspace(-R, R, 40001)
er = np.exp(r)
# relative error (1 + sum c_k r^k - e^r) / e^r = A c - b
A = np.stack([r**k / er for k in range(1, DEG + 1)], 1)
b = (er - 1) / er
w = np.ones_like(r) / len(r)
for _ in range(3000):
    sw = np.sqrt(w)
    c, *_ = np.linalg.lstsq(A * sw[:, None], b * sw, rcond=None)
    w = w * np.abs(A @ c - b)
    w /= w.sum()
print("exact-arithmetic max relative error:", np.abs(A @ c - b).max())


def horner32(cs, x):
    p = np.full_like(x, cs[0], dtype=np.float32)
    for k in cs[1:]:
        p = (p.astype(np.float64) * x.astype(np.float64) + np.float64(k)).astype(np.float32)
    return p


xs = np.linspace(-R, R, 4001).astype(np.float32)
ref = np.array([float(mpmath.exp(mpmath.mpf(float(v)))) for v in xs])


def err(cs):
    return np.abs(horner32(cs, xs).astype(np.float64) / ref - 1).max()


def step(x, d):
    for _ in range(abs(d)):
        x = np.float32(np.nextafter(x, np.float32(np.inf) if d > 0 else np.float32(-np.inf)))
    return x


best_cs = [np.float32(x) for x in c[::-1]] + [np.float32(1.0)]
best = err(best_cs)
improved = True
while improved:
    improved = False
    for i in range(len(best_cs) - 1):  # the constant term stays exactly 1
        for d in (-3, -2, -1, 1, 2, 3):
            cand = list(best_cs)
            cand[i] = step(cand[i], d)
            e = err(cand)
            if e < best:
                best, best_cs, improved = e, cand, True
print("float32 coefficients, highest degree first:")
for x in best_cs:
    print("  %.9e" % float(x))
print("float32 Horner max relative error on |r| <= R: %.3e" % best)
