"""Starting, signalling and following job processes; re-adopting them after a restart.

Each job has a directory STATE/jobs/ID with launch.json (what to run), pid.json (written
by the shim once the job exists) and exit.json (how it ended). That directory is the
record: an agent that restarts reads it back and carries on.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import pwd
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psutil

from nodeagent.shim import write_atomic

log = logging.getLogger(__name__)


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
    gpu_indexes: tuple[int, ...] = ()


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


class LaunchError(Exception):
    pass


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
    env = dict(req.env)
    if ident.get("run_as"):
        env.update(HOME=str(ident["home"]), USER=str(ident["user"]), LOGNAME=str(ident["user"]))
    env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
    visible = ",".join(str(i) for i in req.gpu_indexes)
    env.update(
        CUDA_VISIBLE_DEVICES=visible,
        NVIDIA_VISIBLE_DEVICES=visible,
        # CUDA numbers GPUs fastest-first by default; NVML (and so gshare) by PCI bus id
        CUDA_DEVICE_ORDER="PCI_BUS_ID",
        GSHARE_JOB_ID=str(req.job_id),
        GSHARE_NODE=req.node,
        GSHARE_GPUS=visible,
        GSHARE_GPU_UUIDS=",".join(req.gpu_uuids),
        GSHARE_RESTART_COUNT=str(req.restart_count),
        GSHARE_OUTPUT=req.output_path,
        GSHARE_PREEMPT_SIGNAL=str(req.preempt_signal or signal.SIGUSR1),
    )
    if req.checkpoint_dir:
        env["GSHARE_CHECKPOINT_DIR"] = req.checkpoint_dir
    return env


class Launcher:
    def __init__(
        self,
        state_dir: Path,
        on_change: Callable[[JobProcess], None],
        on_checkpoint: Callable[[int, dict[str, float]], None] | None = None,
    ) -> None:
        self.jobs_dir = state_dir / "jobs"
        self.jobs_dir.mkdir(parents=True, exist_ok=True)
        self.jobs: dict[int, JobProcess] = {}
        self.on_change = on_change
        self.on_checkpoint = on_checkpoint
        self._kills: dict[int, asyncio.Task[None]] = {}
        self._yielding: set[int] = set()  # jobs whose _kills task is a preemption

    # ------------------------------------------------------------ adoption

    def adopt(self) -> None:
        """Read back every job directory left by an earlier run of the agent."""
        for job_dir in sorted(self.jobs_dir.iterdir()):
            if not job_dir.name.isdigit() or not (job_dir / "launch.json").exists():
                continue
            proc = JobProcess(int(job_dir.name), job_dir)
            with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
                launch = json.loads((job_dir / "launch.json").read_text())
                gpus = launch["env"].get("GSHARE_GPUS", "")
                proc.gpu_indexes = tuple(int(i) for i in gpus.split(",") if i)
            self._read_pid(proc)
            self._read_exit(proc)
            if not proc.exited and not self._alive(proc):
                proc.exited, proc.error = True, "the job's supervisor vanished; exit status unknown"
                proc.end_time = time.time()
            self.jobs[proc.job_id] = proc
            log.info(
                "re-adopted job %d (pid %d, %s)",
                proc.job_id,
                proc.pid,
                "ended" if proc.exited else "running",
            )

    def _read_pid(self, proc: JobProcess) -> None:
        with contextlib.suppress(FileNotFoundError, ValueError):
            data = json.loads((proc.dir / "pid.json").read_text())
            proc.pid, proc.start_time = int(data["pid"]), float(data["start_time"])

    def _read_exit(self, proc: JobProcess) -> bool:
        try:
            data = json.loads((proc.dir / "exit.json").read_text())
        except (FileNotFoundError, ValueError):
            return False
        proc.exited = True
        proc.exit_code = int(data.get("exit_code", 0))
        proc.exit_signal = int(data.get("exit_signal", 0))
        proc.end_time = float(data.get("end_time", time.time()))
        proc.error = str(data.get("error", ""))
        proc.killed_after_grace = (proc.dir / "killed-after-grace").exists()
        return True

    def _alive(self, proc: JobProcess) -> bool:
        """Is the shim (or, lacking one, the job) still there?"""
        if proc.shim is not None:
            return proc.shim.poll() is None
        shim_pid = self._shim_pid(proc)
        for pid in (shim_pid, proc.pid):
            if pid and psutil.pid_exists(pid):
                with contextlib.suppress(psutil.Error):
                    if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                        return True
        return False

    def _shim_pid(self, proc: JobProcess) -> int:
        with contextlib.suppress(FileNotFoundError, ValueError):
            return int((proc.dir / "shim.pid").read_text())
        return 0

    # ------------------------------------------------------------ launch

    def launch(self, req: LaunchRequest) -> JobProcess:
        if req.job_id in self.jobs:
            return self.jobs[req.job_id]  # a repeated launch: already ours
        job_dir = self.jobs_dir / str(req.job_id)
        job_dir.mkdir(parents=True, exist_ok=True)
        proc = JobProcess(req.job_id, job_dir, gpu_indexes=tuple(req.gpu_indexes))
        self.jobs[req.job_id] = proc
        try:
            ident = _identity(req)
            script = job_dir / "script"
            script.write_bytes(req.script)
            script.chmod(0o755)
            if ident.get("run_as"):
                os.chown(job_dir, int(str(ident["uid"])), int(str(ident["gid"])))
                os.chown(script, int(str(ident["uid"])), int(str(ident["gid"])))
            ckpt_log = job_dir / "checkpoints.jsonl"  # the job appends a line per checkpoint
            ckpt_log.touch()
            env = job_environment(req, ident)
            env["GSHARE_CHECKPOINT_LOG"] = str(ckpt_log)
            if ident.get("run_as"):
                os.chown(ckpt_log, int(str(ident["uid"])), int(str(ident["gid"])))
            spec = {
                **ident,
                "argv": [str(script), *req.args],
                "env": env,
                "cwd": req.workdir,
                "output": req.output_path,
            }
            write_atomic(job_dir / "launch.json", spec)
            proc.shim = subprocess.Popen(
                [sys.executable, "-m", "nodeagent.shim", str(job_dir)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=open(job_dir / "shim.log", "ab"),  # noqa: SIM115 - handed to the child
                start_new_session=True,
                close_fds=True,
                cwd="/",
            )
            (job_dir / "shim.pid").write_text(str(proc.shim.pid))
        except (LaunchError, OSError) as exc:
            proc.exited, proc.error, proc.exit_code = True, str(exc), 127
            proc.end_time = time.time()
            write_atomic(
                job_dir / "exit.json",
                {
                    "exit_code": 127,
                    "exit_signal": 0,
                    "end_time": proc.end_time,
                    "error": proc.error,
                },
            )
            log.warning("job %d failed to launch: %s", req.job_id, exc)
            self.on_change(proc)
        return proc

    # ------------------------------------------------------------ watching

    def _read_checkpoints(self, proc: JobProcess) -> None:
        if self.on_checkpoint is None:
            return
        try:
            with open(proc.dir / "checkpoints.jsonl", "rb") as f:
                f.seek(proc.checkpoint_offset)
                chunk = f.read(1 << 20)
        except FileNotFoundError:
            return
        end = chunk.rfind(b"\n")
        if end < 0:
            return
        proc.checkpoint_offset += end + 1
        for line in chunk[: end + 1].splitlines():
            try:
                data = json.loads(line)
                report = {k: float(data[k]) for k in ("time", "size", "step")}
            except (ValueError, KeyError, TypeError):
                log.warning("job %d: a bad line in its checkpoint log: %r", proc.job_id, line[:200])
                continue
            self.on_checkpoint(proc.job_id, report)

    def poll(self) -> None:
        """Notice jobs that got their pid, saved a checkpoint or ended (a few times a second)."""
        for proc in list(self.jobs.values()):
            self._read_checkpoints(proc)
            if proc.exited:
                continue
            if not proc.pid:
                self._read_pid(proc)
                if proc.pid:
                    self.on_change(proc)
            if self._read_exit(proc):
                if proc.shim is not None:
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        proc.shim.wait(timeout=1.0)
                self.on_change(proc)
            elif not self._alive(proc):
                if self._read_exit(proc):  # it wrote exit.json just before it went
                    self.on_change(proc)
                    continue
                proc.exited, proc.error = True, "the job's supervisor died; exit status unknown"
                proc.end_time = time.time()
                self._kill_group(proc, signal.SIGKILL)
                self.on_change(proc)

    # ------------------------------------------------------------ signals

    def _tree(self, proc: JobProcess) -> list[psutil.Process]:
        if not proc.pid:
            return []
        try:
            leader = psutil.Process(proc.pid)
            return [leader, *leader.children(recursive=True)]
        except psutil.Error:
            return []

    def tree_pids(self, job_id: int) -> frozenset[int]:
        """The pids of a running job's process tree (for telemetry: whose GPU process is it)."""
        proc = self.jobs.get(job_id)
        if proc is None or proc.exited:
            return frozenset()
        return frozenset(p.pid for p in self._tree(proc))

    def _kill_group(self, proc: JobProcess, sig: int) -> None:
        stray = self._tree(proc)
        if proc.pid:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, sig)
        for p in stray:  # descendants that left the process group
            with contextlib.suppress(psutil.Error):
                p.send_signal(sig)

    def signal(self, job_id: int, sig: int) -> None:
        proc = self.jobs.get(job_id)
        if proc is not None and not proc.exited:
            self._kill_group(proc, sig)

    def kill(self, job_id: int, grace_s: float) -> None:
        proc = self.jobs.get(job_id)
        if proc is None or proc.exited:
            return
        if job_id in self._yielding:  # a cancel overrides a preemption in progress
            self._yielding.discard(job_id)
            self._kills.pop(job_id).cancel()
        if job_id in self._kills:
            return
        self._kills[job_id] = asyncio.get_running_loop().create_task(self._kill(proc, grace_s))

    async def _await_pid(self, proc: JobProcess) -> None:
        """A signal that raced the launch: wait (up to 5 s) until the job has a pid."""
        for _ in range(50):
            if proc.pid or proc.exited:
                return
            await asyncio.sleep(0.1)
            self._read_pid(proc)

    async def _signal_and_wait(self, proc: JobProcess, sig: int, seconds: float) -> bool:
        """Signal the job's process group; True if it has ended within `seconds`."""
        self._kill_group(proc, sig)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and not proc.exited:
            await asyncio.sleep(0.1)
            self.poll()
        return proc.exited

    async def _kill(self, proc: JobProcess, grace_s: float) -> None:
        try:
            await self._await_pid(proc)
            if not await self._signal_and_wait(proc, signal.SIGTERM, grace_s):
                log.info("job %d outlived its %.0fs grace; SIGKILL", proc.job_id, grace_s)
                self._kill_group(proc, signal.SIGKILL)
        finally:
            self._kills.pop(proc.job_id, None)

    def preempt(self, job_id: int, sig: int, grace_s: float, term_grace_s: float = 10.0) -> None:
        """Ask the job to yield: `sig` to its process group, then after `grace_s` SIGTERM,
        then after `term_grace_s` more, SIGKILL."""
        proc = self.jobs.get(job_id)
        if proc is None or proc.exited or job_id in self._kills:
            return
        task = asyncio.get_running_loop().create_task(
            self._preempt(proc, sig, grace_s, term_grace_s)
        )
        self._kills[job_id] = task
        self._yielding.add(job_id)

    async def _preempt(
        self, proc: JobProcess, sig: int, grace_s: float, term_grace_s: float
    ) -> None:
        try:
            await self._await_pid(proc)
            if await self._signal_and_wait(proc, sig, grace_s):
                return
            log.info("job %d did not yield within %.0fs; SIGTERM", proc.job_id, grace_s)
            (proc.dir / "killed-after-grace").touch()
            proc.killed_after_grace = True
            if not await self._signal_and_wait(proc, signal.SIGTERM, term_grace_s):
                self._kill_group(proc, signal.SIGKILL)
        finally:
            if self._kills.get(proc.job_id) is asyncio.current_task():  # not replaced by a kill
                self._yielding.discard(proc.job_id)
                self._kills.pop(proc.job_id, None)

    def forget(self, job_id: int) -> None:
        proc = self.jobs.get(job_id)
        if proc is None or not proc.exited:
            return
        del self.jobs[job_id]
        shutil.rmtree(proc.dir, ignore_errors=True)
