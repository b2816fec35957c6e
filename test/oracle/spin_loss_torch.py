"""PyTorch oracle of the SPIN loss family (docs/algorithm.md), written with torch autograd only, in float64.

Usage: /usr/bin/python3 spin_loss_torch.py DIR
DIR holds params.json {n, v, b, dtype, beta, loss_type[, length_normalized]} (loss_type: sigmoid, hinge,
ipo or sppo_hard; length_normalized: every sequence's log-prob and reference divided by its count of
target tokens) and raw
little-endian arrays:
  logits.bin  [n, v] f32, or bf16 bit patterns (uint16) when dtype is bf16
  targets.bin [n] int32 (-100 = no loss)   segments.bin [n] int32 (-1 = none; real i -> i, generated i -> b+i)
  ref.bin     [2b] f32 reference log-probs (real then generated)
Writes out.json {loss, rewards_real, rewards_generated, margins, accuracies, logps_real,
logps_generated} (batch means) and dlogits.bin [n, v] f32 (gradient w.r.t. the logits, rounded to f32).
The f32 (or bf16) inputs are widened exactly to float64 and every step runs in float64.
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
    z = z.double().requires_grad_(True)  # exact widening of the fp32 / bf16 logits
    targets = torch.from_numpy(np.fromfile(os.path.join(d, "targets.bin"), dtype=np.int32).astype(np.int64))
    segments = torch.from_numpy(np.fromfile(os.path.join(d, "segments.bin"), dtype=np.int32).astype(np.int64))
    ref = torch.from_numpy(np.fromfile(os.path.join(d, "ref.bin"), dtype=np.float32)).double()

    mask = targets != -100
    logp = torch.log_softmax(z, dim=-1).gather(1, torch.where(mask, targets, 0).unsqueeze(1)).squeeze(1)
    logp = logp * mask
    in_seq = segments >= 0
    seq = torch.zeros(2 * b, dtype=torch.float64).index_add(0, segments[in_seq], logp[in_seq])
    if p.get("length_normalized"):
        counts = torch.zeros(2 * b, dtype=torch.float64).index_add(0, segments[in_seq], mask[in_seq].double())
        counts = counts.clamp(min=1)
        seq, ref = seq / counts, ref / counts
    real, gen = seq[:b], seq[b:]
    ref_real, ref_gen = ref[:b], ref[b:]
    beta = p["beta"]
    r_w, r_l = real - ref_real, gen - ref_gen  # log-ratios of the real (winning) and generated answers
    u = beta * (r_w - r_l)
    kind = p["loss_type"]
    if kind == "sigmoid":
        losses = -torch.nn.functional.logsigmoid(u)
    elif kind == "hinge":
        losses = torch.relu(1 - u)
    elif kind == "ipo":  # IPO (Azar et al. 2023, eq. 17), on summed log-probs
        losses = (r_w - r_l - 1 / (2 * beta)) ** 2
    elif kind == "sppo_hard":  # SPPO (Wu et al. 2024) with P(real answer wins) = 1
        losses = (r_w - 0.5 / beta) ** 2 + (r_l + 0.5 / beta) ** 2
    else:
        raise ValueError(f"unknown loss_type {kind}")
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
