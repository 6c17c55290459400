"""The scheduler's tables (SQLAlchemy 2 declarative rows), and a job's record to and
from its row.

The schema's history is in `migrations/` (Alembic), which reads `Base.metadata`; the
reads and writes are `schedulerd/store.py`'s.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from sqlalchemy import JSON, Boolean, Float, ForeignKey, Integer, LargeBinary, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from schedulerd.jobstate import JobState
from schedulerd.model import JobPart, JobRecord


class Base(DeclarativeBase):
    pass


class JobRow(Base):
    __tablename__ = "jobs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    user: Mapped[str] = mapped_column(String(64), index=True)
    uid: Mapped[int] = mapped_column(Integer)
    gid: Mapped[int] = mapped_column(Integer)
    name: Mapped[str] = mapped_column(String(256))
    queue: Mapped[str] = mapped_column(String(64))
    gpus: Mapped[int] = mapped_column(Integer)
    priority: Mapped[int] = mapped_column(Integer)
    time_limit_s: Mapped[int] = mapped_column(Integer)
    cpus: Mapped[int] = mapped_column(Integer)
    mem_mb: Mapped[int] = mapped_column(Integer)
    workdir: Mapped[str] = mapped_column(Text)
    env: Mapped[dict[str, str]] = mapped_column(JSON)
    output: Mapped[str] = mapped_column(Text)
    script: Mapped[bytes] = mapped_column(LargeBinary)
    args: Mapped[list[str]] = mapped_column(JSON)
    script_name: Mapped[str] = mapped_column(Text)
    state: Mapped[str] = mapped_column(String(16), index=True)
    submit_time: Mapped[float] = mapped_column(Float)
    start_time: Mapped[float] = mapped_column(Float, default=0.0)
    end_time: Mapped[float] = mapped_column(Float, default=0.0)
    node: Mapped[str] = mapped_column(String(255), default="")
    gpu_indexes: Mapped[list[int]] = mapped_column(JSON, default=list)
    gpu_uuids: Mapped[list[str]] = mapped_column(JSON, default=list)
    exit_code: Mapped[int] = mapped_column(Integer, default=0)
    exit_signal: Mapped[int] = mapped_column(Integer, default=0)
    has_exit: Mapped[bool] = mapped_column(Boolean, default=False)
    restarts: Mapped[int] = mapped_column(Integer, default=0)
    reason: Mapped[str] = mapped_column(Text, default="")
    end_request: Mapped[str] = mapped_column(String(16), default="")
    preempt_signal: Mapped[int] = mapped_column(Integer, default=10)
    grace_s: Mapped[float] = mapped_column(Float, default=0.0)
    no_preempt: Mapped[bool] = mapped_column(Boolean, default=False)
    max_restarts: Mapped[int] = mapped_column(Integer, default=-1)
    checkpoint_dir: Mapped[str] = mapped_column(Text, default="")
    last_checkpoint: Mapped[float] = mapped_column(Float, default=0.0)
    preemptions: Mapped[int] = mapped_column(Integer, default=0)
    preempted_for: Mapped[int] = mapped_column(Integer, default=0)
    claimed_node: Mapped[str] = mapped_column(String(255), default="")
    slurm: Mapped[str] = mapped_column(String(16), default="")
    slurm_job_id: Mapped[int] = mapped_column(Integer, default=0)
    slurm_state: Mapped[str] = mapped_column(String(32), default="")
    slurm_charged_until: Mapped[float] = mapped_column(Float, default=0.0)
    # unique per uid (index ix_jobs_uid_submit_key); NULL when the client sent no key
    submit_key: Mapped[str | None] = mapped_column(String(128), nullable=True, default=None)
    # arrays (migration 0007): a task's array is its first task's id; only that first
    # task stores the script, which the others share
    array_job_id: Mapped[int] = mapped_column(Integer, default=0, index=True)
    array_task_id: Mapped[int] = mapped_column(Integer, default=0)
    array_spec: Mapped[str] = mapped_column(Text, default="")
    dependency: Mapped[str] = mapped_column(Text, default="")
    params: Mapped[dict[str, str] | None] = mapped_column(JSON, nullable=True, default=None)
    gpu_types: Mapped[list[str] | None] = mapped_column(JSON, nullable=True, default=list)
    # multi-node jobs (migration 0009)
    nodes: Mapped[int] = mapped_column(Integer, default=1)
    gpus_per_node: Mapped[int] = mapped_column(Integer, default=0)
    parts: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON, nullable=True, default=None)
    master_port: Mapped[int] = mapped_column(Integer, default=0)


class ClusterRow(Base):
    """One row: the id of this cluster's database, made with it (migration 0006)."""

    __tablename__ = "cluster"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    created: Mapped[float] = mapped_column(Float)


class EventRow(Base):
    __tablename__ = "job_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"), index=True)
    time: Mapped[float] = mapped_column(Float)
    kind: Mapped[str] = mapped_column(String(32))
    from_state: Mapped[str] = mapped_column(String(16))
    to_state: Mapped[str] = mapped_column(String(16))
    actor: Mapped[str] = mapped_column(String(64))
    reason: Mapped[str] = mapped_column(Text)


class NodeRow(Base):
    __tablename__ = "nodes"

    name: Mapped[str] = mapped_column(String(255), primary_key=True)
    gpus: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    cpus: Mapped[int] = mapped_column(Integer)
    mem_mb: Mapped[int] = mapped_column(Integer)
    drained: Mapped[bool] = mapped_column(Boolean, default=False)
    reason: Mapped[str] = mapped_column(Text, default="")
    last_seen: Mapped[float] = mapped_column(Float, default=0.0)
    # GPU index (as text: a JSON key) -> why it is out of scheduling
    gpu_health: Mapped[dict[str, str] | None] = mapped_column(JSON, nullable=True)


class UsageRow(Base):
    """The fair-share ledger: each user's decayed GPU-seconds as of `updated`."""

    __tablename__ = "usage"

    user: Mapped[str] = mapped_column(String(64), primary_key=True)
    gpu_seconds: Mapped[float] = mapped_column(Float)
    updated: Mapped[float] = mapped_column(Float)
    idle_gpu_seconds: Mapped[float] = mapped_column(Float, default=0.0)


class JobGpuStatsRow(Base):
    """What telemetry saw of a job's GPUs, written when it leaves its node."""

    __tablename__ = "job_gpu_stats"

    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"), primary_key=True)
    util_avg: Mapped[float] = mapped_column(Float)
    mem_peak_mb: Mapped[int] = mapped_column(Integer)
    sampled_s: Mapped[float] = mapped_column(Float)
    idle_gpu_s: Mapped[float] = mapped_column(Float)


_JOB_FIELDS = [f.name for f in fields(JobRecord) if f.name not in ("job_id", "state")]


def _record(row: JobRow) -> JobRecord:
    values = {f: getattr(row, f) for f in _JOB_FIELDS}
    values["submit_key"] = values["submit_key"] or ""
    values["params"] = values["params"] or {}
    values["gpu_types"] = values["gpu_types"] or []
    values["parts"] = [JobPart.from_json(p) for p in values["parts"] or ()]
    return JobRecord(job_id=row.id, state=JobState(row.state), **values)


def _row(record: JobRecord, script: bytes) -> dict[str, Any]:
    return {
        **{f: getattr(record, f) for f in _JOB_FIELDS},
        "submit_key": record.submit_key or None,
        "params": record.params or None,
        "parts": _column("parts", record.parts),
        "script": script,
        "state": record.state.value,
    }


def _column(key: str, value: Any) -> Any:
    """A record's field as its column holds it."""
    if key == "parts":
        return [p.as_json() for p in value] or None
    return value


def _submit_event(job_id: int, record: JobRecord, now: float) -> dict[str, Any]:
    return {
        "job_id": job_id,
        "time": now,
        "kind": "submit",
        "from_state": "",
        "to_state": record.state.value,
        "actor": record.user,
        "reason": record.reason,
    }
