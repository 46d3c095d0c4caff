#!/usr/bin/env bash
# Several nodes, one pipeline stage per process, started by torchrun on every node.
# Run this script on each node with the same environment except NODE_RANK. Ranks are laid
# out node by node (static rendezvous), so stage s runs on node s // NPROC_PER_NODE and
# consecutive stages share a node; rank 0 (node 0) is the driver and writes the run dir.
#
#   NNODES=2 NODE_RANK=0 MASTER_ADDR=node0 bash launch/torchrun_multi_node.sh [overrides ...]   # on node0
#   NNODES=2 NODE_RANK=1 MASTER_ADDR=node0 bash launch/torchrun_multi_node.sh [overrides ...]   # on node1
#
# Environment:
#   NNODES          number of nodes (default 2)
#   NODE_RANK       this node's index, 0 .. NNODES-1 (required)
#   NPROC_PER_NODE  processes (stages) per node (default: GPUs on this node, or 1 without GPUs)
#   MASTER_ADDR     address of node 0, reachable from every node (default 127.0.0.1)
#   MASTER_PORT     a free TCP port on node 0 (default 29500)
#   BACKEND         nccl or gloo (default: nccl with GPUs, gloo without)
#   DEVICE          device= override (default: leave the config's)
#   COMMAND         pp-sarathi command (default run)
#   RUN_DIR         hydra.run.dir: only node 0 writes into it; give every node the same value
#                   (default runs/multinode-<MASTER_PORT>-<date>)
#   TORCHRUN        torchrun executable (default: torchrun on PATH, else .venv/bin/torchrun)
#   DRY_RUN=1       print the command instead of running it
#
# CPU example, two "nodes" on this machine (what tests/test_launch.py runs):
#   for r in 0 1; do NNODES=2 NODE_RANK=$r NPROC_PER_NODE=1 MASTER_PORT=29517 BACKEND=gloo \
#       RUN_DIR=/tmp/mn bash launch/torchrun_multi_node.sh model=tiny & done; wait
set -euo pipefail

: "${NODE_RANK:?set NODE_RANK (0 on the master node, 1.. on the others)}"
gpus=0
if command -v nvidia-smi >/dev/null 2>&1; then
  gpus=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
fi
NNODES=${NNODES:-2}
NPROC_PER_NODE=${NPROC_PER_NODE:-$([ "$gpus" -gt 0 ] && echo "$gpus" || echo 1)}
MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
MASTER_PORT=${MASTER_PORT:-29500}
BACKEND=${BACKEND:-$([ "$gpus" -gt 0 ] && echo nccl || echo gloo)}
COMMAND=${COMMAND:-run}
RUN_DIR=${RUN_DIR:-runs/multinode-${MASTER_PORT}-$(date +%Y-%m-%d_%H-%M)}
# torchrun from PATH, else from the repository's .venv (scripts/setup.sh).
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [ -z "${TORCHRUN:-}" ]; then
  if command -v torchrun >/dev/null 2>&1; then TORCHRUN=torchrun
  elif [ -x "$repo/.venv/bin/torchrun" ]; then TORCHRUN=$repo/.venv/bin/torchrun
  else echo "$(basename "$0"): torchrun not found (activate the venv or set TORCHRUN)" >&2; exit 2; fi
fi
PP=$((NNODES * NPROC_PER_NODE))

cmd=("$TORCHRUN" --nnodes "$NNODES" --node-rank "$NODE_RANK" --nproc-per-node "$NPROC_PER_NODE"
     --master-addr "$MASTER_ADDR" --master-port "$MASTER_PORT"
     -m pp_sarathi "$COMMAND" "parallel.pp=$PP" "parallel.backend=$BACKEND" "hydra.run.dir=$RUN_DIR")
[ -n "${DEVICE:-}" ] && cmd+=("device=$DEVICE")
cmd+=("$@")

echo "[launch] node $NODE_RANK/$NNODES: ${cmd[*]}" >&2
[ "${DRY_RUN:-0}" = 1 ] && exit 0
exec "${cmd[@]}"
