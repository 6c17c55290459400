"""The per-job supervisor: `python -m nodeagent.shim JOBDIR`.

The agent starts one shim per job, in a session of its own, so jobs outlive the agent. The
shim starts the job in a new session (its process group is the job), as the job's owner,
with its output going to the job's log file; waits for it; kills what is left of its
process group; and writes JOBDIR/exit.json atomically. A confined job's process joins
its cgroup (nodeagent.cgroups) before it execs, and gets an IPC namespace and a mount
namespace with a /dev/shm of its own (a tmpfs of at most its --mem): its SysV shared
memory and its /dev/shm files go when its last process does. At its end the shim kills
what is left in the cgroup, counts the OOM killer's kills, and removes the cgroup. An
agent that restarts finds the job through JOBDIR and learns how it ended from exit.json.
JOBDIR is root's alone: the job can neither forge these records nor point them elsewhere.

While it waits, the shim holds the job to the node's lease (nodeagent.lease): when the
scheduler has not been heard from in time, the job gets its preempt signal, its grace,
SIGTERM, then SIGKILL, and exit.json says `lease_lost`. The shim, not the agent, does it,
so that it happens while the agent is frozen or dead too. Standard library only.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import select
import signal
import sys
import time
from collections.abc import Mapping
from pathlib import Path

from nodeagent import cgroups, lease

DEFAULT_GRACE_S = 60.0  # as the scheduler's default queue
SHIELDED = (signal.SIGHUP, signal.SIGINT, signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)


def write_atomic(path: Path, data: Mapping[str, object]) -> None:
    """Replace `path` with `data` as JSON, all or nothing; the file is private (0600). The
    directory is root's alone, so the temp name cannot be a job's symlink; O_NOFOLLOW
    refuses one anyway."""
    tmp = path.with_name(path.name + ".tmp")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)  # left by a crash
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    with open(fd, "w") as f:
        json.dump(data, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def start_ticks(pid: int) -> int:
    """When the process `pid` started, in clock ticks since boot (/proc/PID/stat, field 22);
    0 if there is none. With the pid it names one process for good: a pid is reused, this
    pair never is, and no clock step changes it."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
        return int(stat[stat.rindex(b")") + 2 :].split()[19])
    except (OSError, ValueError, IndexError):
        return 0


CLONE_NEWNS, CLONE_NEWIPC = 0x00020000, 0x08000000
MS_NOSUID, MS_NODEV, MS_REC, MS_SLAVE = 2, 4, 1 << 14, 1 << 19


def private_shm(shm_mb: int) -> None:
    """This process (the job to be) gets an IPC namespace and a /dev/shm tmpfs of its own
    (at most `shm_mb` MiB; 0: tmpfs's default), both gone with the job's last process."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.unshare.argtypes = [ctypes.c_int]
    libc.mount.argtypes = [ctypes.c_char_p] * 3 + [ctypes.c_ulong, ctypes.c_char_p]

    def check(result: int, what: str) -> None:
        if result != 0:
            err = ctypes.get_errno()
            raise OSError(
                err, f"cannot give the job its own /dev/shm and IPC: {what}: {os.strerror(err)}"
            )

    check(libc.unshare(CLONE_NEWIPC | CLONE_NEWNS), "unshare")
    # slave: the node's later mounts (automounted homes) still reach the job; its own
    # /dev/shm never reaches the node
    check(libc.mount(b"none", b"/", None, MS_REC | MS_SLAVE, None), "mount propagation")
    options = b"mode=1777" + (f",size={shm_mb}m".encode() if shm_mb > 0 else b"")
    check(libc.mount(b"tmpfs", b"/dev/shm", b"tmpfs", MS_NOSUID | MS_NODEV, options), "tmpfs")


def _child(spec: dict[str, object], err_w: int) -> None:
    """In the forked child: become the job. Never returns."""
    try:
        cgroup = spec.get("cgroup")
        if isinstance(cgroup, dict):  # confined from before its first instruction
            try:
                cgroups.join(cgroup, os.getpid())
            except OSError as exc:
                raise OSError(exc.errno, f"cannot join the job's cgroup: {exc.strerror}") from exc
        if spec.get("private_shm"):
            private_shm(int(str(spec.get("shm_mb") or 0)))
        for sig in SHIELDED:  # the shim ignores these; the job must not inherit that
            signal.signal(sig, signal.SIG_DFL)
        os.setsid()
        if spec.get("run_as"):
            os.setgroups([int(g) for g in spec["groups"]])  # type: ignore[attr-defined]
            os.setgid(int(spec["gid"]))  # type: ignore[call-overload]
            os.setuid(int(spec["uid"]))  # type: ignore[call-overload]
        out = os.open(str(spec["output"]), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(out, 1)
        os.dup2(out, 2)
        os.chdir(str(spec["cwd"]))
        argv = [str(a) for a in spec["argv"]]  # type: ignore[attr-defined]
        env = {str(k): str(v) for k, v in spec["env"].items()}  # type: ignore[attr-defined]
        os.execve(argv[0], argv, env)
    except OSError as exc:
        what = f"{exc.strerror}: {exc.filename}" if exc.filename else str(exc.strerror)
        os.write(err_w, what.encode())
    except BaseException as exc:
        os.write(err_w, repr(exc).encode())
    os._exit(127)


PR_SET_CHILD_SUBREAPER = 36


def become_subreaper() -> None:
    """Processes the job leaves behind its own process group and its parent (torchrun's
    workers start sessions of their own) become the shim's children when their parent
    ends, not init's: the shim can then find and end them (a confined job's cgroup holds
    them too; an unconfined job has only this)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


def descendants(root: int) -> list[int]:
    """The pids below `root` (its children, theirs, ...), read from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue  # gone meanwhile
        # the fields after the name, which is in parentheses and may hold anything
        fields = stat[stat.rfind(b")") + 2 :].split()
        if len(fields) > 1:
            children.setdefault(int(fields[1]), []).append(int(entry))
    found, todo = [], list(children.get(root, ()))
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, ()))
    return found


def signal_all(pgid: int, sig: int) -> None:
    """`sig` to the job's process group, and to the processes below the shim that left the
    group (they are the job's too); each process gets it once."""
    with contextlib.suppress(OSError):
        os.killpg(pgid, sig)
    for pid in descendants(os.getpid()):
        with contextlib.suppress(OSError):
            if os.getpgid(pid) != pgid:
                os.kill(pid, sig)


def reap_strays(leader: int) -> None:
    """Reap the job's processes that ended after they had become the shim's (not the job
    itself: its status is read by _wait), so that none stays a zombie while the job runs."""
    while True:
        try:
            info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return
        if info is None or info.si_pid == leader:
            return
        with contextlib.suppress(ChildProcessError):
            os.waitpid(info.si_pid, 0)


def end_strays() -> None:
    """SIGKILL and reap what the job left below the shim, until nothing is left or a few
    seconds have passed."""
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline:
        left = descendants(os.getpid())
        if not left:
            return
        for pid in left:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            while os.waitpid(-1, os.WNOHANG)[0]:
                pass
        time.sleep(0.05)


class LeaseStop:
    """The node lost its lease: the job's preempt signal, its grace, SIGTERM, SIGKILL."""

    def __init__(self, pgid: int, spec: dict[str, object], term_s: float) -> None:
        self.pgid = pgid
        self.steps: list[tuple[int, float]] = [
            (int(str(spec.get("preempt_signal") or 0)) or signal.SIGUSR1, grace_of(spec)),
            (signal.SIGTERM, term_s),
            (signal.SIGKILL, 1.0),
        ]
        self.next_at = 0.0

    def step(self, now: float) -> float:
        """Send what is due; the time to look again."""
        if now < self.next_at:
            return self.next_at
        if not self.steps:  # SIGKILL is sent: only the kernel can take longer now
            return now + 1.0
        sig, wait = self.steps.pop(0)
        _say(f"{signal.Signals(sig).name} to the job, then {wait:g}s")
        signal_all(self.pgid, sig)
        self.next_at = now + wait
        return self.next_at


def grace_of(spec: dict[str, object]) -> float:
    """The job's grace after its preempt signal (a sane default where none was sent)."""
    with contextlib.suppress(ValueError):
        grace = float(str(spec.get("grace_s") or 0))
        if 0 < grace <= 86400:
            return grace
    return DEFAULT_GRACE_S


def _say(what: str) -> None:
    print(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} shim: {what}", file=sys.stderr, flush=True)


def _wait(pid: int, err_r: int, spec: dict[str, object]) -> tuple[int, bytes, bool]:
    """Wait for the job (and any exec error on `err_r`), checking the node's lease about
    once a second; (wait status, exec error, stopped for a lost lease)."""
    lease_file = str(spec.get("lease_file") or "")
    pidfd = -1
    with contextlib.suppress(OSError, AttributeError):
        pidfd = os.pidfd_open(pid)
    poller = select.poll()
    poller.register(err_r, select.POLLIN)
    if pidfd >= 0:
        poller.register(pidfd, select.POLLIN)
    error, err_open = b"", True
    stop: LeaseStop | None = None
    try:
        while True:
            try:
                done, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:  # not ours to wait for any more: nothing to report
                done, status = pid, 0
            if done:
                break
            reap_strays(pid)
            timeout = 1.0 if pidfd >= 0 else 0.1
            if lease_file:
                now = lease.now()
                if stop is None:
                    deadline, term_s = lease.read(Path(lease_file))
                    if now >= deadline:
                        _say("no word from the scheduler within the node's lease: stopping")
                        stop = LeaseStop(pid, spec, term_s)
                    else:
                        timeout = min(timeout, deadline - now)
                if stop is not None:
                    timeout = min(timeout, stop.step(now) - now)
            for fd, _ in poller.poll(max(timeout, 0.01) * 1000):
                if fd == err_r:
                    chunk = os.read(err_r, 4096)
                    error += chunk
                    if not chunk:
                        poller.unregister(err_r)
                        err_open = False
    finally:
        if pidfd >= 0:
            os.close(pidfd)
    while err_open and (chunk := os.read(err_r, 4096)):
        error += chunk
    return status, error, stop is not None


def run(job_dir: Path) -> int:
    spec = json.loads((job_dir / "launch.json").read_text())
    become_subreaper()
    err_r, err_w = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:
        os.close(err_r)
        _child(spec, err_w)
    os.close(err_w)
    started = time.time()
    write_atomic(
        job_dir / "pid.json", {"pid": pid, "start_time": started, "start_ticks": start_ticks(pid)}
    )
    status, error, lease_lost = _wait(pid, err_r, spec)
    os.close(err_r)
    with contextlib.suppress(OSError):  # what the job left in its process group goes with it
        os.killpg(pid, signal.SIGKILL)
    end_strays()  # and what it left outside the group, below the shim
    oom_kills = 0
    cgroup = spec.get("cgroup")
    if isinstance(cgroup, dict):  # and what it left anywhere else
        cgroups.kill_all(cgroup)
        oom_kills = cgroups.oom_kills(cgroup)
        if oom_kills:
            _say(f"the OOM killer ended {oom_kills} of the job's processes")
        if not cgroups.remove(cgroups.dirs_of(cgroup)):
            _say("the job's cgroup could not be removed (the agent tries again)")
    result: dict[str, object] = {
        "end_time": time.time(),
        "exit_code": 0,
        "exit_signal": 0,
        "error": "",
        "lease_lost": lease_lost,
        "oom_kills": oom_kills,
    }
    if error:
        result["error"] = error.decode(errors="replace")
        result["exit_code"] = 127
    elif os.WIFSIGNALED(status):
        result["exit_signal"] = os.WTERMSIG(status)
    else:
        result["exit_code"] = os.waitstatus_to_exitcode(status)
    write_atomic(job_dir / "exit.json", result)
    return 0


if __name__ == "__main__":
    for sig in SHIELDED:
        signal.signal(sig, signal.SIG_IGN)
    sys.exit(run(Path(sys.argv[1])))
