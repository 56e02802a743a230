#!/usr/bin/env bash
# Cross-compiles what tools/gpu/check.sh runs on a lent GPU machine (which has no Go):
#   bin/llamatune          the CLI (train, init-tiny, bench kernels, ...)
#   bin/kernels_cuda.test  kernels/cuda tests: TestConformance (kerneltest suite on the GPU),
#                          the host-side tests, and the benchmarks
#   bin/llama.test         model/llama tests (golden comparisons, incl. the transformers+peft
#                          goldens once check.sh has written them)
# Run from anywhere; writes into <repo>/bin. Then, on the device:
#   run(carry=["bin"], timeout_s=570, command="bash tools/gpu/check.sh")
set -euo pipefail
cd "$(dirname "$0")/../.."
export CGO_ENABLED=0 GOOS=linux GOARCH=amd64
mkdir -p bin
rev=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
dirty=$(git status --porcelain 2>/dev/null | grep -qv '^??' && echo "+dirty" || true)
# -s -w: no symbol table / DWARF. The device tool carries at most 64 MiB in all (bin + tools/gpu).
ld='-s -w'
go build -ldflags="$ld" -o bin/llamatune ./cmd/llamatune
go test -c -ldflags="$ld" -o bin/kernels_cuda.test ./kernels/cuda
go test -c -ldflags="$ld" -o bin/llama.test ./model/llama
echo "${rev}${dirty} $(go version | cut -d' ' -f3) built $(date -u +%Y-%m-%dT%H:%M:%SZ)" > bin/BUILD
ls -l bin/llamatune bin/kernels_cuda.test bin/llama.test
cat bin/BUILD
total=$(du -cb bin tools/gpu | tail -1 | cut -f1)
echo "carry size (bin + tools/gpu): $((total / 1048576)) MiB of 64"
if [ "$total" -gt $((64 * 1048576)) ]; then
  echo "build.sh: bin + tools/gpu is over the 64 MiB the device tool carries; remove stray files from bin/" >&2
  exit 1
fi
