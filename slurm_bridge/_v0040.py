"""REST API v0.0.40 and v0.0.41: Slurm 23.11 to 24.05.

Written from Slurm's published OpenAPI descriptions of these versions (the data_parser
schemas: V0040JobDescMsg, V0040JobInfo, V0040Node, V0040PartitionInfo, and the
v0.0.41 equivalents, which keep the same field names and shapes for what is used here);
not yet run against a live 23.11+ slurmrestd. Differences from v0.0.38 that matter:
- submit: the script goes in `job.script`; `environment` is a list of "NAME=value";
  `argv` is supported (argv[0] is the script's name, as with sbatch); GPUs go in
  `tres_per_node` ("gres/gpu:2"); `time_limit` is a {set, infinite, number} object.
- job records: `job_state` is a list (the base state, then flags such as COMPLETING);
  numbers and times are {set, infinite, number} objects; `exit_code` is
  {status: [...], return_code: {...}, signal: {id: {...}, name}}.
- nodes: `state` is a list of words; partitions nest (`partition.state`,
  `nodes.configured`, `cpus.total`, `nodes.total`).
- collection paths end in a slash (`/jobs/`, `/nodes/`, `/partitions/`, `/ping/`).
"""

from __future__ import annotations

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
    tres_gpus,
)
from slurm_bridge._models import (
    JobState,
    SlurmJob,
    SlurmJobSpec,
    SlurmNode,
    SlurmPartition,
    job_state_from_slurm,
)

_JOB_FIELDS = (
    "job_id",
    "name",
    "comment",
    "user_name",
    "partition",
    "job_state",
    "state_reason",
    "exit_code.return_code",
    "exit_code.signal.id",
    "submit_time",
    "start_time",
    "end_time",
    "nodes",
    "node_count",
    "gres_detail",
    "tres_per_node",
    "tres_per_job",
    "tres_alloc_str",
    "standard_output",
    "current_working_directory",
)
_SUBMIT_FIELDS = (
    "script",
    "name",
    "comment",
    "current_working_directory",
    "environment",
    "argv",
    "tasks",
    "cpus_per_task",
    "tres_per_node",
    "minimum_nodes",
    "maximum_nodes",
    "tasks_per_node",
    "time_limit",
    "standard_output",
    "standard_error",
    "partition",
)


class V0040:
    """One adapter for v0.0.40 and v0.0.41 (pass the version to use)."""

    def __init__(self, version: str = "v0.0.40") -> None:
        if version not in ("v0.0.40", "v0.0.41"):
            raise ValueError(f"V0040 adapts v0.0.40 and v0.0.41, not {version}")
        v = self.version = version
        self.contract: tuple[ApiUse, ...] = (
            ApiUse(
                "ping",
                "GET",
                f"/slurm/{v}/ping/",
                response_fields=("pings[].hostname", "pings[].pinged"),
            ),
            ApiUse(
                "nodes",
                "GET",
                f"/slurm/{v}/nodes/",
                response_fields=tuple(
                    f"nodes[].{f}"
                    for f in ("name", "state", "gres", "gres_used", "partitions", "cpus")
                ),
            ),
            ApiUse(
                "partitions",
                "GET",
                f"/slurm/{v}/partitions/",
                response_fields=tuple(
                    f"partitions[].{f}"
                    for f in (
                        "name",
                        "partition.state",
                        "nodes.configured",
                        "cpus.total",
                        "nodes.total",
                    )
                ),
            ),
            ApiUse(
                "jobs",
                "GET",
                f"/slurm/{v}/jobs/",
                response_fields=tuple(f"jobs[].{f}" for f in _JOB_FIELDS),
            ),
            ApiUse(
                "job",
                "GET",
                f"/slurm/{v}/job/{{job_id}}",
                response_fields=tuple(f"jobs[].{f}" for f in _JOB_FIELDS),
            ),
            ApiUse(
                "submit",
                "POST",
                f"/slurm/{v}/job/submit",
                request_fields=tuple(f"job.{f}" for f in _SUBMIT_FIELDS),
                response_fields=("job_id",),
            ),
            ApiUse("cancel", "DELETE", f"/slurm/{v}/job/{{job_id}}"),
        )

    # ------------------------------------------------------------ requests

    def submit_body(self, spec: SlurmJobSpec) -> dict[str, Any]:
        job: dict[str, Any] = {
            "script": spec.script,
            "name": spec.name,
            "current_working_directory": spec.working_dir,
            "environment": [f"{k}={v}" for k, v in spec.environment_or_default().items()],
            "tasks": 1,
            "cpus_per_task": spec.cpus,
        }
        if spec.argv:
            job["argv"] = [spec.name or "script", *spec.argv]
        if spec.comment:
            job["comment"] = spec.comment
        if spec.gpus:
            job["tres_per_node"] = f"gres/gpu:{spec.gpus}"
        if spec.nodes > 1:
            job["minimum_nodes"] = job["maximum_nodes"] = spec.nodes
            job["tasks"] = spec.nodes
            job["tasks_per_node"] = 1
        if spec.time_limit_minutes is not None:
            job["time_limit"] = {"set": True, "infinite": False, "number": spec.time_limit_minutes}
        if spec.stdout:
            job["standard_output"] = spec.stdout
        if spec.stderr:
            job["standard_error"] = spec.stderr
        if spec.partition:
            job["partition"] = spec.partition
        return {"job": job}

    # ------------------------------------------------------------ answers

    def submit_answer(self, doc: Any) -> int:
        return int(doc["job_id"])

    def pings(self, doc: Any) -> dict[str, str]:
        return {text(p, "hostname"): text(p, "pinged").upper() for p in items(doc, "pings")}

    def jobs(self, doc: Any) -> list[SlurmJob]:
        return [_job(j) for j in items(doc, "jobs")]

    def nodes(self, doc: Any) -> list[SlurmNode]:
        return [
            SlurmNode(
                name=text(n, "name"),
                state="+".join(_words(n.get("state"))),
                gpus_total=gres_gpus(text(n, "gres")),
                gpus_used=gres_gpus(text(n, "gres_used")),
                partitions=tuple(str(p) for p in n.get("partitions") or ()),
                cpus=no_val(n.get("cpus")) or 0,
            )
            for n in items(doc, "nodes")
        ]

    def partitions(self, doc: Any) -> list[SlurmPartition]:
        found = []
        for p in items(doc, "partitions"):
            nodes, cpus, part = _sub(p, "nodes"), _sub(p, "cpus"), _sub(p, "partition")
            found.append(
                SlurmPartition(
                    name=text(p, "name"),
                    state="+".join(_words(part.get("state"))),
                    nodes=expand_hostlist(text(nodes, "configured")),
                    total_cpus=no_val(cpus.get("total")),
                    total_nodes=no_val(nodes.get("total")),
                )
            )
        return found


def _sub(record: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = record.get(key)
    return value if isinstance(value, Mapping) else {}


def _words(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value.upper()]
    return [str(w).upper() for w in value or ()]


def _job(j: Mapping[str, Any]) -> SlurmJob:
    job_id = int(j["job_id"])
    words = _words(j.get("job_state"))
    state = job_state_from_slurm(words)
    ended = state.is_final
    exit_info = _sub(j, "exit_code") if ended else {}
    name, user = text(j, "name"), text(j, "user_name")
    return SlurmJob(
        job_id=job_id,
        name=name,
        state=state,
        slurm_state="+".join(words),
        comment=text(j, "comment"),
        user=user,
        partition=text(j, "partition"),
        exit_code=no_val(exit_info.get("return_code")),
        signal=no_val(_sub(exit_info, "signal").get("id")) or None,
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
        reason=None if text(j, "state_reason") in ("", "None") else text(j, "state_reason"),
    )


def _job_gpus(j: Mapping[str, Any], state: JobState) -> int:
    if state is JobState.RUNNING:
        held = tres_gpus(text(j, "tres_alloc_str"))
        if held is None:
            held = sum(gres_gpus(str(d)) for d in j.get("gres_detail") or ())
        if held:
            return held
    per_job = gres_gpus(text(j, "tres_per_job"))
    if per_job:
        return per_job
    return gres_gpus(text(j, "tres_per_node")) * max(1, no_val(j.get("node_count")) or 1)
