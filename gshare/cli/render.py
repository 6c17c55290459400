"""How jobs, nodes and GPUs are shown: tables for people, JSON for programs."""

from __future__ import annotations

import signal
import time
from datetime import datetime
from typing import Any

from gshare.api import gshare_pb2 as pb
from gshare.render import printable
from gshare.timefmt import format_duration


def _state(job: pb.Job) -> str:
    return pb.JobState.Name(job.state)


def _when(t: float) -> str:
    return datetime.fromtimestamp(t).strftime("%Y-%m-%d %H:%M:%S") if t else "-"


def _runtime(job: pb.Job, now: float) -> str:
    if not job.start_time:
        return "-"
    return format_duration((job.end_time or now) - job.start_time)


def display_id(job: pb.Job) -> str:
    """`12_7` for task 7 of array 12, else the job id."""
    return f"{job.array_job_id}_{job.array_task_id}" if job.array_job_id else str(job.job_id)


def job_json(job: pb.Job) -> dict[str, Any]:
    return {
        "job_id": job.job_id,
        "id": display_id(job),
        "array_job_id": job.array_job_id or None,
        "array_task_id": job.array_task_id if job.array_job_id else None,
        "dependency": job.dependency or None,
        "params": dict(job.params) or None,
        "name": job.spec.name,
        "user": job.user,
        "queue": job.spec.queue,
        "state": _state(job),
        "priority": job.spec.priority,
        "gpus_requested": job.spec.gpus,
        "gpus": [{"node": g.node, "index": g.index, "uuid": g.uuid} for g in job.gpus],
        "gpu_types": list(job.spec.gpu_types),
        "node": job.node or None,
        "nodes": job.spec.nodes or 1,
        "gpus_per_node": job.spec.gpus_per_node or None,
        "parts": [
            {
                "node": p.node,
                "rank": p.rank,
                "gpus": list(p.gpus),
                "state": p.state,
                "pid": p.pid or None,
                "exit_code": p.exit_code if p.state == "EXITED" else None,
            }
            for p in job.parts
        ],
        "slurm_job_id": job.slurm_job_id or None,
        "slurm_state": job.slurm_state or None,
        "time_limit_s": job.spec.time_limit_s or None,
        "submit_time": job.submit_time,
        "start_time": job.start_time or None,
        "end_time": job.end_time or None,
        "exit_code": job.exit_code if job.has_exit else None,
        "exit_signal": job.exit_signal or None,
        "restarts": job.restarts,
        "preemptions": job.preemptions,
        "no_preempt": job.spec.no_preempt,
        "checkpoint_dir": job.checkpoint_dir,
        "last_checkpoint": job.last_checkpoint or None,
        "checkpoints": [
            {"time": e.time, "detail": e.reason} for e in job.events if e.kind == "checkpoint"
        ],
        "reason": job.reason,
        "position": job.position or None,
        "workdir": job.spec.workdir,
        "output": job.output_path,
        "script": job.spec.script_name,
        "args": list(job.spec.args),
        "events": [
            {
                "time": e.time,
                "kind": e.kind,
                "from": e.from_state,
                "to": e.to_state,
                "actor": e.actor,
                "reason": e.reason,
            }
            for e in job.events
        ],
        "gpu_stats": {
            "util_avg_pct": job.gpu_util_avg,
            "util_now_pct": job.gpu_util_now,
            "mem_peak_mb": job.gpu_mem_peak_mb,
            "idle_s": job.idle_s,
            "idle_gpu_s": job.idle_gpu_s,
            "warnings": list(job.warnings),
        }
        if job.has_gpu_stats
        else None,
    }


def table(rows: list[list[str]], headers: list[str]) -> str:
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)
    ]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    for r in rows:
        lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    return "\n".join(lines)


def _short(text: str, width: int = 60) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _first_clause(reason: str) -> str:
    """The short form of a reason, for tables: up to its first ';'."""
    return reason.split(";", 1)[0]


def _slurm_line(job: pb.Job) -> str:
    rule = {"": "the queue's rule", "never": "never", "always": "always"}.get(
        job.spec.slurm, job.spec.slurm
    )
    if job.slurm_job_id:
        return f"job {job.slurm_job_id}, {job.slurm_state or 'submitted'} (hand-off: {rule})"
    if job.state == pb.HANDED_OFF:
        return f"being submitted (hand-off: {rule})"
    return f"not handed off (hand-off: {rule})"


def _gpu_use(job: pb.Job) -> str:
    if not job.has_gpu_stats:
        return "no telemetry" if job.start_time else "-"
    text = f"{job.gpu_util_avg:.0f}% average"
    if job.gpu_util_now or job.idle_s:
        text += f", {job.gpu_util_now:.0f}% now"
    text += f", peak memory {job.gpu_mem_peak_mb} MB"
    if job.idle_s:
        text += f"; idle for {format_duration(int(job.idle_s))}"
    if job.idle_gpu_s >= 1:
        text += f"; {job.idle_gpu_s / 3600:.2f} idle GPU-hours"
    for warning in job.warnings:
        text += f"\n{'':>12}  warning: {printable(warning)}"
    return text


def _signal_label(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _metrics_json(m: pb.GpuMetrics) -> dict[str, object]:
    return {
        "time": m.time,
        "util_pct": m.util_pct,
        "mem_used_mb": m.mem_used_mb,
        "mem_total_mb": m.mem_total_mb,
        "temp_c": m.temp_c,
        "power_w": m.power_w,
        "sm_clock_mhz": m.sm_clock_mhz,
        "mem_clock_mhz": m.mem_clock_mhz,
        "ecc_sbe": m.ecc_sbe,
        "ecc_dbe": m.ecc_dbe,
        "processes": [
            {"pid": p.pid, "used_mb": p.used_mb, "job_id": p.job_id} for p in m.processes
        ],
    }


def _gpu_table(nodes: list[pb.Node]) -> str:
    rows = []
    now = time.time()
    for n in nodes:
        for g in n.gpus:
            m = g.metrics
            seen = g.HasField("metrics")
            jobs = sorted({p.job_id for p in m.processes if p.job_id})
            rows.append(
                [
                    n.name,
                    str(g.index),
                    "drained" if g.drained else "busy" if g.index in n.busy_gpus else "free",
                    f"{m.util_pct:.0f}%" if seen else "-",
                    f"{m.mem_used_mb / 1024:.1f}/{m.mem_total_mb / 1024:.0f}G" if seen else "-",
                    f"{m.temp_c:.0f}C" if seen else "-",
                    f"{m.power_w:.0f}W" if seen else "-",
                    str(m.ecc_dbe) if seen else "-",
                    ",".join(map(str, jobs)) or "-",
                    format_duration(int(now - m.time)) if seen else "never",
                ]
            )
    return table(
        rows, ["NODE", "GPU", "USE", "UTIL", "MEM", "TEMP", "POWER", "ECC-DBE", "JOBS", "SAMPLED"]
    )
