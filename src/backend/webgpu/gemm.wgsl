// C [M, N] = alpha op(A) op(B) (+ C when accumulating). 64 x 64 output tiles per workgroup of 256, each
// invocation a 4 x 4 block; A and B pass through workgroup memory 16 deep along K. B_BF16 (a variant
// constant) says B holds bf16 pairs: they are widened to f32 as the tile is loaded. Where K is a
// multiple of 4, a row-major A (A_VEC) and a transposed B (B_VEC: the [out, in] weight of a linear
// layer) are read 4 elements at a time (vec4 of f32, or vec2 of u32 = 4 bf16).

struct GemmParams { m: u32, n: u32, k: u32, lda: u32, ldb: u32, ldc: u32, col0: u32, trans_a: u32, trans_b: u32, accumulate: u32, alpha: f32, _a: u32 }
@group(0) @binding(0) var<uniform> gp: GemmParams;
//#if A_VEC
@group(0) @binding(1) var<storage, read> g_a4: array<vec4f>;
//#else
@group(0) @binding(1) var<storage, read> g_a: array<f32>;
//#endif
//#if B_VEC
@group(0) @binding(2) var<storage, read> g_b4: array<vec4f>;
//#endif
//#if B_VEC_BF16
@group(0) @binding(2) var<storage, read> g_bh: array<vec2u>;
//#endif
//#if B_SCALAR
@group(0) @binding(2) var<storage, read> g_b: array<u32>;
//#endif
@group(0) @binding(3) var<storage, read_write> g_c: array<f32>;

const TM: u32 = 64u;
const TK: u32 = 16u;
var<workgroup> as_: array<f32, 1024>;  // [TK][TM]
var<workgroup> bs_: array<f32, 1024>;  // [TK][TM]

//#if A_VEC
/** A[m, k .. k+3] (k a multiple of 4; zeros outside the matrix). */
fn a_vec(m: u32, k: u32) -> vec4f {
  if (m >= gp.m || k >= gp.k) { return vec4f(0.0); }
  return g_a4[(m * gp.lda + k) / 4u];
}
//#else
fn a_at(m: u32, k: u32) -> f32 {
  if (m >= gp.m || k >= gp.k) { return 0.0; }
  if (gp.trans_a == 1u) { return g_a[k * gp.lda + m]; }
  return g_a[m * gp.lda + k];
}
//#endif
//#if B_VEC
/** B^T[n, k .. k+3] of a transposed f32 B. */
fn b_vec(k: u32, n: u32) -> vec4f {
  if (n >= gp.n || k >= gp.k) { return vec4f(0.0); }
  return g_b4[(n * gp.ldb + k) / 4u];
}
//#endif
//#if B_VEC_BF16
/** The same of a transposed bf16 B: two words, four bf16. */
fn b_vec(k: u32, n: u32) -> vec4f {
  if (n >= gp.n || k >= gp.k) { return vec4f(0.0); }
  let w = g_bh[(n * gp.ldb + k) / 4u];
  return vec4f(bf16_half(w.x, false), bf16_half(w.x, true), bf16_half(w.y, false), bf16_half(w.y, true));
}
//#endif
//#if B_SCALAR
fn b_at(k: u32, n: u32) -> f32 {
  if (k >= gp.k || n >= gp.n) { return 0.0; }
  var i: u32;
  if (gp.trans_b == 1u) { i = n * gp.ldb + k; } else { i = k * gp.ldb + n; }
  if (B_BF16) { return bf16_half(g_b[i >> 1u], (i & 1u) == 1u); }
  return bitcast<f32>(g_b[i]);
}
//#endif

@compute @workgroup_size(256)
fn gemm(@builtin(workgroup_id) wid: vec3u, @builtin(local_invocation_index) lid: u32) {
  let m0 = wid.y * TM;
  let n0 = wid.x * TM;
  let tr = lid / 16u;  // rows tr*4 .. tr*4+3 of the tile
  let tc = lid % 16u;  // cols tc*4 .. tc*4+3
  var acc: array<f32, 16>;
  for (var i = 0u; i < 16u; i++) { acc[i] = 0.0; }
  for (var k0 = 0u; k0 < gp.k; k0 += TK) {
    // 1024 elements of each tile, 4 per invocation; consecutive invocations take consecutive
    // elements along the matrix's contiguous dimension
//#if A_VEC
    {
      let mm = lid / 4u;
      let kq = (lid % 4u) * 4u;
      let v = a_vec(m0 + mm, k0 + kq);
      for (var c = 0u; c < 4u; c++) { as_[(kq + c) * TM + mm] = v[c]; }
    }
//#else
    for (var q = 0u; q < 4u; q++) {
      let e = q * 256u + lid;
      if (gp.trans_a == 1u) { let kk = e / TM; let mm = e % TM; as_[kk * TM + mm] = a_at(m0 + mm, k0 + kk); }
      else { let mm = e / TK; let kk = e % TK; as_[kk * TM + mm] = a_at(m0 + mm, k0 + kk); }
    }
//#endif
//#if B_SCALAR
    for (var q = 0u; q < 4u; q++) {
      let e = q * 256u + lid;
      if (gp.trans_b == 1u) { let nn = e / TK; let kk = e % TK; bs_[kk * TM + nn] = b_at(k0 + kk, n0 + nn); }
      else { let kk = e / TM; let nn = e % TM; bs_[kk * TM + nn] = b_at(k0 + kk, n0 + nn); }
    }
//#else
    {
      let nn = lid / 4u;
      let kq = (lid % 4u) * 4u;
      let v = b_vec(k0 + kq, n0 + nn);
      for (var c = 0u; c < 4u; c++) { bs_[(kq + c) * TM + nn] = v[c]; }
    }
//#endif
    workgroupBarrier();
    for (var kk = 0u; kk < TK; kk++) {
      let av = vec4f(as_[kk * TM + tr * 4u], as_[kk * TM + tr * 4u + 1u], as_[kk * TM + tr * 4u + 2u], as_[kk * TM + tr * 4u + 3u]);
      let bv = vec4f(bs_[kk * TM + tc * 4u], bs_[kk * TM + tc * 4u + 1u], bs_[kk * TM + tc * 4u + 2u], bs_[kk * TM + tc * 4u + 3u]);
      for (var i = 0u; i < 4u; i++) {
        acc[i * 4u] += av[i] * bv.x;
        acc[i * 4u + 1u] += av[i] * bv.y;
        acc[i * 4u + 2u] += av[i] * bv.z;
        acc[i * 4u + 3u] += av[i] * bv.w;
      }
    }
    workgroupBarrier();
  }
  for (var i = 0u; i < 4u; i++) {
    let m = m0 + tr * 4u + i;
    if (m >= gp.m) { continue; }
    for (var j = 0u; j < 4u; j++) {
      let n = n0 + tc * 4u + j;
      if (n >= gp.n) { continue; }
      let idx = m * gp.ldc + gp.col0 + n;
      var v = gp.alpha * acc[i * 4u + j];
      if (gp.accumulate == 1u) { v += g_c[idx]; }
      g_c[idx] = v;
    }
  }
}
