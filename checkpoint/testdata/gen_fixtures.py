#!/usr/bin/env python3
"""Writes safetensors fixtures by hand, with only struct and json, as an
independent check of checkpoint's reader against the format spec
(https://github.com/huggingface/safetensors#format). Run from this directory:

    python3 gen_fixtures.py

Outputs handmade.safetensors and sharded/ (an HF-style sharded directory).
Values are chosen to be exact in bf16/f16 so no rounding is involved.
"""
import json
import os
import struct


def f32(vals):
    return struct.pack("<%df" % len(vals), *vals)


def bf16(vals):
    # Exact bf16 values: the top 16 bits of the float32 encoding.
    out = b""
    for v in vals:
        (bits,) = struct.unpack("<I", struct.pack("<f", v))
        assert bits & 0xFFFF == 0, v
        out += struct.pack("<H", bits >> 16)
    return out


def f16(vals):
    return struct.pack("<%de" % len(vals), *vals)


def build(tensors, metadata, pad=True):
    """tensors: list of (name, dtype, shape, bytes), laid out in order."""
    header = {}
    if metadata is not None:
        header["__metadata__"] = metadata
    data = b""
    for name, dtype, shape, raw in tensors:
        header[name] = {"dtype": dtype, "shape": shape,
                        "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    hj = json.dumps(header, separators=(",", ":")).encode()
    if pad:
        hj += b" " * (-len(hj) % 8)
    return struct.pack("<Q", len(hj)) + hj + data


def main():
    tensors = [
        ("a.f32", "F32", [2, 3], f32([1.0, -2.5, 3.25, 0.0, 1e-3, -65504.0])),
        ("b.bf16", "BF16", [4], bf16([1.0, -2.0, 0.5, 3.140625])),
        ("c.f16", "F16", [2, 2], f16([1.0, -0.5, 65504.0, 0.0009765625])),
        ("d.i64", "I64", [2], struct.pack("<2q", -7, 1 << 40)),
        ("e.scalar", "F32", [], f32([42.0])),
        ("f.empty", "F32", [0, 5], b""),
        ("g.u8", "U8", [3], bytes([0, 127, 255])),
    ]
    with open("handmade.safetensors", "wb") as fh:
        fh.write(build(tensors, {"format": "pt", "source": "gen_fixtures.py"}))

    os.makedirs("sharded", exist_ok=True)
    s1 = [("model.embed_tokens.weight", "F32", [2, 2], f32([1, 2, 3, 4])),
          ("model.norm.weight", "BF16", [2], bf16([1.0, 0.5]))]
    s2 = [("lm_head.weight", "F16", [2, 2], f16([0.25, -0.25, 8.0, -8.0]))]
    names = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    weight_map = {}
    total = 0
    for fname, group in zip(names, [s1, s2]):
        with open(os.path.join("sharded", fname), "wb") as fh:
            # Unpadded header, as older writers produced.
            fh.write(build(group, {"format": "pt"}, pad=False))
        for name, _, _, raw in group:
            weight_map[name] = fname
            total += len(raw)
    with open(os.path.join("sharded", "model.safetensors.index.json"), "w") as fh:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map},
                  fh, indent=2, sort_keys=True)
        fh.write("\n")


if __name__ == "__main__":
    main()
