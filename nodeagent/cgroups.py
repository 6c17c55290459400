"""Confining jobs with cgroups: each job in a cgroup of its own, limited to what it asked for.

With the agent as root, a job's memory is limited to its --mem (swap included), its CPUs
to --cpus (a CFS quota of that many CPUs), its processes to `[agent] pids_max`, and the
GPU device files of the node other than its own (char 195:N, /dev/nvidiaN) cannot be
opened. The agent creates the job's cgroup and writes its limits before the job exists;
the job's supervisor (nodeagent.shim) puts the job's process into it between fork and
exec, so nothing of the job runs unconfined, even briefly. When the job ends, the shim
kills what is left in the cgroup, reads how many times the kernel's OOM killer struck
there, and removes the cgroup.

Where the cgroups live: `root` (`[agent] cgroup_root`, default "gshare") below the
agent's own cgroup in each hierarchy, or below the hierarchy's top when it starts with
"/"; each job in ROOT/job-ID.

- cgroup v2 (one unified hierarchy; Debian 12's default): memory.max, memory.swap.max
  (0), cpu.max, pids.max. The agent's unit needs Delegate=yes, so that the agent may
  create cgroups and enable controllers below its own. A cgroup with processes cannot
  hand controllers to children, so the agent first moves itself into a leaf of its own
  (AGENT_LEAF). v2 has no devices files: the kernel asks a BPF program attached to the
  cgroup (BPF_PROG_TYPE_CGROUP_DEVICE); `device_filter` assembles one that refuses the
  other GPUs and lets everything else through, loaded with the bpf(2) system call
  (ctypes: no compiler, no new dependency; it needs CAP_BPF and CAP_NET_ADMIN).
- cgroup v1 (a hierarchy per controller): memory.limit_in_bytes and
  memory.memsw.limit_in_bytes where swap accounting is on, cpu.cfs_quota_us, pids.max,
  and devices.deny for the other GPUs; a cgroup in cpuacct too, for the job's CPU usage.

Standard library only: the shim imports it.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import os
import platform
import signal
import struct
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

NVIDIA_MAJOR = 195  # /dev/nvidiaN is char 195:N; nvidiactl (195:255) stays open to all
CFS_PERIOD_US = 100_000
AGENT_LEAF = "gshare-agent"  # v2: where the agent moves itself within its delegated cgroup
V1_CONTROLLERS = ("memory", "cpu", "cpuacct", "pids", "devices")
V2_CONTROLLERS = ("memory", "cpu", "pids")
DEFAULT_PIDS_MAX = 16384


class CgroupError(Exception):
    """A job's cgroup could not be made or set: the job does not start unconfined."""


@dataclass(frozen=True)
class JobLimits:
    mem_mb: int = 0  # 0: no memory limit
    cpus: int = 0  # 0: no CPU limit
    pids_max: int = 0  # 0: no pids limit
    denied_gpu_minors: tuple[int, ...] = ()  # the node's GPUs that are not the job's


@dataclass(frozen=True)
class JobCgroup:
    """A job's cgroup: one directory per hierarchy (one on v2), and the one with memory."""

    dirs: tuple[str, ...]
    memory: str

    def as_spec(self) -> dict[str, object]:
        return {"dirs": list(self.dirs), "memory": self.memory}


class Confinement:
    """No confinement: jobs run in the agent's cgroup. `kind` says why."""

    enforced = False

    def __init__(self, kind: str) -> None:
        self.kind = kind

    def create(self, job_id: int, limits: JobLimits) -> JobCgroup | None:
        return None

    def remove(self, job_id: int) -> bool:
        return True

    def job_dirs(self, job_id: int) -> tuple[Path, ...]:
        return ()

    def close(self) -> None:
        """The agent stops: what it made for itself goes, if no job is left in it."""


class _Cgroups(Confinement):
    enforced = True

    def __init__(self, kind: str, roots: dict[str, Path], made: Sequence[Path] = ()) -> None:
        super().__init__(kind)
        self.roots = roots  # controller -> the directory job cgroups are made in
        self.made = list(made)  # the directories detect() made, parents first

    def close(self) -> None:
        for d in reversed(self.made):
            with contextlib.suppress(OSError):  # a job still runs there: it stays
                d.rmdir()

    def job_dirs(self, job_id: int) -> tuple[Path, ...]:
        seen: dict[Path, None] = {}
        for root in self.roots.values():
            seen[root / f"job-{job_id}"] = None
        return tuple(seen)

    def _dir(self, controller: str, job_id: int) -> Path:
        return self.roots[controller] / f"job-{job_id}"

    def create(self, job_id: int, limits: JobLimits) -> JobCgroup:
        self.remove(job_id)  # what an earlier launch of this job left
        dirs = self.job_dirs(job_id)
        try:
            for d in dirs:
                d.mkdir(mode=0o755)
            self._limit(job_id, limits)
        except OSError as exc:
            self.remove(job_id)
            raise CgroupError(f"cannot set up the job's cgroup: {_why(exc)}") from exc
        return JobCgroup(tuple(str(d) for d in dirs), str(self._dir("memory", job_id)))

    def _limit(self, job_id: int, limits: JobLimits) -> None:
        raise NotImplementedError

    def remove(self, job_id: int) -> bool:
        """Kill what is left in the job's cgroup (its supervisor does, unless it died) and
        remove it; True if it is gone."""
        dirs = [str(d) for d in self.job_dirs(job_id) if d.exists()]
        if dirs:
            kill_all({"dirs": dirs})
        return remove(dirs, wait_s=1.0)


class CgroupV1(_Cgroups):
    def __init__(self, roots: dict[str, Path], made: Sequence[Path] = ()) -> None:
        super().__init__("cgroup v1", roots, made)

    def _limit(self, job_id: int, limits: JobLimits) -> None:
        mem = self._dir("memory", job_id)
        if limits.mem_mb:
            limit = str(limits.mem_mb << 20)
            _write(mem / "memory.limit_in_bytes", limit)
            with contextlib.suppress(FileNotFoundError):  # absent: no swap accounting
                _write(mem / "memory.memsw.limit_in_bytes", limit)
        if limits.cpus:
            cpu = self._dir("cpu", job_id)
            _write(cpu / "cpu.cfs_period_us", str(CFS_PERIOD_US))
            _write(cpu / "cpu.cfs_quota_us", str(limits.cpus * CFS_PERIOD_US))
        if limits.pids_max:
            _write(self._dir("pids", job_id) / "pids.max", str(limits.pids_max))
        devices = self._dir("devices", job_id)
        for minor in limits.denied_gpu_minors:
            _write(devices / "devices.deny", f"c {NVIDIA_MAJOR}:{minor} rwm")


class CgroupV2(_Cgroups):
    def __init__(self, root: Path, made: Sequence[Path] = ()) -> None:
        super().__init__("cgroup v2", dict.fromkeys(V2_CONTROLLERS, root), made)

    def _limit(self, job_id: int, limits: JobLimits) -> None:
        d = self._dir("memory", job_id)
        if limits.mem_mb:
            _write(d / "memory.max", str(limits.mem_mb << 20))
            with contextlib.suppress(FileNotFoundError):  # absent: no swap accounting
                _write(d / "memory.swap.max", "0")
        if limits.cpus:
            _write(d / "cpu.max", f"{limits.cpus * CFS_PERIOD_US} {CFS_PERIOD_US}")
        if limits.pids_max:
            _write(d / "pids.max", str(limits.pids_max))
        if limits.denied_gpu_minors:
            attach_device_filter(d, limits.denied_gpu_minors)


# ---------------------------------------------------------------- v2 devices: a BPF program

BPF_PROG_LOAD, BPF_PROG_ATTACH = 5, 8
BPF_PROG_TYPE_CGROUP_DEVICE, BPF_CGROUP_DEVICE = 15, 6
BPF_F_ALLOW_MULTI = 2  # the programs of the cgroups above (systemd's) still have their say
BPF_DEVCG_DEV_CHAR = 2
SYS_BPF = {"x86_64": 321, "aarch64": 280, "ppc64le": 361, "s390x": 351}


def _insn(code: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> bytes:
    return struct.pack("<BBhi", code, (src << 4) | dst, off, imm)


def device_filter(denied_minors: Sequence[int]) -> bytes:
    """A cgroup device program: 0 (EPERM) for char NVIDIA_MAJOR:m, m in `denied_minors`;
    1 (allowed, as far as this program goes) for any other device. Its context is
    struct bpf_cgroup_dev_ctx {u32 access_type (access << 16 | type); u32 major, minor}."""
    n = len(denied_minors)
    prog = [
        _insn(0x61, 2, 1, 0),  # r2 = ctx->access_type
        _insn(0x57, 2, imm=0xFFFF),  # r2 &= 0xffff: the device's type
        _insn(0x61, 3, 1, 4),  # r3 = ctx->major
        _insn(0x61, 4, 1, 8),  # r4 = ctx->minor
        _insn(0x55, 2, off=n + 1, imm=BPF_DEVCG_DEV_CHAR),  # not a char device: allow
        _insn(0x55, 3, off=n, imm=NVIDIA_MAJOR),  # not a GPU: allow
    ]
    for i, minor in enumerate(denied_minors):
        prog.append(_insn(0x15, 4, off=n - i + 1, imm=minor))  # another job's GPU: deny
    prog += [_insn(0xB7, 0, imm=1), _insn(0x95), _insn(0xB7, 0, imm=0), _insn(0x95)]
    return b"".join(prog)


def _bpf(cmd: int, attr: bytes) -> int:
    number = SYS_BPF.get(platform.machine())
    if number is None:
        raise OSError(errno.ENOSYS, f"bpf(2) on {platform.machine()} is not known here")
    buf = ctypes.create_string_buffer(attr, 128)
    libc = ctypes.CDLL(None, use_errno=True)
    fd = int(libc.syscall(number, cmd, buf, 128))
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"bpf(2): {os.strerror(err)}")
    return fd


def attach_device_filter(cgroup_dir: Path, denied_minors: Sequence[int]) -> None:
    """Load `device_filter(denied_minors)` and attach it to `cgroup_dir` (cgroup v2). The
    cgroup keeps the program once attached, and drops it with the cgroup. Raises OSError."""
    code = device_filter(denied_minors)
    insns = ctypes.create_string_buffer(code, len(code))
    license = ctypes.create_string_buffer(b"GPL")
    attr = struct.pack(
        "<IIQQ",
        BPF_PROG_TYPE_CGROUP_DEVICE,
        len(code) // 8,
        *map(ctypes.addressof, (insns, license)),
    )
    prog = _bpf(BPF_PROG_LOAD, attr)
    try:
        cgroup = os.open(cgroup_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            _bpf(
                BPF_PROG_ATTACH,
                struct.pack("<IIII", cgroup, prog, BPF_CGROUP_DEVICE, BPF_F_ALLOW_MULTI),
            )
        finally:
            os.close(cgroup)
    finally:
        os.close(prog)


# ---------------------------------------------------------------- finding the hierarchies


@dataclass(frozen=True)
class Mount:
    path: Path
    fstype: str
    options: frozenset[str]


def parse_mounts(text: str) -> list[Mount]:
    """cgroup and cgroup2 mounts from /proc/self/mounts."""
    out = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 4 and fields[2] in ("cgroup", "cgroup2"):
            path = fields[1].replace("\\040", " ")
            out.append(Mount(Path(path), fields[2], frozenset(fields[3].split(","))))
    return out


def parse_own(text: str) -> dict[str, str]:
    """/proc/self/cgroup: controller -> this process's cgroup ("" for the v2 hierarchy)."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        for controller in parts[1].split(",") if parts[1] else [""]:
            out[controller] = parts[2]
    return out


def _below(base: Path, own: str, root: str) -> Path:
    if root.startswith("/"):
        return base / root.strip("/")
    return base / own.strip("/") / root


def detect(
    mode: str = "auto",
    root: str = "gshare",
    *,
    mounts: str | None = None,
    own: str | None = None,
    euid: int | None = None,
) -> Confinement:
    """How this agent confines jobs. `mode` "off" or a non-root agent: not at all; else
    cgroup v2 where its hierarchy has the memory controller, else v1 where the v1
    controllers are mounted, else not at all. `mounts` and `own` stand in for
    /proc/self/mounts and /proc/self/cgroup (tests)."""
    if mode == "off":
        return Confinement("none (confine = off)")
    if (os.geteuid() if euid is None else euid) != 0:
        return Confinement("none (agent not root)")
    try:
        found = parse_mounts(Path("/proc/self/mounts").read_text() if mounts is None else mounts)
        mine = parse_own(Path("/proc/self/cgroup").read_text() if own is None else own)
    except OSError as exc:
        return Confinement(f"none (cannot read the cgroup mounts: {_why(exc)})")
    for m in found:
        if m.fstype == "cgroup2" and "" in mine:
            try:
                available = (m.path / "cgroup.controllers").read_text().split()
            except OSError:
                continue
            if all(c in available for c in V2_CONTROLLERS):
                return _setup_v2(m.path, mine[""], root)
    roots: dict[str, Path] = {}
    for controller in V1_CONTROLLERS:
        for m in found:
            if m.fstype == "cgroup" and controller in m.options and controller in mine:
                roots[controller] = _below(m.path, mine[controller], root)
                break
    missing = [c for c in V1_CONTROLLERS if c not in roots]
    if missing:
        return Confinement(f"none (no cgroup controller {', '.join(missing)})")
    made: list[Path] = []
    try:
        for path in dict.fromkeys(roots.values()):
            made += _make_dirs(path)
    except OSError as exc:
        return Confinement(f"none (cannot create {exc.filename}: {_why(exc)})")
    return CgroupV1(roots, made)


def _make_dirs(path: Path) -> list[Path]:
    """mkdir -p; the directories it made, parents first."""
    missing = [p for p in (path, *path.parents) if not p.exists()]
    for p in reversed(missing):
        p.mkdir(mode=0o755, exist_ok=True)
    return missing[::-1]


def _setup_v2(base: Path, own: str, root: str) -> Confinement:
    """The delegated subtree: the agent in a leaf of its own, controllers enabled down to
    ROOT (a cgroup with processes in it cannot give its children controllers)."""
    own_path = own.strip("/")
    if own_path.endswith("/" + AGENT_LEAF) or own_path == AGENT_LEAF:
        own_path = own_path[: -len(AGENT_LEAF)].rstrip("/")  # an earlier start moved us
    if own_path.endswith(".slice"):
        # not a cgroup of the agent's own (systemd puts a process it could not place in
        # its unit's cgroup into the slice above): never touch what systemd manages
        return Confinement(
            f"none (cgroup v2: the agent runs in /{own_path}, not a cgroup of its own)"
        )
    top = base / own_path
    job_root = _below(base, own_path, root)
    enable = " ".join(f"+{c}" for c in V2_CONTROLLERS)
    start = top if job_root.is_relative_to(top) else base  # "/ROOT": from the top
    try:
        if own_path and start == top:  # the top cgroup may have processes and controllers
            leaf = top / AGENT_LEAF
            leaf.mkdir(mode=0o755, exist_ok=True)
            _write(leaf / "cgroup.procs", str(os.getpid()))  # ourselves, nothing else
        chain = [start]
        for part in job_root.relative_to(start).parts:
            chain.append(chain[-1] / part)
        made = _make_dirs(job_root)
        for d in chain:
            _write(d / "cgroup.subtree_control", enable)
    except OSError as exc:
        return Confinement(
            f"none (cgroup v2 not delegated to the agent: {exc.filename}: {_why(exc)})"
        )
    return CgroupV2(job_root, made)


# ---------------------------------------------------------------- the shim's side


def join(cgroup: dict[str, object], pid: int) -> None:
    """Put `pid` into the job's cgroup (in each hierarchy). Raises OSError."""
    for d in dirs_of(cgroup):
        _write(Path(d) / "cgroup.procs", str(pid))


def kill_all(cgroup: dict[str, object]) -> None:
    """SIGKILL every process left in the job's cgroup (those that left its process
    group too), until none is left or a few seconds have passed."""
    dirs = dirs_of(cgroup)
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline:
        pids = {p for d in dirs for p in _procs(Path(d))}
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.05)


def oom_kills(cgroup: dict[str, object]) -> int:
    """How many of the job's processes the OOM killer ended in its cgroup: memory.events
    (v2) or memory.oom_control (v1) `oom_kill`; on a v1 kernel without that counter, 1 if
    the memory limit was ever hit (memory.failcnt)."""
    memory = str(cgroup.get("memory") or "")
    if not memory:
        return 0
    for name in ("memory.events", "memory.oom_control"):
        with contextlib.suppress(OSError, ValueError):
            for line in (Path(memory) / name).read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    return int(value)
    with contextlib.suppress(OSError, ValueError):
        return 1 if int((Path(memory) / "memory.failcnt").read_text()) > 0 else 0
    return 0


def remove(dirs: Iterable[str], wait_s: float = 5.0) -> bool:
    """Remove the job's cgroup directories, retrying while their last processes drain
    (a killed process leaves its cgroup a moment after it is reaped). True if none is
    left."""
    left = [Path(d) for d in dirs]
    deadline = time.monotonic() + wait_s
    while True:
        still = []
        for d in left:
            try:
                d.rmdir()
            except FileNotFoundError:
                pass
            except OSError as exc:
                if exc.errno != errno.EBUSY:
                    log.warning("cannot remove cgroup %s: %s", d, _why(exc))
                still.append(d)
        left = still
        if not left or time.monotonic() >= deadline:
            return not left
        time.sleep(0.05)


def dirs_of(cgroup: dict[str, object]) -> Sequence[str]:
    dirs = cgroup.get("dirs") or []
    return [str(d) for d in dirs] if isinstance(dirs, list) else []


def _procs(d: Path) -> list[int]:
    try:
        return [int(p) for p in (d / "cgroup.procs").read_text().split()]
    except (OSError, ValueError):
        return []


def _write(path: Path, value: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


def _why(exc: OSError) -> str:
    return exc.strerror or str(exc)
