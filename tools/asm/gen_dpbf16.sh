#!/usr/bin/env bash
# Prints the DPBF16_Zacc_Zb_Za macros of kernels/cpu/gemm/kernel_bf16_amd64.s:
# Go's assembler has no AVX512_BF16 mnemonics, so the register forms of
# vdpbf16ps the bf16 micro-kernel needs are assembled here with GNU as and
# emitted as BYTE directives. Run: bash tools/asm/gen_dpbf16.sh
set -euo pipefail
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for i in $(seq 0 27); do
  b=$((28 + i % 2))
  for a in 30 31; do echo "vdpbf16ps %zmm$a, %zmm$b, %zmm$i"; done
done >"$tmp/dp.s"
as -o "$tmp/dp.o" "$tmp/dp.s"
objdump -d "$tmp/dp.o" | awk -F'\t' 'function zname(x) { x = toupper(x); sub(/ZMM/, "Z", x); return x }
  /vdpbf16ps/ {
  split($3, ops, ",");            # %zmmA,%zmmB,%zmmACC
  gsub(/[% ]|vdpbf16ps/, "", ops[1]); gsub(/%/, "", ops[2]); gsub(/%/, "", ops[3]);
  n = split($2, bytes, " "); s = "";
  for (i = 1; i <= n; i++) { if (bytes[i] != "") s = s (s == "" ? "" : "; ") "BYTE $0x" bytes[i] }
  printf "#define DPBF16_%s_%s_%s %s\n", zname(ops[3]), zname(ops[2]), zname(ops[1]), s
}'
