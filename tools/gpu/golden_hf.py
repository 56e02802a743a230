#!/usr/bin/env python3
"""Golden logits, loss and LoRA gradients from transformers + peft themselves, for the tiny model
of testdata/golden/tiny_llama (2 layers, hidden 32, GQA 4/2, llama3 rope scaling).

LoRA r 4, alpha 8, dropout 0 on q,k,v,o,gate,up,down. A and B are set to seeded random values
(B non-zero, so that A gets a gradient too), written next to the results, and llamatune's test
(model/llama TestGoldenPEFT) loads the same values. Batch: 2 rows of 10 tokens, one document
each (plain causal attention), labels = input_ids with two positions -100; HF's shifted mean CE.

Two files in --out (default testdata/golden/tiny_llama_peft):
  golden_f32.safetensors   model in float32 on the CPU, eager attention
  golden_bf16.safetensors  model in bfloat16 (torch_dtype), adapters in float32 (peft's default
                           autocast), sdpa on CUDA when there is a GPU, else the CPU
Each holds input_ids, labels (I32), logits, loss, lora_A.<module>, lora_B.<module>,
grad.lora_A.<module>, grad.lora_B.<module> (F32); meta.json says which versions made them.

--impl torch: the plain-torch Llama of e2e_hf.py instead of transformers + peft (for --dry-run
where they are not installed; its output is for exercising the pipeline, not for committing).
"""
import argparse, json, os, struct, sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from e2e_hf import TARGETS, TorchLlamaLoRA, have_hf  # noqa: E402

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
R, ALPHA = 4, 8.0


def write_safetensors(path, tensors):
    header, blobs, off = {}, [], 0
    for n, (dtype, arr) in tensors.items():
        arr = arr.detach().cpu()
        b = (arr.float() if dtype == "F32" else arr.to(torch.int32)).contiguous().numpy().tobytes()
        header[n] = {"dtype": dtype, "shape": list(arr.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b); off += len(b)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h))); f.write(h)
        for b in blobs:
            f.write(b)


def modules(cfg):
    out = []
    for l in range(cfg["num_hidden_layers"]):
        for t in TARGETS:
            out.append(f"model.layers.{l}.{'self_attn' if t[0] in 'qkvo' else 'mlp'}.{t}")
    return out


def inputs(cfg):
    g = torch.Generator().manual_seed(4321)
    ids = torch.randint(0, cfg["vocab_size"], (2, 10), generator=g)
    labels = ids.clone()
    labels[0, 3] = -100
    labels[1, 6] = -100
    return ids, labels


def adapters(cfg):
    g = torch.Generator().manual_seed(8765)
    H = cfg["hidden_size"]; NH = cfg["num_attention_heads"]; NKV = cfg["num_key_value_heads"]
    HD = cfg.get("head_dim") or H // NH
    I = cfg["intermediate_size"]
    dims = dict(q_proj=(NH * HD, H), k_proj=(NKV * HD, H), v_proj=(NKV * HD, H), o_proj=(H, NH * HD),
                gate_proj=(I, H), up_proj=(I, H), down_proj=(H, I))
    ab = {}
    for m in modules(cfg):
        out_f, in_f = dims[m.rsplit(".", 1)[1]]
        ab[m] = (0.2 * torch.randn(R, in_f, generator=g), 0.2 * torch.randn(out_f, R, generator=g))
    return ab


def run_hf(model_dir, dtype, device, ids, labels, ab):
    from transformers import AutoModelForCausalLM
    from peft import LoraConfig, get_peft_model
    attn = "sdpa" if device == "cuda" else "eager"
    model = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=dtype, attn_implementation=attn).to(device)
    model = get_peft_model(model, LoraConfig(r=R, lora_alpha=ALPHA, lora_dropout=0.0, target_modules=TARGETS, task_type="CAUSAL_LM"))
    params = {}
    for name, mod in model.named_modules():
        if hasattr(mod, "lora_A") and "default" in getattr(mod, "lora_A", {}):
            key = name.split("base_model.model.", 1)[1]
            A, B = ab[key]
            with torch.no_grad():
                mod.lora_A["default"].weight.copy_(A)
                mod.lora_B["default"].weight.copy_(B)
            params[key] = (mod.lora_A["default"].weight, mod.lora_B["default"].weight)
    if set(params) != set(ab):
        sys.exit(f"golden_hf: peft adapted {sorted(params)[:3]}..., expected {sorted(ab)[:3]}...")
    model.train()
    out = model(input_ids=ids.to(device), labels=labels.to(device), use_cache=False)
    out.loss.backward()
    grads = {k: (A.grad, B.grad) for k, (A, B) in params.items()}
    return out.logits.float(), out.loss.float(), grads, attn


def run_torch(model_dir, dtype, ids, labels, ab):
    m = TorchLlamaLoRA(model_dir, R, ALPHA, 0, dtype)
    m.lora = {k: (A.clone().requires_grad_(True), B.clone().requires_grad_(True)) for k, (A, B) in ab.items()}
    loss, logits = m.loss(ids, labels, return_logits=True)
    loss.backward()
    return logits, loss, {k: (A.grad, B.grad) for k, (A, B) in m.lora.items()}, "eager (plain torch)"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=os.path.join(ROOT, "testdata", "golden", "tiny_llama"))
    ap.add_argument("--out", default=os.path.join(ROOT, "testdata", "golden", "tiny_llama_peft"))
    ap.add_argument("--impl", choices=["auto", "hf", "torch"], default="auto")
    ap.add_argument("--dtypes", default="f32,bf16")
    a = ap.parse_args()
    impl = a.impl if a.impl != "auto" else ("hf" if have_hf() else "torch")
    if impl == "hf" and not have_hf():
        sys.exit("golden_hf: --impl hf needs transformers and peft")
    cfg = json.load(open(os.path.join(a.model, "config.json")))
    ids, labels = inputs(cfg)
    ab = adapters(cfg)
    os.makedirs(a.out, exist_ok=True)
    meta = dict(impl=impl, torch=torch.__version__, model=os.path.relpath(a.model, ROOT), r=R, alpha=ALPHA,
                targets=TARGETS, files={})
    if impl == "hf":
        import transformers, peft
        meta.update(transformers=transformers.__version__, peft=peft.__version__)
    for name in a.dtypes.split(","):
        dtype = {"f32": torch.float32, "bf16": torch.bfloat16}[name]
        device = "cuda" if name == "bf16" and torch.cuda.is_available() else "cpu"
        torch.manual_seed(0)
        if impl == "hf":
            logits, loss, grads, attn = run_hf(a.model, dtype, device, ids, labels, ab)
        else:
            logits, loss, grads, attn = run_torch(a.model, dtype, ids, labels, ab)
        t = {"input_ids": ("I32", ids), "labels": ("I32", labels), "logits": ("F32", logits), "loss": ("F32", loss.reshape(1))}
        for k, (A, B) in ab.items():
            t["lora_A." + k] = ("F32", A)
            t["lora_B." + k] = ("F32", B)
            gA, gB = grads[k]
            if gA is None or gB is None:
                sys.exit(f"golden_hf: no gradient for {k}")
            t["grad.lora_A." + k] = ("F32", gA)
            t["grad.lora_B." + k] = ("F32", gB)
        fn = f"golden_{name}.safetensors"
        write_safetensors(os.path.join(a.out, fn), t)
        meta["files"][fn] = dict(dtype=name, device=device, attn=attn, loss=loss.item())
        print(f"{impl} {name} on {device}: loss {loss.item():.6f} -> {os.path.join(a.out, fn)}")
    with open(os.path.join(a.out, "meta.json"), "w") as f:
        json.dump(meta, f, indent=2)


if __name__ == "__main__":
    main()
