"""Domain records to and from protobuf messages."""

from __future__ import annotations

from gshare.api import gshare_pb2 as pb
from schedulerd.model import EventRecord, JobRecord, NodeRecord, NodeState

_NODE_STATE = {
    NodeState.UP: pb.NODE_UP,
    NodeState.DRAINING: pb.NODE_DRAINING,
    NodeState.DOWN: pb.NODE_DOWN,
}


def spec_of(job: JobRecord, script: bytes = b"") -> pb.JobSpec:
    return pb.JobSpec(
        name=job.name,
        queue=job.queue,
        gpus=job.gpus,
        priority=job.priority,
        time_limit_s=job.time_limit_s,
        cpus=job.cpus,
        mem_mb=job.mem_mb,
        workdir=job.workdir,
        env=job.env,
        output=job.output,
        script=script,
        args=job.args,
        script_name=job.script_name,
        preempt_signal=job.preempt_signal,
        grace_s=job.grace_s,
        no_preempt=job.no_preempt,
        max_restarts=job.max_restarts,
        checkpoint_dir=job.checkpoint_dir,
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
            pb.GpuRef(node=job.node, index=i, uuid=u)
            for i, u in zip(job.gpu_indexes, job.gpu_uuids, strict=False)
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


def node_to_pb(node: NodeRecord, busy: list[int]) -> pb.Node:
    return pb.Node(
        name=node.name,
        state=_NODE_STATE.get(node.state, pb.NODE_DOWN),
        gpus=[
            pb.Gpu(
                index=g.index,
                uuid=g.uuid,
                model=g.model,
                memory_mb=g.memory_mb,
                nvlink_peers=g.nvlink_peers,
            )
            for g in node.gpus
        ],
        cpus=node.cpus,
        mem_mb=node.mem_mb,
        busy_gpus=busy,
        last_seen=node.last_seen,
        reason=node.reason,
        gpu_backend=node.gpu_backend,
        agent_version=node.agent_version,
    )
