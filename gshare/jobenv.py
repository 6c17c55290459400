"""What a job finds in its environment, built in one place for the node agent and for a
job handed to Slurm (where Slurm picks the node and the GPUs, so those two are filled in
on the Slurm node when the job starts: see `slurm_wrapper`)."""

from __future__ import annotations

import base64
import functools
import json
import signal
from collections.abc import Mapping

from gshare.arrays import parse_array

DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"


def job_environment(
    env: Mapping[str, str],
    *,
    job_id: int,
    restart_count: int,
    output: str,
    checkpoint_dir: str,
    preempt_signal: int,
    node: str | None = None,
    gpu_indexes: tuple[int, ...] = (),
    gpu_uuids: tuple[str, ...] = (),
) -> dict[str, str]:
    """The job's own variables (`env`) with gshare's on top. `node` None: not placed by
    gshare (Slurm places it), so no GPU or node variables are set here."""
    out = dict(env)
    out.setdefault("PATH", DEFAULT_PATH)
    out.update(
        GSHARE_JOB_ID=str(job_id),
        GSHARE_RESTART_COUNT=str(restart_count),
        GSHARE_OUTPUT=output,
        GSHARE_PREEMPT_SIGNAL=str(preempt_signal or int(signal.SIGUSR1)),
    )
    if checkpoint_dir:
        out["GSHARE_CHECKPOINT_DIR"] = checkpoint_dir  # the same across restarts
    if node is not None:
        visible = ",".join(str(i) for i in gpu_indexes)
        out.update(
            CUDA_VISIBLE_DEVICES=visible,
            NVIDIA_VISIBLE_DEVICES=visible,
            # CUDA numbers GPUs fastest-first by default; NVML (and so gshare) by PCI bus id
            CUDA_DEVICE_ORDER="PCI_BUS_ID",
            GSHARE_NODE=node,
            GSHARE_GPUS=visible,
            GSHARE_GPU_UUIDS=",".join(gpu_uuids),
        )
    return out


RESULT_FILE = "result.json"  # in the job's checkpoint directory


@functools.lru_cache(maxsize=256)
def _array_figures(array_spec: str) -> tuple[int, int, int]:
    tasks = parse_array(array_spec, 1 << 30).tasks
    return len(tasks), tasks[0], tasks[-1]


def task_environment(
    array_job_id: int,
    array_task_id: int,
    array_spec: str,
    params: Mapping[str, str],
    checkpoint_dir: str,
) -> dict[str, str]:
    """What an array task (or a sweep's trial) finds besides the rest: its array's id, its
    own task id, the array's size and bounds, its parameters, and where it may write its
    results (GSHARE_RESULT_FILE, read by `gshare sweep`)."""
    if not array_job_id:
        return {}
    count, low, high = _array_figures(array_spec)
    out = {
        "GSHARE_ARRAY_JOB_ID": str(array_job_id),
        "GSHARE_ARRAY_TASK_ID": str(array_task_id),
        "GSHARE_ARRAY_TASK_COUNT": str(count),
        "GSHARE_ARRAY_TASK_MIN": str(low),
        "GSHARE_ARRAY_TASK_MAX": str(high),
        "GSHARE_RESULT_FILE": f"{checkpoint_dir.rstrip('/')}/{RESULT_FILE}",
    }
    if params:
        out["GSHARE_PARAMS"] = json.dumps(dict(params), sort_keys=True)
        for name, value in params.items():
            out[f"GSHARE_PARAM_{name.upper()}"] = value
    return out


def slurm_wrapper(script: bytes) -> str:
    """A batch script for Slurm that sets the variables only the Slurm node knows
    (GSHARE_NODE, GSHARE_GPUS, GSHARE_GPU_UUIDS) and then runs the job's own script,
    whatever its interpreter, with its arguments; its exit status is the job's."""
    encoded = base64.encodebytes(script).decode()
    return (
        "#!/bin/bash\n"
        "# gshare: the job's own script follows, run as it is (its #! line included)\n"
        'export GSHARE_NODE="${SLURMD_NODENAME:-$(hostname)}"\n'
        'export GSHARE_GPUS="${CUDA_VISIBLE_DEVICES:-}"\n'
        'export GSHARE_GPU_UUIDS=""\n'
        'job=$(mktemp "${TMPDIR:-/tmp}/gshare-job.XXXXXX") || exit 127\n'
        "trap 'rm -f \"$job\"' EXIT\n"
        "base64 -d > \"$job\" <<'GSHARE_SCRIPT_END'\n"
        f"{encoded}"
        "GSHARE_SCRIPT_END\n"
        'chmod 700 "$job"\n'
        '"$job" "$@" &\n'
        "child=$!\n"
        # pass on the signals Slurm and gshare send, then wait for the job's own end
        'for sig in TERM INT USR1 USR2 HUP; do trap "kill -$sig $child 2>/dev/null" $sig; done\n'
        'while wait "$child"; status=$?; [ $status -gt 128 ] && kill -0 "$child" 2>/dev/null\n'
        "do :; done\n"
        "exit $status\n"
    )
