#!/usr/bin/env bash
# One node, one pipeline stage per process (per GPU), started by torchrun.
#
#   bash launch/torchrun_single_node.sh [hydra overrides ...]
#
# Environment (all optional):
#   NPROC        processes = pipeline stages (default: GPUs on this node, or 2 without GPUs)
#   BACKEND      nccl or gloo (default: nccl with GPUs, gloo without)
#   DEVICE       device= override (auto, cpu, cuda; default: leave the config's)
#   COMMAND      pp-sarathi command: run (default), microbench, ...  (compare and sweeps
#                start their own processes: run them without torchrun)
#   RUN_DIR      hydra.run.dir, where rank 0 writes everything (default runs/torchrun-<time>)
#   TORCHRUN     torchrun executable (default: torchrun on PATH, else .venv/bin/torchrun)
#   DRY_RUN=1    print the command instead of running it
#
# CPU example (what tests/test_launch.py runs):
#   NPROC=2 BACKEND=gloo bash launch/torchrun_single_node.sh model=tiny workload.num_requests=4
set -euo pipefail

gpus=0
if command -v nvidia-smi >/dev/null 2>&1; then
  gpus=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
fi
NPROC=${NPROC:-$([ "$gpus" -gt 0 ] && echo "$gpus" || echo 2)}
BACKEND=${BACKEND:-$([ "$gpus" -gt 0 ] && echo nccl || echo gloo)}
COMMAND=${COMMAND:-run}
RUN_DIR=${RUN_DIR:-runs/torchrun-$(date +%Y-%m-%d_%H-%M-%S)}
# torchrun from PATH, else from the repository's .venv (scripts/setup.sh).
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [ -z "${TORCHRUN:-}" ]; then
  if command -v torchrun >/dev/null 2>&1; then TORCHRUN=torchrun
  elif [ -x "$repo/.venv/bin/torchrun" ]; then TORCHRUN=$repo/.venv/bin/torchrun
  else echo "$(basename "$0"): torchrun not found (activate the venv or set TORCHRUN)" >&2; exit 2; fi
fi

cmd=("$TORCHRUN" --standalone --nnodes 1 --nproc-per-node "$NPROC"
     -m pp_sarathi "$COMMAND" "parallel.pp=$NPROC" "parallel.backend=$BACKEND" "hydra.run.dir=$RUN_DIR")
[ -n "${DEVICE:-}" ] && cmd+=("device=$DEVICE")
cmd+=("$@")

echo "[launch] ${cmd[*]}" >&2
[ "${DRY_RUN:-0}" = 1 ] && exit 0
exec "${cmd[@]}"
