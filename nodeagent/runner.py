"""What runs jobs, as the link to the scheduler sees it: a launch request, the record of a
job's process, the `JobRunner` Protocol, and `FakeLauncher`, which runs nothing, for tests."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol


@dataclass
class JobProcess:
    job_id: int
    dir: Path
    pid: int = 0
    start_time: float = 0.0
    exited: bool = False
    exit_code: int = 0
    exit_signal: int = 0
    end_time: float = 0.0
    error: str = ""
    killed_after_grace: bool = False
    shim: subprocess.Popen[bytes] | None = None
    checkpoint_offset: int = 0  # how far checkpoints.jsonl has been read
    checkpoint_pending: dict[str, float] | None = None  # the newest, not yet reported
    checkpoint_told_at: float = -1e9  # monotonic time of the last report
    bad_lines_told: bool = False  # one warning per job, however many bad lines
    gpu_indexes: tuple[int, ...] = ()
    owner_uid: int = -1  # who the checkpoint log must belong to
    start_ticks: int = 0  # with pid: which process the job is (shim.start_ticks)
    lease_lost: bool = False  # its shim stopped it: the scheduler was not heard from in time
    log_refused: bool = False  # its checkpoint log was not a file we read (said once)
    oom_kills: int = 0  # processes of it the OOM killer ended in its cgroup


@dataclass(frozen=True)
class LaunchRequest:
    job_id: int
    script: bytes
    args: list[str]
    env: dict[str, str]
    workdir: str
    output_path: str
    user: str
    uid: int
    gid: int
    gpu_indexes: list[int]
    gpu_uuids: list[str]
    node: str
    restart_count: int = 0
    checkpoint_dir: str = ""
    preempt_signal: int = signal.SIGUSR1
    grace_s: float = 0.0  # after preempt_signal, when the node stops it (0: the shim's default)
    mem_mb: int = 0  # its memory limit where jobs are confined (0: none)
    cpus: int = 0  # its CPU limit where jobs are confined (0: none)
    hostfile: str = ""  # a part of a multi-node job: its hostfile, for GSHARE_HOSTFILE


class LaunchError(Exception):
    pass


class JobRunner(Protocol):
    """What the link to the scheduler needs of whatever runs jobs: `Launcher` on a node,
    `FakeLauncher` in tests."""

    jobs: dict[int, JobProcess]

    def launch(self, req: LaunchRequest) -> JobProcess: ...

    def kill(self, job_id: int, grace_s: float) -> None: ...

    def preempt(self, job_id: int, sig: int, grace_s: float) -> None: ...

    def signal(self, job_id: int, sig: int) -> None: ...

    def forget(self, job_id: int) -> None: ...


class FakeLauncher:
    """Runs nothing: a launched job has a pid at once, and each call is recorded, for
    tests of the agent's side of the wire without processes."""

    def __init__(self, on_change: Callable[[JobProcess], None] | None = None) -> None:
        self.jobs: dict[int, JobProcess] = {}
        self.calls: list[tuple[str, int, object]] = []
        self.on_change = on_change
        self._next_pid = 1000

    def launch(self, req: LaunchRequest) -> JobProcess:
        self.calls.append(("launch", req.job_id, tuple(req.gpu_indexes)))
        if req.job_id not in self.jobs:
            self._next_pid += 1
            proc = JobProcess(req.job_id, Path("/nonexistent"), pid=self._next_pid)
            proc.start_time, proc.gpu_indexes = time.time(), tuple(req.gpu_indexes)
            self.jobs[req.job_id] = proc
            if self.on_change is not None:
                self.on_change(proc)
        return self.jobs[req.job_id]

    def end(self, job_id: int, exit_code: int = 0, exit_signal: int = 0) -> None:
        """The job ends (as its process would)."""
        proc = self.jobs[job_id]
        proc.exited, proc.exit_code, proc.exit_signal = True, exit_code, exit_signal
        proc.end_time = time.time()
        if self.on_change is not None:
            self.on_change(proc)

    def kill(self, job_id: int, grace_s: float) -> None:
        self.calls.append(("kill", job_id, grace_s))

    def preempt(self, job_id: int, sig: int, grace_s: float) -> None:
        self.calls.append(("preempt", job_id, (sig, grace_s)))

    def signal(self, job_id: int, sig: int) -> None:
        self.calls.append(("signal", job_id, sig))

    def forget(self, job_id: int) -> None:
        self.calls.append(("forget", job_id, None))
        proc = self.jobs.get(job_id)
        if proc is not None and proc.exited:
            del self.jobs[job_id]
