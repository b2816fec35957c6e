// WGSL sources: one file per op family beside this one, each compiled with common.wgsl and the
// variant constants of a call (bf16 or f32 operands, head dim, tile sizes). Files are read once.
import { readFileSync } from 'node:fs';

export type KernelFamily = 'memory' | 'elementwise' | 'loss' | 'optim' | 'sample' | 'gemm' | 'attention';

const sources = new Map<string, string>();

function source(name: string): string {
  let s = sources.get(name);
  if (s === undefined) {
    s = readFileSync(new URL(`./${name}.wgsl`, import.meta.url), 'utf8');
    sources.set(name, s);
  }
  return s;
}

/** Variant constants of a module: booleans and u32s, emitted as WGSL `const`s. */
export type Defines = Record<string, boolean | number>;

/** The whole WGSL text of a family with its variant constants. */
export function moduleSource(family: KernelFamily, defines: Defines): string {
  const consts = Object.entries(defines)
    .map(([k, v]) => (typeof v === 'boolean' ? `const ${k}: bool = ${v};` : `const ${k}: u32 = ${v >>> 0}u;`))
    .join('\n');
  return `${consts}\n${source('common')}\n${source(family)}`;
}

/** The constants every module of a family mentions (a missing one would not compile). */
export const FAMILY_DEFAULTS: Record<KernelFamily, Defines> = {
  memory: {},
  elementwise: { W_BF16: false },
  loss: { Z_BF16: false, OUT_BF16: false, IN_PLACE: false },
  optim: { MASTER: false, P_BF16: false, CLIP: false },
  sample: {},
  gemm: { B_BF16: false },
  attention: { HD: 64, KT: 16 },
};
