#!/usr/bin/env bash
# Start the pipeline with the DeepSpeed launcher from a hostfile (one stage per slot).
# Several hosts: deepspeed reaches them with pdsh over passwordless ssh; one host: local.
#
#   bash launch/deepspeed_hostfile.sh [hydra overrides ...]
#
# Environment:
#   HOSTFILE        hostfile ("<host> slots=<n>" lines; default launch/hostfile)
#   PP              pipeline stages (default: the total slots of HOSTFILE)
#   MASTER_ADDR     address of the first host (default: the first host of HOSTFILE; 127.0.0.1
#                   for localhost)
#   MASTER_PORT     default 29500
#   BACKEND         nccl or gloo (default: nccl with GPUs, gloo without)
#   DS_ACCELERATOR  set to cpu on machines without GPUs (DeepSpeed's own variable)
#   DEVICE          device= override (default: leave the config's)
#   COMMAND         pp-sarathi command (default run)
#   RUN_DIR         hydra.run.dir (default runs/deepspeed-<time>)
#   SSH_CHECK=0     skip deepspeed's ssh check of the first host (needed for a localhost-only
#                   hostfile on a machine without sshd)
#   DEEPSPEED       deepspeed executable (default: deepspeed on PATH, else .venv/bin/deepspeed)
#   DRY_RUN=1       print the command instead of running it
#
# --no_local_rank: pp_sarathi reads LOCAL_RANK from the environment, not from --local_rank.
#
# CPU example (what tests/test_launch.py runs):
#   DS_ACCELERATOR=cpu BACKEND=gloo SSH_CHECK=0 bash launch/deepspeed_hostfile.sh model=tiny
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
HOSTFILE=${HOSTFILE:-$here/hostfile}
[ -f "$HOSTFILE" ] || { echo "deepspeed_hostfile.sh: no hostfile at $HOSTFILE" >&2; exit 2; }
slots=$(awk '!/^[[:space:]]*(#|$)/ { for (i = 2; i <= NF; i++) if ($i ~ /^slots=/) { split($i, a, "="); s += a[2] } } END { print s + 0 }' "$HOSTFILE")
first=$(awk '!/^[[:space:]]*(#|$)/ { print $1; exit }' "$HOSTFILE")
[ "$slots" -gt 0 ] || { echo "deepspeed_hostfile.sh: no 'host slots=N' lines in $HOSTFILE" >&2; exit 2; }
gpus=0
if command -v nvidia-smi >/dev/null 2>&1; then
  gpus=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
fi
PP=${PP:-$slots}
if [ -z "${MASTER_ADDR:-}" ]; then
  case "$first" in localhost|127.0.0.1) MASTER_ADDR=127.0.0.1 ;; *) MASTER_ADDR=$first ;; esac
fi
MASTER_PORT=${MASTER_PORT:-29500}
BACKEND=${BACKEND:-$([ "$gpus" -gt 0 ] && echo nccl || echo gloo)}
COMMAND=${COMMAND:-run}
RUN_DIR=${RUN_DIR:-runs/deepspeed-$(date +%Y-%m-%d_%H-%M-%S)}
if [ -z "${DEEPSPEED:-}" ]; then
  if command -v deepspeed >/dev/null 2>&1; then DEEPSPEED=deepspeed
  elif [ -x "$here/../.venv/bin/deepspeed" ]; then DEEPSPEED=$here/../.venv/bin/deepspeed
  else echo "deepspeed_hostfile.sh: deepspeed not found (activate the venv or set DEEPSPEED)" >&2; exit 2; fi
fi

cmd=("$DEEPSPEED" --hostfile "$HOSTFILE" --master_addr "$MASTER_ADDR" --master_port "$MASTER_PORT")
[ "${SSH_CHECK:-1}" = 0 ] && cmd+=(--no_ssh_check)
cmd+=(--no_local_rank --module pp_sarathi "$COMMAND" "parallel.pp=$PP" "parallel.backend=$BACKEND"
      "hydra.run.dir=$RUN_DIR")
[ -n "${DEVICE:-}" ] && cmd+=("device=$DEVICE")
cmd+=("$@")

echo "[launch] ${cmd[*]}" >&2
[ "${DRY_RUN:-0}" = 1 ] && exit 0
exec "${cmd[@]}"
