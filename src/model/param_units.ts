// The units the model's parameters are grouped in while training: one per decoder layer, the
// embedding table, and the final norm with the LM head. LlamaModel calls a ParamHook around each
// unit's use (ZeRO stage 3 in src/dist/zero.ts, bf16 copies made from masters in
// src/model/master_params.ts, fused updates in src/optim/fused_update.ts); they group names by unitOf.

/** The parameter unit of the embedding table (with tied embeddings, also the LM head). */
export const EMBED_UNIT = -1;
/** The parameter unit of the final norm and the untied LM head. */
export const HEAD_UNIT = -2;

/**
 * The parameter unit of a name: its decoder layer, EMBED_UNIT or HEAD_UNIT. The embedding and the
 * head are apart because the model uses them at opposite ends of a pass: each is held (its bf16
 * copy, its ZeRO-3 gather) only around its own use, never through the layers (1.1B: 0.26 GB).
 */
export function unitOf(name: string): number {
  const m = /^model\.layers\.(\d+)\./.exec(name);
  if (m) return Number(m[1]);
  return name === 'model.embed_tokens.weight' ? EMBED_UNIT : HEAD_UNIT;
}

/**
 * ZeRO stage 3 (src/dist/zero.ts) keeps only a shard of each layer's parameters: `acquire` gathers
 * unit `unit`'s parameters (a layer index, EMBED_UNIT or HEAD_UNIT, below)
 * into `weights` just before the model uses them (and, in the backward, their gradients), `release`
 * frees them after (reducing the gradients first). Both are called in the same order on every rank:
 * forward EMBED_UNIT, layers 0.., HEAD_UNIT; backward HEAD_UNIT, layers ..0, EMBED_UNIT. With tied
 * embeddings the table is also the head, so EMBED_UNIT stays held from the embedding to the head in
 * the forward, and from the head to the embedding in the backward (its gradient has two parts).
 */
export interface ParamHook {
  acquire(unit: number, phase: 'forward' | 'backward'): void;
  release(unit: number, phase: 'forward' | 'backward'): void;
}
