"""PyTorch oracle for the optimizers: K steps of torch.optim.RMSprop / AdamW with optional
clip_grad_norm_, on parameters and per-step gradients read from DIR.

Usage: /usr/bin/python3 optim_torch.py DIR
DIR/params.json: {"type": "rmsprop"|"adamw", "hyper": {...}, "lrs": [lr per step], "clip": float|null,
                  "shapes": [[...], ...], "steps": K}
DIR/p{i}.bin: f32 initial values of parameter i; DIR/g{i}_{k}.bin: f32 gradient of parameter i at step k.
Writes DIR/out{i}.bin (f32 parameters after K steps) and DIR/norms.json (total norm before clipping, per step).
"""
import json
import os
import sys

import numpy as np
import torch


def load(d, name, shape):
    return torch.from_numpy(np.fromfile(os.path.join(d, name), dtype=np.float32).reshape(shape))


def main(d):
    cfg = json.load(open(os.path.join(d, "params.json")))
    params = [torch.nn.Parameter(load(d, f"p{i}.bin", s).clone()) for i, s in enumerate(cfg["shapes"])]
    h = cfg["hyper"]
    if cfg["type"] == "rmsprop":
        opt = torch.optim.RMSprop(params, lr=cfg["lrs"][0], alpha=h["alpha"], eps=h["eps"], weight_decay=h["weightDecay"])
    else:
        opt = torch.optim.AdamW(params, lr=cfg["lrs"][0], betas=(h["beta1"], h["beta2"]), eps=h["eps"], weight_decay=h["weightDecay"])
    norms = []
    for k in range(cfg["steps"]):
        for i, p in enumerate(params):
            p.grad = load(d, f"g{i}_{k}.bin", cfg["shapes"][i]).clone()
        if cfg["clip"] is not None:
            norms.append(float(torch.nn.utils.clip_grad_norm_(params, cfg["clip"])))
        else:
            norms.append(float(torch.norm(torch.stack([torch.norm(p.grad) for p in params]))))
        for group in opt.param_groups:
            group["lr"] = cfg["lrs"][k]
        opt.step()
    for i, p in enumerate(params):
        p.detach().numpy().astype(np.float32).tofile(os.path.join(d, f"out{i}.bin"))
    json.dump(norms, open(os.path.join(d, "norms.json"), "w"))


if __name__ == "__main__":
    torch.set_num_threads(1)
    main(sys.argv[1])
