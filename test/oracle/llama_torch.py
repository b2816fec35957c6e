"""A plain PyTorch Llama-family model (llama, mistral, qwen2, qwen3, phi3) and the SPIN loss: the independent oracle
of test/llama_torch.test.ts. Reads and writes Hugging Face directories (config.json + safetensors,
parsed here by hand: no transformers or safetensors package is needed).

  make:   llama_torch.py make DIR CONFIG_JSON SEED DTYPE      writes DIR/config.json + model.safetensors
  run:    llama_torch.py run MODEL_DIR REQUEST_DIR             reads request.json + arrays, writes results

request.json: {rows, length, beta, loss_type, pairs}; int32 arrays input_ids, positions, attention_mask,
targets (-100 = none), segments (-1 = none; real answer of pair i -> i, generated -> pairs + i) and f32
ref [2 * pairs]. Writes (f32, raw) logits [T, V], seq [2 * pairs], loss.json, and grad/<name>.bin for
every parameter (gradient of the mean SPIN loss). Computes in float64 from the stored (f32 or bf16) weights.
Family differences, as in transformers' modeling files: qwen3 applies q_norm / k_norm (RMSNorm over each
head's head_dim values) after the projections and before RoPE (modeling_qwen3.py Qwen3Attention); phi3
stores q/k/v as one qkv_proj (rows: q, then k, then v) and gate/up as one gate_up_proj (gate first:
`gate, up = chunk(2)`, modeling_phi3.py Phi3Attention / Phi3MLP); gradients are of the stored tensors.
"""
import json
import math
import os
import struct
import sys

import numpy as np
import torch

DT = {"F32": (np.float32, 4), "BF16": (np.int16, 2), "F16": (np.float16, 2)}


def read_safetensors(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        b, e = info["data_offsets"]
        np_dt, _ = DT[info["dtype"]]
        arr = np.frombuffer(data[b:e], dtype=np_dt).copy()
        t = torch.from_numpy(arr)
        if info["dtype"] == "BF16":
            t = t.view(torch.bfloat16)
        out[name] = t.reshape(info["shape"]).double()
    return out


def write_safetensors(path, tensors):
    header, blobs, off = {"__metadata__": {"format": "pt"}}, [], 0
    for name, (t, dtype) in tensors.items():
        if dtype == "BF16":
            raw = t.to(torch.bfloat16).view(torch.int16).numpy().tobytes()
        else:
            raw = t.to(torch.float32).numpy().tobytes()
        header[name] = {"dtype": dtype, "shape": list(t.shape), "data_offsets": [off, off + len(raw)]}
        blobs.append(raw)
        off += len(raw)
    h = json.dumps(header).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def biases(c):
    """(q/k/v bias, o_proj bias): qwen2 has q/k/v biases; llama and qwen3 follow attention_bias for all four;
    mistral and phi3 have none."""
    mt = c["model_type"]
    flag = mt in ("llama", "qwen3") and c.get("attention_bias", False)
    return mt == "qwen2" or flag, flag


def names_and_shapes(c):
    H, I, V, nh, nkv = c["hidden_size"], c["intermediate_size"], c["vocab_size"], c["num_attention_heads"], c["num_key_value_heads"]
    hd = c.get("head_dim") or H // nh
    qkv_bias, o_bias = biases(c)
    out = [("model.embed_tokens.weight", [V, H])]
    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}"
        out.append((f"{p}.input_layernorm.weight", [H]))
        if c["model_type"] == "phi3":
            out.append((f"{p}.self_attn.qkv_proj.weight", [(nh + 2 * nkv) * hd, H]))
        else:
            out += [(f"{p}.self_attn.q_proj.weight", [nh * hd, H]), (f"{p}.self_attn.k_proj.weight", [nkv * hd, H]), (f"{p}.self_attn.v_proj.weight", [nkv * hd, H])]
        out.append((f"{p}.self_attn.o_proj.weight", [H, nh * hd]))
        if qkv_bias:
            out += [(f"{p}.self_attn.q_proj.bias", [nh * hd]), (f"{p}.self_attn.k_proj.bias", [nkv * hd]), (f"{p}.self_attn.v_proj.bias", [nkv * hd])]
        if o_bias:
            out.append((f"{p}.self_attn.o_proj.bias", [H]))
        if c["model_type"] == "qwen3":
            out += [(f"{p}.self_attn.q_norm.weight", [hd]), (f"{p}.self_attn.k_norm.weight", [hd])]
        out.append((f"{p}.post_attention_layernorm.weight", [H]))
        if c["model_type"] == "phi3":
            out.append((f"{p}.mlp.gate_up_proj.weight", [2 * I, H]))
        else:
            out += [(f"{p}.mlp.gate_proj.weight", [I, H]), (f"{p}.mlp.up_proj.weight", [I, H])]
        out.append((f"{p}.mlp.down_proj.weight", [H, I]))
    out.append(("model.norm.weight", [H]))
    if not c.get("tie_word_embeddings", False):
        out.append(("lm_head.weight", [V, H]))
    return out


def make(dir_, config_json, seed, dtype):
    c = json.loads(config_json)
    os.makedirs(dir_, exist_ok=True)
    g = torch.Generator().manual_seed(int(seed))
    tensors = {}
    for name, shape in names_and_shapes(c):
        if name.endswith("norm.weight"):
            t = 1 + 0.1 * torch.randn(shape, generator=g)
        elif name.endswith(".bias"):
            t = 0.1 * torch.randn(shape, generator=g)
        else:
            t = 0.2 * torch.randn(shape, generator=g)
        tensors[name] = (t, "BF16" if dtype == "bf16" else "F32")
    write_safetensors(os.path.join(dir_, "model.safetensors"), tensors)
    c = dict(c, torch_dtype="bfloat16" if dtype == "bf16" else "float32")
    json.dump(c, open(os.path.join(dir_, "config.json"), "w"), indent=2)


def rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


def forward(c, W, ids, pos, mask, rows, length):
    H, nh, nkv = c["hidden_size"], c["num_attention_heads"], c["num_key_value_heads"]
    hd = c.get("head_dim") or H // nh
    eps = c["rms_norm_eps"]
    theta = c.get("rope_theta", 10000.0)
    scaling = c.get("rope_scaling") or {}
    factor = scaling.get("factor", 1.0) if scaling.get("type", scaling.get("rope_type")) == "linear" else 1.0
    qkv_bias, o_bias = biases(c)

    def rms(x, w):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w

    def lin(x, name, bias):
        y = x @ W[name + ".weight"].t()
        return y + W[name + ".bias"] if bias else y

    def rms_heads(x, w):  # qwen3's q_norm / k_norm: RMSNorm over the last (head_dim) axis
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w

    # Hugging Face's rotary embedding: fp32 inv_freq, fp32 angles; linear scaling divides inv_freq
    inv_freq = 1.0 / (theta ** (torch.arange(0, hd, 2, dtype=torch.int64).float() / hd))
    inv_freq = inv_freq / factor
    freqs = pos.float()[:, None] * inv_freq[None, :]
    emb = torch.cat((freqs, freqs), dim=-1)
    cos, sin = emb.cos().double()[:, None, :], emb.sin().double()[:, None, :]
    T = rows * length
    x = W["model.embed_tokens.weight"][ids]
    keymask = mask.reshape(rows, length).bool()
    causal = torch.ones(length, length, dtype=torch.bool).tril()
    allowed = causal[None, None] & keymask[:, None, None, :]
    has_key = allowed.any(-1, keepdim=True)
    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}"
        h = rms(x, W[p + ".input_layernorm.weight"])
        if c["model_type"] == "phi3":  # Phi3Attention: qkv[..., :nh hd], then nkv hd for k, the rest v
            qkv = lin(h, p + ".self_attn.qkv_proj", False)
            q, k, v = qkv[:, : nh * hd], qkv[:, nh * hd : (nh + nkv) * hd], qkv[:, (nh + nkv) * hd :]
        else:
            q = lin(h, p + ".self_attn.q_proj", qkv_bias)
            k = lin(h, p + ".self_attn.k_proj", qkv_bias)
            v = lin(h, p + ".self_attn.v_proj", qkv_bias)
        q, k, v = q.reshape(T, nh, hd), k.reshape(T, nkv, hd), v.reshape(T, nkv, hd)
        if c["model_type"] == "qwen3":  # Qwen3Attention: q_norm(q_proj(h).view(..., hd)) before RoPE
            q = rms_heads(q, W[p + ".self_attn.q_norm.weight"])
            k = rms_heads(k, W[p + ".self_attn.k_norm.weight"])
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        q4, k4, v4 = (t.reshape(rows, length, -1, hd) for t in (q, k, v))
        k4 = k4.repeat_interleave(nh // nkv, dim=2)
        v4 = v4.repeat_interleave(nh // nkv, dim=2)
        s = torch.einsum("bihd,bjhd->bhij", q4, k4) / math.sqrt(hd)
        s = s.masked_fill(~allowed, float("-inf")).masked_fill(~has_key, 0.0)
        pr = torch.where(has_key, torch.softmax(s, -1), torch.zeros_like(s))
        att = torch.einsum("bhij,bjhd->bihd", pr, v4).reshape(T, nh * hd)
        x = x + lin(att, p + ".self_attn.o_proj", o_bias)
        h2 = rms(x, W[p + ".post_attention_layernorm.weight"])
        if c["model_type"] == "phi3":  # Phi3MLP: gate, up = gate_up_proj(h).chunk(2, dim=-1)
            gate, up = lin(h2, p + ".mlp.gate_up_proj", False).chunk(2, dim=-1)
        else:
            gate, up = lin(h2, p + ".mlp.gate_proj", False), lin(h2, p + ".mlp.up_proj", False)
        x = x + lin(torch.nn.functional.silu(gate) * up, p + ".mlp.down_proj", False)
    x = rms(x, W["model.norm.weight"])
    head = W["model.embed_tokens.weight"] if c.get("tie_word_embeddings", False) else W["lm_head.weight"]
    return x @ head.t()


def run(model_dir, req_dir):
    c = json.load(open(os.path.join(model_dir, "config.json")))
    c.setdefault("num_key_value_heads", c["num_attention_heads"])
    W = {k: v.requires_grad_(True) for k, v in read_safetensors(os.path.join(model_dir, "model.safetensors")).items()}
    r = json.load(open(os.path.join(req_dir, "request.json")))
    load = lambda n, dt: torch.from_numpy(np.fromfile(os.path.join(req_dir, n + ".bin"), dtype=dt).copy())
    ids, pos, mask = load("input_ids", np.int32).long(), load("positions", np.int32).long(), load("attention_mask", np.int32)
    targets, segments, ref = load("targets", np.int32).long(), load("segments", np.int32).long(), load("ref", np.float32).double()
    logits = forward(c, W, ids, pos, mask, r["rows"], r["length"])
    valid = targets != -100
    logp = torch.log_softmax(logits, -1).gather(1, torch.where(valid, targets, 0)[:, None]).squeeze(1) * valid
    b = r["pairs"]
    seq = torch.zeros(2 * b, dtype=torch.float64).index_add(0, segments[segments >= 0], logp[segments >= 0])
    u = r["beta"] * ((seq[:b] - ref[:b]) - (seq[b:] - ref[b:]))
    loss = (-torch.nn.functional.logsigmoid(u) if r["loss_type"] == "sigmoid" else torch.relu(1 - u)).mean()
    loss.backward()
    if "optimizer" in r:  # one optimizer step after the backward, as torch.optim defines it
        o = r["optimizer"]
        params = list(W.values())
        if o.get("clip"):
            torch.nn.utils.clip_grad_norm_(params, o["clip"])
        if o["type"] == "rmsprop":
            opt = torch.optim.RMSprop(params, lr=o["lr"], alpha=o["alpha"], eps=o["eps"], weight_decay=o["weight_decay"])
        else:
            opt = torch.optim.AdamW(params, lr=o["lr"], betas=(o["beta1"], o["beta2"]), eps=o["eps"], weight_decay=o["weight_decay"])
        opt.step()
        os.makedirs(os.path.join(req_dir, "updated"), exist_ok=True)
        for name, t in W.items():
            t.detach().float().numpy().tofile(os.path.join(req_dir, "updated", name + ".bin"))
    logits.detach().float().numpy().tofile(os.path.join(req_dir, "logits.out.bin"))
    seq.detach().float().numpy().tofile(os.path.join(req_dir, "seq.out.bin"))
    json.dump({"loss": loss.item()}, open(os.path.join(req_dir, "loss.json"), "w"))
    os.makedirs(os.path.join(req_dir, "grad"), exist_ok=True)
    for name, t in W.items():
        t.grad.float().numpy().tofile(os.path.join(req_dir, "grad", name + ".bin"))


def greedy(model_dir, req_dir):
    """Greedy decoding by full recompute (no cache): request.json {prompts: [[ids]], max_new_tokens, eos_id};
    writes greedy.json [[ids]] (EOS not included)."""
    c = json.load(open(os.path.join(model_dir, "config.json")))
    c.setdefault("num_key_value_heads", c["num_attention_heads"])
    W = read_safetensors(os.path.join(model_dir, "model.safetensors"))
    r = json.load(open(os.path.join(req_dir, "request.json")))
    out = []
    with torch.no_grad():
        for p in r["prompts"]:
            seq, gen = list(p), []
            for _ in range(r["max_new_tokens"]):
                L = len(seq)
                logits = forward(c, W, torch.tensor(seq), torch.arange(L), torch.ones(L, dtype=torch.int32), 1, L)
                nxt = int(logits[-1].argmax())
                if nxt == r["eos_id"]:
                    break
                gen.append(nxt)
                seq.append(nxt)
            out.append(gen)
    json.dump(out, open(os.path.join(req_dir, "greedy.json"), "w"))


if __name__ == "__main__":
    torch.set_num_threads(1)
    if sys.argv[1] == "make":
        make(*sys.argv[2:6])
    elif sys.argv[1] == "greedy":
        greedy(sys.argv[2], sys.argv[3])
    else:
        run(sys.argv[2], sys.argv[3])
