#!/usr/bin/env python3
"""End-to-end LoRA training comparison: transformers + peft on the same model directory and the
same batches as `llamatune train tools/gpu/e2e_job.yaml`.

Subcommands
  data     write DATA.jsonl: --rows rows of exactly --seq random token ids ({"input_ids": [...]}),
           seeded. Both sides read this file in order: llamatune as a `type: tokenized` JSONL
           data set (one document per row fills a row exactly: no packing across documents, no
           padding, position ids 0..seq-1, plain causal attention), this script row by row.
           That is the simplest honest comparison: no side needs packed-document masks.
  train    LoRA r16 alpha 32, dropout 0, on q,k,v,o,gate,up,down; AdamW (betas 0.9/0.999,
           eps 1e-8, wd 0), constant lr, global-norm clipping 1.0; micro-batch --batch rows,
           labels = input_ids (the model shifts). Writes JSON: per-step loss, step seconds,
           tokens/s (mean over steps after the first), peak CUDA memory (allocated and reserved).
           --impl hf: transformers AutoModelForCausalLM (bf16, attn_implementation=sdpa, gradient
           checkpointing, use_reentrant=False) + peft get_peft_model (adapters kept in f32, peft's
           default). --impl torch: a plain-torch Llama of the same math (f32, no checkpointing),
           for --dry-run on a CPU where transformers/peft are not installed.
           --impl auto: hf when transformers and peft import, else torch (the JSON says which).
  compare  put llamatune's metrics.jsonl and this script's JSON side by side: e2e.json with
           per-step losses, |difference|, tokens/s and peak memory of both, and verdicts.

Step 1 is the base model's loss on the first batch (LoRA B starts at zero on both sides), so it
must agree within bf16 tolerance; later steps depend on the random LoRA A initialisation, which
differs between the two programs, so they are compared with a looser tolerance.
"""
import argparse, json, math, os, struct, sys, time

import torch
import torch.nn.functional as F

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


# ---------------------------------------------------------------- data

def cmd_data(a):
    cfg = json.load(open(os.path.join(a.model, "config.json")))
    V = cfg["vocab_size"]
    g = torch.Generator().manual_seed(a.seed)
    # Avoid the Llama 3 special-token range (ids >= 128000) so that nothing special happens.
    hi = min(V, 128000)
    with open(a.out, "w") as f:
        for _ in range(a.rows):
            ids = torch.randint(0, hi, (a.seq,), generator=g).tolist()
            f.write(json.dumps({"input_ids": ids}) + "\n")
    print(f"wrote {a.rows} rows of {a.seq} tokens (vocab {V}) to {a.out}")


def read_rows(path):
    rows = []
    with open(path) as f:
        for i, line in enumerate(f):
            if line.strip():
                r = json.loads(line)
                if "input_ids" not in r:
                    sys.exit(f"e2e_hf: {path}:{i+1}: no input_ids")
                rows.append(r["input_ids"])
    if not rows:
        sys.exit(f"e2e_hf: {path}: no rows")
    return rows


# ---------------------------------------------------------------- plain-torch Llama (fallback)

def read_safetensors(path):
    """Reads F32/BF16/F16 tensors without the safetensors package."""
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        base = 8 + n
        out = {}
        for name, info in header.items():
            if name == "__metadata__":
                continue
            s, e = info["data_offsets"]
            f.seek(base + s)
            buf = bytearray(f.read(e - s))
            dt = info["dtype"]
            if dt == "F32":
                t = torch.frombuffer(buf, dtype=torch.float32)
            elif dt == "BF16":
                t = torch.frombuffer(buf, dtype=torch.int16).to(torch.int32).bitwise_and(0xFFFF).bitwise_left_shift(16).view(torch.float32)
            elif dt == "F16":
                t = torch.frombuffer(buf, dtype=torch.float16).float()
            else:
                raise ValueError(f"{path}: {name}: dtype {dt} not supported")
            out[name] = t.reshape(info["shape"]).clone()
        return out


def load_weights(d):
    idx = os.path.join(d, "model.safetensors.index.json")
    if os.path.exists(idx):
        files = sorted(set(json.load(open(idx))["weight_map"].values()))
    else:
        files = ["model.safetensors"]
    w = {}
    for fn in files:
        w.update(read_safetensors(os.path.join(d, fn)))
    return w


def llama3_inv_freq(cfg, hd):
    f = 1.0 / (cfg.get("rope_theta", 10000.0) ** (torch.arange(0, hd, 2, dtype=torch.float64) / hd))
    rs = cfg.get("rope_scaling") or {}
    if rs.get("rope_type", rs.get("type")) != "llama3":
        return f
    old = rs["original_max_position_embeddings"]
    lo, hi, fac = rs["low_freq_factor"], rs["high_freq_factor"], rs["factor"]
    wl = 2 * math.pi / f
    scaled = torch.where(wl > old / lo, f / fac, f)
    smooth = (old / wl - lo) / (hi - lo)
    smoothed = (1 - smooth) * scaled / fac + smooth * scaled
    medium = ~(wl < old / hi) & ~(wl > old / lo)
    return torch.where(medium, smoothed, scaled)


class TorchLlamaLoRA:
    """HF Llama math (RMSNorm, rotate-half RoPE with llama3 scaling, GQA, SwiGLU, shifted CE)
    with LoRA on TARGETS: y = x Wᵀ + (alpha/r) · x Aᵀ Bᵀ, B = 0 at start, A kaiming-uniform as peft."""

    def __init__(self, d, r, alpha, seed, dtype):
        self.cfg = json.load(open(os.path.join(d, "config.json")))
        self.w = {k: v.to(dtype) for k, v in load_weights(d).items()}
        c = self.cfg
        self.H, self.NH, self.NKV = c["hidden_size"], c["num_attention_heads"], c["num_key_value_heads"]
        self.HD = c.get("head_dim") or self.H // self.NH
        self.scale = alpha / r
        self.dtype = dtype
        g = torch.Generator().manual_seed(seed)
        self.lora = {}
        for l in range(c["num_hidden_layers"]):
            for t in TARGETS:
                mod = "self_attn" if t.endswith("_proj") and t[0] in "qkvo" else "mlp"
                name = f"model.layers.{l}.{mod}.{t}"
                out_f, in_f = self.w[name + ".weight"].shape
                bound = 1 / math.sqrt(in_f)  # kaiming_uniform_(a=sqrt(5)) as nn.Linear / peft
                A = ((torch.rand(r, in_f, generator=g) * 2 - 1) * bound).requires_grad_(True)
                B = torch.zeros(out_f, r, requires_grad=True)
                self.lora[name] = (A, B)
        self.inv = llama3_inv_freq(c, self.HD)

    def params(self):
        return [p for ab in self.lora.values() for p in ab]

    def lin(self, x, name):
        y = x @ self.w[name + ".weight"].t()
        if name in self.lora:
            A, B = self.lora[name]
            y = y + self.scale * ((x.float() @ A.t()) @ B.t()).to(y.dtype)
        return y

    def rms(self, x, w):
        xf = x.float()
        return w * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.cfg["rms_norm_eps"])).to(x.dtype)

    def loss(self, ids, labels=None, return_logits=False):
        """Mean shifted cross-entropy as LlamaForCausalLM (labels default to ids; -100 ignored)."""
        c, w = self.cfg, self.w
        Bn, T = ids.shape
        x = w["model.embed_tokens.weight"][ids]
        ang = torch.arange(T, dtype=torch.float64)[:, None] * self.inv[None]
        emb = torch.cat((ang, ang), -1)
        cos, sin = emb.cos().to(self.dtype), emb.sin().to(self.dtype)

        def rope(t):
            t1, t2 = t[..., : self.HD // 2], t[..., self.HD // 2:]
            return t * cos + torch.cat((-t2, t1), -1) * sin
        mask = torch.ones(T, T, dtype=torch.bool).triu(1)
        for l in range(c["num_hidden_layers"]):
            p = f"model.layers.{l}."
            h = self.rms(x, w[p + "input_layernorm.weight"])
            q = rope(self.lin(h, p + "self_attn.q_proj").view(Bn, T, self.NH, self.HD).transpose(1, 2))
            k = rope(self.lin(h, p + "self_attn.k_proj").view(Bn, T, self.NKV, self.HD).transpose(1, 2))
            v = self.lin(h, p + "self_attn.v_proj").view(Bn, T, self.NKV, self.HD).transpose(1, 2)
            k = k.repeat_interleave(self.NH // self.NKV, 1)
            v = v.repeat_interleave(self.NH // self.NKV, 1)
            att = ((q @ k.transpose(2, 3)) / math.sqrt(self.HD)).float().masked_fill(mask, float("-inf"))
            o = (torch.softmax(att, -1).to(self.dtype) @ v).transpose(1, 2).reshape(Bn, T, self.NH * self.HD)
            x = x + self.lin(o, p + "self_attn.o_proj")
            h = self.rms(x, w[p + "post_attention_layernorm.weight"])
            x = x + self.lin(F.silu(self.lin(h, p + "mlp.gate_proj")) * self.lin(h, p + "mlp.up_proj"), p + "mlp.down_proj")
        x = self.rms(x, w["model.norm.weight"])
        head = w.get("lm_head.weight", w["model.embed_tokens.weight"])
        logits = (x @ head.t()).float()
        lab = ids if labels is None else labels
        loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), lab[:, 1:].reshape(-1), ignore_index=-100)
        return (loss, logits) if return_logits else loss


# ---------------------------------------------------------------- train

def have_hf():
    try:
        import transformers, peft  # noqa: F401
        return True
    except Exception:
        return False


def cmd_train(a):
    impl = a.impl
    if impl == "auto":
        impl = "hf" if have_hf() else "torch"
    if impl == "hf" and not have_hf():
        sys.exit("e2e_hf: --impl hf needs transformers and peft (pip install transformers peft)")
    dev = torch.device(a.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    torch.manual_seed(a.seed)
    rows = read_rows(a.data)
    need = a.steps * a.batch
    if len(rows) < need:
        sys.exit(f"e2e_hf: {a.data} has {len(rows)} rows; {a.steps} steps of {a.batch} need {need}")
    info = dict(impl=impl, device=str(dev), torch=torch.__version__, steps=a.steps, batch=a.batch, seq=len(rows[0]))
    if impl == "hf":
        import transformers, peft
        from transformers import AutoModelForCausalLM
        from peft import LoraConfig, get_peft_model
        info.update(transformers=transformers.__version__, peft=peft.__version__)
        dt = torch.bfloat16 if a.dtype == "bf16" else torch.float32
        model = AutoModelForCausalLM.from_pretrained(a.model, torch_dtype=dt, attn_implementation=a.attn).to(dev)
        if a.grad_ckpt:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            model.config.use_cache = False
        model = get_peft_model(model, LoraConfig(r=a.r, lora_alpha=a.alpha, lora_dropout=0.0, target_modules=TARGETS,
                                                 task_type="CAUSAL_LM"))
        model.train()
        params = [p for p in model.parameters() if p.requires_grad]
        info["adapter_dtype"] = str(params[0].dtype).replace("torch.", "")
        info.update(attn=a.attn, dtype=a.dtype, gradient_checkpointing=a.grad_ckpt)

        def loss_of(ids):
            return model(input_ids=ids, labels=ids, use_cache=False).loss
    else:
        dt = torch.float32 if dev.type == "cpu" or a.dtype == "f32" else torch.bfloat16
        m = TorchLlamaLoRA(a.model, a.r, a.alpha, a.seed, dt)
        if dev.type != "cpu":
            m.w = {k: v.to(dev) for k, v in m.w.items()}
            m.lora = {k: (A.detach().to(dev).requires_grad_(True), B.detach().to(dev).requires_grad_(True)) for k, (A, B) in m.lora.items()}
            m.inv = m.inv.to(dev)
        params = m.params()
        info.update(dtype=str(dt).replace("torch.", ""), note="plain-torch Llama + LoRA (transformers/peft not used)")
        loss_of = m.loss
    info["trainable_params"] = sum(p.numel() for p in params)
    opt = torch.optim.AdamW(params, lr=a.lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    if dev.type == "cuda":
        torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats()
    steps = []
    for s in range(a.steps):
        ids = torch.tensor(rows[s * a.batch:(s + 1) * a.batch], dtype=torch.long, device=dev)
        t0 = time.perf_counter()
        loss = loss_of(ids)
        loss.backward()
        gn = torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step(); opt.zero_grad(set_to_none=True)
        lv = loss.item()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        dtm = time.perf_counter() - t0
        steps.append(dict(step=s + 1, loss=lv, grad_norm=float(gn), sec=dtm, tokens_per_sec=ids.numel() / dtm))
        print(f"step {s+1} loss {lv:.5f} grad_norm {float(gn):.4f} {dtm:.3f}s", file=sys.stderr)
    timed = steps[1:] or steps
    info["tokens_per_sec"] = sum(x["tokens_per_sec"] for x in timed) / len(timed)
    if dev.type == "cuda":
        info["peak_allocated_mib"] = torch.cuda.max_memory_allocated() / 2**20
        info["peak_reserved_mib"] = torch.cuda.max_memory_reserved() / 2**20
        info["gpu"] = torch.cuda.get_device_name(0)
    info["steps_log"] = steps
    with open(a.out, "w") as f:
        json.dump(info, f, indent=2)
    print(f"{impl}: {info['tokens_per_sec']:.1f} tokens/s -> {a.out}")


# ---------------------------------------------------------------- compare

def cmd_compare(a):
    lt, errors = [], []
    try:
        with open(a.llamatune) as f:
            for line in f:
                r = json.loads(line)
                if "loss" in r and "step" in r and r.get("eval_loss") is None and not r.get("skipped"):
                    lt.append(r)
    except (OSError, ValueError) as e:
        errors.append(f"llamatune: {a.llamatune}: {e} (did llamatune train run? see its log)")
    try:
        hf = json.load(open(a.hf))
    except (OSError, ValueError) as e:
        errors.append(f"reference: {a.hf}: {e} (did e2e_hf.py train run? see its log)")
        hf = {}
    hs = hf.get("steps_log", [])
    n = min(len(lt), len(hs))
    rows, ok_first, ok_rest = [], None, True
    for i in range(n):
        d = abs(lt[i]["loss"] - hs[i]["loss"])
        rel = d / max(abs(hs[i]["loss"]), 1e-9)
        rows.append(dict(step=i + 1, llamatune=lt[i]["loss"], reference=hs[i]["loss"], abs_diff=d, rel_diff=rel))
        if i == 0:
            ok_first = rel <= a.tol_first
        elif rel > a.tol_rest:
            ok_rest = False
    lt_tps = [r["tokens_per_sec"] for r in lt[1:n]] or [r["tokens_per_sec"] for r in lt[:n]]
    out = dict(reference_impl=hf.get("impl"), steps=rows,
               first_step_agrees=ok_first, tol_first=a.tol_first, later_steps_agree=ok_rest, tol_rest=a.tol_rest,
               llamatune_tokens_per_sec=sum(lt_tps) / max(len(lt_tps), 1),
               reference_tokens_per_sec=hf.get("tokens_per_sec"),
               reference_peak_allocated_mib=hf.get("peak_allocated_mib"),
               reference_peak_reserved_mib=hf.get("peak_reserved_mib"))
    if out["reference_tokens_per_sec"]:
        out["speedup"] = out["llamatune_tokens_per_sec"] / out["reference_tokens_per_sec"]
    for side, path in (("llamatune", a.llamatune_smi), ("reference", a.hf_smi)):
        if path and os.path.exists(path):
            out[side + "_peak_gpu_mib_smi"] = smi_peak(path)
    if out.get("llamatune_peak_gpu_mib_smi") and out.get("reference_peak_gpu_mib_smi"):
        out["memory_ratio_smi"] = out["llamatune_peak_gpu_mib_smi"] / out["reference_peak_gpu_mib_smi"]
    if n == 0:
        errors.append("no steps to compare (did both sides run?)")
    if errors:
        out["errors"] = errors
        for e in errors:
            print("e2e_hf compare:", e, file=sys.stderr)
    with open(a.out, "w") as f:
        json.dump(out, f, indent=2)
    for r in rows:
        print(f"step {r['step']:3d}  llamatune {r['llamatune']:.5f}  {hf.get('impl')} {r['reference']:.5f}  rel {r['rel_diff']:.2e}")
    print(f"first step agrees (rel ≤ {a.tol_first}): {ok_first}; later steps (rel ≤ {a.tol_rest}): {ok_rest}")
    sys.exit(0 if ok_first and n > 0 else 1)


def smi_peak(path):
    """Peak of `nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms N` minus its
    first sample (the memory in use before the program started)."""
    vals = []
    for line in open(path):
        line = line.strip().split(",")[0].strip()
        if line.isdigit():
            vals.append(int(line))
    return (max(vals) - vals[0]) if vals else None


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("data")
    d.add_argument("--model", required=True)
    d.add_argument("--rows", type=int, default=16)
    d.add_argument("--seq", type=int, default=2048)
    d.add_argument("--seed", type=int, default=1234)
    d.add_argument("--out", required=True)
    t = sub.add_parser("train")
    t.add_argument("--model", required=True)
    t.add_argument("--data", required=True)
    t.add_argument("--impl", choices=["auto", "hf", "torch"], default="auto")
    t.add_argument("--device", default=None)
    t.add_argument("--dtype", choices=["bf16", "f32"], default="bf16")
    t.add_argument("--attn", default="sdpa")
    t.add_argument("--grad-ckpt", dest="grad_ckpt", action=argparse.BooleanOptionalAction, default=True)
    t.add_argument("--steps", type=int, default=10)
    t.add_argument("--batch", type=int, default=1)
    t.add_argument("--r", type=int, default=16)
    t.add_argument("--alpha", type=float, default=32)
    t.add_argument("--lr", type=float, default=2e-4)
    t.add_argument("--seed", type=int, default=42)
    t.add_argument("--out", required=True)
    c = sub.add_parser("compare")
    c.add_argument("--llamatune", required=True, help="the run's metrics.jsonl")
    c.add_argument("--hf", required=True, help="the JSON `train` wrote")
    c.add_argument("--llamatune-smi", dest="llamatune_smi")
    c.add_argument("--hf-smi", dest="hf_smi")
    c.add_argument("--tol-first", dest="tol_first", type=float, default=2e-2, help="relative, step 1 (bf16: ~8 bits of mantissa through 16 layers)")
    c.add_argument("--tol-rest", dest="tol_rest", type=float, default=5e-2)
    c.add_argument("--out", required=True)
    a = ap.parse_args()
    {"data": cmd_data, "train": cmd_train, "compare": cmd_compare}[a.cmd](a)


if __name__ == "__main__":
    main()
