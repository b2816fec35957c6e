"""LoRA on the plain PyTorch models of llama_torch.py / gemma_torch.py: the oracle of test/lora_torch.test.ts.

PEFT's lora.Linear.forward written by hand (peft/tuners/lora/layer.py, dropout 0, bias "none"):
    result = base_layer(x) + lora_B(lora_A(x)) * scaling
with the base weight W frozen (no grad) and A [r, in], B [out, r] leaf tensors that take gradients. The
models' linear layers compute `x @ W[name].t()`; for an adapted module W[name] is a LoraWeight whose
transpose multiplies as above (x @ W^T + s (x @ A^T) @ B^T), so every family's forward (Phi-3's fused
qkv_proj / gate_up_proj included: one A, one B over the fused output, as PEFT wraps the fused nn.Linear)
runs unchanged.

  run: lora_torch.py run MODEL_DIR ADAPTERS_SAFETENSORS REQUEST_DIR
request.json as llama_torch.py's, plus "scaling". Adapter tensors are named
`model.layers.{i}.{self_attn|mlp}.{module}.lora_{A|B}.weight`. Writes (f32, raw) logits.out.bin, seq.out.bin,
loss.json, and grad/<adapter name>.bin (gradient of the mean SPIN loss); no gradient exists for the base.
Computes in float64.
"""
import json
import os
import sys

import torch

import llama_torch


class LoraWeightT:
    def __init__(self, w, a, b, s):
        self.w, self.a, self.b, self.s = w, a, b, s

    def __rmatmul__(self, x):
        return x @ self.w.t() + self.s * ((x @ self.a.t()) @ self.b.t())


class LoraWeight:
    def __init__(self, w, a, b, s):
        self.w, self.a, self.b, self.s = w, a, b, s

    def t(self):
        return LoraWeightT(self.w, self.a, self.b, self.s)


class LoraWeights(dict):
    """The base weights; an adapted module's `.weight` comes back as a LoraWeight."""

    def __init__(self, base, adapters, s):
        super().__init__(base)
        self.adapters, self.s = adapters, s

    def __getitem__(self, name):
        w = dict.__getitem__(self, name)
        module = name[: -len(".weight")] if name.endswith(".weight") else None
        if module in self.adapters:
            a, b = self.adapters[module]
            return LoraWeight(w, a, b, self.s)
        return w


def run(model_dir, adapters_path, req_dir):
    c = llama_torch.load_config(model_dir)
    base = llama_torch.read_safetensors(os.path.join(model_dir, "model.safetensors"))  # no requires_grad: frozen
    tensors = {k: v.requires_grad_(True) for k, v in llama_torch.read_safetensors(adapters_path).items()}
    modules = sorted({k.rsplit(".lora_", 1)[0] for k in tensors})
    adapters = {m: (tensors[m + ".lora_A.weight"], tensors[m + ".lora_B.weight"]) for m in modules}
    r = json.load(open(os.path.join(req_dir, "request.json")))
    logits, seq, loss = llama_torch.spin_loss(c, LoraWeights(base, adapters, r["scaling"]), r, req_dir)
    loss.backward()
    assert all(not t.requires_grad for t in base.values())
    logits.detach().float().numpy().tofile(os.path.join(req_dir, "logits.out.bin"))
    seq.detach().float().numpy().tofile(os.path.join(req_dir, "seq.out.bin"))
    json.dump({"loss": loss.item()}, open(os.path.join(req_dir, "loss.json"), "w"))
    os.makedirs(os.path.join(req_dir, "grad"), exist_ok=True)
    for name, t in tensors.items():
        t.grad.float().numpy().tofile(os.path.join(req_dir, "grad", name + ".bin"))


if __name__ == "__main__":
    torch.set_num_threads(1)
    run(sys.argv[2], sys.argv[3], sys.argv[4])
