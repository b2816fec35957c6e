// `spinlm merge`: base + PEFT LoRA adapter -> a full Hugging Face model directory (docs/lora.md, "Merge"):
// config.json and the base's side files (tokenizer, generation config), the weights in the base's
// dtype with W' = W + s B A computed in float64 and rounded once (src/model/lora_merge.ts).
import { LlamaModel } from '../model/llama.js';
import { mergeAdapterIntoWeights } from '../model/lora_merge.js';
import { AdapterError, readPeftAdapter } from '../model/peft.js';
import { saveDerivedModel } from '../model/side_files.js';
import { UsageError } from './args.js';
import type { Command } from './command.js';
import { backend, checkInputPaths, prepareOut } from './common.js';
import { str } from './config.js';
import { adapterOption, modelOption, outOption, overwriteOption, quietOption } from './options.js';

export const merge: Command = {
  name: 'merge',
  summary: 'Merges a PEFT LoRA adapter into its base: a full HF model (weights in the base dtype, W + s B A rounded once).',
  options: [
    { ...modelOption, help: 'the base model directory the adapter was trained on' },
    { ...adapterOption, required: true, help: 'the PEFT LoRA adapter directory (adapter_config.json, adapter_model.safetensors)' },
    outOption('output model directory (HF format); refused if it holds files spinlm did not write'),
    overwriteOption,
    quietOption,
  ],
  async run(o) {
    const [dir, adapterDir, out] = [str(o, 'model'), str(o, 'adapter'), str(o, 'out')];
    checkInputPaths('merge', o, ['model', 'adapter']);
    const model = await LlamaModel.load(await backend(), dir);
    try {
      let adapter;
      try {
        adapter = await readPeftAdapter(adapterDir, model.cfg);
      } catch (e) {
        if (e instanceof AdapterError) throw new UsageError(`spinlm merge: --adapter ${e.message}`);
        throw e;
      }
      await prepareOut('merge', o, ['model', 'adapter'], 'single');
      await mergeAdapterIntoWeights(model.weights, model.cfg, adapter);
      await saveDerivedModel(model, out, { dir });
    } finally {
      model.weights.free();
    }
    process.stderr.write(`spinlm: merged ${adapterDir} into ${dir} -> ${out}\n`);
  },
};
