#!/usr/bin/env python3
"""Golden logits, loss and gradients for a tiny random Llama, computed by an
independent PyTorch implementation written from HF transformers'
modeling_llama.py (LlamaRMSNorm, rotate_half/apply_rotary_pos_emb,
_compute_llama3_parameters, repeat_kv, eager attention, LlamaMLP, the shifted
cross-entropy of LlamaForCausalLM), in float64 with torch autograd.

Writes testdata/golden/tiny_llama/ : config.json, model.safetensors (float32
weights) and golden.safetensors (input_ids, position_ids, doc_start, labels,
logits, loss, grad.<param name> for every parameter).

Run: /usr/bin/python3 tools/golden/llama_ref.py   (Debian python3-torch;
transformers itself is not needed). On the GPU machine the same directory can
be re-checked against transformers.LlamaForCausalLM with check_transformers.py.
"""
import json, math, os, struct, sys
import torch

torch.manual_seed(1234)
OUT = os.path.join(os.path.dirname(__file__), "..", "..", "testdata", "golden", "tiny_llama")
os.makedirs(OUT, exist_ok=True)

cfg = dict(architectures=["LlamaForCausalLM"], model_type="llama", vocab_size=61, hidden_size=32,
           intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
           max_position_embeddings=256, rms_norm_eps=1e-5, rope_theta=500000.0,
           rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                             original_max_position_embeddings=16),
           hidden_act="silu", tie_word_embeddings=False, attention_bias=False, mlp_bias=False,
           initializer_range=0.02, torch_dtype="float32", bos_token_id=1, eos_token_id=2)
H, I, V, L = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"], cfg["num_hidden_layers"]
NH, NKV = cfg["num_attention_heads"], cfg["num_key_value_heads"]
HD = H // NH

names, shapes = [], {}
def add(n, *s):
    names.append(n); shapes[n] = s
add("model.embed_tokens.weight", V, H)
for l in range(L):
    p = f"model.layers.{l}."
    add(p + "self_attn.q_proj.weight", NH * HD, H)
    add(p + "self_attn.k_proj.weight", NKV * HD, H)
    add(p + "self_attn.v_proj.weight", NKV * HD, H)
    add(p + "self_attn.o_proj.weight", H, NH * HD)
    add(p + "mlp.gate_proj.weight", I, H)
    add(p + "mlp.up_proj.weight", I, H)
    add(p + "mlp.down_proj.weight", H, I)
    add(p + "input_layernorm.weight", H)
    add(p + "post_attention_layernorm.weight", H)
add("model.norm.weight", H)
add("lm_head.weight", V, H)

params = {}
for n in names:
    s = shapes[n]
    if len(s) == 1:
        w = 1 + 0.1 * torch.randn(*s)          # non-trivial norms
    else:
        w = 0.15 * torch.randn(*s)              # larger than 0.02 so gradients are sizeable
    params[n] = w.float().double().requires_grad_(True)  # round to f32 first: Go reads f32

def inv_freq():
    base = cfg["rope_theta"]
    f = 1.0 / (base ** (torch.arange(0, HD, 2, dtype=torch.int64).double() / HD))
    rs = cfg["rope_scaling"]
    old = rs["original_max_position_embeddings"]
    low_wl, high_wl = old / rs["low_freq_factor"], old / rs["high_freq_factor"]
    wl = 2 * math.pi / f
    scaled = torch.where(wl > low_wl, f / rs["factor"], f)
    smooth = (old / wl - rs["low_freq_factor"]) / (rs["high_freq_factor"] - rs["low_freq_factor"])
    smoothed = (1 - smooth) * scaled / rs["factor"] + smooth * scaled
    medium = ~(wl < high_wl) * ~(wl > low_wl)
    return torch.where(medium, smoothed, scaled)

def rotate_half(x):
    x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2 :]
    return torch.cat((-x2, x1), dim=-1)

def rms(x, w):
    var = x.pow(2).mean(-1, keepdim=True)
    return w * (x * torch.rsqrt(var + cfg["rms_norm_eps"]))

# Batch: 2 rows of 10; row 0 packs documents [0,4) [4,7) [7,10); row 1 is one document.
B, T = 2, 10
input_ids = torch.randint(0, V, (B, T))
doc_start = torch.tensor([[0, 0, 0, 0, 4, 4, 4, 7, 7, 7], [0] * 10])
position_ids = torch.arange(T).unsqueeze(0) - doc_start
labels = input_ids.clone()
labels[0, 2] = -100
labels[1, 5] = -100

def forward(P):
    x = P["model.embed_tokens.weight"][input_ids]               # [B,T,H]
    f = inv_freq()
    ang = position_ids.double().unsqueeze(-1) * f                # [B,T,HD/2]
    emb = torch.cat((ang, ang), dim=-1)
    cos, sin = emb.cos().unsqueeze(1), emb.sin().unsqueeze(1)    # [B,1,T,HD]
    i = torch.arange(T)
    allowed = (i.view(1, T, 1) >= i.view(1, 1, T)) & (i.view(1, 1, T) >= doc_start.view(B, T, 1))
    mask = torch.zeros(B, 1, T, T, dtype=torch.float64).masked_fill(~allowed.unsqueeze(1), float("-inf"))
    for l in range(L):
        p = f"model.layers.{l}."
        h = rms(x, P[p + "input_layernorm.weight"])
        q = (h @ P[p + "self_attn.q_proj.weight"].T).view(B, T, NH, HD).transpose(1, 2)
        k = (h @ P[p + "self_attn.k_proj.weight"].T).view(B, T, NKV, HD).transpose(1, 2)
        v = (h @ P[p + "self_attn.v_proj.weight"].T).view(B, T, NKV, HD).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        k = k.repeat_interleave(NH // NKV, dim=1)                # repeat_kv
        v = v.repeat_interleave(NH // NKV, dim=1)
        att = (q @ k.transpose(2, 3)) / math.sqrt(HD) + mask
        att = torch.softmax(att, dim=-1)
        a = (att @ v).transpose(1, 2).reshape(B, T, NH * HD)
        x = x + a @ P[p + "self_attn.o_proj.weight"].T
        h = rms(x, P[p + "post_attention_layernorm.weight"])
        g = h @ P[p + "mlp.gate_proj.weight"].T
        u = h @ P[p + "mlp.up_proj.weight"].T
        x = x + (torch.nn.functional.silu(g) * u) @ P[p + "mlp.down_proj.weight"].T
    x = rms(x, P["model.norm.weight"])
    return x @ P["lm_head.weight"].T

logits = forward(params)
# LlamaForCausalLM's loss: shift, ignore -100; packed documents also never
# predict across a boundary (the first token of a document is not a target of
# the previous document's last token).
tgt = labels[:, 1:].clone()
cross = doc_start[:, 1:] != doc_start[:, :-1]
tgt[cross] = -100
loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, V), tgt.reshape(-1), ignore_index=-100)
loss.backward()

def write_safetensors(path, tensors):
    header, blobs, off = {}, [], 0
    for n, (dtype, arr) in tensors.items():
        if dtype == "F32":
            b = arr.detach().float().contiguous().numpy().tobytes()
        else:
            b = arr.to(torch.int32).contiguous().numpy().tobytes()
        header[n] = {"dtype": dtype, "shape": list(arr.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b); off += len(b)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h))); f.write(h)
        for b in blobs: f.write(b)

with open(os.path.join(OUT, "config.json"), "w") as f:
    json.dump(cfg, f, indent=2)
write_safetensors(os.path.join(OUT, "model.safetensors"), {n: ("F32", params[n]) for n in names})
g = {"input_ids": ("I32", input_ids), "position_ids": ("I32", position_ids), "doc_start": ("I32", doc_start),
     "labels": ("I32", labels), "logits": ("F32", logits), "loss": ("F32", loss.reshape(1))}
for n in names:
    g["grad." + n] = ("F32", params[n].grad)
write_safetensors(os.path.join(OUT, "golden.safetensors"), g)
print("loss", loss.item(), "->", OUT)
