"""PyTorch oracle of the SPIN loss (docs/algorithm.md), written with torch autograd only.

Usage: /usr/bin/python3 spin_loss_torch.py DIR
DIR holds params.json {n, v, b, dtype, beta, loss_type} and raw little-endian arrays:
  logits.bin  [n, v] f32, or bf16 bit patterns (uint16) when dtype is bf16
  targets.bin [n] int32 (-100 = no loss)   segments.bin [n] int32 (-1 = none; real i -> i, generated i -> b+i)
  ref.bin     [2b] f32 reference log-probs (real then generated)
Writes out.json {loss, rewards_real, rewards_generated, margins, accuracies, logps_real,
logps_generated} (batch means) and dlogits.bin [n, v] f32 (gradient w.r.t. the fp32 logits).
"""
import json
import os
import sys

import numpy as np
import torch


def main(d):
    p = json.load(open(os.path.join(d, "params.json")))
    n, v, b = p["n"], p["v"], p["b"]
    raw = np.fromfile(os.path.join(d, "logits.bin"), dtype=np.float32 if p["dtype"] == "f32" else np.int16)
    z = torch.from_numpy(raw.copy()).reshape(n, v)
    if p["dtype"] == "bf16":
        z = z.view(torch.bfloat16)
    z = z.float().requires_grad_(True)  # the loss is computed from fp32 logits
    targets = torch.from_numpy(np.fromfile(os.path.join(d, "targets.bin"), dtype=np.int32).astype(np.int64))
    segments = torch.from_numpy(np.fromfile(os.path.join(d, "segments.bin"), dtype=np.int32).astype(np.int64))
    ref = torch.from_numpy(np.fromfile(os.path.join(d, "ref.bin"), dtype=np.float32))

    mask = targets != -100
    logp = torch.log_softmax(z, dim=-1).gather(1, torch.where(mask, targets, 0).unsqueeze(1)).squeeze(1)
    logp = logp * mask
    in_seq = segments >= 0
    seq = torch.zeros(2 * b, dtype=torch.float32).index_add(0, segments[in_seq], logp[in_seq])
    real, gen = seq[:b], seq[b:]
    ref_real, ref_gen = ref[:b], ref[b:]
    beta = p["beta"]
    u = beta * ((real - ref_real) - (gen - ref_gen))
    if p["loss_type"] == "sigmoid":
        losses = -torch.nn.functional.logsigmoid(u)
    else:
        losses = torch.relu(1 - u)
    loss = losses.mean()
    loss.backward()
    rewards_real = beta * (real - ref_real).detach()
    rewards_gen = beta * (gen - ref_gen).detach()
    out = {
        "loss": loss.item(),
        "rewards_real": rewards_real.mean().item(),
        "rewards_generated": rewards_gen.mean().item(),
        "margins": (rewards_real - rewards_gen).mean().item(),
        "accuracies": (rewards_real > rewards_gen).float().mean().item(),
        "logps_real": real.detach().mean().item(),
        "logps_generated": gen.detach().mean().item(),
    }
    json.dump(out, open(os.path.join(d, "out.json"), "w"))
    z.grad.numpy().astype(np.float32).tofile(os.path.join(d, "dlogits.bin"))


if __name__ == "__main__":
    main(sys.argv[1])
