"""A submission checked at the edge: every field of a JobSpec bounded, before anything is stored.

The limits are stated once, here. They are chosen so that no accepted job can make a
message that breaks the wire's limit (`gshare.client.MAX_MESSAGE_BYTES`, 64 MiB, the same
on the scheduler, its clients and its agents):

- a Launch carries the script (at most SCRIPT_CEILING) and the spec (at most
  MAX_SPEC_BYTES) plus paths derived from the spec's: under 20 MiB;
- a listing (ListJobs, WatchCluster, GetJob) leaves out the script and the environment,
  so each job in it is the listed part of the spec (at most MAX_LISTED_BYTES) plus its
  output and checkpoint paths with %j expanded (each under 50 KiB), and for an array's
  task its array (4 KiB), dependency (4 KiB) and sweep parameters (32 of at most 1 KiB
  each): under 210 KiB.

Every refusal is a Refused (INVALID_ARGUMENT unless it is about who may do it) with a
one-line message that starts with the field it is about.
"""

from __future__ import annotations

import math
import signal
from collections.abc import Callable, Mapping

from gshare.api import gshare_pb2 as pb
from gshare.arrays import ArraySpec, Dependency, parse_array, parse_dependency
from gshare.config import Config
from gshare.limits import (
    KIB,
    MAX_ARG_CHARS,
    MAX_ARGS,
    MAX_CHARS,
    MAX_CPUS,
    MAX_ENV_ENTRIES,
    MAX_ENV_KEY_CHARS,
    MAX_ENV_VALUE_CHARS,
    MAX_GPUS_PER_JOB,
    MAX_GRACE_S,
    MAX_LISTED_BYTES,
    MAX_MEM_MB,
    MAX_NODES_PER_JOB,
    MAX_PRIORITY,
    MAX_RESTARTS,
    MAX_SPEC_BYTES,
    MAX_TASK_PARAMS_BYTES,
    MAX_TIME_LIMIT_S,
    MIB,
    SCRIPT_CEILING,
    env_name_ok,
)
from policies.quota import accepts
from schedulerd.errors import Refused
from schedulerd.jobstate import JobState
from schedulerd.model import JobRecord, NodeRecord, clone_job
from schedulerd.peercred import Caller


def check_bounds(spec: pb.JobSpec, max_script_bytes: int) -> None:
    """The checks that need nothing but the spec: sizes, finite numbers in range, no NUL."""
    _check_strings(spec)
    _check_numbers(spec)
    script_limit = min(max_script_bytes, SCRIPT_CEILING)
    if not spec.script:
        raise Refused("the job script is empty")
    if len(spec.script) > script_limit:
        raise Refused(
            f"the job script is {len(spec.script)} bytes, over the limit of {script_limit}"
        )
    if not spec.script.startswith(b"#!"):
        raise Refused("the job script must start with a #! line (e.g. #!/bin/bash)")
    if b"\0" in spec.script:
        raise Refused("the job script is a binary file")
    whole = _without(spec, "script", "task_params").ByteSize()
    if whole > MAX_SPEC_BYTES:
        raise Refused(
            f"the job's request is {whole} bytes without its script, over the limit of "
            f"{MAX_SPEC_BYTES} (a large environment or arguments?)"
        )
    listed = _without(spec, "script", "env", "task_params").ByteSize()
    if listed > MAX_LISTED_BYTES:
        raise Refused(
            f"the job's name, paths and arguments are {listed} bytes together, over the "
            f"limit of {MAX_LISTED_BYTES}"
        )


def _without(spec: pb.JobSpec, *fields: str) -> pb.JobSpec:
    copy = pb.JobSpec()
    copy.CopyFrom(spec)
    for name in fields:
        copy.ClearField(name)  # type: ignore[arg-type]
    return copy


def _check_text(field: str, value: str, limit: int) -> None:
    if len(value) > limit:
        raise Refused(f"{field}: {len(value)} characters, over the limit of {limit}")
    if "\0" in value:
        raise Refused(f"{field}: contains a NUL byte")


def _check_strings(spec: pb.JobSpec) -> None:
    for field, limit in MAX_CHARS.items():
        _check_text(field, getattr(spec, field), limit)
    if len(spec.env) > MAX_ENV_ENTRIES:
        raise Refused(f"env: {len(spec.env)} variables, over the limit of {MAX_ENV_ENTRIES}")
    for key, value in spec.env.items():
        _check_text("env: a variable name", key, MAX_ENV_KEY_CHARS)
        if not env_name_ok(key):
            raise Refused(f"env: {key!r} is not a valid variable name")
        _check_text(f"env: {key}", value, MAX_ENV_VALUE_CHARS)
    if len(spec.args) > MAX_ARGS:
        raise Refused(f"args: {len(spec.args)} arguments, over the limit of {MAX_ARGS}")
    for number, arg in enumerate(spec.args, start=1):
        _check_text(f"args: argument {number}", arg, MAX_ARG_CHARS)


def _check_numbers(spec: pb.JobSpec) -> None:
    if spec.gpus < 1:
        raise Refused(f"--gpus must be at least 1, not {spec.gpus}")
    if spec.nodes > 1 or spec.gpus_per_node:
        _check_shape(spec)
    elif spec.nodes < 0:
        raise Refused(f"--nodes must be at least 1, not {spec.nodes}")
    elif spec.gpus > MAX_GPUS_PER_JOB:
        raise Refused(f"--gpus {spec.gpus} is more than any node can have")
    if abs(spec.priority) > MAX_PRIORITY:
        raise Refused(f"--priority must be between {-MAX_PRIORITY} and {MAX_PRIORITY}")
    if not 0 <= spec.time_limit_s <= MAX_TIME_LIMIT_S:
        raise Refused(f"time_limit_s: {spec.time_limit_s} is not between 0 and {MAX_TIME_LIMIT_S}")
    if not 0 <= spec.cpus <= MAX_CPUS:
        raise Refused(f"cpus: {spec.cpus} is not between 0 and {MAX_CPUS}")
    if not 0 <= spec.mem_mb <= MAX_MEM_MB:
        raise Refused(f"mem_mb: {spec.mem_mb} is not between 0 and {MAX_MEM_MB}")
    if spec.preempt_signal and (
        spec.preempt_signal in (signal.SIGKILL, signal.SIGSTOP)
        or not 0 < spec.preempt_signal < signal.NSIG
    ):
        raise Refused(f"--signal {spec.preempt_signal}: a job cannot catch that signal")
    if not math.isfinite(spec.grace_s) or not 0 <= spec.grace_s <= MAX_GRACE_S:
        raise Refused(f"grace_s: {spec.grace_s!r} is not between 0 and {MAX_GRACE_S:g} (1 day)")
    if spec.HasField("max_restarts") and not -1 <= spec.max_restarts <= MAX_RESTARTS:
        raise Refused(f"max_restarts: {spec.max_restarts} is not between -1 and {MAX_RESTARTS}")


MAX_GPU_TYPES = 16
MAX_GPU_TYPE_CHARS = 64


def check_gpu_types(spec: pb.JobSpec, nodes: Mapping[str, NodeRecord]) -> list[str]:
    """The job's GPU types, each a printable name that some registered node's GPUs match."""
    if len(spec.gpu_types) > MAX_GPU_TYPES:
        raise Refused(f"--gpu-type: {len(spec.gpu_types)} types, over the limit of {MAX_GPU_TYPES}")
    kinds: list[str] = []
    for kind in spec.gpu_types:
        if not kind.strip() or len(kind) > MAX_GPU_TYPE_CHARS or not kind.isprintable():
            raise Refused(
                f"--gpu-type: {kind[:MAX_GPU_TYPE_CHARS]!r} is not a GPU type name "
                f"(printable, 1 to {MAX_GPU_TYPE_CHARS} characters)"
            )
        if kind.strip() not in kinds:
            kinds.append(kind.strip())
    models = {g.model for n in nodes.values() for g in n.gpus}
    if kinds and models and not any(accepts(kinds, m) for m in models):
        known = ", ".join(sorted(models))
        raise Refused(f"--gpu-type {','.join(kinds)}: no registered node has such GPUs ({known})")
    return kinds


def check_pending_cap(user: str, config: Config, queued: int, adding: int = 1) -> None:
    """Refuse a submit (of `adding` jobs: an array's tasks) that would put the user over
    their max_pending_jobs."""
    cap = dict(config.users).get(user, config.user_limits).max_pending_jobs
    if cap and queued + adding > cap:
        if adding == 1:
            raise Refused(
                f"user {user} has {queued} jobs waiting, the most max_pending_jobs allows is {cap}",
                "RESOURCE_EXHAUSTED",
            )
        raise Refused(
            f"user {user} has {queued} jobs waiting; an array of {adding} tasks would pass "
            f"max_pending_jobs ({cap})",
            "RESOURCE_EXHAUSTED",
        )


def _check_shape(spec: pb.JobSpec) -> None:
    """A multi-node job: N parts of G GPUs, `gpus` their total."""
    nodes, per_node = max(spec.nodes, 1), spec.gpus_per_node
    if nodes > MAX_NODES_PER_JOB:
        raise Refused(f"--nodes {nodes} is over the limit of {MAX_NODES_PER_JOB}")
    if not 1 <= per_node <= MAX_GPUS_PER_JOB:
        raise Refused(f"--gpus-per-node {per_node} is not between 1 and {MAX_GPUS_PER_JOB}")
    if spec.gpus != nodes * per_node:
        raise Refused(f"--gpus {spec.gpus} is not --nodes {nodes} times --gpus-per-node {per_node}")


def _check_width(spec: pb.JobSpec, nodes: Mapping[str, NodeRecord], slurm_always: bool) -> None:
    """Refuse a job this cluster's nodes can never hold (Slurm's are not known here)."""
    if spec.nodes <= 1:
        if nodes and not slurm_always:
            widest = max(len(n.gpus) for n in nodes.values())
            if spec.gpus > widest:
                raise Refused(
                    f"job needs {spec.gpus} GPUs on one node, but the largest node has {widest}"
                )
        return
    if slurm_always:
        return
    wanted, per_node = spec.nodes, spec.gpus_per_node
    if nodes:
        wide = sum(1 for n in nodes.values() if len(n.gpus) >= per_node)
        if wide < wanted:
            raise Refused(
                f"--nodes {wanted} --gpus-per-node {per_node}: the cluster has "
                f"{wide} node{'' if wide == 1 else 's'} with {per_node} or more GPUs"
            )


def validate(
    caller: Caller,
    spec: pb.JobSpec,
    config: Config,
    nodes: Mapping[str, NodeRecord],
    is_admin: Callable[[Caller], bool],
    now: float,
) -> JobRecord:
    """Turn a submission into a job record, or refuse it with the reason."""
    if caller.anonymous:
        raise Refused(
            "submitting needs a known user: use the scheduler's Unix socket",
            "PERMISSION_DENIED",
        )
    check_bounds(spec, config.max_script_bytes)
    queue_name = spec.queue or config.default_queue
    queue = config.queues.get(queue_name)
    if queue is None:
        known = ", ".join(sorted(config.queues))
        raise Refused(f"unknown queue {queue_name!r} (queues: {known})")
    if spec.slurm not in ("", "auto", "never", "always"):
        raise Refused(f"--slurm must be never, auto or always, not {spec.slurm!r}")
    if spec.slurm == "always" and not config.slurm.enabled:
        raise Refused("--slurm always: this scheduler has no Slurm cluster ([slurm] url)")
    _check_width(spec, nodes, spec.slurm == "always")
    if spec.priority > 0 and not is_admin(caller):
        raise Refused("only an admin may give a job a positive priority", "PERMISSION_DENIED")
    limit = spec.time_limit_s or queue.default_time_limit_s
    if queue.max_time_limit_s and limit and limit > queue.max_time_limit_s:
        raise Refused(
            f"--time {limit}s is over queue {queue_name}'s limit of {queue.max_time_limit_s}s"
        )
    if queue.max_time_limit_s and not limit:
        limit = queue.max_time_limit_s
    if not spec.workdir.startswith("/"):
        raise Refused("the working directory must be an absolute path")
    gpu_types = check_gpu_types(spec, nodes)
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
        mem_mb=int(spec.mem_mb or queue.default_mem_mb),
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
        gpu_types=gpu_types,
        nodes=max(spec.nodes, 1),
        gpus_per_node=spec.gpus_per_node if spec.nodes > 1 else 0,
    )


# An array stores each task as a job row (its script and environment once, with the
# first): all of its tasks' rows together stay under this.
MAX_ARRAY_BYTES = 256 * MIB
MAX_PARAMS = 32  # a sweep trial's parameters
MAX_PARAM_NAME_CHARS = 64
MAX_PARAM_VALUE_CHARS = 1 * KIB


def array_of(spec: pb.JobSpec, max_size: int) -> ArraySpec | None:
    """The array a submission asks for (None: a single job), its sweep parameters checked."""
    if not spec.array:
        if spec.task_params:
            raise Refused("task_params: only an array's tasks have parameters (--array)")
        return None
    try:
        array = parse_array(spec.array, max_size)
    except ValueError as exc:
        raise Refused(str(exc)) from None
    params_bytes = sum(t.ByteSize() for t in spec.task_params)
    if params_bytes > MAX_TASK_PARAMS_BYTES:
        raise Refused(
            f"task_params: {params_bytes} bytes, over the limit of "
            f"{MAX_TASK_PARAMS_BYTES // MIB} MiB (a sweep of fewer or shorter values)"
        )
    if spec.task_params and len(spec.task_params) != array.count:
        raise Refused(
            f"task_params: {len(spec.task_params)} parameter sets for {array.count} tasks"
        )
    for number, task in enumerate(spec.task_params):
        if len(task.params) > MAX_PARAMS:
            raise Refused(f"task_params: task {number} has more than {MAX_PARAMS} parameters")
        if len({name.upper() for name in task.params}) < len(task.params):
            raise Refused(f"task_params: task {number} has two parameters that differ in case only")
        for name, value in task.params.items():
            if len(name) > MAX_PARAM_NAME_CHARS or not env_name_ok(name) or "%" in name:
                raise Refused(f"task_params: {name[:40]!r} is not a valid parameter name")
            _check_text(f"task_params: {name}", value, MAX_PARAM_VALUE_CHARS)
    # every task keeps its own copy of the listed part; the environment is kept once
    each = _without(spec, "script", "task_params", "env").ByteSize()
    whole = each * array.count + sum(t.ByteSize() for t in spec.task_params)
    if whole > MAX_ARRAY_BYTES:
        raise Refused(
            f"--array: {array.count} tasks of {each} bytes each are over the limit of "
            f"{MAX_ARRAY_BYTES // MIB} MiB for an array (long arguments or paths?)"
        )
    return array


def dependency_of(spec: pb.JobSpec) -> Dependency | None:
    if not spec.dependency:
        return None
    try:
        return parse_dependency(spec.dependency)
    except ValueError as exc:
        raise Refused(str(exc)) from None


def tasks_of(record: JobRecord, array: ArraySpec, spec: pb.JobSpec) -> list[JobRecord]:
    """The array's tasks as job records, in task order; the first is `record` itself. They
    share its environment and arguments (never changed in place). Each keeps the array as
    it was typed (`0-9999:3%16`: short, whatever the number of tasks)."""
    record.array_spec = spec.array.strip()
    params = [dict(t.params) for t in spec.task_params]
    out = []
    for number, task_id in enumerate(array.tasks):
        task = record if number == 0 else clone_job(record)
        task.array_task_id = task_id
        task.params = params[number] if params else {}
        task.gpu_indexes, task.gpu_uuids = [], []
        out.append(task)
    return out
