"""What the launcher writes into a job's directory and reads back from it: who the job runs
as and with what environment, files made for its owner (never through a symlink), and the
lines of its checkpoint log, trusted no further than their checked values."""

from __future__ import annotations

import json
import math
import os
import pwd
from pathlib import Path

from gshare import jobenv
from nodeagent.runner import LaunchError, LaunchRequest

OWNER_DIR = "owner"  # where an older agent put a job's checkpoint log (a dir it owned)
CHECKPOINT_LOG = "checkpoints.jsonl"
LOG_CHUNK = 1 << 20  # the most of a checkpoint log read at once


def _identity(req: LaunchRequest) -> dict[str, object]:
    """How the job runs: as its owner when we are root, else as ourselves."""
    if os.geteuid() != 0:
        return {"run_as": False}
    try:
        entry = pwd.getpwuid(req.uid)
    except KeyError as exc:
        raise LaunchError(f"user id {req.uid} ({req.user}) does not exist on this node") from exc
    groups = os.getgrouplist(entry.pw_name, entry.pw_gid)
    return {
        "run_as": req.uid != 0,
        "uid": entry.pw_uid,
        "gid": entry.pw_gid,
        "groups": groups,
        "home": entry.pw_dir,
        "user": entry.pw_name,
    }


def job_environment(req: LaunchRequest, ident: dict[str, object]) -> dict[str, str]:
    """gshare's variables (gshare/jobenv.py, the same a handed-off job gets), and the
    owner's HOME, USER and LOGNAME when the job runs as its owner."""
    env = dict(req.env)
    if ident.get("run_as"):
        env.update(HOME=str(ident["home"]), USER=str(ident["user"]), LOGNAME=str(ident["user"]))
    return jobenv.job_environment(
        env,
        job_id=req.job_id,
        restart_count=req.restart_count,
        output=req.output_path,
        checkpoint_dir=req.checkpoint_dir,
        preempt_signal=req.preempt_signal,
        node=req.node,
        gpu_indexes=tuple(req.gpu_indexes),
        gpu_uuids=tuple(req.gpu_uuids),
    )


INT64_MAX = 2**63 - 1


def checkpoint_line(line: bytes) -> dict[str, float] | None:
    """One line of a job's checkpoint log, `{"time", "size", "step"}`, or None when it is
    not one: the values must be finite, not negative, and fit the wire (int64 for size and
    step); what a job writes is never trusted further than that."""
    try:
        data = json.loads(line)
        report = {k: float(data[k]) for k in ("time", "size", "step")}
    except (ValueError, KeyError, TypeError, OverflowError, RecursionError):
        return None
    if not all(math.isfinite(v) and v >= 0 for v in report.values()):
        return None
    if report["size"] > INT64_MAX or report["step"] > INT64_MAX:
        return None
    return report


def _create(path: Path, content: bytes, uid: int, gid: int, mode: int) -> None:
    """A new file (never one that is there, never through a symlink), given to uid:gid."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    with open(fd, "wb") as f:
        f.write(content)
        os.fchmod(fd, mode)
        if (uid, gid) != (os.geteuid(), os.getegid()):
            os.fchown(fd, uid, gid)
