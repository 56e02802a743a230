#!/usr/bin/env python3
"""Side-by-side table of `llamatune bench kernels --json` and bench_torch.py's JSON (same shapes
file and set): per kernel, both medians and torch/llamatune (> 1: llamatune is faster).

Run: python3 tools/gpu/merge_bench.py --llamatune LT.json --torch TORCH.json --out bench.json
"""
import argparse, json, sys


def load(path, side):
    try:
        with open(path) as f:
            return json.load(f)
    except Exception as e:  # a step that failed or timed out leaves no (or half a) file
        print(f"merge_bench: {side}: {path}: {e}", file=sys.stderr)
        return None


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--llamatune", required=True)
    ap.add_argument("--torch", required=True)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    lt, th = load(a.llamatune, "llamatune"), load(a.torch, "torch")
    out = dict(llamatune=lt, torch=th, table=[])
    if lt and th and lt.get("shapes") != th.get("shapes"):
        out["warning"] = "the two sides ran different shapes"
    byname = {r["name"]: r for r in (th or {}).get("results", [])}
    names = [r["name"] for r in (lt or {}).get("results", [])] or list(byname)
    ltby = {r["name"]: r for r in (lt or {}).get("results", [])}
    print(f"{'kernel':<11}{'llamatune ms':>14}{'torch ms':>12}{'torch/llamatune':>17}")
    for n in names:
        l, t = ltby.get(n, {}).get("median_ms"), byname.get(n, {}).get("median_ms")
        ratio = t / l if l and t else None
        out["table"].append(dict(name=n, llamatune_ms=l, torch_ms=t, torch_over_llamatune=ratio))
        fmt = lambda v, w: f"{v:>{w}.3f}" if v is not None else f"{'-':>{w}}"
        print(f"{n:<11}{fmt(l, 14)}{fmt(t, 12)}{fmt(ratio, 17)}")
    with open(a.out, "w") as f:
        json.dump(out, f, indent=2)
    sys.exit(0 if lt and th else 1)


if __name__ == "__main__":
    main()
