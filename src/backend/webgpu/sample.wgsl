// Next-token choice on the device, the algorithm of src/generate/sampler.ts (see native/cpu/sample.cc):
// greedy = argmax with ties to the lowest id (one workgroup per row); otherwise the ids with a logit
// above -inf in (logit desc, id asc) order, top-k, softmax of logit / T, top-p, renormalize, and one
// draw from the row's xoshiro128** stream. Probabilities are f32 here (f64 on the CPU), so a draw that
// lands within ~1e-7 of a boundary may pick the neighbouring id. Only ids < limit are candidates
// (rows are v apart): a padded vocabulary past the tokenizer is never sampled.

struct SampleParams { rows: u32, v: u32, greedy: u32, top_k: u32, temperature: f32, top_p: f32, limit: u32, _b: u32 }
@group(0) @binding(0) var<uniform> sp: SampleParams;
@group(0) @binding(1) var<storage, read> s_z: array<f32>;
@group(0) @binding(2) var<storage, read_write> s_rng: array<u32>;
@group(0) @binding(3) var<storage, read> s_active: array<i32>;
@group(0) @binding(4) var<storage, read_write> s_out: array<i32>;

var<workgroup> bv: array<f32, 256>;
var<workgroup> bi: array<u32, 256>;

/** (value, id) a comes before b: larger value, ties to the lower id. */
fn before(va: f32, ia: u32, vb: f32, ib: u32) -> bool { return va > vb || (va == vb && ia < ib); }

@compute @workgroup_size(256)
fn argmax(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u, @builtin(local_invocation_index) lid: u32) {
  let r = wg_linear(wid, nwg);
  if (r >= sp.rows) { return; }
  let base = r * sp.v;
  var best_v = neg_inf();
  var best_i = 0xffffffffu;
  for (var j = lid; j < sp.limit; j += 256u) {
    let x = s_z[base + j];
    if (best_i == 0xffffffffu || x > best_v) { best_v = x; best_i = j; }
  }
  bv[lid] = best_v;
  bi[lid] = best_i;
  workgroupBarrier();
  for (var k = 128u; k > 0u; k >>= 1u) {
    if (lid < k && bi[lid + k] != 0xffffffffu && (bi[lid] == 0xffffffffu || before(bv[lid + k], bi[lid + k], bv[lid], bi[lid]))) {
      bv[lid] = bv[lid + k];
      bi[lid] = bi[lid + k];
    }
    workgroupBarrier();
  }
  if (lid == 0u) { s_out[r] = select(0, i32(bi[0]), s_active[r] != 0); }
}

fn rotl(x: u32, k: u32) -> u32 { return (x << k) | (x >> (32u - k)); }

/** The element after (pv, pi) in sampling order among finite-above--inf logits; id 0xffffffff when none. */
fn next_after(base: u32, pv: f32, pi: u32, first: bool) -> vec2u {
  var best_v = neg_inf();
  var best_i = 0xffffffffu;
  for (var j = 0u; j < sp.limit; j++) {
    let x = s_z[base + j];
    if (!(x > neg_inf())) { continue; }
    if (!first && !before(pv, pi, x, j)) { continue; }
    if (best_i == 0xffffffffu || before(x, j, best_v, best_i)) { best_v = x; best_i = j; }
  }
  return vec2u(bitcast<u32>(best_v), best_i);
}

/** One invocation per row (rows with sampling: few, and each walks its row serially). */
@compute @workgroup_size(64)
fn sample(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u, @builtin(local_invocation_index) lid: u32) {
  let r = wg_linear(wid, nwg) * 64u + lid;
  if (r >= sp.rows) { return; }
  if (s_active[r] == 0) { s_out[r] = 0; return; }
  let base = r * sp.v;
  let t = sp.temperature;
  // count of finite ids; the first in order
  var count = 0u;
  for (var j = 0u; j < sp.limit; j++) { if (s_z[base + j] > neg_inf()) { count++; } }
  if (count == 0u) {
    var b = 0u;
    for (var j = 1u; j < sp.limit; j++) { if (s_z[base + j] > s_z[base + b]) { b = j; } }
    s_out[r] = i32(b);
    return;
  }
  let keep_k = select(count, sp.top_k, sp.top_k > 0u && sp.top_k < count);
  let first = next_after(base, 0.0, 0u, true);
  let m = bitcast<f32>(first.x) / t;
  // z over the first keep_k in order (all finite ids when keep_k = count: any order will do)
  var z = 0.0;
  if (keep_k == count) {
    for (var j = 0u; j < sp.limit; j++) { let x = s_z[base + j]; if (x > neg_inf()) { z += exp(x / t - m); } }
  } else {
    var cur = first;
    for (var k = 0u; k < keep_k; k++) {
      z += exp(bitcast<f32>(cur.x) / t - m);
      cur = next_after(base, bitcast<f32>(cur.x), cur.y, false);
    }
  }
  // top-p: keep ids while the mass before them is < top_p
  var keep = keep_k;
  var z2 = 1.0;
  if (sp.top_p < 1.0) {
    var cum = 0.0;
    keep = 0u;
    var cur = first;
    while (keep < keep_k && (keep == 0u || cum < sp.top_p)) {
      cum += exp(bitcast<f32>(cur.x) / t - m) / z;
      keep++;
      cur = next_after(base, bitcast<f32>(cur.x), cur.y, false);
    }
    z2 = cum;
  }
  // the draw: u in [0, 1) from two xoshiro128** outputs (27 + 26 bits, as Rng.next())
  var s = vec4u(s_rng[4u * r], s_rng[4u * r + 1u], s_rng[4u * r + 2u], s_rng[4u * r + 3u]);
  var outs = vec2u(0u, 0u);
  for (var q = 0u; q < 2u; q++) {
    outs[q] = rotl(s.y * 5u, 7u) * 9u;
    let tt = s.y << 9u;
    s.z ^= s.x;
    s.w ^= s.y;
    s.y ^= s.z;
    s.x ^= s.w;
    s.z ^= tt;
    s.w = rotl(s.w, 11u);
  }
  s_rng[4u * r] = s.x;
  s_rng[4u * r + 1u] = s.y;
  s_rng[4u * r + 2u] = s.z;
  s_rng[4u * r + 3u] = s.w;
  let u = (f32(outs.x >> 5u) * 67108864.0 + f32(outs.y >> 6u)) / 9007199254740992.0;
  var cum = 0.0;
  var cur = first;
  var last = first.y;
  for (var k = 0u; k < keep; k++) {
    cum += exp(bitcast<f32>(cur.x) / t - m) / z / z2;
    last = cur.y;
    if (u < cum) { s_out[r] = i32(cur.y); return; }
    cur = next_after(base, bitcast<f32>(cur.x), cur.y, false);
  }
  s_out[r] = i32(last);
}
