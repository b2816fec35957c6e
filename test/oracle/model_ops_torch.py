"""PyTorch autograd oracle for the model ops (test/model_ops.test.ts writes the inputs).

Usage: /usr/bin/python3 model_ops_torch.py DIR
DIR/spec.json: {"ops": [{"name", "op", "shapes": {...}, "params": {...}}, ...]}; inputs DIR/<name>.<input>.bin
(f32 or int32 raw). For each op writes DIR/<name>.<output>.bin (f32): the forward outputs and the
gradients of sum(out * dout) w.r.t. every float input (dout given as <name>.dout.bin).
"""
import json
import os
import sys

import numpy as np
import torch

D = sys.argv[1]


def load(name, shape, dtype=np.float32):
    return torch.from_numpy(np.fromfile(os.path.join(D, name + ".bin"), dtype=dtype).reshape(shape).copy())


def save(name, t):
    t.detach().numpy().astype(np.float32).tofile(os.path.join(D, name + ".bin"))


def leaf(name, shape):
    return load(name, shape).double().requires_grad_(True)


def rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


def run(op):
    n, s, p = op["name"], op["shapes"], op["params"]
    if op["op"] == "rmsnorm":
        x, w = leaf(n + ".x", s["x"]), leaf(n + ".w", s["w"])
        # Gemma (unitOffset): HF Gemma2RMSNorm / Gemma3RMSNorm, output * (1.0 + weight)
        y = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + p["eps"]) * ((1.0 + w) if p.get("unitOffset") else w)
        outs, ins = {"y": y}, {"dx": x, "dw": w}
    elif op["op"] == "rope":
        x = leaf(n + ".x", s["x"])  # [T, heads, hd]
        pos = load(n + ".pos", s["pos"], np.int32).long()
        hd = s["x"][2]
        # Hugging Face LlamaRotaryEmbedding (fp32 inv_freq and angle), linear scaling divides inv_freq
        inv_freq = 1.0 / (p["theta"] ** (torch.arange(0, hd, 2, dtype=torch.int64).float() / hd))
        inv_freq = inv_freq / p["scale"]
        freqs = pos.float()[:, None] * inv_freq[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        cos, sin = emb.cos().double()[:, None, :], emb.sin().double()[:, None, :]
        y = x * cos + rotate_half(x) * sin
        outs, ins = {"y": y}, {"dx": x}
    elif op["op"] == "attention":
        b, l, nh, hd = s["q"]
        nkv = s["k"][2]
        q, k, v = leaf(n + ".q", s["q"]), leaf(n + ".k", s["k"]), leaf(n + ".v", s["v"])
        mask = load(n + ".mask", s["mask"], np.int32).bool()
        kk = k.repeat_interleave(nh // nkv, dim=2)
        vv = v.repeat_interleave(nh // nkv, dim=2)
        scores = torch.einsum("bihd,bjhd->bhij", q, kk) * p.get("scale", hd**-0.5)
        if p.get("softcap", 0) > 0:  # Gemma 2 (HF eager attention): before the mask
            scores = torch.tanh(scores / p["softcap"]) * p["softcap"]
        causal = torch.ones(l, l, dtype=torch.bool).tril()
        if p.get("window", 0) > 0:  # sliding window: i - j < window
            causal &= ~torch.ones(l, l, dtype=torch.bool).tril(-p["window"])
        allowed = causal[None, None] & mask[:, None, None, :]
        scores = scores.masked_fill(~allowed, float("-inf"))
        has_key = allowed.any(-1, keepdim=True)
        probs = torch.where(has_key, torch.softmax(scores.masked_fill(~has_key, 0.0), -1), torch.zeros_like(scores))
        y = torch.einsum("bhij,bjhd->bihd", probs, vv)
        outs, ins = {"y": y}, {"dq": q, "dk": k, "dv": v}
    elif op["op"] == "swiglu":
        g, u = leaf(n + ".g", s["g"]), leaf(n + ".u", s["u"])
        if p.get("activation") == "gelu_tanh":  # Gemma's GeGLU: HF gelu_pytorch_tanh
            y = torch.nn.functional.gelu(g, approximate="tanh") * u
        else:
            y = torch.nn.functional.silu(g) * u
        outs, ins = {"y": y}, {"dg": g, "du": u}
    elif op["op"] == "embedding":
        table = leaf(n + ".table", s["table"])
        ids = load(n + ".ids", s["ids"], np.int32).long()
        y = table[ids]
        outs, ins = {"y": y}, {"dtable": table}
    elif op["op"] == "matmul":
        a, bm = leaf(n + ".a", s["a"]), leaf(n + ".b", s["b"])
        y = (a.t() if p["transA"] else a) @ (bm.t() if p["transB"] else bm)
        outs, ins = {"y": y}, {"da": a, "db": bm}
    else:
        raise ValueError(op["op"])
    dout = load(n + ".dout", list(outs["y"].shape)).double()
    (outs["y"] * dout).sum().backward()
    save(n + ".y", outs["y"])
    for gname, t in ins.items():
        save(n + "." + gname, t.grad)


torch.set_num_threads(1)
for op in json.load(open(os.path.join(D, "spec.json")))["ops"]:
    run(op)
