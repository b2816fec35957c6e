// Elementwise and per-row kernels of the Llama layers: residual add, scaling, logit soft-cap, metric accumulation,
// SwiGLU / GeGLU, biases, scatter, embedding, RMSNorm, RoPE. One invocation per element unless noted.
// W_BF16 (a variant constant) says whether the weight / bias / table binding holds bf16 pairs.
// UNIT_OFFSET (RMSNorm): the scale is 1 + w (Gemma). GELU_TANH (swiglu): GeGLU's activation.

struct EwParams { n: u32, cols: u32, rows: u32, extra: u32, a: f32, b: f32, _c: u32, _d: u32 }
@group(0) @binding(0) var<uniform> ep: EwParams;

fn gid(wid: vec3u, nwg: vec3u, lid: u32) -> u32 { return wg_linear(wid, nwg) * 256u + lid; }

// ---- binary / unary on f32 ----------------------------------------------------------------------
@group(0) @binding(1) var<storage, read> e_a: array<f32>;
@group(0) @binding(2) var<storage, read> e_b: array<f32>;
@group(0) @binding(3) var<storage, read_write> e_out: array<f32>;
@group(0) @binding(1) var<storage, read_write> e_io: array<f32>;
@group(0) @binding(2) var<storage, read> e_x: array<f32>;

/** out = a + b. */
@compute @workgroup_size(256)
fn add(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u, @builtin(local_invocation_index) lid: u32) {
  let i = gid(wid, nwg, lid);
  if (i < ep.n) { e_out[i] = e_a[i] + e_b[i]; }
}

/** io = io + x (in place: out is a or b). */
@compute @workgroup_size(256)
fn add_inplace(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u, @builtin(local_invocation_index) lid: u32) {
  let i = gid(wid, nwg, lid);
  if (i < ep.n) { e_io[i] = e_io[i] + e_x[i]; }
}

/** io *= a. */
@compute @workgroup_size(256)
fn scale(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u, @builtin(local_invocation_index) lid: u32) {
  let i = gid(wid, nwg, lid);
  if (i < ep.n) { e_io[i] = e_io[i] * ep.a; }
}

/** io = c tanh(io / c) with c = a > 0 (common.wgsl's tanh_f: relative accuracy near 0, +-inf -> +-c, NaN stays). */
@compute @workgroup_size(256)
fn softcap(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u, @builtin(local_invocation_index) lid: u32) {
  let i = gid(wid, nwg, lid);
  if (i < ep.n) { e_io[i] = ep.a * tanh_f(e_io[i] / ep.a); }
}

/**
 * io += alpha x with alpha = a + b (a double split into f32 hi and lo parts), computed in f32 pairs
 * (Dekker's exact product, TwoSum) and rounded once: the f32 of the double result, as the CPU.
 */
@compute @workgroup_size(256)
fn accumulate(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u, @builtin(local_invocation_index) lid: u32) {
  let i = gid(wid, nwg, lid);
  if (i >= ep.n) { return; }
  let x = e_x[i];
  let acc = e_io[i];
  // opaque() hides values from the shader compiler's algebraic rewrites ((a + b) - a = b is not exact
  // in floating point, but compilers that ignore that would cancel the error terms)
  let p = opaque(ep.a * x);
  let ca = opaque(4097.0 * ep.a);
  let ah = ca - opaque(ca - ep.a);
  let al = ep.a - ah;
  let cx = opaque(4097.0 * x);
  let xh = cx - opaque(cx - x);
  let xl = x - xh;
  let pe = ((ah * xh - p) + ah * xl + al * xh) + al * xl;
  let s = opaque(acc + p);
  let bb = opaque(s - acc);
  let se = (acc - opaque(s - bb)) + (p - bb);
  e_io[i] = s + (se + (pe + ep.b * x));
}

/** v, through a bit pattern the compiler cannot see is unchanged (ep._c is always 0). */
fn opaque(v: f32) -> f32 { return bitcast<f32>(bitcast<u32>(v) ^ ep._c); }

fn sigmoid_f(x: f32) -> f32 {
  let e = exp(-abs(x));
  return select(1.0 / (1.0 + e), e / (1.0 + e), x < 0.0);
}

// GeGLU (as native/include/common.h): PyTorch's gelu(approximate='tanh') is g sigmoid(z) with
// z = 2 sqrt(2/pi) g (1 + 0.044715 g^2), since 0.5 (1 + tanh(u)) = sigmoid(2u). sigmoid_f takes exp of
// -|z| <= 0 only: no tanh (whose GPU form is inaccurate near 0), no overflow, no cancellation.
const GELU_2C: f32 = 1.5957691216057308;
const GELU_A: f32 = 0.044715;
fn gelu_z(g: f32) -> f32 { return GELU_2C * g * (1.0 + GELU_A * g * g); }
/** dz/dg */
fn gelu_dz(g: f32) -> f32 { return GELU_2C * (1.0 + 3.0 * GELU_A * g * g); }

/** out = silu(gate) * up, or gelu_tanh(gate) * up under GELU_TANH (a = gate, b = up). */
@compute @workgroup_size(256)
fn swiglu(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u, @builtin(local_invocation_index) lid: u32) {
  let i = gid(wid, nwg, lid);
  if (i >= ep.n) { return; }
  let g = e_a[i];
  if (GELU_TANH) {
    e_out[i] = g * sigmoid_f(gelu_z(g)) * e_b[i];
  } else {
    e_out[i] = g * sigmoid_f(g) * e_b[i];
  }
}

@group(0) @binding(3) var<storage, read> sw_dout: array<f32>;
@group(0) @binding(4) var<storage, read_write> sw_dgate: array<f32>;
@group(0) @binding(5) var<storage, read_write> sw_dup: array<f32>;

@compute @workgroup_size(256)
fn swiglu_backward(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u, @builtin(local_invocation_index) lid: u32) {
  let i = gid(wid, nwg, lid);
  if (i >= ep.n) { return; }
  let g = e_a[i];
  let d = sw_dout[i];
  if (GELU_TANH) {
    // d/dg of g sigmoid(z) = s (1 + g (1 - s) dz/dg)
    let s = sigmoid_f(gelu_z(g));
    sw_dup[i] = d * g * s;
    sw_dgate[i] = d * e_b[i] * s * (1.0 + g * (1.0 - s) * gelu_dz(g));
    return;
  }
  let sg = sigmoid_f(g);
  sw_dup[i] = d * g * sg;
  sw_dgate[i] = d * e_b[i] * sg * (1.0 + g * (1.0 - sg));
}

// ---- weights that may be bf16 --------------------------------------------------------------------
@group(0) @binding(2) var<storage, read> e_w: array<u32>;
fn w_at(i: u32) -> f32 {
  if (W_BF16) { return bf16_half(e_w[i >> 1u], (i & 1u) == 1u); }
  return bitcast<f32>(e_w[i]);
}
/** RMSNorm's scale: w, or 1 + w added in f32 under UNIT_OFFSET (Gemma; 1 + w stored in bf16 would round). */
fn norm_w(i: u32) -> f32 {
  if (UNIT_OFFSET) { return 1.0 + w_at(i); }
  return w_at(i);
}

/** x [rows, cols] += bias [cols] (io = x, w = bias). */
@compute @workgroup_size(256)
fn add_bias(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u, @builtin(local_invocation_index) lid: u32) {
  let i = gid(wid, nwg, lid);
  if (i < ep.n) { e_io[i] = e_io[i] + w_at(i % ep.cols); }
}

/** dbias [cols] += column sums of dy [rows, cols]: one invocation per column, rows in order. */
@group(0) @binding(2) var<storage, read> bb_dy: array<f32>;
@compute @workgroup_size(64)
fn bias_backward(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u, @builtin(local_invocation_index) lid: u32) {
  let j = wg_linear(wid, nwg) * 64u + lid;
  if (j >= ep.cols) { return; }
  var s = 0.0;
  for (var r = 0u; r < ep.rows; r++) { s += bb_dy[r * ep.cols + j]; }
  e_io[j] = e_io[j] + s;
}

// ---- index kernels (device error word at the last binding) -----------------------------------------
@group(0) @binding(1) var<storage, read> ix_ids: array<i32>;
@group(0) @binding(3) var<storage, read_write> ix_out: array<f32>;
@group(0) @binding(4) var<storage, read_write> ix_err: atomic<u32>;

/** out [T, H] = table [V, H] rows at ids (w = table); ep.rows = V, ep.cols = H. A bad id: NaN row, error bit. */
@compute @workgroup_size(256)
fn embedding(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u, @builtin(local_invocation_index) lid: u32) {
  let i = gid(wid, nwg, lid);
  if (i >= ep.n) { return; }
  let t = i / ep.cols;
  let j = i % ep.cols;
  let id = ix_ids[t];
  if (id < 0 || u32(id) >= ep.rows) {
    ix_out[i] = nan_f32();
    if (j == 0u) { atomicOr(&ix_err, ERR_TOKEN_IDS); }
    return;
  }
  ix_out[i] = w_at(u32(id) * ep.cols + j);
}

/** dtable [V, H] += dout rows at ids, one invocation per column walking the tokens in order (ep.n = T). */
@group(0) @binding(2) var<storage, read> eb_dout: array<f32>;
@compute @workgroup_size(64)
fn embedding_backward(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u, @builtin(local_invocation_index) lid: u32) {
  let j = wg_linear(wid, nwg) * 64u + lid;
  if (j >= ep.cols) { return; }
  for (var t = 0u; t < ep.n; t++) {
    let id = ix_ids[t];
    if (id < 0 || u32(id) >= ep.rows) {
      if (j == 0u) { atomicOr(&ix_err, ERR_TOKEN_IDS); }
      continue;
    }
    let k = u32(id) * ep.cols + j;
    ix_out[k] = ix_out[k] + eb_dout[t * ep.cols + j];
  }
}

/** dst [ep.rows, cols][index[r]] = src [r] (ep.n = R * cols). A bad index: the row is skipped. */
@group(0) @binding(2) var<storage, read> sc_src: array<f32>;
@compute @workgroup_size(256)
fn scatter_rows(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u, @builtin(local_invocation_index) lid: u32) {
  let i = gid(wid, nwg, lid);
  if (i >= ep.n) { return; }
  let r = i / ep.cols;
  let j = i % ep.cols;
  let d = ix_ids[r];
  if (d < 0 || u32(d) >= ep.rows) {
    if (j == 0u) { atomicOr(&ix_err, ERR_SCATTER_INDEX); }
    return;
  }
  ix_out[u32(d) * ep.cols + j] = sc_src[i];
}

/**
 * scatter_rows into a bf16 dst (pairs in u32 words), values rounded as cast rounds them (bf16_bits of
 * the f32 bits). One invocation per (row r, word of dst row index[r]): ep.n = R * ceil(cols / 2). A
 * word inside the row is stored whole, so no two invocations of one row share a word. With odd cols a
 * row starts or ends in a word shared with the neighbouring dst row (which another invocation may be
 * writing, or which is not written at all): that half alone is replaced, by a compare-exchange loop.
 */
@group(0) @binding(2) var<storage, read> sc_src_bits: array<u32>;
@group(0) @binding(3) var<storage, read_write> sc_out16: array<atomic<u32>>;
@compute @workgroup_size(256)
fn scatter_rows_bf16(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u, @builtin(local_invocation_index) lid: u32) {
  let i = gid(wid, nwg, lid);
  if (i >= ep.n) { return; }
  let wpr = (ep.cols + 1u) / 2u;  // words per row
  let r = i / wpr;
  let k = i % wpr;
  let d = ix_ids[r];
  if (d < 0 || u32(d) >= ep.rows) {
    if (k == 0u) { atomicOr(&ix_err, ERR_SCATTER_INDEX); }
    return;
  }
  let e0 = u32(d) * ep.cols;  // the dst row's first element
  let w = (e0 >> 1u) + k;     // the word written: elements 2w (low half) and 2w + 1 (high half)
  let lo = 2u * w;            // lo <= e0 + cols - 1 always; lo < e0 only for k = 0 with e0 odd
  let has_lo = lo >= e0;
  let has_hi = lo + 1u < e0 + ep.cols;
  let s0 = r * ep.cols;
  var bits = 0u;
  if (has_lo) { bits = bf16_bits(bitcast<f32>(sc_src_bits[s0 + lo - e0])); }
  if (has_hi) { bits = bits | (bf16_bits(bitcast<f32>(sc_src_bits[s0 + lo + 1u - e0])) << 16u); }
  if (has_lo && has_hi) {
    atomicStore(&sc_out16[w], bits);
    return;
  }
  let keep = select(0xffff0000u, 0x0000ffffu, has_hi);  // the neighbour's half
  loop {
    let old = atomicLoad(&sc_out16[w]);
    if (atomicCompareExchangeWeak(&sc_out16[w], old, (old & keep) | bits).exchanged) { break; }
  }
}

/**
 * RoPE in place on x [T, heads, hd] (ix_out) at positions ix_ids [T]; inverse frequencies (f32, as HF
 * computes them for the rope type) in rp_freq; cos and sin times ep.a (HF attention_scaling; x 1 is
 * exact); ep.extra = 1 for the transpose (the backward). One invocation per (t, head, i < hd/2).
 */
@group(0) @binding(2) var<storage, read> rp_freq: array<f32>;
@compute @workgroup_size(256)
fn rope(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u, @builtin(local_invocation_index) lid: u32) {
  let i = gid(wid, nwg, lid);
  if (i >= ep.n) { return; }
  let half = ep.cols / 2u;
  let fi = i % half;
  let row = i / half;  // t * heads + head
  let t = row / ep.rows;
  let pos = ix_ids[t];
  let base = row * ep.cols;
  if (pos < 0) {
    ix_out[base + fi] = nan_f32();
    ix_out[base + half + fi] = nan_f32();
    if (fi == 0u) { atomicOr(&ix_err, ERR_POSITIONS); }
    return;
  }
  let angle = f32(pos) * rp_freq[fi];
  let sc = sincos_f(angle) * ep.a;
  let s = select(sc.x, -sc.x, ep.extra == 1u);
  let a = ix_out[base + fi];
  let b = ix_out[base + half + fi];
  ix_out[base + fi] = a * sc.y - b * s;
  ix_out[base + half + fi] = b * sc.y + a * s;
}

// ---- RMSNorm: one workgroup of 256 per row ---------------------------------------------------------
var<workgroup> red: array<f32, 256>;

fn reduce_sum(lid: u32, v: f32) -> f32 {
  red[lid] = v;
  workgroupBarrier();
  for (var s = 128u; s > 0u; s >>= 1u) {
    if (lid < s) { red[lid] = red[lid] + red[lid + s]; }
    workgroupBarrier();
  }
  let r = red[0];
  workgroupBarrier();
  return r;
}

@group(0) @binding(1) var<storage, read> rn_x: array<f32>;
@group(0) @binding(3) var<storage, read_write> rn_y: array<f32>;
@group(0) @binding(4) var<storage, read_write> rn_rstd: array<f32>;

/** y = x * rstd * w (1 + w under UNIT_OFFSET), rstd = 1 / sqrt(mean(x^2) + eps) (ep.a = eps); ep.rows rows of ep.cols. */
@compute @workgroup_size(256)
fn rmsnorm(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u, @builtin(local_invocation_index) lid: u32) {
  let r = wg_linear(wid, nwg);
  if (r >= ep.rows) { return; }
  let h = ep.cols;
  let base = r * h;
  var ss = 0.0;
  for (var j = lid; j < h; j += 256u) { let v = rn_x[base + j]; ss += v * v; }
  ss = reduce_sum(lid, ss);
  let rs = 1.0 / sqrt(ss / f32(h) + ep.a);
  if (lid == 0u) { rn_rstd[r] = rs; }
  for (var j = lid; j < h; j += 256u) { rn_y[base + j] = rn_x[base + j] * rs * norm_w(j); }
}

@group(0) @binding(3) var<storage, read> rb_rstd: array<f32>;
@group(0) @binding(4) var<storage, read> rb_dy: array<f32>;
@group(0) @binding(5) var<storage, read_write> rb_dx: array<f32>;

/** dx = rs w dy - x c, c = mean(w dy x) rs^3. */
@compute @workgroup_size(256)
fn rmsnorm_backward(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u, @builtin(local_invocation_index) lid: u32) {
  let r = wg_linear(wid, nwg);
  if (r >= ep.rows) { return; }
  let h = ep.cols;
  let base = r * h;
  let rs = rb_rstd[r];
  var dot = 0.0;
  for (var j = lid; j < h; j += 256u) { dot += norm_w(j) * rb_dy[base + j] * rn_x[base + j]; }
  dot = reduce_sum(lid, dot);
  let c = (dot / f32(h)) * rs * rs * rs;
  for (var j = lid; j < h; j += 256u) { rb_dx[base + j] = rs * norm_w(j) * rb_dy[base + j] - rn_x[base + j] * c; }
}

@group(0) @binding(2) var<storage, read> rw_rstd: array<f32>;
@group(0) @binding(3) var<storage, read> rw_dy: array<f32>;
@group(0) @binding(4) var<storage, read_write> rw_dw: array<f32>;

/** dw [cols] += sum over rows of dy x rstd; one invocation per column, rows in order. */
@compute @workgroup_size(64)
fn rmsnorm_dw(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u, @builtin(local_invocation_index) lid: u32) {
  let j = wg_linear(wid, nwg) * 64u + lid;
  if (j >= ep.cols) { return; }
  var s = 0.0;
  for (var r = 0u; r < ep.rows; r++) { s += rw_dy[r * ep.cols + j] * rn_x[r * ep.cols + j] * rw_rstd[r]; }
  rw_dw[j] = rw_dw[j] + s;
}
