"""PyTorch eager peer of bench/model.bench.ts: the same Llama (hidden 512, 8 layers, 8 heads, 4 kv heads,
intermediate 1408, vocab 8000, untied; ~32M parameters) written the usual way (nn.Linear, autograd, f32).

  /usr/bin/python3 bench/peer/torch_llama_peer.py --mode train|generate|spin --threads 1 --steps 5 --json

train:    forward + backward of 8 x 256 tokens (loss: sum of token log-probs) -> tokens/s
generate: 32 prompts of 64 tokens, 128 new tokens each, greedy, with a KV cache -> generated tokens/s
spin:     SPIN optimizer steps with precomputed reference log-probs: 8 pairs of 256-token sequences
          (prompt 64 masked), sigmoid beta 0.1, RMSprop lr 5e-7, clip 1.0 -> steps/s
Prints one JSON line (medians after one warm-up) with the peak RSS (VmHWM).
"""
import argparse
import json
import math
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

CFG = dict(hidden=512, layers=8, heads=8, kv=4, inter=1408, vocab=8000, theta=10000.0, eps=1e-5)


def vmhwm():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


class RMSNorm(nn.Module):
    def __init__(self, d, eps):
        super().__init__()
        self.w = nn.Parameter(torch.ones(d))
        self.eps = eps

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.w


def rope(x, cos, sin):
    h = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., h:], x[..., :h]), -1) * sin


class Layer(nn.Module):
    def __init__(self, c):
        super().__init__()
        H, hd = c["hidden"], c["hidden"] // c["heads"]
        self.c, self.hd = c, hd
        self.n1, self.n2 = RMSNorm(H, c["eps"]), RMSNorm(H, c["eps"])
        self.q = nn.Linear(H, c["heads"] * hd, bias=False)
        self.k = nn.Linear(H, c["kv"] * hd, bias=False)
        self.v = nn.Linear(H, c["kv"] * hd, bias=False)
        self.o = nn.Linear(c["heads"] * hd, H, bias=False)
        self.gate = nn.Linear(H, c["inter"], bias=False)
        self.up = nn.Linear(H, c["inter"], bias=False)
        self.down = nn.Linear(c["inter"], H, bias=False)

    def forward(self, x, cos, sin, cache=None):
        B, T, _ = x.shape
        c, hd = self.c, self.hd
        h = self.n1(x)
        q = rope(self.q(h).view(B, T, c["heads"], hd).transpose(1, 2), cos, sin)
        k = rope(self.k(h).view(B, T, c["kv"], hd).transpose(1, 2), cos, sin)
        v = self.v(h).view(B, T, c["kv"], hd).transpose(1, 2)
        if cache is not None:
            if "k" in cache:
                k, v = torch.cat((cache["k"], k), 2), torch.cat((cache["v"], v), 2)
            cache["k"], cache["v"] = k, v
        rep = c["heads"] // c["kv"]
        k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
        s = q @ k.transpose(-1, -2) / math.sqrt(hd)
        L = k.shape[2]
        if T > 1:
            s = s.masked_fill(torch.ones(T, L, dtype=torch.bool).tril(L - T).logical_not(), float("-inf"))
        a = (torch.softmax(s, -1) @ v).transpose(1, 2).reshape(B, T, -1)
        x = x + self.o(a)
        h = self.n2(x)
        return x + self.down(F.silu(self.gate(h)) * self.up(h))


class Llama(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.c = c
        self.emb = nn.Embedding(c["vocab"], c["hidden"])
        self.layers = nn.ModuleList(Layer(c) for _ in range(c["layers"]))
        self.norm = RMSNorm(c["hidden"], c["eps"])
        self.head = nn.Linear(c["hidden"], c["vocab"], bias=False)
        hd = c["hidden"] // c["heads"]
        self.inv_freq = 1.0 / (c["theta"] ** (torch.arange(0, hd, 2).float() / hd))

    def forward(self, ids, start=0, caches=None):
        T = ids.shape[1]
        f = torch.arange(start, start + T).float()[:, None] * self.inv_freq[None]
        emb = torch.cat((f, f), -1)
        cos, sin = emb.cos(), emb.sin()
        x = self.emb(ids)
        for i, layer in enumerate(self.layers):
            x = layer(x, cos, sin, None if caches is None else caches[i])
        return self.head(self.norm(x))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mode", choices=["train", "generate", "spin"], required=True)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    m = Llama(CFG)
    for p in m.parameters():
        if p.dim() == 2:
            nn.init.normal_(p, std=0.02)
    V = CFG["vocab"]
    times = []
    if a.mode == "train":
        ids = torch.randint(3, V, (8, 256))
        for _ in range(a.steps + 1):
            t0 = time.perf_counter()
            logp = torch.log_softmax(m(ids[:, :-1]), -1).gather(-1, ids[:, 1:, None]).sum()
            logp.backward()
            m.zero_grad(set_to_none=True)
            times.append(time.perf_counter() - t0)
        t = statistics.median(times[1:])
        out = {"tokens_per_s": 8 * 256 / t}
    elif a.mode == "generate":
        prompts = torch.randint(3, V, (32, 64))
        with torch.inference_mode():
            for _ in range(min(a.steps, 3) + 1):
                t0 = time.perf_counter()
                caches = [dict() for _ in range(CFG["layers"])]
                logits = m(prompts, 0, caches)
                nxt = logits[:, -1].argmax(-1, keepdim=True)
                for s in range(127):
                    logits = m(nxt, 64 + s, caches)
                    nxt = logits[:, -1].argmax(-1, keepdim=True)
                times.append(time.perf_counter() - t0)
        t = statistics.median(times[1:])
        out = {"tokens_per_s": 32 * 128 / t}
    else:
        B, L, P = 8, 256, 64
        opt = torch.optim.RMSprop(m.parameters(), lr=5e-7, alpha=0.99, eps=1e-8)
        for _ in range(a.steps + 1):
            ids = torch.randint(3, V, (2 * B, L))
            labels = ids[:, 1:].clone()
            labels[:, : P - 1] = -100
            ref = torch.randn(2 * B) - 2000
            t0 = time.perf_counter()
            logits = m(ids[:, :-1])
            logp = torch.log_softmax(logits, -1).gather(-1, labels.clamp(min=0)[..., None]).squeeze(-1) * (labels != -100)
            s = logp.sum(-1)
            u = 0.1 * ((s[:B] - ref[:B]) - (s[B:] - ref[B:]))
            loss = -F.logsigmoid(u).mean()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            times.append(time.perf_counter() - t0)
        t = statistics.median(times[1:])
        out = {"steps_per_s": 1 / t, "tokens_per_s": 2 * B * L / t}
    out.update(mode=a.mode, threads=torch.get_num_threads(), peak_rss_bytes=vmhwm(), torch=torch.__version__)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
