"""PyTorch peer of bench/gpu.bench.ts on the same GPU (bench/gpu_probe.ts measures spinlm).

  python3 bench/peer/torch_gpu.py --mode loss|spin|generate|gemm,decode,attention,head [--steps 3]

loss:     log_softmax(x.float(), -1).gather(-1, t) over bf16 logits N = 8192 x V = 128256, eager and
          torch.compile'd (median ms, GB/s of the logits read once)
spin:     SPIN step (forward, sigmoid SPIN loss, backward, clip 1.0, RMSprop) of a 1.1B Llama-shaped model
          (TinyLlama's shape), fp32 parameters under torch.autocast('cuda', torch.bfloat16) (fp32 master
          weights and RMSprop state, bf16 GEMMs), 8 pairs x 1024 tokens, eager -> tokens/s, peak memory
generate: 32 prompts x 128 tokens, 256 new tokens each, greedy, KV cache, bf16: transformers'
          LlamaForCausalLM.generate (SDPA) when transformers imports, else this file's eager loop
kernel modes (a comma list, one JSON line each, rows named as bench/gpu_kernel_probe.ts names them):
  gemm      torch.matmul bf16 (cuBLASLt) at the 1.1B and 7B linear shapes, 8192 tokens, and two backward forms
  decode    the same at M = 1, 8, 32, 64 x the 7B shapes
  attention scaled_dot_product_attention, flash backend, bf16, B 8 x 16 heads x L 2048 x hd 128, causal
  head      the unfused head: bf16 logits = h W^T, log_softmax(float).gather, and its backward
Prints one JSON line per mode; {"skipped": why} (exit 0) when torch or a CUDA device is missing.
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
    # cos / sin in x's dtype: under autocast x is a bf16 linear output while the tables follow the fp32
    # embedding, and an fp32 q or k beside a bf16 v would keep SDPA off its flash kernel
    h = x.shape[-1] // 2
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
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


def model(dtype=torch.bfloat16):
    torch.manual_seed(0)
    m = Llama(CFG)
    for p in m.parameters():
        if p.dim() == 2:
            nn.init.normal_(p, std=0.02)
    return m.cuda().to(dtype)


LLAMA_1B = dict(hidden=2048, kv=4 * 64, inter=5632, vocab=32000)
LLAMA_7B = dict(hidden=4096, kv=8 * 128, inter=14336, vocab=32000)


def linear_shapes(a, m, tag):
    """bench/gpu_roofline.ts linearShapes: (name, m, n, k) of [m, k] x W[n, k]^T."""
    H = a["hidden"]
    return [(f"{tag} qkv", m, H + 2 * a["kv"], H), (f"{tag} o", m, H, H), (f"{tag} gate+up", m, 2 * a["inter"], H),
            (f"{tag} down", m, H, a["inter"]), (f"{tag} head", m, a["vocab"], H)]


def gemm_row(name, m, n, k, form, iters, reps=1):
    dev = torch.device("cuda")
    w = torch.randn(n, k, device=dev, dtype=torch.bfloat16) * 0.02
    if form == "fwd":
        a = torch.randn(m, k, device=dev, dtype=torch.bfloat16)
        f = lambda: a @ w.t()
    elif form == "dx":
        a = torch.randn(m, n, device=dev, dtype=torch.bfloat16)
        f = lambda: a @ w
    else:
        a = torch.randn(m, n, device=dev, dtype=torch.bfloat16)
        x = torch.randn(m, k, device=dev, dtype=torch.bfloat16)
        f = lambda: a.t() @ x

    def run():
        for _ in range(reps):
            f()

    ms = timed(run, iters) / reps
    return dict(name=f"{name} {form}", m=m, n=n, k=k, ms=ms, tflops=2 * m * n * k / (ms * 1e9), weight_gbs=2 * n * k / (ms * 1e6))


def kernel_mode(mode, iters):
    dev = torch.device("cuda")
    rows = []
    if mode == "gemm":
        shapes = linear_shapes(LLAMA_1B, 8192, "1.1B") + linear_shapes(LLAMA_7B, 8192, "7B")
        rows = [gemm_row(*s, "fwd", iters) for s in shapes]
        rows += [gemm_row(*s, f, iters) for s in shapes if s[0].endswith("gate+up") for f in ("dx", "dw")]
    elif mode == "decode":
        rows = [gemm_row(*s, "fwd", iters, reps=20) for m in (1, 8, 32, 64) for s in linear_shapes(LLAMA_7B, m, "7B")]
    elif mode == "attention":
        B, L, nh, hd = 8, 2048, 16, 128
        q, k, v, do = (torch.randn(B, nh, L, hd, device=dev, dtype=torch.bfloat16, requires_grad=True) for _ in range(4))
        row = dict(name=f"attention B {B} L {L} heads {nh} hd {hd} causal", b=B, l=L, heads=nh, hd=hd)
        try:
            from torch.nn.attention import SDPBackend, sdpa_kernel
            ctx = lambda: sdpa_kernel(SDPBackend.FLASH_ATTENTION)
        except ImportError:  # torch < 2.3
            ctx = lambda: torch.backends.cuda.sdp_kernel(enable_flash=True, enable_math=False, enable_mem_efficient=False)
        flops = 4 * B * nh * L * L * hd / 2
        with ctx():
            row["fwd_ms"] = timed(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True), iters)
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            row["bwd_ms"] = timed(lambda: torch.autograd.grad(out, (q, k, v), do, retain_graph=True), iters)
        row.update(fwd_tflops=flops / (row["fwd_ms"] * 1e9), bwd_tflops=2.5 * flops / (row["bwd_ms"] * 1e9),
                   fwd_bwd_tflops=3.5 * flops / ((row["fwd_ms"] + row["bwd_ms"]) * 1e9))
        rows = [row]
    elif mode == "head":
        N, H, V = 8192, 4096, 32000
        rows.append(gemm_row("the head's shape", N, V, H, "fwd", iters))
        h = torch.randn(N, H, device=dev, dtype=torch.bfloat16, requires_grad=True)
        w = (torch.randn(V, H, device=dev) * 0.02).to(torch.bfloat16).requires_grad_()
        t = torch.randint(0, V, (N, 1), device=dev)
        f = lambda: torch.log_softmax((h @ w.t()).float(), -1).gather(-1, t)
        row = dict(name=f"fused head {N} x {H} x {V}", rows=N, hidden=H, vocab=V, note="unfused: bf16 logits, log_softmax(float).gather")
        row["fwd_ms"] = timed(f, iters)
        logp = f()
        g = torch.randn_like(logp)
        row["bwd_ms"] = timed(lambda: torch.autograd.grad(logp, (h, w), g, retain_graph=True), iters)
        flops = 2 * N * H * V
        row.update(fwd_tflops=flops / (row["fwd_ms"] * 1e9), bwd_tflops=2 * flops / (row["bwd_ms"] * 1e9),
                   fwd_of_gemm=flops / (row["fwd_ms"] * 1e9) / rows[0]["tflops"])
        rows.append(row)
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mode", required=True, help="loss, spin, generate, or a comma list of gemm, decode, attention, head")
    ap.add_argument("--steps", type=int, default=3)
    a = ap.parse_args()
    if not torch.cuda.is_available():
        print(json.dumps({"skipped": "no CUDA device visible to torch"}))
        return
    dev = torch.device("cuda")
    out = {"mode": a.mode, "torch": torch.__version__, "device": torch.cuda.get_device_name()}
    kernels = [m for m in a.mode.split(",") if m in ("gemm", "decode", "attention", "head")]
    if kernels:
        for m in kernels:
            try:
                print(json.dumps({**out, "mode": m, "rows": kernel_mode(m, a.steps)}), flush=True)
            except Exception as e:  # one mode's failure (out of memory, an old torch) keeps the others
                print(json.dumps({**out, "mode": m, "skipped": str(e).splitlines()[0][:200]}), flush=True)
            torch.cuda.empty_cache()
        return
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
        m = model(torch.float32)  # fp32 master weights; autocast runs the GEMMs in bf16
        B, L, P = 8, 1024, 128
        opt = torch.optim.RMSprop(m.parameters(), lr=5e-7, alpha=0.99, eps=1e-8)
        torch.cuda.reset_peak_memory_stats()

        def step():
            ids = torch.randint(3, CFG["vocab"], (2 * B, L), device=dev)
            labels = ids[:, 1:].clone()
            labels[:, : P - 1] = -100
            ref = torch.randn(2 * B, device=dev) - 9000
            with torch.autocast("cuda", torch.bfloat16):
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
        out.update(compute="bf16 autocast, fp32 parameters", ms_per_step=ms, tokens_per_s=2 * B * L / (ms / 1000),
                   peak_allocated_bytes=torch.cuda.max_memory_allocated(), peak_reserved_bytes=torch.cuda.max_memory_reserved())
    else:
        Bn, P, N = 32, 128, 256
        prompts = torch.randint(3, CFG["vocab"], (Bn, P), device=dev)
        try:
            import transformers

            c = transformers.LlamaConfig(hidden_size=CFG["hidden"], intermediate_size=CFG["inter"], num_hidden_layers=CFG["layers"],
                                         num_attention_heads=CFG["heads"], num_key_value_heads=CFG["kv"], vocab_size=CFG["vocab"],
                                         rms_norm_eps=CFG["eps"], rope_theta=CFG["theta"], max_position_embeddings=2048,
                                         tie_word_embeddings=False, pad_token_id=0, eos_token_id=2, attn_implementation="sdpa")
            torch.manual_seed(0)
            hf = transformers.LlamaForCausalLM(c).to(dev, torch.bfloat16).eval()
            # min_new_tokens = max_new_tokens: both sides generate exactly N tokens per prompt
            run = lambda n: hf.generate(prompts, attention_mask=torch.ones_like(prompts), max_new_tokens=n, min_new_tokens=n,
                                        do_sample=False, use_cache=True, pad_token_id=0)
            peer = f"transformers {transformers.__version__} generate (greedy, KV cache, SDPA)"
        except ImportError as e:
            m = model()

            @torch.inference_mode()
            def run(n):
                caches = [dict() for _ in range(CFG["layers"])]
                nxt = m(prompts, 0, caches)[:, -1].argmax(-1, keepdim=True)
                for s in range(n - 1):
                    nxt = m(nxt, P + s, caches)[:, -1].argmax(-1, keepdim=True)

            peer = f"PyTorch eager loop with a KV cache (no transformers: {e})"
        run(8)  # warm-up: a short generation
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        run(N)
        torch.cuda.synchronize()
        ms = (time.perf_counter() - t0) * 1000
        out.update(peer=peer, ms_total=ms, tokens_per_s=Bn * N / (ms / 1000), peak_allocated_bytes=torch.cuda.max_memory_allocated())
    print(json.dumps(out))


if __name__ == "__main__":
    main()
