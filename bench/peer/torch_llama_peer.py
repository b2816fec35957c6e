"""PyTorch eager peer of bench/model.bench.ts: the same Llama (hidden 512, 8 layers, 8 heads, 4 kv heads,
intermediate 1408, vocab 8000, untied; ~32M parameters) written the usual way (nn.Linear, autograd, f32).

  /usr/bin/python3 bench/peer/torch_llama_peer.py --mode score|train|generate|spin --threads 1 --steps 5 --json
      [--config config.json] [--work '{"rows": 1, ...}'] [--dtype f32|bf16]

--config: a Hugging Face config.json (bench/make_model.ts's random models) instead of the 32M shape;
--work: the workload sizes (bench/model_probe.ts's DEFAULT_WORK keys), the defaults below otherwise;
--dtype bf16: parameters and activations in bfloat16 (score and generate only: PyTorch's CPU
training in bf16 has no fp32 masters to compare with ours).
score:    forward of 8 x 256 tokens, no autograd -> tokens/s
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
WORK = dict(rows=8, len=256, genBatch=32, genPrompt=64, genNew=128, pairs=8, prompt=64)


def hf_config(path):
    c = json.load(open(path))
    return dict(
        hidden=c["hidden_size"],
        layers=c["num_hidden_layers"],
        heads=c["num_attention_heads"],
        kv=c.get("num_key_value_heads", c["num_attention_heads"]),
        inter=c["intermediate_size"],
        vocab=c["vocab_size"],
        theta=float(c.get("rope_theta", 10000.0)),
        eps=float(c.get("rms_norm_eps", 1e-6)),
    )


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
        x = self.emb(ids)
        cos, sin = emb.cos().to(x.dtype), emb.sin().to(x.dtype)
        for i, layer in enumerate(self.layers):
            x = layer(x, cos, sin, None if caches is None else caches[i])
        return self.head(self.norm(x))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mode", choices=["score", "train", "generate", "spin"], required=True)
    ap.add_argument("--config")
    ap.add_argument("--work", default="{}")
    ap.add_argument("--dtype", choices=["f32", "bf16"], default="f32")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    cfg = hf_config(a.config) if a.config else CFG
    w = {**WORK, **json.loads(a.work)}
    m = Llama(cfg)
    for p in m.parameters():
        if p.dim() == 2:
            nn.init.normal_(p, std=0.02)
    if a.dtype == "bf16":
        if a.mode in ("train", "spin"):
            raise SystemExit("--dtype bf16 is for score and generate")
        m = m.to(torch.bfloat16)
        m.inv_freq = m.inv_freq.float()
    V = cfg["vocab"]
    times = []
    if a.mode == "score":
        R, L = w["rows"], w["len"]
        ids = torch.randint(3, V, (R, L))
        with torch.inference_mode():
            for _ in range(a.steps + 1):
                t0 = time.perf_counter()
                m(ids)
                times.append(time.perf_counter() - t0)
        t = statistics.median(times[1:])
        out = {"tokens_per_s": R * L / t}
    elif a.mode == "train":
        R, L = w["rows"], w["len"]
        ids = torch.randint(3, V, (R, L + 1))
        for _ in range(a.steps + 1):
            t0 = time.perf_counter()
            logp = torch.log_softmax(m(ids[:, :-1]), -1).gather(-1, ids[:, 1:, None]).sum()
            logp.backward()
            m.zero_grad(set_to_none=True)
            times.append(time.perf_counter() - t0)
        t = statistics.median(times[1:])
        out = {"tokens_per_s": R * L / t}
    elif a.mode == "generate":
        B, P, N = w["genBatch"], w["genPrompt"], w["genNew"]
        prompts = torch.randint(3, V, (B, P))
        with torch.inference_mode():
            for _ in range(min(a.steps, 3) + 1):
                t0 = time.perf_counter()
                caches = [dict() for _ in range(cfg["layers"])]
                logits = m(prompts, 0, caches)
                nxt = logits[:, -1].argmax(-1, keepdim=True)
                for s in range(N - 1):
                    logits = m(nxt, P + s, caches)
                    nxt = logits[:, -1].argmax(-1, keepdim=True)
                times.append(time.perf_counter() - t0)
        t = statistics.median(times[1:])
        out = {"tokens_per_s": B * N / t}
    else:
        B, L, P = w["pairs"], w["len"], w["prompt"]
        opt = torch.optim.RMSprop(m.parameters(), lr=5e-7, alpha=0.99, eps=1e-8)
        for _ in range(a.steps + 1):
            ids = torch.randint(3, V, (2 * B, L))
            labels = ids[:, 1:].clone()
            labels[:, : P - 1] = -100
            ref = torch.randn(2 * B) - (L - P) * math.log(V)
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
    out.update(mode=a.mode, dtype=a.dtype, threads=torch.get_num_threads(), peak_rss_bytes=vmhwm(), torch=torch.__version__)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
