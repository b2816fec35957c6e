// The log-prob / SPIN loss family (docs/algorithm.md). Z_BF16 / OUT_BF16 / IN_PLACE are variant
// constants. Logits may be bound one chunk of rows at a time (a binding holds at most 128 MiB on many
// devices): lp.row0 is the chunk's first row in the whole-tensor bindings (targets, logp, lse, dlogp).

struct LossParams { rows: u32, v: u32, row0: u32, splits: u32, n: u32, _a: u32, _b: u32, _c: u32 }
@group(0) @binding(0) var<uniform> lp: LossParams;
@group(0) @binding(1) var<storage, read> lg_z: array<u32>;
@group(0) @binding(2) var<storage, read> lg_t: array<i32>;
@group(0) @binding(3) var<storage, read_write> lg_logp: array<f32>;
@group(0) @binding(4) var<storage, read_write> lg_lse: array<f32>;
@group(0) @binding(5) var<storage, read_write> lg_err: atomic<u32>;

fn z_at(i: u32) -> f32 {
  if (Z_BF16) { return bf16_half(lg_z[i >> 1u], (i & 1u) == 1u); }
  return bitcast<f32>(lg_z[i]);
}

var<workgroup> wmax: array<f32, 256>;
var<workgroup> wsum: array<f32, 256>;
var<workgroup> wy: i32;

/** Online (max, sum of exp) merge; -inf maxima stay empty (native/include/lse.h). */
fn lse_merge(m1: f32, s1: f32, m2: f32, s2: f32) -> vec2f {
  let m = max(m1, m2);
  if (m == neg_inf()) { return vec2f(neg_inf(), 0.0); }
  return vec2f(m, s1 * exp(m1 - m) + s2 * exp(m2 - m));
}

/**
 * (max, sum) over elements [j0, j1) of row r (local to the chunk), merged across the workgroup: with
 * SUBGROUPS, inside each subgroup by subgroupMax / subgroupAdd, then the subgroups' pairs in order;
 * otherwise by a tree in workgroup memory. Both orders are fixed, so results repeat bit for bit.
 */
fn row_partial(lid: u32, sgi: u32, sgs: u32, base: u32, j0: u32, j1: u32) -> vec2f {
  var m = neg_inf();
  var s = 0.0;
  var nan = false;
  for (var j = j0 + lid; j < j1; j += 256u) {
    let x = z_at(base + j);
    if (x != x) { nan = true; }
    if (x > m) { s = s * exp(m - x) + 1.0; m = x; } else if (x > neg_inf()) { s += exp(x - m); }
  }
  if (nan) { s = nan_f32(); }
//#if SUBGROUPS
  let gm = subgroupMax(m);
  var sc = 0.0;
  if (gm != neg_inf()) { sc = s * exp(m - gm); }
  let gs = subgroupAdd(sc);
  if (sgi == 0u) { wmax[lid / sgs] = gm; wsum[lid / sgs] = gs; }
  workgroupBarrier();
  if (lid == 0u) {
    var mm = neg_inf();
    var ss = 0.0;
    for (var k = 0u; k < 256u / sgs; k++) { let r = lse_merge(mm, ss, wmax[k], wsum[k]); mm = r.x; ss = r.y; }
    wmax[0] = mm;
    wsum[0] = ss;
  }
  workgroupBarrier();
//#else
  wmax[lid] = m;
  wsum[lid] = s;
  workgroupBarrier();
  for (var k = 128u; k > 0u; k >>= 1u) {
    if (lid < k) {
      let r = lse_merge(wmax[lid], wsum[lid], wmax[lid + k], wsum[lid + k]);
      wmax[lid] = r.x;
      wsum[lid] = r.y;
    }
    workgroupBarrier();
  }
//#endif
  let out = vec2f(wmax[0], wsum[0]);
  workgroupBarrier();
  return out;
}

/** logp = z[y] - lse, one workgroup per row (rows short enough for one workgroup). */
@compute @workgroup_size(256)
fn gather(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u, @builtin(local_invocation_index) lid: u32
//#if SUBGROUPS
  , @builtin(subgroup_invocation_id) sgi: u32, @builtin(subgroup_size) sgs: u32) {
//#else
  ) { let sgi = 0u; let sgs = 1u;
//#endif
  let r = wg_linear(wid, nwg);
  if (r >= lp.rows) { return; }
  let g = lp.row0 + r;
  if (lid == 0u) { wy = lg_t[g]; }
  let y = workgroupUniformLoad(&wy);  // uniform, so the early returns keep barriers uniform
  if (y == IGNORE_INDEX) {
    if (lid == 0u) { lg_logp[g] = 0.0; lg_lse[g] = 0.0; }
    return;
  }
  if (y < 0 || u32(y) >= lp.v) {
    if (lid == 0u) { lg_logp[g] = nan_f32(); lg_lse[g] = nan_f32(); atomicOr(&lg_err, ERR_TARGETS); }
    return;
  }
  let ms = row_partial(lid, sgi, sgs, r * lp.v, 0u, lp.v);
  if (lid == 0u) {
    let l = ms.x + log(ms.y);
    lg_lse[g] = l;
    lg_logp[g] = z_at(r * lp.v + u32(y)) - l;
  }
}

/** Long rows: lp.splits workgroups per row each write a partial (max, sum) into lg_part [rows, splits, 2]. */
@group(0) @binding(3) var<storage, read_write> lg_part: array<f32>;
@compute @workgroup_size(256)
fn gather_split(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u, @builtin(local_invocation_index) lid: u32
//#if SUBGROUPS
  , @builtin(subgroup_invocation_id) sgi: u32, @builtin(subgroup_size) sgs: u32) {
//#else
  ) { let sgi = 0u; let sgs = 1u;
//#endif
  let w = wg_linear(wid, nwg);
  let r = w / lp.splits;
  let k = w % lp.splits;
  if (r >= lp.rows) { return; }
  let per = (lp.v + lp.splits - 1u) / lp.splits;
  let j0 = min(lp.v, k * per);
  let j1 = min(lp.v, j0 + per);
  let ms = row_partial(lid, sgi, sgs, r * lp.v, j0, j1);
  if (lid == 0u) { lg_part[2u * w] = ms.x; lg_part[2u * w + 1u] = ms.y; }
}

/** Merges the partials of each row in split order, then logp and lse as gather. One invocation per row. */
@group(0) @binding(1) var<storage, read> lm_part: array<f32>;
@group(0) @binding(6) var<storage, read> lm_z: array<u32>;
fn zm_at(i: u32) -> f32 {
  if (Z_BF16) { return bf16_half(lm_z[i >> 1u], (i & 1u) == 1u); }
  return bitcast<f32>(lm_z[i]);
}
@compute @workgroup_size(64)
fn gather_merge(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u, @builtin(local_invocation_index) lid: u32) {
  let r = wg_linear(wid, nwg) * 64u + lid;
  if (r >= lp.rows) { return; }
  let g = lp.row0 + r;
  let y = lg_t[g];
  if (y == IGNORE_INDEX) { lg_logp[g] = 0.0; lg_lse[g] = 0.0; return; }
  if (y < 0 || u32(y) >= lp.v) { lg_logp[g] = nan_f32(); lg_lse[g] = nan_f32(); atomicOr(&lg_err, ERR_TARGETS); return; }
  var m = neg_inf();
  var s = 0.0;
  for (var k = 0u; k < lp.splits; k++) {
    let q = lse_merge(m, s, lm_part[2u * (r * lp.splits + k)], lm_part[2u * (r * lp.splits + k) + 1u]);
    m = q.x;
    s = q.y;
  }
  let l = m + log(s);
  lg_lse[g] = l;
  lg_logp[g] = zm_at(r * lp.v + u32(y)) - l;
}

// ---- backward, in place when IN_PLACE (z read from the output binding) ------------------------------
@group(0) @binding(1) var<storage, read> bw_z: array<u32>;
@group(0) @binding(2) var<storage, read> bw_t: array<i32>;
@group(0) @binding(3) var<storage, read> bw_lse: array<f32>;
@group(0) @binding(4) var<storage, read> bw_dlogp: array<f32>;
@group(0) @binding(5) var<storage, read_write> bw_err: atomic<u32>;
@group(0) @binding(6) var<storage, read_write> bw_out: array<u32>;

fn bz_at(i: u32) -> f32 {
  var w: u32;
  if (IN_PLACE) { w = bw_out[select(i, i >> 1u, Z_BF16)]; } else { w = bw_z[select(i, i >> 1u, Z_BF16)]; }
  if (Z_BF16) { return bf16_half(w, (i & 1u) == 1u); }
  return bitcast<f32>(w);
}

/** d z[i] for element i (local to the chunk) of lp.rows x lp.v. */
fn dz_at(i: u32, z: f32) -> f32 {
  let r = i / lp.v;
  let j = i % lp.v;
  let g = lp.row0 + r;
  let y = lg_t_b(g);
  if (y == IGNORE_INDEX) { return 0.0; }
  if (y < 0 || u32(y) >= lp.v) {
    if (j == 0u) { atomicOr(&bw_err, ERR_TARGETS); }
    return nan_f32();
  }
  let l = bw_lse[g];
  let d = bw_dlogp[g];
  if (u32(y) == j) { return d * -expm1_f(z - l); }
  return -d * exp(z - l);
}
fn lg_t_b(g: u32) -> i32 { return bw_t[g]; }

/** One invocation per output word: one f32, or two bf16 elements. lp.n = elements in the chunk. */
@compute @workgroup_size(256)
fn backward(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u, @builtin(local_invocation_index) lid: u32) {
  let w = wg_linear(wid, nwg) * 256u + lid;
  if (OUT_BF16) {
    let i = 2u * w;
    if (i >= lp.n) { return; }
    let z0 = bz_at(i);
    var z1 = 0.0;
    if (i + 1u < lp.n) { z1 = bz_at(i + 1u); }
    let lo = bf16_bits(dz_at(i, z0));
    if (i + 1u < lp.n) {
      bw_out[w] = lo | (bf16_bits(dz_at(i + 1u, z1)) << 16u);
    } else {
      bw_out[w] = (bw_out[w] & 0xffff0000u) | lo;
    }
  } else {
    if (w >= lp.n) { return; }
    bw_out[w] = bitcast<u32>(dz_at(w, bz_at(w)));
  }
}

// ---- per-sequence sums ---------------------------------------------------------------------------
@group(0) @binding(1) var<storage, read> sq_logp: array<f32>;
@group(0) @binding(2) var<storage, read> sq_seg: array<i32>;
@group(0) @binding(3) var<storage, read_write> sq_out: array<f32>;
@group(0) @binding(4) var<storage, read_write> sq_err: atomic<u32>;
var<workgroup> sq_bad: atomic<u32>;

/** out[s] = sum of logp[n] with seg[n] = s; one workgroup per sequence, a fixed reduction tree. lp.n = N, lp.rows = numSeqs. */
@compute @workgroup_size(256)
fn sequence_sum(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u, @builtin(local_invocation_index) lid: u32) {
  let s = wg_linear(wid, nwg);
  if (s >= lp.rows) { return; }
  var acc = 0.0;
  var bad = 0u;
  for (var n = lid; n < lp.n; n += 256u) {
    let k = sq_seg[n];
    if (k < -1 || k >= i32(lp.rows)) { bad = 1u; } else if (k == i32(s)) { acc += sq_logp[n]; }
  }
  if (bad == 1u) { atomicOr(&sq_bad, 1u); }
  wsum[lid] = acc;
  workgroupBarrier();
  for (var k = 128u; k > 0u; k >>= 1u) {
    if (lid < k) { wsum[lid] = wsum[lid] + wsum[lid + k]; }
    workgroupBarrier();
  }
  let any_bad = atomicLoad(&sq_bad);
  if (lid == 0u) {
    if (any_bad != 0u) { sq_out[s] = nan_f32(); atomicOr(&sq_err, ERR_SEGMENTS); } else { sq_out[s] = wsum[0]; }
  }
}

/** dlogp[n] = dseq[seg[n]] (0 for -1). lp.n = N, lp.rows = numSeqs. sq_logp = dseq here. */
@compute @workgroup_size(256)
fn sequence_backward(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u, @builtin(local_invocation_index) lid: u32) {
  let n = wg_linear(wid, nwg) * 256u + lid;
  if (n >= lp.n) { return; }
  let k = sq_seg[n];
  if (k == -1) { sq_out[n] = 0.0; } else if (k < -1 || k >= i32(lp.rows)) {
    sq_out[n] = nan_f32();
    atomicOr(&sq_err, ERR_SEGMENTS);
  } else { sq_out[n] = sq_logp[k]; }
}

// ---- the SPIN loss (B pairs, one invocation: B is small) ---------------------------------------------
struct SpinParams { b: u32, kind: u32, has_mask: u32, beta: f32, nll_alpha: f32, grad_scale: f32, _a: u32, _b: u32 }
@group(0) @binding(0) var<uniform> spp: SpinParams;
@group(0) @binding(1) var<storage, read> sp_policy: array<f32>;
@group(0) @binding(2) var<storage, read> sp_ref: array<f32>;
@group(0) @binding(3) var<storage, read> sp_mask: array<f32>;
@group(0) @binding(4) var<storage, read> sp_tokens: array<f32>;
@group(0) @binding(5) var<storage, read_write> sp_per: array<f32>;
@group(0) @binding(6) var<storage, read_write> sp_means: array<f32>;
@group(0) @binding(7) var<storage, read_write> sp_dseq: array<f32>;

fn softplus_f(x: f32) -> f32 { return max(x, 0.0) + log1p_f(exp(-abs(x))); }
fn sigmoid_l(x: f32) -> f32 {
  if (x >= 0.0) { return 1.0 / (1.0 + exp(-x)); }
  let e = exp(x);
  return e / (1.0 + e);
}

@compute @workgroup_size(1)
fn spin_loss() {
  let b = spp.b;
  var counted = 0u;
  for (var i = 0u; i < b; i++) { if (spp.has_mask == 0u || sp_mask[i] != 0.0) { counted++; } }
  let inv = select(0.0, 1.0 / f32(counted), counted > 0u);
  var sums = array<f32, 7>(0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0);
  for (var i = 0u; i < b; i++) {
    if (spp.has_mask != 0u && sp_mask[i] == 0.0) {
      for (var k = 0u; k < 7u; k++) { sp_per[k * b + i] = 0.0; }
      sp_dseq[i] = 0.0;
      sp_dseq[b + i] = 0.0;
      continue;
    }
    let lr_real = sp_policy[i] - sp_ref[i];  // log-ratios r_w, r_l
    let lr_gen = sp_policy[b + i] - sp_ref[b + i];
    let rr = spp.beta * lr_real;
    let rg = spp.beta * lr_gen;
    let u = rr - rg;
    var loss: f32;
    var g_real: f32;  // d loss / dS(theta, y) and d loss / dS(theta, y') of this pair
    var g_gen: f32;
    if (spp.kind == 2u) {  // ipo: (r_w - r_l - 1/(2 beta))^2
      let e = (lr_real - lr_gen) - 0.5 / spp.beta;
      loss = e * e;
      g_real = 2.0 * e;
      g_gen = -2.0 * e;
    } else if (spp.kind == 3u) {  // sppo_hard: (r_w - 1/(2 beta))^2 + (r_l + 1/(2 beta))^2
      let e_real = lr_real - 0.5 / spp.beta;
      let e_gen = lr_gen + 0.5 / spp.beta;
      loss = e_real * e_real + e_gen * e_gen;
      g_real = 2.0 * e_real;
      g_gen = 2.0 * e_gen;
    } else {
      var dl: f32;
      if (spp.kind == 1u) {  // hinge
        loss = select(0.0, 1.0 - u, u < 1.0);
        dl = select(0.0, -1.0, u < 1.0);
      } else {  // sigmoid
        loss = softplus_f(-u);
        dl = -sigmoid_l(-u);
      }
      g_real = spp.beta * dl;
      g_gen = -spp.beta * dl;
    }
    var d_real = g_real * inv;
    let d_gen = g_gen * inv;
    if (spp.nll_alpha != 0.0 && sp_tokens[i] > 0.0) {
      loss += spp.nll_alpha * -sp_policy[i] / sp_tokens[i];
      d_real += -spp.nll_alpha / sp_tokens[i] * inv;
    }
    let row = array<f32, 7>(loss, rr, rg, u, select(0.0, 1.0, rr > rg), sp_policy[i], sp_policy[b + i]);
    for (var k = 0u; k < 7u; k++) { sp_per[k * b + i] = row[k]; sums[k] += row[k]; }
    sp_dseq[i] = d_real * spp.grad_scale;
    sp_dseq[b + i] = d_gen * spp.grad_scale;
  }
  for (var k = 0u; k < 7u; k++) { sp_means[k] = sums[k] * inv; }
  sp_means[7] = select(0.0, f32(counted) / f32(b), b > 0u);
}
