"""REST API v0.0.38: Slurm 21.08 and 22.05 (Debian 12's Slurm 22.05.8).

Shapes, as served by slurmrestd 22.05.8 (its /openapi/v3 and its answers):
- submit: `{"script": ..., "job": {...}}`; `environment` is an object and must not be empty;
  GPUs go in `gres` ("gpu:2"). The `argv` field crashes slurmrestd 22.05.8 (it drops the
  connection and exits), so arguments are set inside the script instead (`set -- ...`).
- job records: `job_state` is one word; `exit_code` is the raw wait status (exit code in
  the high byte, signal in the low 7 bits); times are epoch seconds, 0 when unset;
  `standard_output` is the unexpanded pattern ("" for the default slurm-%j.out); GPUs are
  in `gres_detail` while the job runs ("gpu:2(IDX:0-1)"), else in `tres_per_node`
  ("gres:gpu:2") or `tres_per_job` (from the `gpus` field).
- nodes: `state` is one lower-case word plus `state_flags`; `gres`/`gres_used` strings.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from typing import Any

from slurm_bridge._adapter import (
    ApiUse,
    epoch_or_none,
    expand_hostlist,
    gres_gpus,
    items,
    no_val,
    output_path,
    text,
)
from slurm_bridge._errors import SlurmRejected
from slurm_bridge._models import (
    JobState,
    SlurmJob,
    SlurmJobSpec,
    SlurmNode,
    SlurmPartition,
    job_state_from_slurm,
)

V = "v0.0.38"
_JOB_FIELDS = tuple(
    f"jobs[].{f}"
    for f in (
        "job_id",
        "name",
        "comment",
        "user_name",
        "partition",
        "job_state",
        "state_reason",
        "exit_code",
        "submit_time",
        "start_time",
        "end_time",
        "nodes",
        "node_count",
        "gres_detail",
        "tres_per_node",
        "tres_per_job",
        "standard_output",
        "current_working_directory",
    )
)
_SHELLS = ("sh", "bash", "dash", "ksh", "zsh")


class V0038:
    version: str = V
    contract: tuple[ApiUse, ...] = (
        ApiUse(
            "ping", "GET", f"/slurm/{V}/ping", response_fields=("pings[].hostname", "pings[].ping")
        ),
        ApiUse(
            "nodes",
            "GET",
            f"/slurm/{V}/nodes",
            response_fields=tuple(
                f"nodes[].{f}"
                for f in ("name", "state", "state_flags", "gres", "gres_used", "partitions", "cpus")
            ),
        ),
        ApiUse(
            "partitions",
            "GET",
            f"/slurm/{V}/partitions",
            response_fields=tuple(
                f"partitions[].{f}" for f in ("name", "state", "nodes", "total_cpus", "total_nodes")
            ),
        ),
        ApiUse("jobs", "GET", f"/slurm/{V}/jobs", response_fields=_JOB_FIELDS),
        ApiUse("job", "GET", f"/slurm/{V}/job/{{job_id}}", response_fields=_JOB_FIELDS),
        ApiUse(
            "submit",
            "POST",
            f"/slurm/{V}/job/submit",
            request_fields=(
                "script",
                *(
                    f"job.{f}"
                    for f in (
                        "name",
                        "comment",
                        "current_working_directory",
                        "environment",
                        "tasks",
                        "cpus_per_task",
                        "gres",
                        "nodes",
                        "tasks_per_node",
                        "time_limit",
                        "standard_output",
                        "standard_error",
                        "partition",
                    )
                ),
            ),
            response_fields=("job_id",),
        ),
        ApiUse("cancel", "DELETE", f"/slurm/{V}/job/{{job_id}}"),
    )

    # ------------------------------------------------------------ requests

    def submit_body(self, spec: SlurmJobSpec) -> dict[str, Any]:
        job: dict[str, Any] = {
            "name": spec.name,
            "current_working_directory": spec.working_dir,
            "environment": spec.environment_or_default(),
            "tasks": 1,
            "cpus_per_task": spec.cpus,
        }
        if spec.comment:
            job["comment"] = spec.comment
        if spec.gpus:
            job["gres"] = f"gpu:{spec.gpus}"  # per node
        if spec.nodes > 1:
            job["nodes"] = [spec.nodes, spec.nodes]
            job["tasks"] = spec.nodes
            job["tasks_per_node"] = 1
        if spec.time_limit_minutes is not None:
            job["time_limit"] = spec.time_limit_minutes
        if spec.stdout:
            job["standard_output"] = spec.stdout
        if spec.stderr:
            job["standard_error"] = spec.stderr
        if spec.partition:
            job["partition"] = spec.partition
        return {"script": _script_with_args(spec), "job": job}

    # ------------------------------------------------------------ answers

    def submit_answer(self, doc: Any) -> int:
        return int(doc["job_id"])

    def pings(self, doc: Any) -> dict[str, str]:
        return {text(p, "hostname"): text(p, "ping").upper() for p in items(doc, "pings")}

    def jobs(self, doc: Any) -> list[SlurmJob]:
        return [_job(j) for j in items(doc, "jobs")]

    def nodes(self, doc: Any) -> list[SlurmNode]:
        return [
            SlurmNode(
                name=text(n, "name"),
                state="+".join(
                    [
                        text(n, "state").upper(),
                        *(str(f).upper() for f in n.get("state_flags") or ()),
                    ]
                ),
                gpus_total=gres_gpus(text(n, "gres")),
                gpus_used=gres_gpus(text(n, "gres_used")),
                partitions=tuple(str(p) for p in n.get("partitions") or ()),
                cpus=no_val(n.get("cpus")) or 0,
            )
            for n in items(doc, "nodes")
        ]

    def partitions(self, doc: Any) -> list[SlurmPartition]:
        return [
            SlurmPartition(
                name=text(p, "name"),
                state=text(p, "state").upper(),
                nodes=expand_hostlist(text(p, "nodes")),
                total_cpus=no_val(p.get("total_cpus")),
                total_nodes=no_val(p.get("total_nodes")),
            )
            for p in items(doc, "partitions")
        ]


def _script_with_args(spec: SlurmJobSpec) -> str:
    if not spec.argv:
        return spec.script
    first, _, rest = spec.script.partition("\n")
    interpreter = first[2:].split()
    program = interpreter[-1] if interpreter and interpreter[0].endswith("/env") else ""
    program = (program or (interpreter[0] if interpreter else "")).rsplit("/", 1)[-1]
    if program not in _SHELLS:
        raise SlurmRejected(
            f"job {spec.name!r}: REST API {V} cannot pass arguments to a {first!r} script "
            "(slurmrestd 22.05 crashes on the argv field, and only a shell script can take "
            "them through `set --`); put the arguments in the script"
        )
    return f"{first}\nset -- {shlex.join(spec.argv)}\n{rest}"


def _job(j: Mapping[str, Any]) -> SlurmJob:
    job_id = int(j["job_id"])
    slurm_state = text(j, "job_state").upper()
    state = job_state_from_slurm([slurm_state])
    status = no_val(j.get("exit_code"))
    ended = state.is_final
    name, user = text(j, "name"), text(j, "user_name")
    return SlurmJob(
        job_id=job_id,
        name=name,
        state=state,
        slurm_state=slurm_state,
        comment=text(j, "comment"),
        user=user,
        partition=text(j, "partition"),
        exit_code=(status >> 8) & 0xFF if ended and status is not None else None,
        signal=(status & 0x7F) or None if ended and status is not None else None,
        submit_time=epoch_or_none(j.get("submit_time")),
        start_time=epoch_or_none(j.get("start_time")),
        end_time=epoch_or_none(j.get("end_time")) if ended else None,
        gpus=_job_gpus(j, state),
        nodes=expand_hostlist(text(j, "nodes")),
        stdout_path=output_path(
            text(j, "standard_output"),
            cwd=text(j, "current_working_directory"),
            job_id=job_id,
            name=name,
            user=user,
        ),
        reason=_reason(text(j, "state_reason")),
    )


def _job_gpus(j: Mapping[str, Any], state: JobState) -> int:
    if state is JobState.RUNNING:
        held = sum(gres_gpus(str(d)) for d in j.get("gres_detail") or ())
        if held:
            return held
    per_job = gres_gpus(text(j, "tres_per_job"))
    if per_job:
        return per_job
    return gres_gpus(text(j, "tres_per_node")) * max(1, no_val(j.get("node_count")) or 1)


def _reason(value: str) -> str | None:
    return None if value in ("", "None") else value
