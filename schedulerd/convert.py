"""Domain records to and from protobuf messages."""

from __future__ import annotations

from gshare.api import gshare_pb2 as pb
from schedulerd.model import EventRecord, GpuInfo, JobRecord, NodeRecord, NodeState
from schedulerd.telemetry import Telemetry

_NODE_STATE = {
    NodeState.UP: pb.NODE_UP,
    NodeState.DRAINING: pb.NODE_DRAINING,
    NodeState.DOWN: pb.NODE_DOWN,
}


def spec_of(
    job: JobRecord, script: bytes = b"", extra_env: dict[str, str] | None = None
) -> pb.JobSpec:
    return pb.JobSpec(
        name=job.name,
        queue=job.queue,
        gpus=job.gpus,
        priority=job.priority,
        time_limit_s=job.time_limit_s,
        cpus=job.cpus,
        mem_mb=job.mem_mb,
        workdir=job.workdir,
        env={**job.env, **extra_env} if extra_env else job.env,
        output=job.output,
        script=script,
        args=job.args,
        script_name=job.script_name,
        preempt_signal=job.preempt_signal,
        grace_s=job.grace_s,
        no_preempt=job.no_preempt,
        max_restarts=job.max_restarts,
        checkpoint_dir=job.checkpoint_dir,
        slurm=job.slurm,
        gpu_types=job.gpu_types,
        nodes=job.nodes if job.nodes > 1 else 0,
        gpus_per_node=job.gpus_per_node,
    )


def job_to_pb(job: JobRecord, events: list[EventRecord] | None = None, position: int = 0) -> pb.Job:
    spec = spec_of(job)
    spec.ClearField("env")  # listings stay small; the environment stays with the scheduler
    return pb.Job(
        job_id=job.job_id,
        spec=spec,
        state=pb.JobState.Value(job.state.value),
        user=job.user,
        uid=job.uid,
        gid=job.gid,
        submit_time=job.submit_time,
        start_time=job.start_time,
        end_time=job.end_time,
        gpus=[
            pb.GpuRef(node=where, index=i, uuid=u)
            for where, indexes, uuids in (
                [(p.node, p.gpus, p.uuids) for p in job.parts]
                or [(job.node, tuple(job.gpu_indexes), tuple(job.gpu_uuids))]
            )
            for i, u in zip(indexes, uuids, strict=False)
        ],
        node=job.node,
        exit_code=job.exit_code,
        exit_signal=job.exit_signal,
        has_exit=job.has_exit,
        restarts=job.restarts,
        reason=job.reason,
        output_path=job.output_path,
        position=position,
        last_checkpoint=job.last_checkpoint,
        checkpoint_dir=job.checkpoint_path,
        preemptions=job.preemptions,
        slurm_job_id=job.slurm_job_id,
        slurm_state=job.slurm_state,
        array_job_id=job.array_job_id,
        array_task_id=job.array_task_id,
        array_spec=job.array_spec,
        dependency=job.dependency,
        params=job.params,
        parts=[
            pb.JobPart(
                node=p.node,
                rank=p.rank,
                gpus=p.gpus,
                state=p.state,
                pid=p.pid,
                exit_code=p.exit_code,
                exit_signal=p.exit_signal,
            )
            for p in job.parts
        ],
        events=[
            pb.JobEvent(
                seq=e.seq,
                time=e.time,
                kind=e.kind,
                from_state=e.from_state,
                to_state=e.to_state,
                actor=e.actor,
                reason=e.reason,
            )
            for e in events or []
        ],
    )


def set_gpu_stats(
    msg: pb.Job,
    util_avg: float,
    util_now: float,
    mem_peak_mb: int,
    idle_s: float,
    idle_gpu_s: float,
    warnings: list[str] | None = None,
) -> None:
    msg.has_gpu_stats = True
    msg.gpu_util_avg = util_avg
    msg.gpu_util_now = util_now
    msg.gpu_mem_peak_mb = mem_peak_mb
    msg.idle_s = idle_s
    msg.idle_gpu_s = idle_gpu_s
    msg.warnings.extend(warnings or [])


def _gpu_to_pb(node: NodeRecord, g: GpuInfo, telemetry: Telemetry | None) -> pb.Gpu:
    msg = pb.Gpu(
        index=g.index,
        uuid=g.uuid,
        model=g.model,
        memory_mb=g.memory_mb,
        nvlink_peers=g.nvlink_peers,
        drained=node.gpu_health.get(g.index, ""),
    )
    if telemetry is None:
        return msg
    sample = telemetry.gpu(node.name, g.index)
    if sample is not None and sample.uuid == g.uuid:
        msg.metrics.CopyFrom(
            pb.GpuMetrics(
                time=sample.time,
                util_pct=sample.util_pct,
                mem_used_mb=sample.mem_used_mb,
                mem_total_mb=sample.mem_total_mb,
                temp_c=sample.temp_c,
                power_w=sample.power_w,
                sm_clock_mhz=sample.sm_clock_mhz,
                mem_clock_mhz=sample.mem_clock_mhz,
                ecc_sbe=sample.ecc_sbe,
                ecc_dbe=sample.ecc_dbe,
                processes=[
                    pb.GpuProcessInfo(pid=p.pid, used_mb=p.used_mb, job_id=p.job_id)
                    for p in sample.processes
                ],
            )
        )
        msg.warnings.extend(m.text for m in telemetry.warnings.get((node.name, g.index), ()))
    return msg


def node_to_pb(node: NodeRecord, busy: list[int], telemetry: Telemetry | None = None) -> pb.Node:
    msg = _node_to_pb(node, busy)
    msg.gpus.extend(_gpu_to_pb(node, g, telemetry) for g in node.gpus)
    msg.drained = node.drained
    if telemetry is not None:
        status = telemetry.status.get(node.name)
        if status is not None:
            msg.telemetry = "online" if status.online else "offline"
        host = telemetry.hosts.get(node.name)
        if host is not None and status is not None and status.online:
            msg.host_cpu_pct = host.cpu_pct
            msg.host_load1 = host.load1
            msg.host_mem_used_mb = host.mem_used_mb
    return msg


def _node_to_pb(node: NodeRecord, busy: list[int]) -> pb.Node:
    return pb.Node(
        name=node.name,
        state=_NODE_STATE.get(node.state, pb.NODE_DOWN),
        cpus=node.cpus,
        mem_mb=node.mem_mb,
        busy_gpus=busy,
        last_seen=node.last_seen,
        reason=node.reason,
        gpu_backend=node.gpu_backend,
        agent_version=node.agent_version,
        confinement=node.confinement,
        address=node.address,
    )
