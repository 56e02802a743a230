#!/usr/bin/env bash
# Everything a lent GPU machine should run, in one call of at most 9 minutes (issue 12).
#
#   here:   bash tools/gpu/build.sh          (cross-compiles bin/; the device has no Go)
#           bash tools/gpu/check.sh --dry-run (the same steps on this CPU, tiny shapes)
#   device: run(carry=["bin"], timeout_s=570, command="bash tools/gpu/check.sh")
#
# Each step runs under its own `timeout`, so a hang costs that step only; every step's status,
# exit code and time go to $OUT/summary.txt and nothing aborts the rest. What comes back
# (the device tool returns at most 8 files):
#   summary.txt      environment (GPU, driver, CUDA, torch, transformers, peft) + step table +
#                    the kernel table and the end-to-end comparison
#   conformance.log  kernels/cuda TestConformance (kerneltest suite, f32 and bf16 compute) -v
#   bench.json       llamatune vs torch eager, per kernel, same shapes (tools/gpu/shapes.json)
#   e2e.json         llamatune vs transformers+peft: per-step loss, tokens/s, peak GPU memory
#   golden.tar.gz    testdata/golden/tiny_llama_peft/ from transformers+peft (commit it)
#   logs.tar.gz      every step's log, metrics.jsonl, nvidia-smi samples, the raw JSONs
#
# --dry-run: device cpu, the "dry" shape set, a tiny init-tiny model, 3 steps, python parts on
# CPU torch; transformers/peft are replaced by the plain-torch Llama of e2e_hf.py when absent
# (said so in the summary). Environment: OUT (default $WORK/out), WORK (scratch, default a new
# /tmp dir), PYTHON (an interpreter that imports torch), CHECK_BUDGET_S (default 540).
set -u
cd "$(dirname "$0")/../.." || exit 1
ROOT=$PWD
DRY=0
for arg in "$@"; do
  case "$arg" in
    --dry-run) DRY=1 ;;
    -h|--help) sed -n '2,25p' "$0"; exit 0 ;;
    *) echo "check.sh: unknown argument $arg (want --dry-run)" >&2; exit 2 ;;
  esac
done
WORK=${WORK:-$(mktemp -d /tmp/llamatune-gpucheck.XXXXXX)}
OUT=${OUT:-$WORK/out}
LOGS=$WORK/logs
mkdir -p "$OUT" "$LOGS"
SUMMARY=$OUT/summary.txt
BUDGET=${CHECK_BUDGET_S:-540}
T0=$SECONDS
: > "$SUMMARY"
say() { echo "$*" >> "$SUMMARY"; }

if [ $DRY = 1 ]; then
  DEV=cpu SET=dry SEQ=64 STEPS=3 QS_STEPS=8 MODEL=$WORK/tiny
  MODEL_CMD="bin/llamatune init-tiny --out $MODEL --check=false"
else
  DEV=cuda SET=gpu SEQ=2048 STEPS=8 QS_STEPS=20 MODEL=$WORK/llama3.2-1b
  MODEL_CMD="bin/llamatune init-tiny --shape llama3.2-1b --out $MODEL"
fi

# An interpreter that imports torch (on Debian the pyenv shim's python3 may not see python3-torch).
PY=""
for p in ${PYTHON:-} python3 /usr/bin/python3 python3.12 python3.11 python3.10; do
  if command -v "$p" >/dev/null 2>&1 && "$p" -c 'import torch' >/dev/null 2>&1; then PY=$p; break; fi
done

# cuBLAS and NVRTC: the system's (/usr/local/cuda, ld.so.cache) when present, else the
# nvidia-* pip wheels torch depends on (site-packages/nvidia/{cublas,cuda_nvrtc}/lib).
if [ -z "${LLAMATUNE_CUDA_LIB_DIR:-}" ] && [ -n "$PY" ] && ! ls /usr/local/cuda/lib64/libnvrtc.so* >/dev/null 2>&1 \
   && ! ldconfig -p 2>/dev/null | grep -q 'libnvrtc\.so'; then
  WHEEL_LIBS=$($PY -c '
import importlib.util, os
spec = importlib.util.find_spec("nvidia")
dirs = []
for base in (spec.submodule_search_locations if spec else []):
    for sub in ("cuda_nvrtc/lib", "cublas/lib", "cuda_runtime/lib"):
        d = os.path.join(base, sub)
        if os.path.isdir(d):
            dirs.append(d)
print(":".join(dirs))' 2>/dev/null)
  [ -n "$WHEEL_LIBS" ] && export LLAMATUNE_CUDA_LIB_DIR=$WHEEL_LIBS
fi
chmod +x bin/* 2>/dev/null

# step NAME BUDGET_S 'COMMAND' — runs COMMAND in bash under timeout, log in $LOGS/NAME.log.
step() {
  local name=$1 want=$2 cmd=$3
  local left=$((BUDGET - (SECONDS - T0)))
  local b=$want
  [ $b -gt $((left - 3)) ] && b=$((left - 3))
  if [ $b -lt 5 ]; then
    printf '%-16s %-9s %6s %5s  budget %ds: no time left\n' "$name" SKIPPED - - "$want" >> "$SUMMARY"
    return 1
  fi
  local s=$SECONDS
  timeout -k 5 "$b" bash -c "$cmd" > "$LOGS/$name.log" 2>&1
  local rc=$?
  local st=ok
  case $rc in 0) st=ok ;; 124|137) st=TIMEOUT ;; *) st=FAIL ;; esac
  grep -q '^--- SKIP\|skipped:' "$LOGS/$name.log" 2>/dev/null && [ $rc = 0 ] && st="ok(skips)"
  printf '%-16s %-9s rc=%-4s %4ds  budget %ds\n' "$name" "$st" "$rc" $((SECONDS - s)) "$b" >> "$SUMMARY"
  return $rc
}
skip() { printf '%-16s %-9s %6s %5s  %s\n' "$1" SKIPPED - - "$2" >> "$SUMMARY"; }

# smi_start FILE / smi_stop: GPU memory.used (MiB) every 100 ms while a side trains.
SMI_PID=""
smi_start() {
  SMI_PID=""
  command -v nvidia-smi >/dev/null 2>&1 || return 0
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 100 > "$1" 2>/dev/null &
  SMI_PID=$!
  sleep 0.3
}
smi_stop() { [ -n "$SMI_PID" ] && kill "$SMI_PID" 2>/dev/null; wait "$SMI_PID" 2>/dev/null; SMI_PID=""; }

say "llamatune GPU check $(date -u +%Y-%m-%dT%H:%M:%SZ)  mode: $([ $DRY = 1 ] && echo 'DRY RUN (cpu, tiny shapes)' || echo device)"
say "build: $(cat bin/BUILD 2>/dev/null || echo 'bin/BUILD missing: run tools/gpu/build.sh')"
say "work: $WORK  out: $OUT  budget: ${BUDGET}s"
say "LLAMATUNE_CUDA_LIB_DIR: ${LLAMATUNE_CUDA_LIB_DIR:-(unset: system library paths)}"
HEAD_REV=$(git rev-parse --short HEAD 2>/dev/null || true)
case "$(cat bin/BUILD 2>/dev/null)" in
  "$HEAD_REV"*|"") ;;
  *) [ -n "$HEAD_REV" ] && say "WARNING: bin/ was built from another commit than HEAD $HEAD_REV: rerun tools/gpu/build.sh" ;;
esac
for b in bin/llamatune bin/kernels_cuda.test bin/llama.test; do
  [ -x "$b" ] || say "MISSING $b: run tools/gpu/build.sh here and carry bin/"
done

# ---- environment
step env 15 "
  nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv 2>&1 || echo 'nvidia-smi: not available'
  nvidia-smi 2>/dev/null | grep -o 'CUDA Version: [0-9.]*' || true
  uname -a; nproc; free -g | head -2
  echo python: ${PY:-none that imports torch}
  [ -n '$PY' ] && $PY - <<'EOF'
import importlib, torch
print('torch', torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available())
if torch.cuda.is_available():
    print('gpu', torch.cuda.get_device_name(0), 'capability', torch.cuda.get_device_capability(0))
for m in ('transformers', 'peft', 'pyarrow', 'safetensors', 'numpy', 'flash_attn'):
    try:
        print(m, importlib.import_module(m).__version__)
    except Exception as e:
        print(m, 'absent:', type(e).__name__)
EOF
"
sed 's/^/  /' "$LOGS/env.log" >> "$SUMMARY"
HAVE_HF=0
[ -n "$PY" ] && $PY -c 'import transformers, peft' >/dev/null 2>&1 && HAVE_HF=1
[ $HAVE_HF = 0 ] && say "NOTE: transformers/peft not importable: the reference side is the plain-torch Llama+LoRA of e2e_hf.py, and the goldens are not from transformers (do not commit them)."
say ""
say "step             status    exit   time"

# ---- conformance: the kerneltest suite through kernels/cuda (F32 and BF16 compute in one run)
# (kernels/cuda tests read the package's sources, e.g. TestLaunchArity: run them in its directory)
step conformance 80 "cd kernels/cuda && ../../bin/kernels_cuda.test -test.run '^TestConformance\$' -test.v -test.timeout 75s"
cp "$LOGS/conformance.log" "$OUT/conformance.log" 2>/dev/null
if [ $DRY = 0 ] && grep -q -- '--- SKIP: TestConformance' "$LOGS/conformance.log" 2>/dev/null; then
  say "ERROR: the conformance suite skipped on the device: $(grep -m1 'no usable CUDA GPU' "$LOGS/conformance.log" | sed 's/^ *//')"
fi
step cuda_host 20 "cd kernels/cuda && ../../bin/kernels_cuda.test -test.skip '^TestConformance\$' -test.v -test.timeout 18s"

# ---- kernel benchmarks, same shapes on both sides
step bench_lt 45 "bin/llamatune bench kernels --device $DEV --set $SET --compute bf16 --json > $WORK/bench_llamatune.json"
if [ -n "$PY" ]; then
  step bench_torch 35 "$PY tools/gpu/bench_torch.py --set $SET --device $DEV --out $WORK/bench_torch.json"
  step bench_merge 10 "$PY tools/gpu/merge_bench.py --llamatune $WORK/bench_llamatune.json --torch $WORK/bench_torch.json --out $OUT/bench.json"
else
  skip bench_torch "no python with torch"
fi

# ---- end to end: same model directory, same batches
step model 40 "$MODEL_CMD"
if [ -n "$PY" ]; then
  step e2e_data 10 "$PY tools/gpu/e2e_hf.py data --model $MODEL --rows $STEPS --seq $SEQ --out $WORK/batches.jsonl"
else
  skip e2e_data "no python with torch"
fi
smi_start "$WORK/smi_llamatune.csv"
step train_lt 100 "bin/llamatune train tools/gpu/e2e_job.yaml --set model=$MODEL --set data.datasets.0.path=$WORK/batches.jsonl \
  --set data.seq_len=$SEQ --set max_steps=$STEPS --set device=$DEV --set output_dir=$WORK/run_llamatune"
smi_stop
if [ -n "$PY" ]; then
  smi_start "$WORK/smi_hf.csv"
  step train_hf 85 "$PY tools/gpu/e2e_hf.py train --model $MODEL --data $WORK/batches.jsonl --steps $STEPS --device $DEV --out $WORK/e2e_hf.json"
  smi_stop
  step e2e_compare 10 "$PY tools/gpu/e2e_hf.py compare --llamatune $WORK/run_llamatune/metrics.jsonl --hf $WORK/e2e_hf.json \
    --llamatune-smi $WORK/smi_llamatune.csv --hf-smi $WORK/smi_hf.csv --out $OUT/e2e.json"
else
  skip train_hf "no python with torch"
fi

# ---- goldens from transformers+peft for the tiny model, then the CPU test against them
GOLD=$WORK/tiny_llama_peft
if [ -n "$PY" ]; then
  step golden 25 "$PY tools/gpu/golden_hf.py --out $GOLD"
  step golden_test 15 "cd model/llama && LLAMATUNE_PEFT_GOLDEN=$GOLD ../../bin/llama.test -test.run 'TestGolden' -test.v"
  tar -czf "$OUT/golden.tar.gz" -C "$WORK" tiny_llama_peft 2>/dev/null
else
  skip golden "no python with torch"
fi

# ---- the quickstart (LoRA fine-tune, export, distillation, CE baseline) on the device
step quickstart 35 "bin/llamatune quickstart --out $WORK/quickstart --set device=$DEV --set max_steps=$QS_STEPS"

# ---- the Go benchmarks of kernels/cuda (8B-like shapes), with what time is left
step cuda_gobench 15 "cd kernels/cuda && ../../bin/kernels_cuda.test -test.run '^\$' -test.bench . -test.benchtime 3x -test.timeout 14s"

# ---- report
{
  echo ""
  echo "total ${SECONDS}s of ${BUDGET}s"
  if [ -s "$LOGS/bench_merge.log" ]; then echo ""; echo "kernels (median ms, forward+backward; set $SET):"; sed 's/^/  /' "$LOGS/bench_merge.log"; fi
  if [ -s "$LOGS/e2e_compare.log" ]; then echo ""; echo "end to end ($STEPS steps, seq $SEQ):"; sed 's/^/  /' "$LOGS/e2e_compare.log"; fi
  if [ -s "$OUT/e2e.json" ] && [ -n "$PY" ]; then
    $PY - "$OUT/e2e.json" <<'EOF'
import json, sys
e = json.load(open(sys.argv[1]))
for k in ("llamatune_tokens_per_sec", "reference_tokens_per_sec", "speedup", "llamatune_peak_gpu_mib_smi",
          "reference_peak_gpu_mib_smi", "memory_ratio_smi", "reference_peak_allocated_mib", "reference_impl"):
    if e.get(k) is not None:
        print(f"  {k}: {e[k]:.3f}" if isinstance(e[k], float) else f"  {k}: {e[k]}")
EOF
  fi
  if [ -s "$LOGS/quickstart.log" ]; then echo ""; echo "quickstart on $DEV ($QS_STEPS steps):"; grep -E 'held-out loss|^done in|rror' "$LOGS/quickstart.log" | tail -4 | sed 's/^/  /'; fi
  for f in conformance golden_test; do
    [ -s "$LOGS/$f.log" ] && { echo ""; echo "$f failures/skips:"; grep -E '^\s*--- (FAIL|SKIP)|^(FAIL|ok|PASS)' "$LOGS/$f.log" | head -40 | sed 's/^/  /'; }
  done
} >> "$SUMMARY" 2>&1
cp "$WORK/run_llamatune/metrics.jsonl" "$LOGS/metrics_llamatune.jsonl" 2>/dev/null
cp "$WORK"/bench_*.json "$WORK"/e2e_hf.json "$WORK"/smi_*.csv "$LOGS/" 2>/dev/null
tar -czf "$OUT/logs.tar.gz" -C "$WORK" logs 2>/dev/null
cat "$SUMMARY"
exit 0
