#!/usr/bin/env bash
# GPU benchmark for issue #7: paper Table 2 and Table 4 (first row) on a LLaMA-13B-shaped model
# (random bf16 weights built in place on the GPU), roofline fractions, KV capacity, and a
# bf16-vs-float32 hybrid-batch logits check.
#
#   scripts/bench_gpu.sh DIR            # writes DIR/gpu_bench.md, gpu_bench.json, env.txt, logs
#   PP_SARATHI_BENCH_SMALL=1 scripts/bench_gpu.sh DIR   # tiny shapes (CPU smoke test)
#
# Needs only python + torch (+ numpy): no hydra, wandb, deepspeed, safetensors or network, and
# the package need not be installed (the repository is put on PYTHONPATH). Takes a few minutes
# on one H100/H200; hard limit 570 s (override with PP_SARATHI_BENCH_TIMEOUT).
set -uo pipefail
if [ $# -lt 1 ]; then
  echo "usage: $0 OUT_DIR [extra args for python -m pp_sarathi.bench.gpu]" >&2
  exit 2
fi
out=$1; shift
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# The first interpreter that has torch (PYTHON wins if set).
py=${PYTHON:-}
if [ -z "$py" ]; then
  for cand in python3 python; do
    if command -v "$cand" >/dev/null && "$cand" -c 'import torch' 2>/dev/null; then py=$cand; break; fi
  done
fi
if [ -z "$py" ]; then
  echo "[bench_gpu] no python with torch found (set PYTHON=...)" >&2
  exit 2
fi
mkdir -p "$out"
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
limit=${PP_SARATHI_BENCH_TIMEOUT:-570}
small=()
[ "${PP_SARATHI_BENCH_SMALL:-0}" = 1 ] && small=(--small)

{
  echo "date: $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
  echo "host: $(hostname)"
  echo "git: $(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo n/a) $(git -C "$root" status --porcelain 2>/dev/null | wc -l) changed files"
  "$py" -c 'import sys, torch; print("python", sys.version.split()[0]); print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())'
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,memory.used,clocks.max.sm,power.limit --format=csv
  lscpu 2>/dev/null | grep -E 'Model name|^CPU\(s\)'
} > "$out/env.txt" 2>&1
cat "$out/env.txt"

start=$(date +%s)
timeout "$limit" "$py" -m pp_sarathi.bench.gpu --out "$out" ${small[@]+"${small[@]}"} "$@" 2> >(tee "$out/gpu_bench.log" >&2)
rc=$?
if [ $rc -ne 0 ]; then
  echo "[bench_gpu] python -m pp_sarathi.bench.gpu failed (rc=$rc); see $out/gpu_bench.log" >&2
  exit $rc
fi

# A pp=2 pipeline timed with CUDA events at every stage, on hosts with two GPUs or more.
gpus=$("$py" -c 'import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)')
left=$(( limit - ($(date +%s) - start) ))
if [ "$gpus" -ge 2 ] && [ "$left" -gt 120 ]; then
  timeout "$((left - 60))" "$py" -m pp_sarathi.bench.pipeline --out "$out/pp2" --pp 2 \
    > "$out/pipeline_pp2.txt" 2>&1
  echo "[bench_gpu] pp=2 event-timed pipeline: $(tail -n 1 "$out/pipeline_pp2.txt")"
else
  echo "[bench_gpu] fewer than 2 GPUs ($gpus) or no time left: skipped the pp=2 pipeline run" | tee "$out/pipeline_pp2.txt"
fi

# GPU numerics tests, when pytest is there and time is left (they skip themselves without CUDA).
left=$(( limit - ($(date +%s) - start) ))
if "$py" -c 'import pytest' 2>/dev/null && [ "$left" -gt 60 ]; then
  (cd "$root" && timeout "$((left - 10))" "$py" -m pytest -q -p no:cacheprovider tests/test_gpu.py) \
    > "$out/test_gpu.txt" 2>&1
  echo "[bench_gpu] tests/test_gpu.py: $(tail -n 1 "$out/test_gpu.txt")"
else
  echo "[bench_gpu] pytest not installed or no time left: skipped tests/test_gpu.py" | tee "$out/test_gpu.txt"
fi
echo "[bench_gpu] wrote $out/gpu_bench.md"
