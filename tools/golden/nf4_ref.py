#!/usr/bin/env python3
"""Independent reference for kernels/nf4: the NF4 code table from the QLoRA
paper's definition, and blockwise NF4 quantization with double-quantized
scales written from the paper and bitsandbytes' documented algorithm
(functional.quantize_4bit with compress_statistics=True), in numpy.

Nothing here reads Go code. The code table is computed in float64 with
scipy's normal quantile function (Dettmers et al. 2023, appendix E /
bitsandbytes create_normal_map(offset=0.9677083, use_extra_value=True)):
8 positive quantiles of N(0,1) at linspace(offset, 0.5, 9)[:-1], 7 negative
at linspace(offset, 0.5, 8)[:-1], an exact 0, normalized by the maximum.

Quantization (per 64-value block): absmax = max|x|; each x·(1/absmax) goes to
the NEAREST code by argmin |x - code| (float32; no decision tree); two codes
per byte, first element in the high nibble. Double quantization: offset =
mean(absmax) (float64 sum, rounded to float32); per 256 absmax values,
absmax2 = max|a - offset|, q = argmin |clip((a - offset)·(1/absmax2), -1, 1)
- dynamic_map| with bitsandbytes' create_dynamic_map(signed=True) built with
torch exactly as bitsandbytes builds it. Dequantization (with bitsandbytes'
float32 code literals, checked against the definition): code[q]·(dyn[qa]·
absmax2 + offset), float32.

Inputs are bf16 values made by an integer hash (reproduced in the Go test),
so the golden file holds only outputs.

Writes kernels/nf4/testdata/nf4_golden.json.
Run: /usr/bin/python3 tools/golden/nf4_ref.py  (Debian python3-numpy,
python3-scipy, python3-torch).
"""
import json, os
import numpy as np
from scipy.stats import norm
import torch

OUT = os.path.join(os.path.dirname(__file__), "..", "..", "kernels", "nf4", "testdata", "nf4_golden.json")

# --- the NF4 code table from the definition (float64) ---
offset = 0.9677083
pos = norm.ppf(np.linspace(offset, 0.5, 9)[:-1])
neg = -norm.ppf(np.linspace(offset, 0.5, 8)[:-1])
table = np.sort(np.concatenate([pos, [0.0], neg]))
table = table / table.max()
assert len(table) == 16
code = table.astype(np.float32)

# bitsandbytes stores the table as float32 literals (dDequantizeNF4) that
# differ from the float64 definition in the 8th digit; dequantized values
# are products with those literals, so the reference uses them for the
# dequantization (after checking them against the definition). Codes are
# chosen with the definition's table.
bnb_code = np.array([
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
    -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
    0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
    0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0], dtype=np.float32)
assert np.abs(bnb_code.astype(np.float64) - table).max() < 1e-6


# --- bitsandbytes' dynamic 8-bit map (create_dynamic_map, signed) ---
def create_dynamic_map(signed=True, max_exponent_bits=7, total_bits=8):
    data = []
    non_sign_bits = total_bits - 1
    additional_items = 2 ** (non_sign_bits - max_exponent_bits) - 1
    for i in range(max_exponent_bits):
        fraction_items = int(2 ** (i + non_sign_bits - max_exponent_bits) + 1 if signed
                             else 2 ** (i + non_sign_bits - max_exponent_bits + 1) + 1)
        boundaries = torch.linspace(0.1, 1, fraction_items, dtype=torch.float32)
        means = (boundaries[:-1] + boundaries[1:]) / 2.0
        data += ((10 ** (-(max_exponent_bits - 1) + i)) * means).tolist()
        if signed:
            data += (-(10 ** (-(max_exponent_bits - 1) + i)) * means).tolist()
    assert additional_items == 0
    data.append(0)
    data.append(1.0)
    data += [0] * (256 - len(data))
    data.sort()
    return np.array(data, dtype=np.float32)


dyn = create_dynamic_map()


def inputs(n, seed):
    """bf16 bit patterns from an integer hash: sign, exponent 118..125,
    7 mantissa bits; every 97th value is an outlier (exponent 128)."""
    i = np.arange(n, dtype=np.uint64)
    h = (i * np.uint64(2654435761) + np.uint64(seed)) & np.uint64(0xFFFFFFFF)
    h = (h ^ (h >> np.uint64(15))) * np.uint64(2246822519) & np.uint64(0xFFFFFFFF)
    h ^= h >> np.uint64(13)
    sign = (h >> np.uint64(31)) & np.uint64(1)
    exp = np.uint64(118) + ((h >> np.uint64(16)) & np.uint64(7))
    exp = np.where(i % np.uint64(97) == np.uint64(5), np.uint64(128), exp)
    man = h & np.uint64(0x7F)
    bits = (sign << np.uint64(15)) | (exp << np.uint64(7)) | man
    return bits.astype(np.uint16)


def bf16_to_f32(b):
    return (b.astype(np.uint32) << 16).view(np.float32)


def nearest(x, table):
    d = np.abs(x[:, None] - table[None, :])  # float32
    return np.argmin(d, axis=1)


def quantize(x):
    n = len(x)
    blocks = (n + 63) // 64
    pad = np.zeros(blocks * 64, dtype=np.float32)
    pad[:n] = x
    xb = pad.reshape(blocks, 64)
    absmax = np.abs(xb).max(axis=1).astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        scaled = (xb * (np.float32(1) / absmax)[:, None]).astype(np.float32)
    q = nearest(scaled.reshape(-1), code)
    q = np.where(np.isnan(scaled.reshape(-1)), 0, q)[:n]
    if n % 2:
        q = np.concatenate([q, [0]])
    packed = ((q[0::2] << 4) | q[1::2]).astype(np.uint8)
    off = np.float32(absmax.astype(np.float64).mean())
    a = (absmax - off).astype(np.float32)
    qa = np.zeros(blocks, dtype=np.uint8)
    absmax2 = []
    for c in range(0, blocks, 256):
        seg = a[c:c + 256]
        m = np.float32(np.abs(seg).max())
        absmax2.append(m)
        s = np.clip((seg * (np.float32(1) / m)).astype(np.float32), -1, 1)
        qa[c:c + 256] = nearest(s, dyn)
    absmax2 = np.array(absmax2, dtype=np.float32)
    deq_absmax = (dyn[qa] * absmax2[np.arange(blocks) // 256] + off).astype(np.float32)
    qfull = np.empty(2 * len(packed), dtype=np.int64)
    qfull[0::2], qfull[1::2] = packed >> 4, packed & 15
    deq = (bnb_code[qfull[:n]] * deq_absmax[np.arange(n) // 64]).astype(np.float32)
    return dict(packed=packed.tobytes().hex(), qabsmax=qa.tobytes().hex(),
                absmax2=[float(v) for v in absmax2], offset=float(off),
                dequant=deq.view(np.uint32).astype(">u4").tobytes().hex())


cases = []
for name, n, seed in [("hash300blocks", 64 * 300, 1), ("odd101", 101, 7), ("oneblock", 64, 3)]:
    bits = inputs(n, seed)
    if name == "oneblock":
        bits[:] = 0  # an all-zero block
    c = dict(name=name, n=n, seed=seed, zero=(name == "oneblock"))
    c.update(quantize(bf16_to_f32(bits)))
    cases.append(c)

json.dump(dict(code_table=[float(v) for v in table], dynamic_map=[float(v) for v in dyn], cases=cases),
          open(OUT, "w"), indent=1)
print("wrote", OUT)
