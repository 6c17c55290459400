#!/bin/bash
# A small torch training job for gshare: gsub examples/train.sh --gpus 2
#GSUB --name train-example
#GSUB --gpus 2
#GSUB --time 30m
set -euo pipefail
# The script runs from a copy on the node; GSHARE_SCRIPT_DIR is where it was submitted from.
here=${GSHARE_SCRIPT_DIR:-$(dirname "$0")}
py=python3
[ -x "$here/../.venv/bin/python" ] && py="$here/../.venv/bin/python"
echo "job $GSHARE_JOB_ID on $GSHARE_NODE, GPUs $CUDA_VISIBLE_DEVICES"
exec "$py" "$here/train.py" "$@"
