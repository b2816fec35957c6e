// Causal grouped-query attention. Variant constants: HD (head dim) and KT (keys or queries per tile
// in workgroup memory, sized from the adapter's limit). Layouts: q/out/dq [B, L, nH, HD], k/v/dk/dv
// [B, L, nKV, HD], key mask i32 [B, L], lse/delta [B, nH, L]. Each workgroup of 64 invocations owns 64
// consecutive query rows (forward, dQ) or key rows (dK, dV) of one (sequence, head); the other side
// streams through workgroup memory KT rows at a time with an online softmax. ap.window > 0: the sliding
// window, query i sees key j only when i - j < window (tiles wholly outside it are not streamed).
// ap.softcap > 0 (Gemma 2's attn_logit_softcapping): a score s becomes c tanh(s / c) before the mask;
// the backward multiplies dS by 1 - tanh(s / c)^2. 0: the scores as they were (the same arithmetic).
// SPANS (a variant given only with AttentionOpts.spans; absent = false): each query's spans (binding
// 10, i32 [B, L, 3]) give its visible keys as two ranges (span_vis); the code between `//#if SPANS`
// and `//#endif` replaces the causal bounds. A query's arithmetic is the same per-key online softmax
// over its visible keys in increasing order whatever its block holds, so its out and lse depend only
// on those keys (packing invariance); workgroups stream only the key (or query) tiles some of their
// rows can see.

struct AttnParams { b: u32, l: u32, nh: u32, nkv: u32, blocks: u32, has_mask: u32, window: u32, _b: u32, scale: f32, softcap: f32, _d: u32, _e: u32 }
@group(0) @binding(0) var<uniform> ap: AttnParams;
@group(0) @binding(1) var<storage, read> a_q: array<f32>;
@group(0) @binding(2) var<storage, read> a_k: array<f32>;
@group(0) @binding(3) var<storage, read> a_v: array<f32>;
@group(0) @binding(4) var<storage, read> a_mask: array<i32>;

var<workgroup> tk: array<f32, KT * HD>;
var<workgroup> tv: array<f32, KT * HD>;
var<workgroup> tm: array<f32, KT>;   // key bias / per-row scalars
var<workgroup> tm2: array<f32, KT>;

fn q_index(b: u32, i: u32, h: u32) -> u32 { return ((b * ap.l + i) * ap.nh + h) * HD; }
fn kv_index(b: u32, j: u32, g: u32) -> u32 { return ((b * ap.l + j) * ap.nkv + g) * HD; }

/** Key j is outside the causal sliding window of query i (j after i, or window > 0 and i - j >= window). */
fn hidden(i: u32, j: u32) -> bool { return j > i || (ap.window > 0u && i - j >= ap.window); }

/** The first key any of the queries from i0 on may see: i0 - window + 1 (0 without a window). */
fn first_key(i0: u32) -> u32 { return select(0u, i0 + 1u - ap.window, ap.window > 0u && i0 + 1u > ap.window); }

/**
 * tanh(x) without overflow and without cancellation near 0 (WGSL's tanh may be computed from exp(x)
 * and exp(-x): NaN past |x| ~ 44, and (e^2x - 1) / (e^2x + 1) loses digits near 0): the odd Taylor
 * series to x^7 for |x| < 1/8 (next term < 2e-10), else 1 - 2 / (exp(2|x|) + 1) (1 once exp is inf);
 * x's sign.
 */
fn tanh_safe(x: f32) -> f32 {
  let a = abs(x);
  var t: f32;
  if (a < 0.125) {
    let a2 = a * a;
    t = a * (1.0 + a2 * (-1.0 / 3.0 + a2 * (2.0 / 15.0 + a2 * (-17.0 / 315.0))));
  } else {
    t = 1.0 - 2.0 / (exp(2.0 * a) + 1.0);
  }
  return select(t, -t, x < 0.0);
}

/** The soft-capped score c tanh(s / c) (c = ap.softcap > 0; callers branch on it). */
fn capped(s: f32) -> f32 { return ap.softcap * tanh_safe(s / ap.softcap); }

//#if SPANS
@group(0) @binding(10) var<storage, read> a_spans: array<i32>;
@group(0) @binding(11) var<storage, read_write> a_err: atomic<u32>;

/**
 * The keys query i of row b sees by position (AttentionOpts.spans): [x, y) before its hidden keys and
 * [z, w) from them to i, the window's distance counted without the hidden keys. w = -1: invalid spans
 * (not 0 <= lo <= hideLo <= hideHi <= i), nothing visible. !live: nothing visible, spans not read.
 */
fn span_vis(b: u32, i: u32, live: bool) -> vec4<i32> {
  if (!live) { return vec4<i32>(0, 0, 0, 0); }
  let o = (b * ap.l + i) * 3u;
  let lo = a_spans[o];
  let hlo = a_spans[o + 1u];
  let hhi = a_spans[o + 2u];
  let ii = i32(i);
  if (!(0 <= lo && lo <= hlo && hlo <= hhi && hhi <= ii)) { return vec4<i32>(0, 0, 0, -1); }
  if (ap.window == 0u) { return vec4<i32>(lo, hlo, hhi, ii + 1); }
  let w = i32(min(ap.window, ap.l)); // a window of L or more hides nothing
  return vec4<i32>(max(lo, ii + 1 - w - (hhi - hlo)), hlo, max(hhi, ii + 1 - w), ii + 1);
}

fn span_sees(v: vec4<i32>, j: u32) -> bool { let x = i32(j); return (x >= v.x && x < v.y) || (x >= v.z && x < v.w); }

/** The first key a query sees (0xffffffff: none). */
fn span_first(v: vec4<i32>) -> u32 { return select(select(0xffffffffu, u32(v.z), v.z < v.w), u32(v.x), v.x < v.y); }

var<workgroup> bk_first: atomic<u32>; // max of ~first: the block's first key (workgroup memory starts zeroed)
var<workgroup> bk_end: atomic<u32>;
var<workgroup> bk_g0: atomic<u32>;
var<workgroup> bk_g1: atomic<u32>; // max of ~g1
var<workgroup> bk_out: vec4u;

/**
 * The keys the workgroup's 64 queries (each's span_vis v) stream, uniform: [x, y) less the tiles
 * inside [z, w), the keys hidden from every query (the intersection of their gaps between the ranges).
 */
fn block_keys(lid: u32, v: vec4<i32>) -> vec4u {
  let a = v.x < v.y;
  let c = v.z < v.w;
  var first = 0xffffffffu;
  var end = 0u;
  var g0 = 0u;
  var g1 = 0xffffffffu;
  if (a || c) {
    first = span_first(v);
    end = u32(select(v.y, v.w, c));
    if (a) { g0 = u32(v.y); }
    if (c) { g1 = u32(v.z); }
  }
  atomicMax(&bk_first, ~first);
  atomicMax(&bk_end, end);
  atomicMax(&bk_g0, g0);
  atomicMax(&bk_g1, ~g1);
  workgroupBarrier();
  if (lid == 0u) { bk_out = vec4u(~atomicLoad(&bk_first), atomicLoad(&bk_end), atomicLoad(&bk_g0), ~atomicLoad(&bk_g1)); }
  return workgroupUniformLoad(&bk_out);
}
//#endif

/** (sequence, head, block) of workgroup w. */
fn unpack(w: u32) -> vec3u { let bh = w / ap.blocks; return vec3u(bh / ap.nh, bh % ap.nh, w % ap.blocks); }

/** Loads keys/values j0 .. j0+KT-1 of (b, g) into workgroup memory, with the mask in tm (1 = attend). */
fn load_kv(lid: u32, b: u32, g: u32, j0: u32) {
  for (var e = lid; e < KT * HD; e += 64u) {
    let jj = e / HD;
    let c = e % HD;
    let j = j0 + jj;
    if (j < ap.l) { tk[e] = a_k[kv_index(b, j, g) + c]; tv[e] = a_v[kv_index(b, j, g) + c]; } else { tk[e] = 0.0; tv[e] = 0.0; }
  }
  for (var jj = lid; jj < KT; jj += 64u) {
    let j = j0 + jj;
    tm[jj] = select(0.0, 1.0, j < ap.l && a_mask[b * ap.l + j] != 0);
  }
}

@group(0) @binding(5) var<storage, read_write> a_out: array<f32>;
@group(0) @binding(6) var<storage, read_write> a_lse: array<f32>;

@compute @workgroup_size(64)
fn forward(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u, @builtin(local_invocation_index) lid: u32) {
  let w = wg_linear(wid, nwg);
  if (w >= ap.b * ap.nh * ap.blocks) { return; }
  let u = unpack(w);
  let b = u.x; let h = u.y;
  let g = h / (ap.nh / ap.nkv);
  let i = u.z * 64u + lid;
  let live = i < ap.l;
  var q: array<f32, HD>;
  var acc: array<f32, HD>;
  for (var c = 0u; c < HD; c++) { acc[c] = 0.0; q[c] = select(0.0, a_q[q_index(b, min(i, ap.l - 1u), h) + c], live); }
  var m = neg_inf();
  var l = 0.0;
//#if SPANS
  let vis = span_vis(b, i, live);
  let r = block_keys(lid, vis);
  for (var j0 = r.x; j0 < r.y; j0 += KT) {
    if (j0 >= r.z && j0 + KT <= r.w) { continue; }
//#else
  let end = min(ap.l, u.z * 64u + 64u);
  for (var j0 = first_key(u.z * 64u); j0 < end; j0 += KT) {
//#endif
    load_kv(lid, b, g, j0);
    workgroupBarrier();
    for (var jj = 0u; jj < KT; jj++) {
      let j = j0 + jj;
//#if SPANS
      if (!span_sees(vis, j) || tm[jj] == 0.0) { continue; }
//#else
      if (!live || hidden(i, j) || tm[jj] == 0.0) { continue; }
//#endif
      var s = 0.0;
      for (var c = 0u; c < HD; c++) { s += q[c] * tk[jj * HD + c]; }
      s *= ap.scale;
      if (ap.softcap > 0.0) { s = capped(s); }
      if (s > m) {
        let corr = exp(m - s);
        l = l * corr + 1.0;
        for (var c = 0u; c < HD; c++) { acc[c] = acc[c] * corr + tv[jj * HD + c]; }
        m = s;
      } else {
        let p = exp(s - m);
        l += p;
        for (var c = 0u; c < HD; c++) { acc[c] += p * tv[jj * HD + c]; }
      }
    }
    workgroupBarrier();
  }
  if (!live) { return; }
  let o = q_index(b, i, h);
//#if SPANS
  if (vis.w < 0) {
    for (var c = 0u; c < HD; c++) { a_out[o + c] = nan_f32(); }
    a_lse[(b * ap.nh + h) * ap.l + i] = nan_f32();
    atomicOr(&a_err, ERR_ATTENTION_SPANS);
    return;
  }
//#endif
  let inv = select(0.0, 1.0 / l, m != neg_inf());
  for (var c = 0u; c < HD; c++) { a_out[o + c] = acc[c] * inv; }
  a_lse[(b * ap.nh + h) * ap.l + i] = select(m + log(l), neg_inf(), m == neg_inf());
}

// ---- backward ------------------------------------------------------------------------------------
@group(0) @binding(1) var<storage, read> d_out: array<f32>;
@group(0) @binding(2) var<storage, read> d_dout: array<f32>;
@group(0) @binding(3) var<storage, read_write> d_delta: array<f32>;

/** delta[b, h, i] = dO_i . O_i, one invocation per (b, i, h) in q layout order. */
@compute @workgroup_size(64)
fn delta(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u, @builtin(local_invocation_index) lid: u32) {
  let r = wg_linear(wid, nwg) * 64u + lid;
  if (r >= ap.b * ap.l * ap.nh) { return; }
  let h = r % ap.nh;
  let bi = r / ap.nh;
  let b = bi / ap.l;
  let i = bi % ap.l;
  var s = 0.0;
  for (var c = 0u; c < HD; c++) { s += d_dout[r * HD + c] * d_out[r * HD + c]; }
  d_delta[(b * ap.nh + h) * ap.l + i] = s;
}

@group(0) @binding(5) var<storage, read> b_lse: array<f32>;
@group(0) @binding(6) var<storage, read> b_delta: array<f32>;
@group(0) @binding(7) var<storage, read> b_dout: array<f32>;
@group(0) @binding(8) var<storage, read_write> b_dq: array<f32>;

/** dQ_i = scale sum_j P_ij (dP_ij - delta_i) K_j, P from the saved lse. */
@compute @workgroup_size(64)
fn backward_dq(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u, @builtin(local_invocation_index) lid: u32) {
  let w = wg_linear(wid, nwg);
  if (w >= ap.b * ap.nh * ap.blocks) { return; }
  let u = unpack(w);
  let b = u.x; let h = u.y;
  let g = h / (ap.nh / ap.nkv);
  let i = u.z * 64u + lid;
  let live = i < ap.l;
  let ic = min(i, ap.l - 1u);
  var q: array<f32, HD>;
  var dq: array<f32, HD>;
  var dout: array<f32, HD>;
  for (var c = 0u; c < HD; c++) { q[c] = a_q[q_index(b, ic, h) + c]; dout[c] = b_dout[q_index(b, ic, h) + c]; dq[c] = 0.0; }
  let lse = b_lse[(b * ap.nh + h) * ap.l + ic];
  let dl = b_delta[(b * ap.nh + h) * ap.l + ic];
//#if SPANS
  let vis = span_vis(b, i, live);
  let r = block_keys(lid, vis);
  for (var j0 = r.x; j0 < r.y; j0 += KT) {
    if (j0 >= r.z && j0 + KT <= r.w) { continue; }
//#else
  let end = min(ap.l, u.z * 64u + 64u);
  for (var j0 = first_key(u.z * 64u); j0 < end; j0 += KT) {
//#endif
    load_kv(lid, b, g, j0);
    workgroupBarrier();
    for (var jj = 0u; jj < KT; jj++) {
      let j = j0 + jj;
//#if SPANS
      if (!span_sees(vis, j) || tm[jj] == 0.0 || lse == neg_inf()) { continue; }
//#else
      if (!live || hidden(i, j) || tm[jj] == 0.0 || lse == neg_inf()) { continue; }
//#endif
      var s = 0.0;
      var dp = 0.0;
      for (var c = 0u; c < HD; c++) { s += q[c] * tk[jj * HD + c]; dp += dout[c] * tv[jj * HD + c]; }
      var ds: f32;
      if (ap.softcap > 0.0) {
        let t = tanh_safe(s * ap.scale / ap.softcap);
        let p = exp(ap.softcap * t - lse);
        ds = p * (dp - dl) * (1.0 - t * t) * ap.scale;
      } else {
        let p = exp(s * ap.scale - lse);
        ds = p * (dp - dl) * ap.scale;
      }
      for (var c = 0u; c < HD; c++) { dq[c] += ds * tk[jj * HD + c]; }
    }
    workgroupBarrier();
  }
  if (!live) { return; }
//#if SPANS
  if (vis.w < 0) {
    for (var c = 0u; c < HD; c++) { b_dq[q_index(b, i, h) + c] = nan_f32(); }
    atomicOr(&a_err, ERR_ATTENTION_SPANS);
    return;
  }
//#endif
  for (var c = 0u; c < HD; c++) { b_dq[q_index(b, i, h) + c] = dq[c]; }
}

@group(0) @binding(8) var<storage, read_write> b_dk: array<f32>;
@group(0) @binding(9) var<storage, read_write> b_dv: array<f32>;

//#if SPANS
// The backward's delta buffer holds, after delta [B, nH, L], the first key each 64-query block sees
// ([B, blocks], f32 integers; L <= 2^24; span_blocks writes it).
fn block_first_index(b: u32, qb: u32) -> u32 { return ap.b * ap.nh * ap.l + b * ap.blocks + qb; }

/** The first key any query of 64-query block qb of row b sees (L: none); one invocation per (row, block). */
@compute @workgroup_size(64)
fn span_blocks(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u, @builtin(local_invocation_index) lid: u32) {
  let r = wg_linear(wid, nwg) * 64u + lid;
  if (r >= ap.b * ap.blocks) { return; }
  let b = r / ap.blocks;
  let qb = r % ap.blocks;
  var first = ap.l;
  for (var i = qb * 64u; i < min(ap.l, qb * 64u + 64u); i++) { first = min(first, span_first(span_vis(b, i, true))); }
  d_delta[block_first_index(b, qb)] = f32(first);
}

var<workgroup> sq_last: atomic<u32>;
var<workgroup> sq_end: u32;

/** The end of the queries that may see key block blk of row b: past the last query block whose first key is in it (uniform). */
fn span_query_end(lid: u32, b: u32, blk: u32) -> u32 {
  let jmax = f32(min(ap.l, blk * 64u + 64u) - 1u);
  var last = 0u;
  for (var qb = blk + lid; qb < ap.blocks; qb += 64u) {
    if (b_delta[block_first_index(b, qb)] <= jmax) { last = qb + 1u; }
  }
  atomicMax(&sq_last, last);
  workgroupBarrier();
  if (lid == 0u) { sq_end = min(ap.l, atomicLoad(&sq_last) * 64u); }
  return workgroupUniformLoad(&sq_end);
}

var<workgroup> tq_vis: array<vec4<i32>, KT>;
var<workgroup> tq_any: array<u32, KT>;

/** Loads the span_vis of queries i0 .. i0+KT-1 into tq_vis; whether any of them sees a key of block blk (uniform). */
fn span_tile(lid: u32, b: u32, i0: u32, blk: u32) -> bool {
  let k0 = i32(blk * 64u);
  let k1 = i32(min(ap.l, blk * 64u + 64u));
  for (var ii = lid; ii < KT; ii += 64u) {
    let v = span_vis(b, i0 + ii, i0 + ii < ap.l);
    tq_vis[ii] = v;
    tq_any[ii] = select(0u, 1u, max(v.x, k0) < min(v.y, k1) || max(v.z, k0) < min(v.w, k1));
  }
  let f = workgroupUniformLoad(&tq_any);
  var any = false;
  for (var ii = 0u; ii < KT; ii++) { any = any || f[ii] != 0u; }
  return any;
}
//#endif

/**
 * dK_j, dV_j of 64 key rows of one (sequence, kv head): the group's query heads in order, queries
 * i >= j streamed KT at a time (tk = Q rows, tv = dO rows, tm = lse, tm2 = delta). ap.nh here counts
 * workgroups over kv heads: unpack uses ap.nkv (see the dispatch).
 */
@compute @workgroup_size(64)
fn backward_dkdv(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u, @builtin(local_invocation_index) lid: u32) {
  let w = wg_linear(wid, nwg);
  if (w >= ap.b * ap.nkv * ap.blocks) { return; }
  let bg = w / ap.blocks;
  let b = bg / ap.nkv;
  let g = bg % ap.nkv;
  let blk = w % ap.blocks;
  let j = blk * 64u + lid;
  let jc = min(j, ap.l - 1u);
  let on = j < ap.l && a_mask[b * ap.l + jc] != 0;
  var k: array<f32, HD>;
  var v: array<f32, HD>;
  var dk: array<f32, HD>;
  var dv: array<f32, HD>;
  for (var c = 0u; c < HD; c++) { k[c] = a_k[kv_index(b, jc, g) + c]; v[c] = a_v[kv_index(b, jc, g) + c]; dk[c] = 0.0; dv[c] = 0.0; }
  let group = ap.nh / ap.nkv;
//#if SPANS
  let iend = span_query_end(lid, b, blk);
//#else
  // the last query that sees any of the block's keys: blk * 64 + 63 + window - 1 (all without a window)
  let iend = select(ap.l, min(ap.l, blk * 64u + 63u + ap.window), ap.window > 0u);
//#endif
  for (var hh = 0u; hh < group; hh++) {
    let h = g * group + hh;
    for (var i0 = blk * 64u; i0 < iend; i0 += KT) {
//#if SPANS
      if (!span_tile(lid, b, i0, blk)) { continue; }
//#endif
      for (var e = lid; e < KT * HD; e += 64u) {
        let ii = e / HD;
        let c = e % HD;
        let i = i0 + ii;
        if (i < ap.l) { tk[e] = a_q[q_index(b, i, h) + c]; tv[e] = b_dout[q_index(b, i, h) + c]; } else { tk[e] = 0.0; tv[e] = 0.0; }
      }
      for (var ii = lid; ii < KT; ii += 64u) {
        let i = i0 + ii;
        tm[ii] = select(neg_inf(), b_lse[(b * ap.nh + h) * ap.l + i], i < ap.l);
        tm2[ii] = select(0.0, b_delta[(b * ap.nh + h) * ap.l + i], i < ap.l);
      }
      workgroupBarrier();
      for (var ii = 0u; ii < KT; ii++) {
        let i = i0 + ii;
//#if SPANS
        if (!on || !span_sees(tq_vis[ii], j) || tm[ii] == neg_inf()) { continue; }
//#else
        if (!on || i >= ap.l || hidden(i, j) || tm[ii] == neg_inf()) { continue; }
//#endif
        var s = 0.0;
        var dp = 0.0;
        for (var c = 0u; c < HD; c++) { s += tk[ii * HD + c] * k[c]; dp += tv[ii * HD + c] * v[c]; }
        var p: f32;
        var ds: f32;
        if (ap.softcap > 0.0) {
          let t = tanh_safe(s * ap.scale / ap.softcap);
          p = exp(ap.softcap * t - tm[ii]);
          ds = p * (dp - tm2[ii]) * (1.0 - t * t) * ap.scale;
        } else {
          p = exp(s * ap.scale - tm[ii]);
          ds = p * (dp - tm2[ii]) * ap.scale;
        }
        for (var c = 0u; c < HD; c++) { dv[c] += p * tv[ii * HD + c]; dk[c] += ds * tk[ii * HD + c]; }
      }
      workgroupBarrier();
    }
  }
  if (j >= ap.l) { return; }
  for (var c = 0u; c < HD; c++) { b_dk[kv_index(b, j, g) + c] = dk[c]; b_dv[kv_index(b, j, g) + c] = dv[c]; }
}

// ---- decode: one query per sequence against a KV cache [B, nKV, Lmax, HD]; ap.l = Lmax -------------
// KV_BF16 (a variant given only by decode; absent = false): both caches hold bf16 pairs, widened
// exactly to f32 as they are read (the math is f32 either way).
@group(0) @binding(5) var<storage, read> dc_len: array<i32>;
@group(0) @binding(6) var<storage, read_write> dc_out: array<f32>;
@group(0) @binding(7) var<storage, read_write> dc_err: atomic<u32>;
//#if KV_BF16
@group(0) @binding(2) var<storage, read> dc_k16: array<u32>;
@group(0) @binding(3) var<storage, read> dc_v16: array<u32>;
fn dc_k(i: u32) -> f32 { return bf16_half(dc_k16[i >> 1u], (i & 1u) == 1u); }
fn dc_v(i: u32) -> f32 { return bf16_half(dc_v16[i >> 1u], (i & 1u) == 1u); }
//#else
fn dc_k(i: u32) -> f32 { return a_k[i]; }
fn dc_v(i: u32) -> f32 { return a_v[i]; }
//#endif

/** One invocation per (sequence, head); q and out [B, nH, HD]. */
@compute @workgroup_size(64)
fn decode(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u, @builtin(local_invocation_index) lid: u32) {
  let r = wg_linear(wid, nwg) * 64u + lid;
  if (r >= ap.b * ap.nh) { return; }
  let b = r / ap.nh;
  let h = r % ap.nh;
  let g = h / (ap.nh / ap.nkv);
  let len = dc_len[b];
  if (len < 0 || u32(len) > ap.l) {
    for (var c = 0u; c < HD; c++) { dc_out[r * HD + c] = nan_f32(); }
    atomicOr(&dc_err, ERR_DECODE_LENGTHS);
    return;
  }
  var q: array<f32, HD>;
  var acc: array<f32, HD>;
  for (var c = 0u; c < HD; c++) { q[c] = a_q[r * HD + c]; acc[c] = 0.0; }
  var m = neg_inf();
  var l = 0.0;
  let base = (b * ap.nkv + g) * ap.l;
  // the query is position len - 1: with a window, only the last `window` positions
  let j_lo = select(0u, u32(len) - ap.window, ap.window > 0u && u32(len) > ap.window);
  for (var j = j_lo; j < u32(len); j++) {
    if (ap.has_mask == 1u && a_mask[b * ap.l + j] == 0) { continue; }
    var s = 0.0;
    for (var c = 0u; c < HD; c++) { s += q[c] * dc_k((base + j) * HD + c); }
    s *= ap.scale;
    if (ap.softcap > 0.0) { s = capped(s); }
    if (s > m) {
      let corr = exp(m - s);
      l = l * corr + 1.0;
      for (var c = 0u; c < HD; c++) { acc[c] = acc[c] * corr + dc_v((base + j) * HD + c); }
      m = s;
    } else {
      let p = exp(s - m);
      l += p;
      for (var c = 0u; c < HD; c++) { acc[c] += p * dc_v((base + j) * HD + c); }
    }
  }
  let inv = select(0.0, 1.0 / l, m != neg_inf());
  for (var c = 0u; c < HD; c++) { dc_out[r * HD + c] = acc[c] * inv; }
}
