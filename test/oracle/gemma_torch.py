"""Gemma 2 (model_type "gemma2") and Gemma 3's text model ("gemma3_text") in plain PyTorch, float64: the
forward that test/oracle/llama_torch.py runs for these model types (its make / run / greedy commands
dispatch here by model_type, so a Gemma test calls llama_torch.py exactly as the Llama-family tests do:
`make DIR CONFIG_JSON SEED DTYPE`, `run MODEL_DIR REQUEST_DIR` -> logits, per-sequence log-probs, the
SPIN loss and the gradient of every stored tensor).

Written from transformers' modeling_gemma2.py and modeling_gemma3.py; each step quotes the HF line it
follows ("HF:"). Computes in float64 from the stored weights, except where HF rounds a constant to the
model's dtype (the embedding normalizer), which is rounded here to the checkpoint's torch_dtype.
"""
import torch

GEMMA = ("gemma2", "gemma3_text")


def dims(c):
    H, nh = c["hidden_size"], c["num_attention_heads"]
    nkv = c.get("num_key_value_heads") or 4  # Gemma{2,3}Config: num_key_value_heads = 4
    hd = c.get("head_dim") or 256  # Gemma{2,3}Config: head_dim = 256
    return H, nh, nkv, hd


def names_and_shapes(c):
    """HF's parameter names (Gemma2DecoderLayer / Gemma3DecoderLayer; Gemma3Attention adds q_norm, k_norm
    of [head_dim]); the head is tied unless tie_word_embeddings is false (Gemma{2,3}Config default true)."""
    H, nh, nkv, hd = dims(c)
    I, V = c["intermediate_size"], c["vocab_size"]
    bias = c.get("attention_bias", False)
    out = [("model.embed_tokens.weight", [V, H])]
    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}"
        out += [(f"{p}.self_attn.q_proj.weight", [nh * hd, H]), (f"{p}.self_attn.k_proj.weight", [nkv * hd, H])]
        out += [(f"{p}.self_attn.v_proj.weight", [nkv * hd, H]), (f"{p}.self_attn.o_proj.weight", [H, nh * hd])]
        if bias:
            out += [(f"{p}.self_attn.{n}_proj.bias", [s]) for n, s in (("q", nh * hd), ("k", nkv * hd), ("v", nkv * hd), ("o", H))]
        if c["model_type"] == "gemma3_text":
            out += [(f"{p}.self_attn.q_norm.weight", [hd]), (f"{p}.self_attn.k_norm.weight", [hd])]
        out += [(f"{p}.mlp.gate_proj.weight", [I, H]), (f"{p}.mlp.up_proj.weight", [I, H]), (f"{p}.mlp.down_proj.weight", [H, I])]
        for n in ("input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm", "post_feedforward_layernorm"):
            out.append((f"{p}.{n}.weight", [H]))
    out.append(("model.norm.weight", [H]))
    if not c.get("tie_word_embeddings", True):
        out.append(("lm_head.weight", [V, H]))
    return out


def layer_types(c):
    """HF Gemma2Config: `"sliding_attention" if bool((i + 1) % 2) else "full_attention"`; Gemma3TextConfig the
    same with `self._sliding_window_pattern = kwargs.get("sliding_window_pattern", 6)`; layer_types wins."""
    if c.get("layer_types"):
        return list(c["layer_types"])
    pattern = 2 if c["model_type"] == "gemma2" else c.get("sliding_window_pattern", 6)
    return ["sliding_attention" if (i + 1) % pattern else "full_attention" for i in range(c["num_hidden_layers"])]


def rope_configs(c):
    """(global, local) configs for llama_torch.rope_params. Gemma 2: one RoPE (rope_theta, default 10000).
    Gemma 3, transformers 4.x: global = rope_theta (default 1e6) + rope_scaling; local = rope_local_base_freq
    (default 1e4) unscaled (HF Gemma3TextModel: `config.rope_theta = config.rope_local_base_freq;
    config.rope_scaling = {"rope_type": "default"}`). 5.x: rope_parameters = {"full_attention": {...},
    "sliding_attention": {...}} (Gemma3TextConfig.convert_rope_params_to_dict: a missing rope_theta comes
    from rope_theta / rope_local_base_freq)."""
    mp = c["max_position_embeddings"]
    if c["model_type"] == "gemma2":
        return c, c
    top_g, top_l = c.get("rope_theta", 1e6), c.get("rope_local_base_freq", 1e4)
    rp = c.get("rope_parameters")
    if rp:
        full, local = dict(rp.get("full_attention") or {}), dict(rp.get("sliding_attention") or {})
        g_theta, l_theta = full.pop("rope_theta", top_g), local.pop("rope_theta", top_l)
        scaled = full.get("rope_type", full.get("type", "default")) != "default"
        return {"rope_theta": g_theta, "rope_scaling": full if scaled else None, "max_position_embeddings": mp}, {
            "rope_theta": l_theta,
            "max_position_embeddings": mp,
        }
    return {"rope_theta": top_g, "rope_scaling": c.get("rope_scaling"), "max_position_embeddings": mp}, {
        "rope_theta": top_l,
        "max_position_embeddings": mp,
    }


def embed_scale(c, dtype):
    """HF Gemma2Model: `normalizer = torch.tensor(self.config.hidden_size**0.5, dtype=hidden_states.dtype)`;
    Gemma3TextScaledWordEmbedding: `* self.embed_scale.to(self.weight.dtype)`. dtype: "bf16", "f32" or "f64"."""
    td = {"bf16": torch.bfloat16, "f32": torch.float32, "f64": torch.float64}[dtype]
    return torch.tensor(c["hidden_size"] ** 0.5, dtype=td).double()


def forward(c, W, ids, pos, mask, rows, length, scale_dtype=None):
    """Logits [rows * length, V] in float64. ids, pos: [T] long; mask: [T] int (0 = padding key)."""
    from llama_torch import rope_params, rotate_half  # the same HF rotary code as the Llama families

    mt = c["model_type"]
    H, nh, nkv, hd = dims(c)
    eps = c["rms_norm_eps"]
    bias = c.get("attention_bias", False)
    d2 = {"gemma2": (30.0, 50.0), "gemma3_text": (None, None)}[mt]  # class defaults (final, attention)
    final_cap = c["final_logit_softcapping"] if "final_logit_softcapping" in c else d2[0]
    # HF Gemma2Attention passes `softcap=self.attn_logit_softcapping`; Gemma3Attention passes none
    attn_cap = (c["attn_logit_softcapping"] if "attn_logit_softcapping" in c else d2[1]) if mt == "gemma2" else None
    scaling = c.get("query_pre_attn_scalar", 256) ** -0.5  # HF: `self.scaling = config.query_pre_attn_scalar**-0.5`
    window = c.get("sliding_window", 4096)
    types = layer_types(c)
    if scale_dtype is None:
        scale_dtype = "bf16" if c.get("torch_dtype", c.get("dtype")) == "bfloat16" else "f32"

    def rms(x, w):
        # HF Gemma2RMSNorm / Gemma3RMSNorm: `output = self._norm(x.float())` with
        # `x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)`, then `output * (1.0 + self.weight.float())`
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * (1.0 + w)

    def lin(x, name):
        y = x @ W[name + ".weight"].t()
        return y + W[name + ".bias"] if bias else y

    def cos_sin(rc):  # HF Gemma*RotaryEmbedding.forward: fp32 inv_freq @ fp32 positions, cos / sin * attention_scaling
        inv_freq, attention_factor = rope_params(rc, hd)
        freqs = pos.float()[:, None] * inv_freq[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos().double()[:, None, :] * attention_factor, emb.sin().double()[:, None, :] * attention_factor

    g_rc, l_rc = rope_configs(c)
    rope_global, rope_local = cos_sin(g_rc), cos_sin(l_rc)
    T = rows * length
    # HF: `hidden_states = inputs_embeds * normalizer` (Gemma 2) / `super().forward(input_ids) * embed_scale` (Gemma 3)
    x = W["model.embed_tokens.weight"][ids] * embed_scale(c, scale_dtype)
    keymask = mask.reshape(rows, length).bool()
    idx = torch.arange(length)
    causal = idx[:, None] >= idx[None, :]
    # HF masking_utils.sliding_window_overlay: `kv_idx > q_idx - sliding_window` on sliding_attention layers
    in_window = (idx[:, None] - idx[None, :]) < window
    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}"
        sliding = types[i] == "sliding_attention"
        allowed = (causal & in_window if sliding else causal)[None, None] & keymask[:, None, None, :]
        has_key = allowed.any(-1, keepdim=True)
        # HF Gemma*DecoderLayer: `hidden_states = self.input_layernorm(hidden_states)`
        h = rms(x, W[p + ".input_layernorm.weight"])
        q = lin(h, p + ".self_attn.q_proj").reshape(T, nh, hd)
        k = lin(h, p + ".self_attn.k_proj").reshape(T, nkv, hd)
        v = lin(h, p + ".self_attn.v_proj").reshape(T, nkv, hd)
        if mt == "gemma3_text":  # HF Gemma3Attention: `query_states = self.q_norm(query_states)` (per head, before RoPE)
            q = rms(q, W[p + ".self_attn.q_norm.weight"])
            k = rms(k, W[p + ".self_attn.k_norm.weight"])
        # HF Gemma3DecoderLayer: `position_embeddings_local if self.self_attn.is_sliding else position_embeddings_global`
        cos, sin = rope_local if (sliding and mt == "gemma3_text") else rope_global
        q = q * cos + rotate_half(q) * sin  # HF apply_rotary_pos_emb: `(q * cos) + (rotate_half(q) * sin)`
        k = k * cos + rotate_half(k) * sin
        q4, k4, v4 = (t.reshape(rows, length, -1, hd) for t in (q, k, v))
        k4 = k4.repeat_interleave(nh // nkv, dim=2)  # HF repeat_kv
        v4 = v4.repeat_interleave(nh // nkv, dim=2)
        # HF eager_attention_forward: `attn_weights = torch.matmul(query, key_states.transpose(2, 3)) * scaling`
        s = torch.einsum("bihd,bjhd->bhij", q4, k4) * scaling
        if attn_cap is not None:  # HF: `attn_weights = attn_weights / softcap; tanh; * softcap` (before the mask)
            s = torch.tanh(s / attn_cap) * attn_cap
        s = s.masked_fill(~allowed, float("-inf")).masked_fill(~has_key, 0.0)
        pr = torch.where(has_key, torch.softmax(s, -1), torch.zeros_like(s))
        att = torch.einsum("bhij,bjhd->bihd", pr, v4).reshape(T, nh * hd)
        # HF: `hidden_states = self.post_attention_layernorm(hidden_states); hidden_states = residual + hidden_states`
        x = x + rms(lin(att, p + ".self_attn.o_proj"), W[p + ".post_attention_layernorm.weight"])
        # HF: `pre_feedforward_layernorm` -> mlp -> `post_feedforward_layernorm` -> residual add
        h2 = rms(x, W[p + ".pre_feedforward_layernorm.weight"])
        gate, up = h2 @ W[p + ".mlp.gate_proj.weight"].t(), h2 @ W[p + ".mlp.up_proj.weight"].t()
        # HF Gemma*MLP: `self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))`, act gelu_pytorch_tanh
        m = (torch.nn.functional.gelu(gate, approximate="tanh") * up) @ W[p + ".mlp.down_proj.weight"].t()
        x = x + rms(m, W[p + ".post_feedforward_layernorm.weight"])
    x = rms(x, W["model.norm.weight"])  # HF: `hidden_states = self.norm(hidden_states)`
    head = W["lm_head.weight"] if not c.get("tie_word_embeddings", True) else W["model.embed_tokens.weight"]
    logits = x @ head.t()
    if final_cap is not None:  # HF Gemma*ForCausalLM: `logits / final_logit_softcapping; tanh; * final_logit_softcapping`
        logits = torch.tanh(logits / final_cap) * final_cap
    return logits

