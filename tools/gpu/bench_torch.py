#!/usr/bin/env python3
"""Torch-eager twins of `llamatune bench kernels`, at the same shapes (tools/gpu/shapes.json).

Each benchmark times forward + backward, as the Go side does:
  rmsnorm    HF LlamaRMSNorm (f32 statistics), x [T, hidden] bf16, weight frozen
  rope       rotate-half RoPE on q [T, heads, head_dim] (cos/sin precomputed, as HF does)
  swiglu     silu(gate) * up on [T, intermediate]
  attention  torch SDPA (flash / mem-efficient on CUDA), causal, GQA (enable_gqa where torch
             has it, else repeat_interleave of k/v as HF's repeat_kv), [B, heads, seq, head_dim]
  linear_ce  logits = h @ W.T (bf16) then F.cross_entropy in f32 — torch's unfused path;
             lm_head frozen: gradient to h only
  linear_kd  student and dense teacher logits, KL(teacher || student) over the full vocab, T=1
Tensors are bf16 on CUDA (as HF trains with torch_dtype=bfloat16); on a CPU (--dry-run) f32,
since CPU bf16 matmul in old torch is slow or missing. Output: JSON on stdout or --out.

Run: python3 tools/gpu/bench_torch.py --shapes tools/gpu/shapes.json --set gpu --device cuda
"""
import argparse, json, math, sys, time

import torch
import torch.nn.functional as F


def parse():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default="tools/gpu/shapes.json")
    ap.add_argument("--set", default="gpu")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default=None, help="bf16 or f32 (default: bf16 on cuda, f32 on cpu)")
    ap.add_argument("--out", default=None)
    return ap.parse_args()


def main():
    a = parse()
    with open(a.shapes) as f:
        sets = json.load(f)
    if a.set not in sets:
        sys.exit(f"bench_torch: {a.shapes} has no set {a.set!r} (have {[k for k in sets if not k.startswith('_')]})")
    s = sets[a.set]
    dev = torch.device(a.device)
    dt = {"bf16": torch.bfloat16, "f32": torch.float32, None: torch.bfloat16 if dev.type == "cuda" else torch.float32}[a.dtype]
    torch.manual_seed(0)
    B, S, Hd, I = s["batch"], s["seq"], s["hidden"], s["intermediate"]
    NH, NKV, D, V = s["heads"], s["kv_heads"], s["head_dim"], s["vocab"]
    reps = s.get("reps", 10)
    T = B * S
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    results = []

    def timeit(name, shape, fn):
        fn(); sync()
        ds = []
        for _ in range(reps):
            t0 = time.perf_counter(); fn(); sync()
            ds.append((time.perf_counter() - t0) * 1e3)
        ds.sort()
        results.append(dict(name=name, shape=shape, median_ms=round(ds[len(ds) // 2], 4), min_ms=round(ds[0], 4), reps=reps))

    def rnd(*shape, scale=1.0, grad=True):
        return (scale * torch.randn(*shape, device=dev)).to(dt).requires_grad_(grad)

    # RMSNorm (HF LlamaRMSNorm)
    x = rnd(T, Hd); w = (1 + 0.1 * torch.randn(Hd, device=dev)).to(dt)
    def rmsnorm():
        xf = x.float()
        y = w * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + 1e-5)).to(dt)
        y.backward(y.detach())
    timeit("rmsnorm", f"[{T},{Hd}]", rmsnorm)

    # RoPE
    q = rnd(T, NH, D)
    pos = (torch.arange(T, device=dev) % S).float()
    inv = 1.0 / (500000.0 ** (torch.arange(0, D, 2, device=dev).float() / D))
    ang = pos[:, None] * inv[None]
    emb = torch.cat((ang, ang), -1)
    cos, sin = emb.cos().to(dt)[:, None, :], emb.sin().to(dt)[:, None, :]
    def rope():
        x1, x2 = q[..., : D // 2], q[..., D // 2:]
        y = q * cos + torch.cat((-x2, x1), -1) * sin
        y.backward(y.detach())
    timeit("rope", f"[{T},{NH},{D}]", rope)

    # SwiGLU
    g, u = rnd(T, I, scale=2.0), rnd(T, I)
    def swiglu():
        y = F.silu(g) * u
        y.backward(y.detach())
    timeit("swiglu", f"[{T},{I}]", swiglu)

    # Attention
    qa, ka, va = rnd(B, NH, S, D), rnd(B, NKV, S, D), rnd(B, NKV, S, D)
    sdpa = getattr(F, "scaled_dot_product_attention", None)
    how = "sdpa" if sdpa is not None else "eager (torch has no SDPA)"
    def attention():
        k, v = ka, va
        if sdpa is not None:
            try:
                o = sdpa(qa, k, v, is_causal=True, enable_gqa=True)
            except TypeError:  # torch < 2.5: no enable_gqa
                o = sdpa(qa, k.repeat_interleave(NH // NKV, 1), v.repeat_interleave(NH // NKV, 1), is_causal=True)
        else:
            k, v = k.repeat_interleave(NH // NKV, 1), v.repeat_interleave(NH // NKV, 1)
            att = (qa @ k.transpose(-1, -2)) / math.sqrt(D)
            att = att.masked_fill(torch.ones(S, S, device=dev, dtype=torch.bool).triu(1), float("-inf"))
            o = torch.softmax(att.float(), -1).to(dt) @ v
        o.backward(o.detach())
    timeit("attention", f"b{B} t{S} h{NH} kv{NKV} d{D} causal ({how})", attention)

    # Linear + cross-entropy (lm_head frozen)
    h = rnd(T, Hd)
    W = rnd(V, Hd, scale=0.02, grad=False)
    labels = (torch.arange(T, device=dev) * 7919) % V
    def linear_ce():
        loss = F.cross_entropy((h @ W.t()).float(), labels)
        loss.backward()
    timeit("linear_ce", f"[{T},{Hd}]x[{V},{Hd}]", linear_ce)

    # Linear + KD, dense teacher of the same width, forward KL
    th = rnd(T, Hd, grad=False)
    TW = rnd(V, Hd, scale=0.03, grad=False)
    def linear_kd():
        with torch.no_grad():
            tl = F.log_softmax((th @ TW.t()).float(), -1)
        sl = F.log_softmax((h @ W.t()).float(), -1)
        loss = F.kl_div(sl, tl, log_target=True, reduction="batchmean")
        loss.backward()
    timeit("linear_kd", f"[{T},{Hd}]x[{V},{Hd}] dense teacher", linear_kd)

    out = dict(side="torch", torch=torch.__version__, device=str(dev),
               gpu=torch.cuda.get_device_name(0) if dev.type == "cuda" else None,
               dtype=str(dt).replace("torch.", ""), set=a.set, shapes=s, results=results)
    txt = json.dumps(out, indent=2)
    if a.out:
        with open(a.out, "w") as f:
            f.write(txt + "\n")
    print(txt)


if __name__ == "__main__":
    main()
