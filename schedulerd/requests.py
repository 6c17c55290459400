"""Requests at the edge: a submitted JobSpec checked and turned into a job record.

Everything a client sends is bounded and checked here, before it reaches the scheduler's
state, so a bad request is refused alone, with the field named.
"""

from __future__ import annotations

import signal
from collections.abc import Mapping

from gshare.api import gshare_pb2 as pb
from gshare.config import Config
from schedulerd.errors import Refused
from schedulerd.jobstate import JobState
from schedulerd.model import JobRecord, NodeRecord
from schedulerd.peercred import Caller

MAX_GPUS_PER_JOB = 4096
MAX_PRIORITY = 1_000_000


def validate(
    config: Config,
    nodes: Mapping[str, NodeRecord],
    caller: Caller,
    spec: pb.JobSpec,
    now: float,
    is_admin: bool,
) -> JobRecord:
    """Turn a submission into a job record, or refuse it with the reason."""
    if caller.anonymous:
        raise Refused(
            "submitting needs a known user: use the scheduler's Unix socket",
            "PERMISSION_DENIED",
        )
    if spec.gpus < 1:
        raise Refused(f"--gpus must be at least 1, not {spec.gpus}")
    if spec.gpus > MAX_GPUS_PER_JOB:
        raise Refused(f"--gpus {spec.gpus} is more than any node can have")
    queue_name = spec.queue or config.default_queue
    queue = config.queues.get(queue_name)
    if queue is None:
        known = ", ".join(sorted(config.queues))
        raise Refused(f"unknown queue {queue_name!r} (queues: {known})")
    if spec.slurm not in ("", "auto", "never", "always"):
        raise Refused(f"--slurm must be never, auto or always, not {spec.slurm!r}")
    if spec.slurm == "always" and not config.slurm.enabled:
        raise Refused("--slurm always: this scheduler has no Slurm cluster ([slurm] url)")
    if nodes and spec.slurm != "always":
        widest = max(len(n.gpus) for n in nodes.values())
        if spec.gpus > widest:
            raise Refused(
                f"job needs {spec.gpus} GPUs on one node, but the largest node has {widest}"
            )
    if not spec.script:
        raise Refused("the job script is empty")
    if len(spec.script) > config.max_script_bytes:
        raise Refused(
            f"the job script is {len(spec.script)} bytes, over the limit of "
            f"{config.max_script_bytes}"
        )
    if not spec.script.startswith(b"#!"):
        raise Refused("the job script must start with a #! line (e.g. #!/bin/bash)")
    if b"\0" in spec.script:
        raise Refused("the job script is a binary file")
    if abs(spec.priority) > MAX_PRIORITY:
        raise Refused(f"--priority must be between {-MAX_PRIORITY} and {MAX_PRIORITY}")
    if spec.priority > 0 and not is_admin:
        raise Refused("only an admin may give a job a positive priority", "PERMISSION_DENIED")
    if spec.time_limit_s < 0:
        raise Refused("--time must not be negative")
    limit = spec.time_limit_s or queue.default_time_limit_s
    if queue.max_time_limit_s and limit and limit > queue.max_time_limit_s:
        raise Refused(
            f"--time {limit}s is over queue {queue_name}'s limit of {queue.max_time_limit_s}s"
        )
    if queue.max_time_limit_s and not limit:
        limit = queue.max_time_limit_s
    if spec.cpus < 0 or spec.mem_mb < 0:
        raise Refused("--cpus and --mem must not be negative")
    if spec.preempt_signal and (
        spec.preempt_signal in (signal.SIGKILL, signal.SIGSTOP)
        or not 0 < spec.preempt_signal < signal.NSIG
    ):
        raise Refused(f"--signal {spec.preempt_signal}: a job cannot catch that signal")
    if spec.grace_s < 0 or spec.grace_s > 86400:
        raise Refused("--grace must be between 0 and 1 day")
    if spec.HasField("max_restarts") and spec.max_restarts < -1:
        raise Refused("--max-restarts must be -1 (no limit) or more")
    if not spec.workdir.startswith("/"):
        raise Refused("the working directory must be an absolute path")
    return JobRecord(
        job_id=0,
        user=caller.user,
        uid=caller.uid,
        gid=caller.gid,
        name=spec.name or spec.script_name or "job",
        queue=queue_name,
        gpus=spec.gpus,
        priority=spec.priority,
        time_limit_s=int(limit),
        cpus=spec.cpus,
        mem_mb=int(spec.mem_mb),
        workdir=spec.workdir,
        env=dict(spec.env),
        output=spec.output,
        args=list(spec.args),
        script_name=spec.script_name,
        state=JobState.PENDING,
        submit_time=now,
        preempt_signal=spec.preempt_signal or int(signal.SIGUSR1),
        grace_s=spec.grace_s or float(queue.grace_s),
        no_preempt=spec.no_preempt,
        max_restarts=spec.max_restarts if spec.HasField("max_restarts") else config.max_restarts,
        checkpoint_dir=spec.checkpoint_dir,
        slurm="" if spec.slurm == "auto" else spec.slurm,
    )
