// The fused LM head's kernels (head.ts; native/cpu/head.cc on the CPU). Compiled after loss.wgsl (the
// 'head' family is both files): the forward uses its row_partial (a row's (max, sum of exp) in a fixed
// reduction order), lse_merge, wy and bindings lg_z, lg_t, lg_logp, lg_lse, lg_err.
//
// A panel holds hp.rows rows of a chunk (row 0 of the chunk is row hp.row0 of the whole-tensor bindings:
// targets, lse, dlogp, the running state) by hp.cols vocabulary columns starting at column hp.v0 of V = hp.v.

struct HeadParams { rows: u32, cols: u32, row0: u32, v0: u32, v: u32, first: u32, softcap: f32, n: u32 }
@group(0) @binding(0) var<uniform> hp: HeadParams;

// ---- forward ------------------------------------------------------------------------------------
/** z -> c tanh(z / c) over the panel, in place; hp.n = elements. */
@group(0) @binding(1) var<storage, read_write> hs_z: array<f32>;
@compute @workgroup_size(256)
fn head_softcap(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u, @builtin(local_invocation_index) lid: u32) {
  let i = wg_linear(wid, nwg) * 256u + lid;
  if (i >= hp.n) { return; }
  hs_z[i] = hp.softcap * tanh_f(hs_z[i] / hp.softcap);
}

/**
 * One workgroup per row of the panel: the panel's (max, sum) of the row merged into the row's running
 * state [N, 3] = (max, sum, target logit) (set on the first panel), and the target's logit kept when its
 * column is in the panel. Ignored rows and bad targets are left to head_finish.
 */
@group(0) @binding(3) var<storage, read_write> hd_state: array<f32>;
@compute @workgroup_size(256)
fn head_panel(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u, @builtin(local_invocation_index) lid: u32
//#if SUBGROUPS
  , @builtin(subgroup_invocation_id) sgi: u32, @builtin(subgroup_size) sgs: u32) {
//#else
  ) { let sgi = 0u; let sgs = 1u;
//#endif
  let r = wg_linear(wid, nwg);
  if (r >= hp.rows) { return; }
  let g = hp.row0 + r;
  if (lid == 0u) { wy = lg_t[g]; }
  let y = workgroupUniformLoad(&wy);  // uniform, so the early return keeps barriers uniform
  if (y < 0 || u32(y) >= hp.v) { return; }  // IGNORE_INDEX included
  let ms = row_partial(lid, sgi, sgs, r * hp.cols, 0u, hp.cols);
  if (lid == 0u) {
    var st = ms;
    if (hp.first == 0u) { st = lse_merge(hd_state[3u * g], hd_state[3u * g + 1u], ms.x, ms.y); }
    hd_state[3u * g] = st.x;
    hd_state[3u * g + 1u] = st.y;
    let yc = u32(y);
    if (yc >= hp.v0 && yc < hp.v0 + hp.cols) { hd_state[3u * g + 2u] = z_at(r * hp.cols + yc - hp.v0); }
  }
}

/** lse = max + log(sum), logp = z_y - lse, one invocation per row; hp.n = N. */
@group(0) @binding(1) var<storage, read> hf_state: array<f32>;
@compute @workgroup_size(64)
fn head_finish(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u, @builtin(local_invocation_index) lid: u32) {
  let r = wg_linear(wid, nwg) * 64u + lid;
  if (r >= hp.n) { return; }
  let y = lg_t[r];
  if (y == IGNORE_INDEX) { lg_logp[r] = 0.0; lg_lse[r] = 0.0; return; }
  if (y < 0 || u32(y) >= hp.v) { lg_logp[r] = nan_f32(); lg_lse[r] = nan_f32(); atomicOr(&lg_err, ERR_TARGETS); return; }
  let l = hf_state[3u * r] + log(hf_state[3u * r + 1u]);
  lg_lse[r] = l;
  lg_logp[r] = hf_state[3u * r + 2u] - l;
}

// ---- backward -----------------------------------------------------------------------------------
@group(0) @binding(1) var<storage, read_write> hg_z: array<f32>;
@group(0) @binding(3) var<storage, read> hg_lse: array<f32>;
@group(0) @binding(4) var<storage, read> hg_dlogp: array<f32>;

/**
 * The panel's logits, in place, into g = dlogp (1[j = y] - exp(z - lse)) (z soft-capped first, and g
 * times 1 - tanh^2(z / c)); the target's column as d * -expm1(z_y - lse), as loss.wgsl's backward.
 * Ignored rows and rows with dlogp = 0 give 0; a bad target gives NaN and raises the error bit.
 * One invocation per element; hp.n = elements.
 */
@compute @workgroup_size(256)
fn head_grad(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u, @builtin(local_invocation_index) lid: u32) {
  let i = wg_linear(wid, nwg) * 256u + lid;
  if (i >= hp.n) { return; }
  let r = i / hp.cols;
  let j = i % hp.cols;
  let g = hp.row0 + r;
  let y = lg_t[g];
  if (y == IGNORE_INDEX) { hg_z[i] = 0.0; return; }
  if (y < 0 || u32(y) >= hp.v) {
    if (j == 0u) { atomicOr(&lg_err, ERR_TARGETS); }
    hg_z[i] = nan_f32();
    return;
  }
  let d = hg_dlogp[g];
  if (d == 0.0) { hg_z[i] = 0.0; return; }
  let l = hg_lse[g];
  var z = hg_z[i];
  var dcap = 1.0;
  if (hp.softcap > 0.0) {
    let t = tanh_f(z / hp.softcap);
    z = hp.softcap * t;
    dcap = 1.0 - t * t;
  }
  var dz: f32;
  if (u32(y) == hp.v0 + j) { dz = d * -expm1_f(z - l); } else { dz = -d * exp(z - l); }
  hg_z[i] = dz * dcap;
}
