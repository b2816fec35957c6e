"""Mixed-precision references for one SPIN step of a plain Llama model (test/mixed_precision_torch.test.ts).

python autocast_torch.py MODEL_DIR REQ_DIR writes REQ_DIR/<mode>/{logits.out.bin, seq.out.bin, loss.json,
grad/<name>.bin} for three modes:
  exact    float64 throughout (no rounding): the model's real-number answer.
  rounded  float64 with bf16 rounding at exactly the places spinlm's computeDtype 'bf16' rounds
           (docs/numerics.md "Mixed precision"): every GEMM's inputs (x and W of each linear layer and the
           head, q, k and v of attention) rounded to bf16 in the forward, and every GEMM's output gradient
           (dY: the linear layers', the logits', attention's dout) rounded to bf16 in the backward; the
           rest (sums, norms, softmax, rope, residual, loss) float64.
  autocast PyTorch 1.13's own bf16 autocast on the CPU (torch.autocast('cpu', dtype=torch.bfloat16)) over
           f32 parameters, as Hugging Face's LlamaModel runs under it (eager attention): GEMM outputs are
           bf16 there, rope's cos / sin are cast to bf16, the softmax is f32 then cast to bf16.
The request is llama_torch.py's (test/helpers/spin_oracle_case.ts writeSpinRequest); the model a plain
llama (no biases, untied or tied head).
"""
import json
import math
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import llama_torch  # noqa: E402


def bf(t):
    return t.to(torch.bfloat16).to(t.dtype)


class RoundIn(torch.autograd.Function):
    """bf16 rounding of a GEMM input: rounded forward, gradient passed through."""

    @staticmethod
    def forward(ctx, x):
        return bf(x)

    @staticmethod
    def backward(ctx, g):
        return g


class RoundGrad(torch.autograd.Function):
    """A GEMM's output: unchanged forward, its gradient dY rounded to bf16 (autocast's bf16 grads)."""

    @staticmethod
    def forward(ctx, y):
        return y.view_as(y)

    @staticmethod
    def backward(ctx, g):
        return bf(g)


def forward(c, W, ids, pos, mask, rows, length, mode):
    H, nh = c["hidden_size"], c["num_attention_heads"]
    nkv = c["num_key_value_heads"]
    hd = c.get("head_dim") or H // nh
    eps = c["rms_norm_eps"]
    T = rows * length
    r_in = RoundIn.apply if mode == "rounded" else (lambda t: t)
    r_grad = RoundGrad.apply if mode == "rounded" else (lambda t: t)

    def rms(x, w):  # HF LlamaRMSNorm: in f32 (float64 here) whatever autocast says
        xf = x.float() if mode == "autocast" else x
        return w * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps))

    def lin(x, w):
        return r_grad(F.linear(r_in(x), r_in(w)))

    inv_freq, factor = llama_torch.rope_params(c, hd)
    freqs = pos.float()[:, None] * inv_freq[None, :]
    emb = torch.cat((freqs, freqs), dim=-1)
    if mode == "autocast":  # HF: f32 cos / sin, then .to(x.dtype): bf16 under autocast
        cos, sin = (emb.cos() * factor).to(torch.bfloat16)[:, None, :], (emb.sin() * factor).to(torch.bfloat16)[:, None, :]
    else:
        cos, sin = emb.cos().double()[:, None, :] * factor, emb.sin().double()[:, None, :] * factor
    keymask = mask.reshape(rows, length).bool()
    causal = torch.ones(length, length, dtype=torch.bool).tril()
    allowed = causal[None, None] & keymask[:, None, None, :]
    has_key = allowed.any(-1, keepdim=True)
    x = W["model.embed_tokens.weight"][ids]
    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}."
        h = rms(x, W[p + "input_layernorm.weight"])
        q, k, v = (lin(h, W[p + f"self_attn.{n}_proj.weight"]) for n in "qkv")
        q, k, v = q.reshape(T, nh, hd), k.reshape(T, nkv, hd), v.reshape(T, nkv, hd)
        q = q * cos + llama_torch.rotate_half(q) * sin
        k = k * cos + llama_torch.rotate_half(k) * sin
        q4, k4, v4 = (t.reshape(rows, length, -1, hd).transpose(1, 2) for t in (q, k, v))
        k4 = k4.repeat_interleave(nh // nkv, dim=1)
        v4 = v4.repeat_interleave(nh // nkv, dim=1)
        if mode == "autocast":  # HF eager attention: bf16 scores, f32 softmax cast to bf16, bf16 P V
            s = torch.matmul(q4, k4.transpose(2, 3)) * (1 / math.sqrt(hd))
            s = s.masked_fill(~allowed, float("-inf")).masked_fill(~has_key, 0.0)
            pr = torch.where(has_key, F.softmax(s, dim=-1, dtype=torch.float32), torch.zeros((), dtype=torch.float32)).to(q4.dtype)
            att = torch.matmul(pr, v4)
        else:  # FlashAttention under autocast: q, k, v rounded, the rest exact
            q4, k4, v4 = r_in(q4), r_in(k4), r_in(v4)
            s = torch.matmul(q4, k4.transpose(2, 3)) / math.sqrt(hd)
            s = s.masked_fill(~allowed, float("-inf")).masked_fill(~has_key, 0.0)
            pr = torch.where(has_key, torch.softmax(s, -1), torch.zeros_like(s))
            att = r_grad(torch.matmul(pr, v4))
        att = att.transpose(1, 2).reshape(T, nh * hd)
        x = x + lin(att, W[p + "self_attn.o_proj.weight"])
        h2 = rms(x, W[p + "post_attention_layernorm.weight"])
        act = F.silu(lin(h2, W[p + "mlp.gate_proj.weight"])) * lin(h2, W[p + "mlp.up_proj.weight"])
        x = x + lin(act, W[p + "mlp.down_proj.weight"])
    x = rms(x, W["model.norm.weight"])
    head = W["model.embed_tokens.weight"] if c.get("tie_word_embeddings", False) else W["lm_head.weight"]
    return lin(x, head)


def run(model_dir, req_dir, mode):
    c = llama_torch.load_config(model_dir)
    W = llama_torch.read_safetensors(os.path.join(model_dir, "model.safetensors"))
    W = {k: (v.float() if mode == "autocast" else v).requires_grad_(True) for k, v in W.items()}
    r = json.load(open(os.path.join(req_dir, "request.json")))
    load = lambda n, dt: torch.from_numpy(np.fromfile(os.path.join(req_dir, n + ".bin"), dtype=dt).copy())
    ids, pos, mask = load("input_ids", np.int32).long(), load("positions", np.int32).long(), load("attention_mask", np.int32)
    targets, segments, ref = load("targets", np.int32).long(), load("segments", np.int32).long(), load("ref", np.float32).double()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=mode == "autocast"):
        logits = forward(c, W, ids, pos, mask, r["rows"], r["length"], mode)
    logits = logits.double()  # HF's loss upcasts the logits
    valid = targets != -100
    logp = torch.log_softmax(logits, -1).gather(1, torch.where(valid, targets, 0)[:, None]).squeeze(1) * valid
    b = r["pairs"]
    seq = torch.zeros(2 * b, dtype=torch.float64).index_add(0, segments[segments >= 0], logp[segments >= 0])
    u = r["beta"] * ((seq[:b] - ref[:b]) - (seq[b:] - ref[b:]))
    loss = (-F.logsigmoid(u)).mean()
    loss.backward()
    out = os.path.join(req_dir, mode)
    os.makedirs(os.path.join(out, "grad"), exist_ok=True)
    logits.detach().float().numpy().tofile(os.path.join(out, "logits.out.bin"))
    seq.detach().float().numpy().tofile(os.path.join(out, "seq.out.bin"))
    json.dump({"loss": loss.item()}, open(os.path.join(out, "loss.json"), "w"))
    for name, t in W.items():
        t.grad.float().numpy().tofile(os.path.join(out, "grad", name + ".bin"))


if __name__ == "__main__":
    torch.set_num_threads(1)
    for m in ("exact", "rounded", "autocast"):
        run(sys.argv[1], sys.argv[2], m)
