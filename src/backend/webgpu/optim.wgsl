// Optimizer kernels (master weights and states f32): RMSProp and AdamW steps as torch.optim computes
// them, with the gradient clip scale read on the device; sums of squares in a fixed order; the clip
// coefficient. Variant constants: MASTER (a separate f32 master copy), P_BF16 (the parameter is bf16),
// CLIP (a clip tensor [2] whose element 1 scales the gradient).

struct OptParams { n: u32, _a: u32, _b: u32, _c: u32, lr: f32, alpha: f32, eps: f32, wd: f32, b1: f32, b2: f32, step_size: f32, bc2_sqrt: f32, decay: f32, om_alpha: f32, om_b1: f32, om_b2: f32 }
// om_*: 1 - alpha, 1 - beta1, 1 - beta2 formed in double on the host (as torch forms them from Python
// floats; 1 - f32(0.999) in f32 is off by 1.3e-5 relative)
@group(0) @binding(0) var<uniform> op: OptParams;
@group(0) @binding(1) var<storage, read_write> o_param: array<u32>;
@group(0) @binding(2) var<storage, read_write> o_master: array<f32>;
@group(0) @binding(3) var<storage, read> o_grad: array<f32>;
@group(0) @binding(4) var<storage, read_write> o_s1: array<f32>;
@group(0) @binding(5) var<storage, read_write> o_s2: array<f32>;
@group(0) @binding(6) var<storage, read> o_clip: array<f32>;

fn w_get(i: u32) -> f32 {
  if (MASTER) { return o_master[i]; }
  return bitcast<f32>(o_param[i]);
}
fn w_set(i: u32, w: f32) {
  if (MASTER) { o_master[i] = w; } else { o_param[i] = bitcast<u32>(w); }
}
fn grad_scale() -> f32 {
  if (CLIP) { return o_clip[1]; }
  return 1.0;
}

fn rmsprop_one(i: u32) -> f32 {
  var g = o_grad[i] * grad_scale();
  var w = w_get(i);
  if (op.wd != 0.0) { g += op.wd * w; }
  let v = op.alpha * o_s1[i] + op.om_alpha * g * g;
  o_s1[i] = v;
  w -= op.lr * (g / (sqrt(v) + op.eps));
  w_set(i, w);
  return w;
}

fn adamw_one(i: u32) -> f32 {
  let g = o_grad[i] * grad_scale();
  let m = op.b1 * o_s1[i] + op.om_b1 * g;
  let v = op.b2 * o_s2[i] + op.om_b2 * g * g;
  o_s1[i] = m;
  o_s2[i] = v;
  let p = w_get(i) * op.decay;
  let w = p - op.step_size * (m / (sqrt(v) / op.bc2_sqrt + op.eps));
  w_set(i, w);
  return w;
}

/** One invocation per parameter word (a bf16 parameter: two elements, written back as one word). */
@compute @workgroup_size(256)
fn rmsprop(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u, @builtin(local_invocation_index) lid: u32) {
  let w = wg_linear(wid, nwg) * 256u + lid;
  if (P_BF16) {
    let i = 2u * w;
    if (i >= op.n) { return; }
    let lo = bf16_bits(rmsprop_one(i));
    if (i + 1u < op.n) { o_param[w] = lo | (bf16_bits(rmsprop_one(i + 1u)) << 16u); } else { o_param[w] = (o_param[w] & 0xffff0000u) | lo; }
  } else {
    if (w >= op.n) { return; }
    let x = rmsprop_one(w);
    if (MASTER) { o_param[w] = bitcast<u32>(x); }
  }
}

@compute @workgroup_size(256)
fn adamw(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u, @builtin(local_invocation_index) lid: u32) {
  let w = wg_linear(wid, nwg) * 256u + lid;
  if (P_BF16) {
    let i = 2u * w;
    if (i >= op.n) { return; }
    let lo = bf16_bits(adamw_one(i));
    if (i + 1u < op.n) { o_param[w] = lo | (bf16_bits(adamw_one(i + 1u)) << 16u); } else { o_param[w] = (o_param[w] & 0xffff0000u) | lo; }
  } else {
    if (w >= op.n) { return; }
    let x = adamw_one(w);
    if (MASTER) { o_param[w] = bitcast<u32>(x); }
  }
}

// ---- reductions ----------------------------------------------------------------------------------
struct RedParams { n: u32, index: u32, chunk: u32, parts: u32, max_norm: f32, _a: u32, _b: u32, _c: u32 }
@group(0) @binding(0) var<uniform> rp: RedParams;
@group(0) @binding(1) var<storage, read> r_x: array<f32>;
@group(0) @binding(2) var<storage, read_write> r_out: array<f32>;
var<workgroup> rsum: array<f32, 256>;

fn tree(lid: u32, v: f32) -> f32 {
  rsum[lid] = v;
  workgroupBarrier();
  for (var k = 128u; k > 0u; k >>= 1u) {
    if (lid < k) { rsum[lid] = rsum[lid] + rsum[lid + k]; }
    workgroupBarrier();
  }
  return rsum[0];
}

/** Partial sums of x^2 over fixed chunks of rp.chunk elements (one workgroup each, Kahan-compensated per lane). */
@compute @workgroup_size(256)
fn sumsq_partial(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u, @builtin(local_invocation_index) lid: u32) {
  let c = wg_linear(wid, nwg);
  if (c >= rp.parts) { return; }
  let end = min(rp.n, (c + 1u) * rp.chunk);
  var s = 0.0;
  var comp = 0.0;
  for (var i = c * rp.chunk + lid; i < end; i += 256u) {
    let y = r_x[i] * r_x[i] - comp;
    let t = s + y;
    comp = (t - s) - y;
    s = t;
  }
  let total = tree(lid, s);
  if (lid == 0u) { r_out[c] = total; }
}

/** r_out[rp.index] = sum of the rp.parts partials in r_x, in a fixed order. */
@compute @workgroup_size(256)
fn sum_parts(@builtin(local_invocation_index) lid: u32) {
  var s = 0.0;
  for (var i = lid; i < rp.parts; i += 256u) { s += r_x[i]; }
  let total = tree(lid, s);
  if (lid == 0u) { r_out[rp.index] = total; }
}

/** From sums of squares [rp.n]: [norm, min(1, maxNorm / (norm + 1e-6))]. */
@compute @workgroup_size(256)
fn clip_coefficient(@builtin(local_invocation_index) lid: u32) {
  var s = 0.0;
  for (var i = lid; i < rp.n; i += 256u) { s += r_x[i]; }
  let total = tree(lid, s);
  if (lid == 0u) {
    let norm = sqrt(total);
    r_out[0] = norm;
    r_out[1] = min(1.0, rp.max_norm / (norm + 1e-6));
  }
}
