#!/bin/bash
# A data-parallel torch job across nodes for gshare:
#   gsub examples/ddp.sh --nodes 2 --gpus-per-node 4
# gshare starts this script on every node at once; torchrun meets the other nodes at
# $MASTER_ADDR:$MASTER_PORT (c10d rendezvous, rank 0's node hosts it) and starts one
# worker per GPU (or --procs-per-node workers on the CPU, with gloo).
#GSUB --name ddp-example
#GSUB --nodes 2 --gpus-per-node 2
#GSUB --time 1h
set -uo pipefail
here=${GSHARE_SCRIPT_DIR:-$(dirname "$0")}
py=python3
[ -x "$here/../.venv/bin/python" ] && py="$here/../.venv/bin/python"
procs=${DDP_PROCS_PER_NODE:-$LOCAL_WORLD_SIZE}
echo "part $NODE_RANK of $NNODES on $GSHARE_NODE ($MASTER_ADDR:$MASTER_PORT), GPUs $CUDA_VISIBLE_DEVICES"

# The yield signal reaches every process of the job: the workers save and exit together
# (ddp.py); torchrun must outlive them, so it ignores the signal, and this script, which
# notes it, turns torchrun's failure into the "yielded" exit code.
asked=0
trap 'asked=1' "${GSHARE_PREEMPT_SIGNAL:-10}"
env --ignore-signal="${GSHARE_PREEMPT_SIGNAL:-10}" "$py" -m torch.distributed.run \
  --nnodes "$NNODES" --nproc-per-node "$procs" \
  --rdzv-backend c10d --rdzv-endpoint "$MASTER_ADDR:$MASTER_PORT" --rdzv-id "$GSHARE_JOB_ID" \
  --rdzv-conf "is_host=$([ "$NODE_RANK" = 0 ] && echo true || echo false)" \
  --max-restarts 0 \
  "$here/ddp.py" "$@" &
torchrun=$!
while :; do
  wait "$torchrun"
  rc=$?
  kill -0 "$torchrun" 2>/dev/null || break # a signal only interrupted the wait
done
if [ "$asked" = 1 ] && [ "$rc" != 0 ]; then
  echo "part $NODE_RANK yielded"
  exit 75
fi
exit "$rc"
