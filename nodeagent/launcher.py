"""Starting, signalling and following job processes; re-adopting them after a restart.

Each job has a directory STATE/jobs/ID with launch.json (what to run), pid.json (written
by the shim once the job exists) and exit.json (how it ended). That directory is the
record: an agent that restarts reads it back and carries on.

The agent and the shims run as root, the job as its owner; so the record is root's alone
(STATE/jobs/ID is root's, mode 0711; its files 0600), and the job can neither forge it nor
point it elsewhere. The job's script is its owner's (0700). The one thing the job writes
for the agent, its checkpoint log, is one file root makes in that directory and gives to
the job's owner (STATE/jobs/ID/checkpoints.jsonl): the job can write it but can make
nothing else in the state dir, so it cannot fill the agent's directories with entries. It
is read as untrusted: no symlink, no FIFO, no hard link, only a regular file of the job's
owner, a bounded chunk at a time. A pid read back after a restart is signalled only if the
process it names started when the job did.

A job's directory and cgroup are removed off the agent's event loop: the directory is
renamed into STATE/trash at once and deleted, with the cgroup, by one cleaning thread, so
nothing a job leaves behind can hold up the agent's heartbeats.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import queue
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import psutil

from nodeagent.cgroups import CgroupError, Confinement, JobLimits
from nodeagent.jobfiles import (
    CHECKPOINT_LOG,
    LOG_CHUNK,
    OWNER_DIR,
    _create,
    _identity,
    checkpoint_line,
    job_environment,
)
from nodeagent.runner import JobProcess, LaunchError, LaunchRequest
from nodeagent.shim import start_ticks, write_atomic

log = logging.getLogger(__name__)


class StateDirError(Exception):
    pass


def _own_dir(path: Path, mode: int) -> None:
    """`path` as a directory that is ours and nobody else may write, with `mode`."""
    path.mkdir(parents=True, exist_ok=True)
    st = path.stat()
    if st.st_uid != os.geteuid():
        raise StateDirError(
            f"{path} belongs to uid {st.st_uid}, not to this agent (uid {os.geteuid()})"
        )
    if stat.S_IMODE(st.st_mode) != mode:
        log.info("%s: mode %o -> %o", path, stat.S_IMODE(st.st_mode), mode)
        path.chmod(mode)


class Launcher:
    def __init__(
        self,
        state_dir: Path,
        on_change: Callable[[JobProcess], None],
        on_checkpoint: Callable[[int, dict[str, float]], None] | None = None,
        confinement: Confinement | None = None,
        pids_max: int = 0,
        gpu_minors: Mapping[int, int] | None = None,
    ) -> None:
        # users may pass through (to their job's checkpoint log), never write, never list jobs
        state_dir.mkdir(parents=True, exist_ok=True)
        _own_dir(state_dir, stat.S_IMODE(state_dir.stat().st_mode) & 0o755 | 0o111)
        self.jobs_dir = state_dir / "jobs"
        _own_dir(self.jobs_dir, 0o711)
        self.lease_file = state_dir / "lease.json"
        self.trash_dir = state_dir / "trash"  # what is being deleted off the event loop
        _own_dir(self.trash_dir, 0o700)
        self._cleaner = Cleaner()
        self._cleaning: set[int] = set()  # jobs whose cgroup the cleaner is to remove
        self._cleaning_lock = threading.Lock()
        for left in self.trash_dir.iterdir():  # what an earlier run had no time to delete
            self._cleaner.submit(shutil.rmtree, left, True)
        self.jobs: dict[int, JobProcess] = {}
        self.on_change = on_change
        self.on_checkpoint = on_checkpoint
        self.report_every_s = 1.0  # a job's checkpoints are told at most this often
        self._kills: dict[int, asyncio.Task[None]] = {}
        self._yielding: set[int] = set()  # jobs whose _kills task is a preemption
        self.confinement = confinement or Confinement("none (confine = off)")
        self.pids_max = pids_max
        self.gpu_minors = dict(gpu_minors or {})  # GPU index -> its /dev/nvidiaN minor

    # ------------------------------------------------------------ adoption

    def adopt(self) -> None:
        """Read back every job directory left by an earlier run of the agent."""
        for job_dir in sorted(self.jobs_dir.iterdir()):
            if not job_dir.name.isdigit() or not (job_dir / "launch.json").exists():
                continue
            proc = JobProcess(int(job_dir.name), job_dir, owner_uid=os.geteuid())
            with contextlib.suppress(OSError, ValueError, KeyError, TypeError, AttributeError):
                launch = json.loads((job_dir / "launch.json").read_text())
                proc.owner_uid = int(launch.get("uid", proc.owner_uid))
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
        with contextlib.suppress(FileNotFoundError, ValueError, KeyError, TypeError):
            data = json.loads((proc.dir / "pid.json").read_text())
            proc.start_ticks = int(data.get("start_ticks", 0))
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
        proc.lease_lost = bool(data.get("lease_lost", False))
        proc.oom_kills = int(data.get("oom_kills", 0))
        if proc.lease_lost:
            log.warning("job %d was stopped by its node: the lease ran out", proc.job_id)
        return True

    def _alive(self, proc: JobProcess) -> bool:
        """Is the shim (or, lacking one, the job) still there?"""
        if proc.shim is not None:
            return proc.shim.poll() is None
        shim_pid, shim_ticks = self._shim_of(proc)
        if shim_pid and _running(shim_pid, shim_ticks):
            return True
        return self._leader(proc) == "ours" and _running(proc.pid, 0)

    def _shim_of(self, proc: JobProcess) -> tuple[int, int]:
        """The shim's pid and start ticks (0: not recorded, as by an older agent)."""
        with contextlib.suppress(FileNotFoundError, ValueError, KeyError, TypeError):
            data = json.loads((proc.dir / "shim.json").read_text())
            return int(data["pid"]), int(data["start_ticks"])
        with contextlib.suppress(FileNotFoundError, ValueError):
            return int((proc.dir / "shim.pid").read_text()), 0
        return 0, 0

    def _leader(self, proc: JobProcess) -> str:
        """Is proc.pid still the job ("ours"), no process ("gone"), or another ("other")?"""
        ticks = start_ticks(proc.pid) if proc.pid else 0
        if not ticks:
            return "gone"
        if proc.start_ticks:
            return "ours" if ticks == proc.start_ticks else "other"
        try:  # a record of an older shim: its start time, to within a second
            created = psutil.Process(proc.pid).create_time()
        except psutil.Error:
            return "gone"
        return "ours" if abs(created - proc.start_time) < 1.0 else "other"

    # ------------------------------------------------------------ launch

    def launch(self, req: LaunchRequest) -> JobProcess:
        if req.job_id in self.jobs:
            return self.jobs[req.job_id]  # a repeated launch: already ours
        job_dir = self.jobs_dir / str(req.job_id)
        self._discard(job_dir)  # what a launch cut short left
        if req.job_id in self._cleaning:  # ran here before: its cgroup is create()'s to clear
            with self._cleaning_lock:
                self._cleaning.discard(req.job_id)
        proc = JobProcess(req.job_id, job_dir, gpu_indexes=tuple(req.gpu_indexes))
        self.jobs[req.job_id] = proc
        try:
            job_dir.mkdir(mode=0o700)
            job_dir.chmod(0o711)  # the job passes through to its own directory
            ident = _identity(req)
            if ident.get("run_as"):
                uid, gid = int(str(ident["uid"])), int(str(ident["gid"]))
            else:
                uid, gid = os.geteuid(), os.getegid()
            proc.owner_uid = uid
            _create(job_dir / "script", req.script, uid, gid, 0o700)
            _create(job_dir / CHECKPOINT_LOG, b"", uid, gid, 0o600)
            env = job_environment(req, ident)
            env["GSHARE_CHECKPOINT_LOG"] = str(job_dir / CHECKPOINT_LOG)
            if req.hostfile:  # root's, in root's directory: read-only to the job
                _create(
                    job_dir / "hostfile", req.hostfile.encode(), os.geteuid(), os.getegid(), 0o644
                )
                env["GSHARE_HOSTFILE"] = str(job_dir / "hostfile")
            spec = {
                **ident,
                "uid": uid,
                "argv": [str(job_dir / "script"), *req.args],
                "env": env,
                "cwd": req.workdir,
                "output": req.output_path,
                "preempt_signal": req.preempt_signal or int(signal.SIGUSR1),
                "grace_s": req.grace_s,
                "lease_file": str(self.lease_file),
            }
            cgroup = self.confinement.create(req.job_id, self._limits(req))
            if cgroup is not None:
                spec["cgroup"] = cgroup.as_spec()
                # its own SysV IPC and /dev/shm, gone with it (the tmpfs charged to its --mem)
                spec["private_shm"], spec["shm_mb"] = True, req.mem_mb
            write_atomic(job_dir / "launch.json", spec)
            shim_log = os.open(
                job_dir / "shim.log",
                os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC,
                0o600,
            )
            try:
                proc.shim = subprocess.Popen(
                    [sys.executable, "-m", "nodeagent.shim", str(job_dir)],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=shim_log,
                    start_new_session=True,
                    close_fds=True,
                    cwd="/",
                )
            finally:
                os.close(shim_log)
            shim = {"pid": proc.shim.pid, "start_ticks": start_ticks(proc.shim.pid)}
            write_atomic(job_dir / "shim.json", shim)
        except (LaunchError, CgroupError, OSError) as exc:
            self.confinement.remove(req.job_id)
            proc.exited, proc.error, proc.exit_code = True, str(exc), 127
            proc.end_time = time.time()
            with contextlib.suppress(OSError):
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

    def _limits(self, req: LaunchRequest) -> JobLimits:
        """What the job asked for, and the node's GPUs that are not its own."""
        own = set(req.gpu_indexes)
        return JobLimits(
            mem_mb=req.mem_mb,
            cpus=min(req.cpus, os.cpu_count() or 1),  # a quota past the node's CPUs is none
            pids_max=self.pids_max,
            denied_gpu_minors=tuple(sorted(m for i, m in self.gpu_minors.items() if i not in own)),
        )

    # ------------------------------------------------------------ watching

    def _read_checkpoints(self, proc: JobProcess) -> None:
        if self.on_checkpoint is None or proc.log_refused:
            return
        chunk = self._checkpoint_chunk(proc)
        end = chunk.rfind(b"\n")
        if end < 0:
            if len(chunk) == LOG_CHUNK:  # one line that long is no report: pass over it
                log.warning("job %d: an overlong line in its checkpoint log", proc.job_id)
                proc.checkpoint_offset += len(chunk)
            return
        proc.checkpoint_offset += end + 1
        # Only the newest checkpoint matters to the scheduler (how much work a preemption
        # would lose): one report per job and poll, and at most one a second, so a job that
        # floods its log cannot flood the scheduler or delay the node's heartbeats.
        for line in chunk[: end + 1].splitlines():
            report = checkpoint_line(line)
            if report is None:
                if not proc.bad_lines_told:
                    log.warning(
                        "job %d: a bad line in its checkpoint log: %r", proc.job_id, line[:200]
                    )
                    proc.bad_lines_told = True
                continue
            proc.checkpoint_pending = report
        now = time.monotonic()
        if (
            proc.checkpoint_pending is not None
            and now - proc.checkpoint_told_at >= self.report_every_s
        ):
            self.on_checkpoint(proc.job_id, proc.checkpoint_pending)
            proc.checkpoint_pending, proc.checkpoint_told_at = None, now

    def _checkpoint_chunk(self, proc: JobProcess) -> bytes:
        """The next chunk of the job's checkpoint log, opened as root without trusting it:
        not a symlink (O_NOFOLLOW), not a FIFO that blocks (O_NONBLOCK, then a regular file
        only), not a hard link to someone else's file (the owner's, one link)."""
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
        try:
            fd = os.open(proc.dir / CHECKPOINT_LOG, flags)
        except FileNotFoundError:
            try:  # a job an older agent launched, re-adopted
                fd = os.open(proc.dir / OWNER_DIR / CHECKPOINT_LOG, flags)
            except FileNotFoundError:
                return b""
            except OSError as exc:
                return self._refuse_log(proc, exc.strerror or str(exc))
        except OSError as exc:
            return self._refuse_log(proc, exc.strerror or str(exc))
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                return self._refuse_log(proc, "not a regular file")
            if st.st_uid != proc.owner_uid or st.st_nlink != 1:
                return self._refuse_log(proc, f"uid {st.st_uid}, {st.st_nlink} links")
            return os.pread(fd, LOG_CHUNK, proc.checkpoint_offset)
        except OSError as exc:
            return self._refuse_log(proc, exc.strerror or str(exc))
        finally:
            os.close(fd)

    def _refuse_log(self, proc: JobProcess, why: str) -> bytes:
        log.warning("job %d: its checkpoint log is not read (%s): no checkpoints", proc.job_id, why)
        proc.log_refused = True
        return b""

    def poll(self) -> None:
        """Notice jobs that got their pid, saved a checkpoint or ended (a few times a second)."""
        for proc in list(self.jobs.values()):
            try:  # what a job writes must never stop the agent watching every job
                self._read_checkpoints(proc)
            except Exception:
                log.exception("job %d: reading its checkpoint log failed", proc.job_id)
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
        if self._leader(proc) != "ours":
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
        leader = self._leader(proc)
        if leader == "other":
            log.warning(
                "job %d: pid %d is another process now; not signalling it", proc.job_id, proc.pid
            )
            return
        # "gone": no process has the pid, so a group by that id can only be what the job left
        stray = self._tree(proc) if leader == "ours" else []
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
        self._discard(proc.dir)
        with self._cleaning_lock:
            self._cleaning.add(job_id)
        self._cleaner.submit(self._remove_cgroup, job_id)

    def _discard(self, job_dir: Path) -> None:
        """Take a job's directory out of the way at once (a rename); the cleaner deletes it."""
        trash = self.trash_dir / f"{job_dir.name}.{time.time_ns()}"
        try:
            job_dir.rename(trash)
        except FileNotFoundError:
            return
        except OSError as exc:
            log.warning("cannot move %s to %s: %s", job_dir, self.trash_dir, exc)
            return
        self._cleaner.submit(shutil.rmtree, trash, True)

    def _remove_cgroup(self, job_id: int) -> None:
        """On the cleaner's thread: kill what is left in the job's cgroup (the shim removes
        it; unless it died) and remove it, unless the job was launched here again since."""
        with self._cleaning_lock:
            if job_id not in self._cleaning:
                return
            self._cleaning.discard(job_id)
            if not self.confinement.remove(job_id):
                log.warning("job %d: its cgroup is not empty; left in place", job_id)

    def drain_cleanup(self) -> None:
        """Wait until what was handed to the cleaner is done (for tests and shutdown)."""
        self._cleaner.work.join()


class Cleaner:
    """One thread that does, in turn, what must not hold up the agent's event loop. It is
    a daemon: an agent that stops does not wait for it (STATE/trash is emptied at start)."""

    def __init__(self) -> None:
        self.work: queue.Queue[tuple[Callable[..., object], tuple[object, ...]]] = queue.Queue()
        threading.Thread(target=self._run, name="gshare-cleanup", daemon=True).start()

    def submit(self, fn: Callable[..., object], *args: object) -> None:
        self.work.put((fn, args))

    def _run(self) -> None:
        while True:
            fn, args = self.work.get()
            try:
                fn(*args)
            except Exception:
                log.exception("cleaning up after a job failed")
            finally:
                self.work.task_done()


def _running(pid: int, ticks: int) -> bool:
    """Is `pid` a live process (not a zombie), and if `ticks`, the one that started then?"""
    if ticks and start_ticks(pid) != ticks:
        return False
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False
