"""PyTorch peer of bench/gpu.bench.ts on the same GPU (bench/gpu_probe.ts measures spinlm).

  python3 bench/peer/torch_gpu.py --mode loss|spin|generate [--steps 3]

loss:     log_softmax(x.float(), -1).gather(-1, t) over bf16 logits N = 8192 x V = 128256, eager and
          torch.compile'd (median ms, GB/s of the logits read once)
spin:     SPIN step (forward, sigmoid SPIN loss, backward, clip 1.0, RMSprop) of a 1.1B Llama-shaped model
          (TinyLlama's shape) with random bf16 weights, 8 pairs x 1024 tokens, bf16 eager -> tokens/s, peak memory
generate: 64 prompts x 128 tokens, 256 new tokens each, greedy, KV cache, bf16 eager -> generated tokens/s
Prints one JSON line; {"skipped": why} (exit 0) when torch or a CUDA device is missing.
"""
import argparse
import json
import statistics
import sys
import time

try:
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
except ImportError as e:  # no PyTorch: nothing to compare with
    print(json.dumps({"skipped": f"no torch: {e}"}))
    sys.exit(0)

CFG = dict(hidden=2048, layers=22, heads=32, kv=4, inter=5632, vocab=32000, theta=10000.0, eps=1e-5)


def timed(fn, iters):
    times = []
    for i in range(iters + 1):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        if i > 0:
            times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


class RMSNorm(nn.Module):
    def __init__(self, d, eps):
        super().__init__()
        self.w = nn.Parameter(torch.ones(d))
        self.eps = eps

    def forward(self, x):
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype) * self.w


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
        a = F.scaled_dot_product_attention(q, k, v, is_causal=T > 1).transpose(1, 2).reshape(B, T, -1)
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
        self.register_buffer("inv_freq", 1.0 / (c["theta"] ** (torch.arange(0, hd, 2).float() / hd)), persistent=False)

    def forward(self, ids, start=0, caches=None):
        T = ids.shape[1]
        f = torch.arange(start, start + T, device=ids.device).float()[:, None] * self.inv_freq[None]
        emb = torch.cat((f, f), -1)
        x = self.emb(ids)
        cos, sin = emb.cos().to(x.dtype), emb.sin().to(x.dtype)
        for i, layer in enumerate(self.layers):
            x = layer(x, cos, sin, None if caches is None else caches[i])
        return self.head(self.norm(x))


def model():
    torch.manual_seed(0)
    m = Llama(CFG)
    for p in m.parameters():
        if p.dim() == 2:
            nn.init.normal_(p, std=0.02)
    return m.cuda().to(torch.bfloat16)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mode", choices=["loss", "spin", "generate"], required=True)
    ap.add_argument("--steps", type=int, default=3)
    a = ap.parse_args()
    if not torch.cuda.is_available():
        print(json.dumps({"skipped": "no CUDA device visible to torch"}))
        return
    dev = torch.device("cuda")
    out = {"mode": a.mode, "torch": torch.__version__, "device": torch.cuda.get_device_name()}
    if a.mode == "loss":
        N, V = 8192, 128256
        x = (3 * torch.randn(N, V, device=dev)).to(torch.bfloat16)
        t = torch.randint(0, V, (N, 1), device=dev)

        def f(x, t):
            return torch.log_softmax(x.float(), -1).gather(-1, t)

        eager = timed(lambda: f(x, t), 10)
        out.update(eager_ms=eager, eager_gbs=N * V * 2 / (eager * 1e6))
        try:
            g = torch.compile(f)
            g(x, t)
            comp = timed(lambda: g(x, t), 10)
            out.update(compiled_ms=comp, compiled_gbs=N * V * 2 / (comp * 1e6))
        except Exception as e:  # torch.compile needs a working triton; report instead of failing
            out.update(compiled_error=str(e).splitlines()[0][:200])
    elif a.mode == "spin":
        m = model()
        B, L, P = 8, 1024, 128
        opt = torch.optim.RMSprop(m.parameters(), lr=5e-7, alpha=0.99, eps=1e-8)
        torch.cuda.reset_peak_memory_stats()

        def step():
            ids = torch.randint(3, CFG["vocab"], (2 * B, L), device=dev)
            labels = ids[:, 1:].clone()
            labels[:, : P - 1] = -100
            ref = torch.randn(2 * B, device=dev) - 9000
            logits = m(ids[:, :-1])
            logp = torch.log_softmax(logits.float(), -1).gather(-1, labels.clamp(min=0)[..., None]).squeeze(-1) * (labels != -100)
            s = logp.sum(-1)
            u = 0.1 * ((s[:B] - ref[:B]) - (s[B:] - ref[B:]))
            loss = -F.logsigmoid(u).mean()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)

        ms = timed(step, a.steps)
        out.update(ms_per_step=ms, tokens_per_s=2 * B * L / (ms / 1000), peak_allocated_bytes=torch.cuda.max_memory_allocated(),
                   peak_reserved_bytes=torch.cuda.max_memory_reserved())
    else:
        m = model()
        Bn, P, N = 64, 128, 256
        prompts = torch.randint(3, CFG["vocab"], (Bn, P), device=dev)

        @torch.inference_mode()
        def gen():
            caches = [dict() for _ in range(CFG["layers"])]
            nxt = m(prompts, 0, caches)[:, -1].argmax(-1, keepdim=True)
            for s in range(N - 1):
                nxt = m(nxt, P + s, caches)[:, -1].argmax(-1, keepdim=True)

        ms = timed(gen, max(1, min(a.steps, 2)))
        out.update(ms_total=ms, tokens_per_s=Bn * N / (ms / 1000), peak_allocated_bytes=torch.cuda.max_memory_allocated())
    print(json.dumps(out))


if __name__ == "__main__":
    main()
