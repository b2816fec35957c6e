"""A plain PyTorch Llama-family model (llama, mistral, qwen2, qwen3, phi3) and the SPIN loss: the independent oracle
of test/llama_torch.test.ts. Reads and writes Hugging Face directories (config.json + safetensors,
parsed here by hand: no transformers or safetensors package is needed).

  make:   llama_torch.py make DIR CONFIG_JSON SEED DTYPE      writes DIR/config.json + model.safetensors
  run:    llama_torch.py run MODEL_DIR REQUEST_DIR             reads request.json + arrays, writes results
  ropetable: llama_torch.py ropetable CONFIGS_JSON             prints each config's rope inv_freq and attention factor

request.json: {rows, length, beta, loss_type, pairs}; int32 arrays input_ids, positions, attention_mask,
targets (-100 = none), segments (-1 = none; real answer of pair i -> i, generated -> pairs + i) and f32
ref [2 * pairs]. Writes (f32, raw) logits [T, V], seq [2 * pairs], loss.json, and grad/<name>.bin for
every parameter (gradient of the mean SPIN loss). Computes in float64 from the stored (f32 or bf16) weights.
Family differences, as in transformers' modeling files: qwen3 applies q_norm / k_norm (RMSNorm over each
head's head_dim values) after the projections and before RoPE (modeling_qwen3.py Qwen3Attention); phi3
stores q/k/v as one qkv_proj (rows: q, then k, then v) and gate/up as one gate_up_proj (gate first:
`gate, up = chunk(2)`, modeling_phi3.py Phi3Attention / Phi3MLP); gradients are of the stored tensors.
gemma2 and gemma3_text: names, init and forward from gemma_torch.py (same commands and request); a request
may set embed_scale_dtype ("bf16", "f32", "f64") for the rounding of Gemma's sqrt(hidden_size) normalizer
(default: the checkpoint's torch_dtype, as HF rounds it to the model's dtype).
"""
import json
import math
import os
import struct
import sys

import numpy as np
import torch

import gemma_torch

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
    if c["model_type"] in gemma_torch.GEMMA:
        return gemma_torch.names_and_shapes(c)
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
        if name.endswith("norm.weight"):  # Gemma's norms scale by (1 + w): w around 0
            t = (0 if c["model_type"] in gemma_torch.GEMMA else 1) + 0.1 * torch.randn(shape, generator=g)
        elif name.endswith(".bias"):
            t = 0.1 * torch.randn(shape, generator=g)
        else:
            t = 0.2 * torch.randn(shape, generator=g)
        tensors[name] = (t, "BF16" if dtype == "bf16" else "F32")
    write_safetensors(os.path.join(dir_, "model.safetensors"), tensors)
    c = dict(c, torch_dtype="bfloat16" if dtype == "bf16" else "float32")
    json.dump(c, open(os.path.join(dir_, "config.json"), "w"), indent=2)


def rope_params(c, hd):
    """inv_freq (fp32 [hd / 2]) and the attention scaling of the config's rope type, written from
    transformers' modeling_rope_utils.py (_compute_*_parameters, transformers 5 semantics: yarn and
    longrope take `factor` when given, else max_position_embeddings / original_max_position_embeddings)."""
    rp = c.get("rope_parameters") or {}
    theta = c.get("rope_theta", rp.get("rope_theta", 10000.0))
    s = c.get("rope_scaling") or (rp if rp.get("rope_type", rp.get("type")) else {})
    typ = s.get("rope_type", s.get("type", "default"))
    dim, mp = hd, c["max_position_embeddings"]
    orig = s.get("original_max_position_embeddings") or c.get("original_max_position_embeddings") or mp
    pos_freqs = theta ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim)
    inv_freq = 1.0 / pos_freqs
    attention_factor = 1.0
    if typ in ("default", "dynamic"):  # dynamic: = default for every sequence within max_position_embeddings
        pass
    elif typ == "linear":
        inv_freq = inv_freq / s["factor"]
    elif typ == "llama3":
        factor, lff, hff = s["factor"], s["low_freq_factor"], s["high_freq_factor"]
        old = s["original_max_position_embeddings"]
        low_freq_wavelen, high_freq_wavelen = old / lff, old / hff
        wavelen = 2 * math.pi / inv_freq
        inv_freq_llama = torch.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
        smooth_factor = (old / wavelen - lff) / (hff - lff)
        smoothed_inv_freq = (1 - smooth_factor) * inv_freq_llama / factor + smooth_factor * inv_freq_llama
        is_medium_freq = ~(wavelen < high_freq_wavelen) * ~(wavelen > low_freq_wavelen)
        inv_freq = torch.where(is_medium_freq, smoothed_inv_freq, inv_freq_llama)
    elif typ == "yarn":
        factor = s.get("factor") or mp / orig
        attention_factor = s.get("attention_factor")

        def get_mscale(scale, mscale=1):
            return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0

        if attention_factor is None:
            ms, msa = s.get("mscale"), s.get("mscale_all_dim")
            attention_factor = float(get_mscale(factor, ms) / get_mscale(factor, msa)) if ms and msa else get_mscale(factor)
        beta_fast, beta_slow = s.get("beta_fast") or 32, s.get("beta_slow") or 1

        def find_correction_dim(num_rotations):
            return (dim * math.log(orig / (num_rotations * 2 * math.pi))) / (2 * math.log(theta))

        low, high = find_correction_dim(beta_fast), find_correction_dim(beta_slow)
        if s.get("truncate", True):
            low, high = math.floor(low), math.ceil(high)
        low, high = max(low, 0), min(high, dim - 1)
        if low == high:
            high += 0.001
        ramp = torch.clamp((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low), 0, 1)
        extra = 1 - ramp
        inv_freq = (1.0 / (factor * pos_freqs)) * (1 - extra) + (1.0 / pos_freqs) * extra
    elif typ in ("longrope", "su"):
        factor = s.get("factor") or mp / orig
        attention_factor = s.get("attention_factor")
        if attention_factor is None:
            attention_factor = 1.0 if factor <= 1.0 else math.sqrt(1 + math.log(factor) / math.log(orig))
        ext = torch.tensor(s["short_factor"], dtype=torch.float32)  # sequences within orig: short factors
        inv_freq = 1.0 / (ext * pos_freqs)
    else:
        raise ValueError(f"rope type {typ}")
    return inv_freq, attention_factor


def rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


def forward(c, W, ids, pos, mask, rows, length, scale_dtype=None):
    if c["model_type"] in gemma_torch.GEMMA:
        return gemma_torch.forward(c, W, ids, pos, mask, rows, length, scale_dtype)
    H, nh, nkv = c["hidden_size"], c["num_attention_heads"], c["num_key_value_heads"]
    hd = c.get("head_dim") or H // nh
    eps = c["rms_norm_eps"]
    qkv_bias, o_bias = biases(c)

    def rms(x, w):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w

    def lin(x, name, bias):
        y = x @ W[name + ".weight"].t()
        return y + W[name + ".bias"] if bias else y

    def rms_heads(x, w):  # qwen3's q_norm / k_norm: RMSNorm over the last (head_dim) axis
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w

    # Hugging Face's rotary embedding: fp32 inv_freq of the rope type, fp32 angles, cos and sin times
    # the attention scaling (yarn, longrope)
    inv_freq, attention_factor = rope_params(c, hd)
    freqs = pos.float()[:, None] * inv_freq[None, :]
    emb = torch.cat((freqs, freqs), dim=-1)
    cos, sin = emb.cos().double()[:, None, :] * attention_factor, emb.sin().double()[:, None, :] * attention_factor
    T = rows * length
    x = W["model.embed_tokens.weight"][ids]
    keymask = mask.reshape(rows, length).bool()
    causal = torch.ones(length, length, dtype=torch.bool).tril()
    # Hugging Face's sliding window (masking_utils.sliding_window_overlay: kv_idx > q_idx - sliding_window,
    # on indices in the sequence): mistral and phi3 on every layer (create_sliding_window_causal_mask
    # whenever sliding_window is set); qwen2 / qwen3 with use_sliding_window on the layers
    # i >= max_window_layers (their configs' layer_types); llama never
    window = c.get("sliding_window")
    idx = torch.arange(length)
    in_window = (idx[:, None] - idx[None, :]) < (window or 0)

    def allowed_at(i):
        mt = c["model_type"]
        qwen = mt in ("qwen2", "qwen3") and c.get("use_sliding_window", False) and i >= c.get("max_window_layers", 28)
        sliding = window is not None and (mt in ("mistral", "phi3") or qwen)
        a = (causal & in_window if sliding else causal)[None, None] & keymask[:, None, None, :]
        return a, a.any(-1, keepdim=True)

    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}"
        allowed, has_key = allowed_at(i)
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


def load_config(model_dir):
    c = json.load(open(os.path.join(model_dir, "config.json")))
    if c["model_type"] not in gemma_torch.GEMMA:  # Gemma's default is 4 (gemma_torch.dims)
        c.setdefault("num_key_value_heads", c["num_attention_heads"])
    return c


def spin_loss(c, W, r, req_dir):
    """The request's batch through forward(c, W): logits [T, V], S(theta, y) of each sequence, the mean SPIN loss."""
    load = lambda n, dt: torch.from_numpy(np.fromfile(os.path.join(req_dir, n + ".bin"), dtype=dt).copy())
    ids, pos, mask = load("input_ids", np.int32).long(), load("positions", np.int32).long(), load("attention_mask", np.int32)
    targets, segments, ref = load("targets", np.int32).long(), load("segments", np.int32).long(), load("ref", np.float32).double()
    logits = forward(c, W, ids, pos, mask, r["rows"], r["length"], r.get("embed_scale_dtype"))
    valid = targets != -100
    logp = torch.log_softmax(logits, -1).gather(1, torch.where(valid, targets, 0)[:, None]).squeeze(1) * valid
    b = r["pairs"]
    seq = torch.zeros(2 * b, dtype=torch.float64).index_add(0, segments[segments >= 0], logp[segments >= 0])
    u = r["beta"] * ((seq[:b] - ref[:b]) - (seq[b:] - ref[b:]))
    loss = (-torch.nn.functional.logsigmoid(u) if r["loss_type"] == "sigmoid" else torch.relu(1 - u)).mean()
    return logits, seq, loss


def run(model_dir, req_dir):
    c = load_config(model_dir)
    W = {k: v.requires_grad_(True) for k, v in read_safetensors(os.path.join(model_dir, "model.safetensors")).items()}
    r = json.load(open(os.path.join(req_dir, "request.json")))
    logits, seq, loss = spin_loss(c, W, r, req_dir)
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
    if c["model_type"] not in gemma_torch.GEMMA:  # Gemma's default is 4 (gemma_torch.dims)
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
    elif sys.argv[1] == "ropetable":  # ropetable CONFIGS_JSON: prints [{bits: fp32 inv_freq bits, attention_factor}]
        tables = []
        for c in json.loads(sys.argv[2]):
            inv, attn = rope_params(c, c.get("head_dim") or c["hidden_size"] // c["num_attention_heads"])
            tables.append({"bits": inv.float().numpy().view(np.uint32).tolist(), "attention_factor": attn})
        print(json.dumps(tables))
    else:
        run(sys.argv[2], sys.argv[3])
