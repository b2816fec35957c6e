"""The GPU kit's family check, reference side: Hugging Face transformers' own modeling code reads the
model directory spinlm wrote and computes, in float64, what spinlm computed on its device: logits, the
summed log-prob S(theta, y) of each answer, the SPIN loss (sigmoid) and the gradient of every parameter.

  hf_families.py run MODEL_DIR REQUEST_DIR    the request of test/oracle/llama_torch.py's `run`
                                             (input_ids, positions, attention_mask, targets, segments,
                                             ref; request.json {rows, length, beta, loss_type, pairs});
                                             writes logits.out.bin, seq.out.bin, loss.json, grad/<name>.bin
  hf_families.py versions                     one JSON line: torch and transformers versions, or why not

Exit code 3 when transformers cannot be imported (the caller then uses the float64 oracle and says so).
"""
import json
import os
import sys

import numpy as np
import torch


def versions():
    out = {"torch": torch.__version__, "cuda": torch.cuda.is_available()}
    try:
        import transformers

        out["transformers"] = transformers.__version__
    except Exception as e:  # noqa: BLE001 - reported, not hidden
        out["transformers"] = None
        out["why"] = f"{type(e).__name__}: {e}"
    print(json.dumps(out))


def run(model_dir, req_dir):
    try:
        from transformers import AutoModelForCausalLM
    except Exception as e:  # noqa: BLE001
        print(f"hf_families: transformers not importable ({type(e).__name__}: {e})", file=sys.stderr)
        sys.exit(3)
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    model = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float64, attn_implementation="eager").to(dev)
    model.train(False)  # no dropout; gradients still flow
    r = json.load(open(os.path.join(req_dir, "request.json")))
    load = lambda n, dt: torch.from_numpy(np.fromfile(os.path.join(req_dir, n + ".bin"), dtype=dt).copy()).to(dev)
    rows, length = r["rows"], r["length"]
    ids = load("input_ids", np.int32).long().view(rows, length)
    pos = load("positions", np.int32).long().view(rows, length)
    mask = load("attention_mask", np.int32).long().view(rows, length)
    targets, segments = load("targets", np.int32).long(), load("segments", np.int32).long()
    ref = load("ref", np.float32).double()
    logits = model(input_ids=ids, attention_mask=mask, position_ids=pos).logits.reshape(rows * length, -1)
    valid = targets != -100
    logp = torch.log_softmax(logits, -1).gather(1, torch.where(valid, targets, 0)[:, None]).squeeze(1) * valid
    b = r["pairs"]
    seq = torch.zeros(2 * b, dtype=torch.float64, device=dev).index_add(0, segments[segments >= 0], logp[segments >= 0])
    u = r["beta"] * ((seq[:b] - ref[:b]) - (seq[b:] - ref[b:]))
    loss = (-torch.nn.functional.logsigmoid(u) if r["loss_type"] == "sigmoid" else torch.relu(1 - u)).mean()
    loss.backward()
    logits.detach().float().cpu().numpy().tofile(os.path.join(req_dir, "logits.out.bin"))
    seq.detach().float().cpu().numpy().tofile(os.path.join(req_dir, "seq.out.bin"))
    json.dump({"loss": loss.item(), "reference": "transformers"}, open(os.path.join(req_dir, "loss.json"), "w"))
    os.makedirs(os.path.join(req_dir, "grad"), exist_ok=True)
    for name, p in model.named_parameters():
        if p.grad is not None:
            p.grad.float().cpu().numpy().tofile(os.path.join(req_dir, "grad", name + ".bin"))


if __name__ == "__main__":
    if sys.argv[1:2] == ["versions"]:
        versions()
    elif sys.argv[1:2] == ["run"] and len(sys.argv) == 4:
        run(sys.argv[2], sys.argv[3])
    else:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
