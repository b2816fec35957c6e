// A store-only Zstandard compressor (RFC 8878 frame of raw blocks): valid zstd that any decoder
// reads, so the tests can write ZSTD Parquet pages without a zstd encoder (node 20 has none).

const MAX_BLOCK = 128 * 1024;

export function zstdStore(input: Uint8Array): Uint8Array {
  const nBlocks = Math.max(1, Math.ceil(input.length / MAX_BLOCK));
  const out = new Uint8Array(4 + 1 + 4 + nBlocks * 3 + input.length);
  const view = new DataView(out.buffer);
  view.setUint32(0, 0xfd2fb528, true); // magic
  out[4] = (2 << 6) | (1 << 5); // 4-byte Frame_Content_Size, Single_Segment (no window descriptor)
  view.setUint32(5, input.length, true);
  let p = 9;
  for (let b = 0; b < nBlocks; b++) {
    const chunk = input.subarray(b * MAX_BLOCK, Math.min(input.length, (b + 1) * MAX_BLOCK));
    const header = (chunk.length << 3) | (0 << 1) | (b === nBlocks - 1 ? 1 : 0); // size | Raw_Block | Last_Block
    out[p] = header & 0xff;
    out[p + 1] = (header >>> 8) & 0xff;
    out[p + 2] = (header >>> 16) & 0xff;
    out.set(chunk, p + 3);
    p += 3 + chunk.length;
  }
  return out;
}
