// Helpers every spinlm WGSL kernel gets (prepended by kernels.ts, after the variant constants).
// bf16 tensors are stored two per u32 (element 2i in the low half, 2i+1 in the high half); all math
// is f32. Views start at 256-byte offsets, so element 0 of a binding is always a low half.

const ERR_TARGETS: u32 = 1u;
const ERR_SEGMENTS: u32 = 2u;
const ERR_TOKEN_IDS: u32 = 4u;
const ERR_SCATTER_INDEX: u32 = 8u;
const ERR_DECODE_LENGTHS: u32 = 16u;
const ERR_POSITIONS: u32 = 32u;
const ERR_ATTENTION_SPANS: u32 = 64u;
const IGNORE_INDEX: i32 = -100;

fn nan_f32() -> f32 { let b = 0x7fc00000u; return bitcast<f32>(b); }
fn neg_inf() -> f32 { let b = 0xff800000u; return bitcast<f32>(b); }
fn pos_inf() -> f32 { let b = 0x7f800000u; return bitcast<f32>(b); }

/** The f32 value of the bf16 in half `odd` of word w. */
fn bf16_half(w: u32, odd: bool) -> f32 { return bitcast<f32>(select(w << 16u, w & 0xffff0000u, odd)); }

/** f32 -> bf16 bits, round to nearest even; NaN stays a quiet NaN (as native/include/bf16.h). */
fn bf16_bits(f: f32) -> u32 {
  let u = bitcast<u32>(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) { return ((u >> 16u) | 0x40u) & 0xffffu; }
  return (u + 0x7fffu + ((u >> 16u) & 1u)) >> 16u;
}
fn bf16_pack(lo: f32, hi: f32) -> u32 { return bf16_bits(lo) | (bf16_bits(hi) << 16u); }

/** Linear index of a workgroup in a (possibly 2-D) grid. */
fn wg_linear(wid: vec3u, nwg: vec3u) -> u32 { return wid.x + wid.y * nwg.x; }

// GPU log and exp are accurate only to ~2^-21 absolute near 1 (Vulkan's precision rules), so the small
// arguments of log1p and expm1 use series instead.
/** log(1 + x) without cancellation: 2 atanh(x / (2 + x)) as a series for |x| < 0.5. */
fn log1p_f(x: f32) -> f32 {
  if (abs(x) >= 0.5) { return log(1.0 + x); }
  let s = x / (2.0 + x);
  let z = s * s;
  return 2.0 * s * (1.0 + z * (1.0 / 3.0 + z * (0.2 + z * (1.0 / 7.0 + z * (1.0 / 9.0 + z * (1.0 / 11.0))))));
}

/** exp(x) - 1 without cancellation: Taylor series for |x| < 0.5. */
fn expm1_f(x: f32) -> f32 {
  if (abs(x) >= 0.5) { return exp(x) - 1.0; }
  var t = 1.0 / 362880.0;
  t = t * x + 1.0 / 40320.0;
  t = t * x + 1.0 / 5040.0;
  t = t * x + 1.0 / 720.0;
  t = t * x + 1.0 / 120.0;
  t = t * x + 1.0 / 24.0;
  t = t * x + 1.0 / 6.0;
  t = t * x + 0.5;
  return x + x * x * t;
}

/**
 * tanh(x) accurate near 0, for c tanh(x / c) (the head's and softcapInPlace's soft-cap):
 * (e^2a - 1) / (e^2a + 1) with expm1_f; tanh(10) is 1 in f32, so +-inf -> +-1. NaN stays NaN, found
 * by its bits (shader compilers may fold x != x to false, and sign(NaN) is 0 on Mesa's lavapipe).
 */
fn tanh_f(x: f32) -> f32 {
  if ((bitcast<u32>(x) & 0x7fffffffu) > 0x7f800000u) { return x; }
  let e = expm1_f(2.0 * min(abs(x), 10.0));
  return sign(x) * (e / (e + 2.0));
}

// sin and cos of f32 angles to about 1 ulp (GPU sin/cos are only accurate to ~2^-11 absolute):
// Cody-Waite reduction by pi/4 in three parts, then minimax polynomials (the Cephes sinf/cosf ones).
fn sincos_f(xin: f32) -> vec2f {
  var x = abs(xin);
  var j = u32(x * 1.27323954473516);
  var y = f32(j);
  if ((j & 1u) == 1u) { j += 1u; y += 1.0; }
  j = j & 7u;
  x = ((x - y * 0.78515625) - y * 2.4187564849853515625e-4) - y * 3.77489497744594108e-8;
  let z = x * x;
  let s = ((-1.9515295891e-4 * z + 8.3321608736e-3) * z - 1.6666654611e-1) * z * x + x;
  let c = ((2.443315711809948e-5 * z - 1.388731625493765e-3) * z + 4.166664568298827e-2) * z * z - 0.5 * z + 1.0;
  var sn: f32; var cs: f32;
  var sign_s = select(1.0, -1.0, xin < 0.0);
  var sign_c = 1.0;
  if (j > 3u) { j -= 4u; sign_s = -sign_s; sign_c = -sign_c; }
  if (j > 1u) { sign_c = -sign_c; }
  if (j == 1u || j == 2u) { sn = c; cs = s; } else { sn = s; cs = c; }
  return vec2f(sign_s * sn, sign_c * cs);
}
