"""Job states as clients name and group them, defined once for the CLI and the TUI."""

from __future__ import annotations

from gshare.api import gshare_pb2 as pb

# every state, by name, in the wire's order
STATE_NAMES = [n for n in pb.JobState.keys() if n != "JOB_STATE_UNSPECIFIED"]  # noqa: SIM118
# the states a job ends in
FINAL = frozenset({pb.COMPLETED, pb.FAILED, pb.CANCELLED, pb.TIMEOUT})
# the states `gshare queue` shows by default: every one a job has not ended in
LIVE = tuple(name for name in STATE_NAMES if pb.JobState.Value(name) not in FINAL)


def state_name(job: pb.Job) -> str:
    return pb.JobState.Name(job.state)


def where(job: pb.Job) -> str:
    """Where a job runs: its node, or for a job handed off, its Slurm job id."""
    if job.slurm_job_id and not job.node:
        return f"slurm#{job.slurm_job_id}"
    if job.slurm_job_id:
        return f"{job.node}#{job.slurm_job_id}"
    return job.node or "-"
