// WGSL sources: one file per op family beside this one, each compiled with common.wgsl and the
// variant constants of a call (bf16 or f32 operands, head dim, tile sizes). Files are read once. A
// family may build on another's file (FAMILY_FILES): the fused head's kernels use the loss family's.
import { readFileSync } from 'node:fs';

export type KernelFamily = 'memory' | 'elementwise' | 'loss' | 'head' | 'optim' | 'sample' | 'gemm' | 'attention';

/** The files of a family, in order, where it is not just the file named for it. */
const FAMILY_FILES: Partial<Record<KernelFamily, string[]>> = { head: ['loss', 'head'] };

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

/**
 * Keeps or drops the lines between `//#if NAME`, `//#else` and `//#endif` (one level, NAME a boolean
 * define): for code that needs a WGSL extension (subgroup builtins must not even be declared without
 * `enable subgroups;`).
 */
function preprocess(text: string, defines: Defines): string {
  const out: string[] = [];
  let keep = true;
  let inIf = false;
  for (const line of text.split('\n')) {
    const m = /^\s*\/\/#(if|else|endif)\b\s*(\w*)/.exec(line);
    if (!m) {
      if (keep) out.push(line);
      continue;
    }
    if (m[1] === 'if') {
      if (inIf) throw new Error(`WGSL preprocessor: nested //#if ${m[2]}`);
      inIf = true;
      keep = defines[m[2]] === true;
    } else if (m[1] === 'else') keep = !keep;
    else {
      inIf = false;
      keep = true;
    }
  }
  return out.join('\n');
}

/** The whole WGSL text of a family with its variant constants (SUBGROUPS: the extension is enabled). */
export function moduleSource(family: KernelFamily, defines: Defines): string {
  const consts = Object.entries(defines)
    .map(([k, v]) => (typeof v === 'boolean' ? `const ${k}: bool = ${v};` : `const ${k}: u32 = ${v >>> 0}u;`))
    .join('\n');
  const enable = defines.SUBGROUPS === true ? 'enable subgroups;\n' : '';
  const files = FAMILY_FILES[family] ?? [family];
  return [`${enable}${consts}`, source('common'), ...files.map((f) => preprocess(source(f), defines))].join('\n');
}

/** The constants every module of a family mentions (a missing one would not compile). */
export const FAMILY_DEFAULTS: Record<KernelFamily, Defines> = {
  memory: {},
  elementwise: { W_BF16: false, UNIT_OFFSET: false, GELU_TANH: false },
  loss: { Z_BF16: false, OUT_BF16: false, IN_PLACE: false, SUBGROUPS: false },
  head: { Z_BF16: false, OUT_BF16: false, IN_PLACE: false, SUBGROUPS: false },
  optim: { MASTER: false, P_BF16: false, CLIP: false },
  sample: { SUBGROUPS: false },
  gemm: { B_BF16: false, A_VEC: false, B_VEC: false, B_VEC_BF16: false, B_SCALAR: true },
  attention: { HD: 64, KT: 16 },
};
