"""nodeagent.cgroups on fake hierarchies (directories in tmp_path standing in for cgroupfs):
which kind of confinement an agent finds, where job cgroups go, what limits are written,
how an OOM kill is read back; and, where this machine has a cgroup2 mount, cgroup v2's
device program and a job's joining and removal on the real hierarchy. The real v1
hierarchies are exercised by tests/integration/test_confinement.py."""

from __future__ import annotations

import os
import pwd
import signal
import stat
import struct
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from gshare.limits import format_mem_mb, parse_mem_mb
from nodeagent import cgroups
from nodeagent.cgroups import CgroupV1, CgroupV2, JobLimits
from nodeagent.launcher import Launcher
from nodeagent.main import main as agent_main
from nodeagent.runner import JobProcess, LaunchRequest

SERVICE = "system.slice/gshare-nodeagent.service"
LIMITS = JobLimits(mem_mb=32 * 1024, cpus=2, pids_max=100, denied_gpu_minors=(0, 2))


@pytest.fixture
def writes(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[str]]:
    """cgroupfs makes a cgroup's files when the directory is made; a fake tree cannot, so
    the writes are recorded (and appended to the files, made if need be)."""
    seen: dict[str, list[str]] = {}

    def write(path: Path, value: str) -> None:
        seen.setdefault(str(path), []).append(value)
        with open(path, "a") as f:
            f.write(value + "\n")

    def attach(cgroup_dir: Path, minors: tuple[int, ...]) -> None:  # bpf(2): on a real one
        seen.setdefault(str(cgroup_dir / "<device filter>"), []).append(repr(tuple(minors)))

    monkeypatch.setattr(cgroups, "_write", write)
    monkeypatch.setattr(cgroups, "attach_device_filter", attach)
    return seen


def v2_tree(tmp_path: Path, controllers: str = "cpuset cpu io memory hugetlb pids rdma") -> Path:
    top = tmp_path / "cg"
    (top / SERVICE).mkdir(parents=True)
    (top / "cgroup.controllers").write_text(controllers + "\n")
    (top / SERVICE / "cgroup.procs").write_text("4242\n")  # the unit's
    return top


def v2_detect(top: Path, own: str = SERVICE, root: str = "gshare") -> cgroups.Confinement:
    return cgroups.detect(
        "auto", root, mounts=f"cgroup2 {top} cgroup2 rw,nosuid 0 0\n", own=f"0::/{own}\n", euid=0
    )


def test_v2_delegated_the_agent_moves_to_a_leaf_and_jobs_get_their_limits(
    tmp_path: Path, writes: dict[str, list[str]]
) -> None:
    top = v2_tree(tmp_path)
    found = v2_detect(top)
    assert isinstance(found, CgroupV2) and found.enforced
    assert found.kind == "cgroup v2"
    unit = top / SERVICE
    # a cgroup with processes cannot enable controllers for its children: the agent left it
    assert writes[str(unit / cgroups.AGENT_LEAF / "cgroup.procs")] == [str(os.getpid())]
    assert writes[str(unit / "cgroup.subtree_control")] == ["+memory +cpu +pids"]
    assert writes[str(unit / "gshare" / "cgroup.subtree_control")] == ["+memory +cpu +pids"]

    made = found.create(7, LIMITS)
    job = unit / "gshare" / "job-7"
    assert made.dirs == (str(job),) and made.memory == str(job)
    assert writes[str(job / "memory.max")] == [str(32 << 30)]
    assert writes[str(job / "memory.swap.max")] == ["0"]
    assert writes[str(job / "cpu.max")] == ["200000 100000"]
    assert writes[str(job / "pids.max")] == ["100"]
    assert writes[str(job / "<device filter>")] == ["(0, 2)"]  # a BPF program on v2

    for f in job.iterdir():  # cgroupfs removes a cgroup's files with it; a fake tree not
        f.unlink()
    assert found.remove(7) and not job.exists()


def test_v2_after_a_restart_the_agent_in_its_leaf_finds_the_same_job_root(
    tmp_path: Path, writes: dict[str, list[str]]
) -> None:
    top = v2_tree(tmp_path)
    (top / SERVICE / cgroups.AGENT_LEAF).mkdir()
    found = v2_detect(top, own=f"{SERVICE}/{cgroups.AGENT_LEAF}")
    assert isinstance(found, CgroupV2)
    assert found.job_dirs(3) == (top / SERVICE / "gshare" / "job-3",)


def test_v2_an_agent_in_a_slice_touches_nothing(
    tmp_path: Path, writes: dict[str, list[str]]
) -> None:
    top = v2_tree(tmp_path)
    found = v2_detect(top, own="system.slice")  # as systemd's fallback might place it
    assert not found.enforced and "not a cgroup of its own" in found.kind
    assert not writes


def test_v2_an_absolute_root_is_from_the_top(tmp_path: Path, writes: dict[str, list[str]]) -> None:
    top = v2_tree(tmp_path)
    found = v2_detect(top, root="/gshare/jobs")
    assert found.job_dirs(3) == (top / "gshare" / "jobs" / "job-3",)


def test_v2_without_delegation_jobs_run_unconfined_and_it_says_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    top = v2_tree(tmp_path)

    def refuse(path: Path, value: str) -> None:  # as without Delegate=yes: root's cgroups
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(cgroups, "_write", refuse)
    found = v2_detect(top)
    assert not found.enforced
    assert found.kind.startswith("none (cgroup v2 not delegated to the agent: ")
    assert found.kind.endswith("cgroup.procs: Permission denied)")


def test_v2_without_the_controllers_falls_back_to_v1_or_none(tmp_path: Path) -> None:
    top = v2_tree(tmp_path, controllers="")  # as this machine's unified hierarchy
    found = v2_detect(top)
    assert not found.enforced
    assert found.kind == "none (no cgroup controller memory, cpu, cpuacct, pids, devices)"


def v1_tree(tmp_path: Path) -> tuple[str, str]:
    mounts, own = [], ["0::/"]
    for n, name in enumerate(("memory", "cpu,cpuacct", "pids", "devices"), start=1):
        (tmp_path / name / "agent.slice").mkdir(parents=True)
        mounts.append(f"cgroup {tmp_path / name} cgroup rw,nosuid,{name} 0 0")
        own.append(f"{n}:{name}:/agent.slice")
    return "\n".join(mounts), "\n".join(own)


def test_v1_limits_and_the_other_gpus_denied(tmp_path: Path, writes: dict[str, list[str]]) -> None:
    mounts, own = v1_tree(tmp_path)
    found = cgroups.detect("auto", "gshare", mounts=mounts, own=own, euid=0)
    assert isinstance(found, CgroupV1) and found.kind == "cgroup v1"
    made = found.create(9, LIMITS)
    mem = tmp_path / "memory/agent.slice/gshare/job-9"
    cpu = tmp_path / "cpu,cpuacct/agent.slice/gshare/job-9"  # cpu and cpuacct: one dir
    pids = tmp_path / "pids/agent.slice/gshare/job-9"
    dev = tmp_path / "devices/agent.slice/gshare/job-9"
    assert sorted(made.dirs) == sorted(map(str, (mem, cpu, pids, dev)))
    assert made.memory == str(mem)
    assert writes[str(mem / "memory.limit_in_bytes")] == [str(32 << 30)]
    assert writes[str(mem / "memory.memsw.limit_in_bytes")] == [str(32 << 30)]  # no swap
    assert writes[str(cpu / "cpu.cfs_quota_us")] == ["200000"]
    assert writes[str(cpu / "cpu.cfs_period_us")] == ["100000"]
    assert writes[str(pids / "pids.max")] == ["100"]
    assert writes[str(dev / "devices.deny")] == ["c 195:0 rwm", "c 195:2 rwm"]


def test_v1_no_limits_asked_none_written(tmp_path: Path, writes: dict[str, list[str]]) -> None:
    mounts, own = v1_tree(tmp_path)
    found = cgroups.detect("auto", "gshare", mounts=mounts, own=own, euid=0)
    found.create(9, JobLimits())
    assert not writes  # the cgroups are made (and joined), no limit is written


def test_a_cgroup_that_cannot_be_made_is_an_error_not_an_unconfined_job(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mounts, own = v1_tree(tmp_path)
    found = cgroups.detect("auto", "gshare", mounts=mounts, own=own, euid=0)

    def refuse(path: Path, value: str) -> None:
        raise PermissionError(1, "Operation not permitted", str(path))

    monkeypatch.setattr(cgroups, "_write", refuse)
    with pytest.raises(cgroups.CgroupError, match="cannot set up the job's cgroup"):
        found.create(9, LIMITS)
    assert not any(d.exists() for d in found.job_dirs(9))  # nothing half-made left


@pytest.mark.parametrize(
    ("mode", "euid", "kind"),
    [("off", 0, "none (confine = off)"), ("auto", 1000, "none (agent not root)")],
)
def test_unconfined_agents_say_why(tmp_path: Path, mode: str, euid: int, kind: str) -> None:
    mounts, own = v1_tree(tmp_path)
    found = cgroups.detect(mode, "gshare", mounts=mounts, own=own, euid=euid)
    assert not found.enforced and found.kind == kind
    assert found.create(1, LIMITS) is None


def test_mount_and_own_cgroup_parsing() -> None:
    mounts = cgroups.parse_mounts(
        "proc /proc proc rw 0 0\n"
        "cgroup /sys/fs/cgroup/cpu,cpuacct cgroup rw,nosuid,cpu,cpuacct 0 0\n"
        "cgroup2 /sys/fs/cgroup/my\\040dir cgroup2 rw 0 0\n"
        "garbage\n"
    )
    assert [(str(m.path), m.fstype) for m in mounts] == [
        ("/sys/fs/cgroup/cpu,cpuacct", "cgroup"),
        ("/sys/fs/cgroup/my dir", "cgroup2"),
    ]
    assert {"cpu", "cpuacct"} <= mounts[0].options
    own = cgroups.parse_own("4:memory:/a/b\n2:cpu,cpuacct:/c\n0::/d\nnonsense\n")
    assert own == {"memory": "/a/b", "cpu": "/c", "cpuacct": "/c", "": "/d"}


@pytest.mark.parametrize(
    ("files", "kills"),
    [
        ({"memory.events": "low 0\nhigh 0\nmax 3\noom 1\noom_kill 2\n"}, 2),  # v2
        ({"memory.oom_control": "oom_kill_disable 0\nunder_oom 0\noom_kill 1\n"}, 1),  # v1
        ({"memory.oom_control": "oom_kill_disable 0\nunder_oom 0\n", "memory.failcnt": "5"}, 1),
        ({"memory.oom_control": "oom_kill_disable 0\nunder_oom 0\n", "memory.failcnt": "0"}, 0),
        ({"memory.events": "oom_kill lots\n"}, 0),
        ({}, 0),
    ],
)
def test_oom_kills_are_read_back(tmp_path: Path, files: dict[str, str], kills: int) -> None:
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    assert cgroups.oom_kills({"dirs": [str(tmp_path)], "memory": str(tmp_path)}) == kills
    assert cgroups.oom_kills({"dirs": []}) == 0


def test_memory_sizes_as_users_write_them() -> None:
    assert [format_mem_mb(m) for m in (64, 1536, 32 * 1024, 1 << 20, 0)] == [
        "64M",
        "1536M",
        "32G",
        "1T",
        "0M",
    ]
    assert [parse_mem_mb(t) for t in ("64M", "32G", "1T", "2048", "0")] == [
        64,
        32768,
        1 << 20,
        2048,
        0,
    ]
    for bad in ("", "lots", "-1", "1.5G", "1\x00G", "9" * 5000):
        with pytest.raises(ValueError):
            parse_mem_mb(bad)


@pytest.mark.parametrize("root", ["../escape", "a/../../b", "", "/", "x" * 300, "a b", "a\nb"])
def test_the_agent_refuses_a_bad_cgroup_root_in_one_line(
    root: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code = agent_main(["--cgroup-root", root, "--fake-gpus", "1", "--address", "unix:/none"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("gshare-nodeagent: --cgroup-root: ")
    assert err.count("\n") == 1, err


def test_a_stopping_agent_removes_what_it_made_unless_a_job_is_left_there(
    tmp_path: Path, writes: dict[str, list[str]]
) -> None:
    mounts, own = v1_tree(tmp_path)
    found = cgroups.detect("auto", "gshare/node7", mounts=mounts, own=own, euid=0)
    assert (tmp_path / "pids/agent.slice/gshare/node7").is_dir()
    found.create(5, JobLimits())  # a job that outlives its agent (as they do)
    found.close()
    assert (tmp_path / "pids/agent.slice/gshare/node7/job-5").is_dir()
    for d in found.job_dirs(5):
        d.rmdir()
    found.close()
    assert not (tmp_path / "pids/agent.slice/gshare").exists()
    assert (tmp_path / "pids/agent.slice").is_dir()  # the agent's own: not ours to remove


def real_v2_top() -> Path | None:
    """This machine's cgroup2 mount with our own cgroup in it, if root may write there."""
    if os.geteuid() != 0:
        return None
    own = cgroups.parse_own(Path("/proc/self/cgroup").read_text()).get("")
    for m in cgroups.parse_mounts(Path("/proc/self/mounts").read_text()):
        if m.fstype == "cgroup2" and own is not None:
            top = m.path / own.strip("/")
            return top if os.access(top, os.W_OK) else None
    return None


@pytest.mark.skipif(real_v2_top() is None, reason="needs root and a cgroup2 mount")
def test_on_the_real_v2_hierarchy_a_job_joins_its_cgroup_and_nothing_outlives_it() -> None:
    """The supervisor's side on a real cgroup2 (without controllers here: the mechanics, not
    the limits): the job's process joins, a process that left its session is killed at the
    end with it, and the cgroup is removed."""
    top = real_v2_top()
    assert top is not None
    root = top / f"gshare-test-{uuid.uuid4().hex[:12]}"
    root.mkdir()
    try:
        confinement = CgroupV2(root)
        made = confinement.create(1, JobLimits())
        job = subprocess.Popen(["sleep", "600"], start_new_session=True)
        try:
            cgroups.join(made.as_spec(), job.pid)
            assert (root / "job-1" / "cgroup.procs").read_text().split() == [str(job.pid)]
            cgroups.kill_all(made.as_spec())
            assert job.wait(10) == -signal.SIGKILL
        finally:
            job.kill()
        assert cgroups.remove(made.dirs) and not (root / "job-1").exists()
    finally:
        cgroups.remove([str(root / "job-1"), str(root)])
    assert not root.exists()


class RefusingCgroups(cgroups.Confinement):
    """Cgroups that cannot be made (a full hierarchy, a read-only mount)."""

    enforced = True

    def __init__(self) -> None:
        super().__init__("cgroup v1")
        self.asked: list[tuple[int, JobLimits]] = []

    def create(self, job_id: int, limits: JobLimits) -> cgroups.JobCgroup:
        self.asked.append((job_id, limits))
        raise cgroups.CgroupError("cannot set up the job's cgroup: No space left on device")


def test_a_job_whose_cgroup_cannot_be_made_fails_to_launch_and_never_runs(
    tmp_path: Path,
) -> None:
    ended: list[JobProcess] = []
    confinement = RefusingCgroups()
    launcher = Launcher(
        tmp_path / "agent",
        ended.append,
        confinement=confinement,
        pids_max=64,
        gpu_minors={0: 0, 1: 1, 2: 5},
    )
    proc = launcher.launch(
        LaunchRequest(
            job_id=3,
            script=b"#!/bin/sh\ntouch " + str(tmp_path / "ran").encode() + b"\n",
            args=[],
            env={},
            workdir=str(tmp_path),
            output_path=str(tmp_path / "out"),
            user=pwd.getpwuid(os.getuid()).pw_name,
            uid=os.getuid(),
            gid=os.getgid(),
            gpu_indexes=[1],
            gpu_uuids=["GPU-1"],
            node="n1",
            mem_mb=512,
            cpus=1,
        )
    )
    assert proc.exited and proc.exit_code == 127 and ended == [proc]
    assert proc.error == "cannot set up the job's cgroup: No space left on device"
    assert proc.shim is None and not (tmp_path / "ran").exists()
    # what it asked for: its memory and CPU, the node's pids limit, the GPUs not its own
    assert confinement.asked == [(3, JobLimits(512, 1, 64, (0, 5)))]


def test_the_v2_device_filter_program() -> None:
    """The program, instruction by instruction: what it reads, where each test jumps."""
    prog = cgroups.device_filter([1, 3])
    insns = [struct.unpack("<BBhi", prog[i : i + 8]) for i in range(0, len(prog), 8)]
    assert insns == [
        (0x61, 0x12, 0, 0),  # r2 = access_type
        (0x57, 0x02, 0, 0xFFFF),  # r2 &= 0xffff (the type)
        (0x61, 0x13, 4, 0),  # r3 = major
        (0x61, 0x14, 8, 0),  # r4 = minor
        (0x55, 0x02, 3, 2),  # type != char: to allow
        (0x55, 0x03, 2, 195),  # major != 195: to allow
        (0x15, 0x04, 3, 1),  # minor == 1: to deny
        (0x15, 0x04, 2, 3),  # minor == 3: to deny
        (0xB7, 0x00, 0, 1),  # allow: r0 = 1
        (0x95, 0x00, 0, 0),
        (0xB7, 0x00, 0, 0),  # deny: r0 = 0 (EPERM)
        (0x95, 0x00, 0, 0),
    ]


@pytest.mark.skipif(real_v2_top() is None, reason="needs root and a cgroup2 mount")
def test_on_the_real_v2_hierarchy_the_device_filter_refuses_the_other_gpus(
    tmp_path: Path,
) -> None:
    """cgroup v2's device control, on this kernel: the BPF program attached to a job's
    cgroup refuses the GPUs not given to it with EPERM, and lets the rest through (its own
    GPUs reach the missing driver: ENXIO; /dev/null opens)."""
    top = real_v2_top()
    assert top is not None
    for i in range(4):
        os.mknod(tmp_path / f"nvidia{i}", stat.S_IFCHR | 0o666, os.makedev(195, i))
    root = top / f"gshare-test-{uuid.uuid4().hex[:12]}"
    root.mkdir()
    probe = (
        "import errno, os, sys\n"
        "for i in range(4):\n"
        "    try:\n"
        "        os.close(os.open(f'{sys.argv[1]}/nvidia{i}', os.O_RDWR))\n"
        "        print(i, 'opened')\n"
        "    except OSError as exc:\n"
        "        print(i, errno.errorcode[exc.errno])\n"
        "os.close(os.open('/dev/null', os.O_RDWR))\n"
        "print('null opened')\n"
    )
    try:
        made = CgroupV2(root).create(1, JobLimits(denied_gpu_minors=(1, 3)))
        job = subprocess.Popen(
            ["sh", "-c", f'read _; exec {sys.executable} -c "$0" "$1"', probe, str(tmp_path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        cgroups.join(made.as_spec(), job.pid)  # as the shim does, before the job's exec
        out, _ = job.communicate("go\n", timeout=60)
        assert out.split("\n") == [
            "0 ENXIO",
            "1 EPERM",
            "2 ENXIO",
            "3 EPERM",
            "null opened",
            "",
        ]
        assert CgroupV2(root).remove(1)
    finally:
        cgroups.remove([str(root / "job-1"), str(root)])
    assert not root.exists()
