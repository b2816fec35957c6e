// Memory kernels: fill with a bit pattern, casts between f32 and bf16, bf16 copies. One invocation per
// 32-bit word; a bf16 tensor with an odd element count ends in a half word whose other half is left as
// it was (it may belong to another tensor sharing the buffer).

struct MemParams { n: u32, bits: u32, _a: u32, _b: u32 }
@group(0) @binding(0) var<uniform> mp: MemParams;
@group(0) @binding(1) var<storage, read_write> m_dst: array<u32>;
@group(0) @binding(2) var<storage, read> m_src: array<u32>;

/** Words of a 32-bit tensor: dst[i] = bits. */
@compute @workgroup_size(256)
fn fill32(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u, @builtin(local_invocation_index) lid: u32) {
  let i = wg_linear(wid, nwg) * 256u + lid;
  if (i < mp.n) { m_dst[i] = mp.bits; }
}

/** Stores the bf16 pair (lo, hi) into word w of a tensor of mp.n bf16 elements. */
fn store_pair(w: u32, lo: u32, hi: u32) {
  if (2u * w + 1u < mp.n) {
    m_dst[w] = (lo & 0xffffu) | (hi << 16u);
  } else {
    m_dst[w] = (m_dst[w] & 0xffff0000u) | (lo & 0xffffu);
  }
}

/** bf16 fill: mp.n elements, mp.bits the 16-bit pattern. */
@compute @workgroup_size(256)
fn fill16(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u, @builtin(local_invocation_index) lid: u32) {
  let w = wg_linear(wid, nwg) * 256u + lid;
  if (2u * w < mp.n) { store_pair(w, mp.bits, mp.bits); }
}

/** f32 [n] -> bf16 [n], round to nearest even. */
@compute @workgroup_size(256)
fn f32_to_bf16(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u, @builtin(local_invocation_index) lid: u32) {
  let w = wg_linear(wid, nwg) * 256u + lid;
  if (2u * w >= mp.n) { return; }
  let lo = bf16_bits(bitcast<f32>(m_src[2u * w]));
  var hi = 0u;
  if (2u * w + 1u < mp.n) { hi = bf16_bits(bitcast<f32>(m_src[2u * w + 1u])); }
  store_pair(w, lo, hi);
}

/** bf16 [n] -> f32 [n] (exact). */
@compute @workgroup_size(256)
fn bf16_to_f32(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u, @builtin(local_invocation_index) lid: u32) {
  let i = wg_linear(wid, nwg) * 256u + lid;
  if (i < mp.n) { m_dst[i] = bitcast<u32>(bf16_half(m_src[i >> 1u], (i & 1u) == 1u)); }
}

/** bf16 copy of n elements. */
@compute @workgroup_size(256)
fn copy16(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u, @builtin(local_invocation_index) lid: u32) {
  let w = wg_linear(wid, nwg) * 256u + lid;
  if (2u * w >= mp.n) { return; }
  let s = m_src[w];
  store_pair(w, s & 0xffffu, s >> 16u);
}
