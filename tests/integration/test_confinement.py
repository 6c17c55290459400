"""Confined jobs: a root agent puts each job in a cgroup of its own, limited to its --mem,
its --cpus, a pids limit and its own GPUs' device files. Real scheduler and agent
processes; jobs submitted by `nobody` through gsub; the cgroups are this machine's
(cgroup v1 here; v2 is covered by tests/unit/test_cgroups.py: its set-up and limits on a
fake tree, its GPU device program on this kernel's real cgroup2 hierarchy). Each test
checks that no job cgroup is left behind."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from nodeagent import cgroups
from tests.cluster import BIN, PY, Cluster, wait_until
from tests.conftest import needs_root

pytestmark = needs_root

SYSTEM_PYTHON = "/usr/bin/python3"  # the jobs' interpreter: nobody may run it

ALLOCATE = f"""#!{SYSTEM_PYTHON}
# past its --mem: every page written, so it is charged
hog = b"\\x01" * (512 << 20)
print("allocated", len(hog))
"""

NEIGHBOUR = f"""#!{SYSTEM_PYTHON}
import os, time
print("neighbour up", flush=True)
while not os.path.exists({{release!r}}):
    time.sleep(0.2)
keep = b"\\x01" * (32 << 20)  # it allocates too, inside its own limit
print("neighbour done", len(keep))
"""

BUSY = """#!/bin/sh
# two busy loops (two processes, so no interpreter lock serializes them)
sh -c 'while :; do :; done' &
sh -c 'while :; do :; done' &
wait
"""

PROBE_GPUS = f"""#!{SYSTEM_PYTHON}
# open each of the node's GPU device files and say how it went
import errno, os, sys
dev = sys.argv[1]
result = {{}}
for name in sorted(os.listdir(dev)):
    if not name.startswith("nvidia"):
        continue
    try:
        os.close(os.open(os.path.join(dev, name), os.O_RDWR))
        result[name[6:]] = "opened"
    except OSError as exc:
        result[name[6:]] = errno.errorcode[exc.errno]
import json
print(json.dumps({{"own": os.environ["GSHARE_GPUS"], "open": result}}))
"""

LEAVE_SHM = f"""#!{SYSTEM_PYTHON}
# 8 MiB in /dev/shm and a 4 MiB SysV segment, left behind on purpose; then exit 0
import ctypes, json, os
with open({{name!r}}, "wb") as f:
    f.write(b"\\x01" * (8 << 20))
libc = ctypes.CDLL(None, use_errno=True)
libc.shmat.restype = ctypes.c_void_p
shmid = libc.shmget({{key}}, 4 << 20, 0o1000 | 0o600)  # IPC_CREAT
ctypes.memset(ctypes.c_void_p(libc.shmat(shmid, None, 0)), 1, 4 << 20)
st = os.statvfs("/dev/shm")
print(json.dumps({{{{"shmid": shmid, "shm_size": st.f_blocks * st.f_frsize}}}}))
"""

FORK_BOMB = f"""#!{SYSTEM_PYTHON}
import errno, os, signal, sys
children = 0
while children < 100000:
    try:
        pid = os.fork()
    except OSError as exc:
        print(f"forked {{children}} then {{errno.errorcode[exc.errno]}}", flush=True)
        break
    if pid == 0:
        signal.pause()
        os._exit(0)
    children += 1
else:
    print(f"forked {{children}} without a refusal", flush=True)
"""

SLEEP = "#!/bin/sh\nsleep 600\n"


@pytest.fixture
def confined(cluster_factory: Callable[..., Cluster]) -> Iterator[Cluster]:
    """One node, two fake GPUs, its jobs confined, at most 64 processes a job, jobs of the
    default queue at 256M when they ask for no memory."""
    cluster = cluster_factory(
        agents=1,
        gpus_per_node=2,
        confine=True,
        config="[scheduler]\nkill_grace_s = 3\n[agent]\npids_max = 64\n"
        '[queues.default]\ndefault_mem = "256M"\n',
    )
    yield cluster
    # every job ended: its supervisor has removed its cgroup before it wrote exit.json
    running = [d for d in cluster.root.glob("agent-*/jobs/*") if not (d / "exit.json").exists()]
    for job_dir in running:
        cluster.gshare("cancel", job_dir.name)
    for job_dir in running:
        wait_until(f"job {job_dir.name} to end", lambda: ended(job_dir))  # noqa: B023
    cluster.stop()
    assert cluster.remove_cgroups() == [], "job cgroups left behind"


def ended(job_dir: Path) -> bool:
    return (job_dir / "exit.json").exists() or not job_dir.exists()


def script(workdir: Path, name: str, text: str) -> str:
    path = workdir / name
    path.write_text(text)
    path.chmod(0o755)
    return str(path)


def job_cgroup(cluster: Cluster, job_id: int, controller: str) -> Path:
    found = cgroups.detect("auto", f"{cluster.cgroup_root}/node0")
    assert isinstance(found, cgroups.CgroupV1), found.kind
    return found.roots[controller] / f"job-{job_id}"


def output(cluster: Cluster, job_id: int) -> str:
    path = Path(cluster.job(job_id).output_path)
    return path.read_text() if path.exists() else ""


def test_the_node_says_how_it_confines_jobs(confined: Cluster) -> None:
    res = confined.gshare("nodes")
    assert res.code == 0, res.err
    header, row = res.out.splitlines()[:2]
    assert "CONFINED" in header.split()
    assert "cgroup v1" in row
    nodes = json.loads(confined.gshare("nodes", "--json").out)
    assert nodes[0]["confinement"] == "cgroup v1"


def test_a_job_past_its_memory_is_killed_and_said_so_while_its_neighbour_runs_on(
    confined: Cluster, workdir: Path
) -> None:
    release = workdir / "release"
    neighbour = confined.submit(
        "--gpus",
        "1",
        script(workdir, "neighbour.py", NEIGHBOUR.format(release=str(release))),
        user="nobody",
        cwd=workdir,
    )
    confined.wait_state(neighbour, "RUNNING")
    wait_until("the neighbour to start", lambda: "neighbour up" in output(confined, neighbour))
    hog = confined.submit(
        "--gpus",
        "1",
        "--mem",
        "64M",
        script(workdir, "hog.py", ALLOCATE),
        user="nobody",
        cwd=workdir,
    )
    job = confined.wait_state(hog, {"FAILED", "COMPLETED"})
    assert job.reason == "out of memory (limit 64M)", job.reason
    assert "allocated" not in output(confined, hog)
    assert confined.state(neighbour) == "RUNNING"  # its node and its neighbour ran on
    res = confined.gshare("show", str(hog))
    assert "out of memory (limit 64M)" in res.out, res.out
    assert "CPUs, memory: any, 64M" in res.out, res.out
    release.touch()
    done = confined.wait_state(neighbour, {"COMPLETED", "FAILED"})
    assert done.reason == "" and "neighbour done" in output(confined, neighbour), done.reason
    assert pb_state(done) == "COMPLETED"


def pb_state(job: object) -> str:
    from gshare.api import gshare_pb2 as pb

    return pb.JobState.Name(job.state)  # type: ignore[attr-defined]


def test_the_queue_default_memory_is_the_limit_of_a_job_that_asks_for_none(
    confined: Cluster, workdir: Path
) -> None:
    job_id = confined.submit(script(workdir, "hog.py", ALLOCATE), user="nobody", cwd=workdir)
    job = confined.wait_state(job_id, {"FAILED", "COMPLETED"})
    assert job.spec.mem_mb == 256
    assert job.reason == "out of memory (limit 256M)", job.reason


def test_a_job_with_one_cpu_uses_at_most_about_one_cpu(confined: Cluster, workdir: Path) -> None:
    job_id = confined.submit(
        "--cpus", "1", script(workdir, "busy.sh", BUSY), user="nobody", cwd=workdir
    )
    confined.wait_state(job_id, "RUNNING")
    cpu, acct = job_cgroup(confined, job_id, "cpu"), job_cgroup(confined, job_id, "cpuacct")
    assert (cpu / "cpu.cfs_quota_us").read_text().strip() == "100000"
    assert (cpu / "cpu.cfs_period_us").read_text().strip() == "100000"
    wait_until(
        "both busy loops",
        lambda: len((acct / "cgroup.procs").read_text().split()) >= 3,
    )

    def usage() -> tuple[float, float]:
        return int((acct / "cpuacct.usage").read_text()) / 1e9, time.monotonic()

    used0, t0 = usage()
    time.sleep(3.0)
    used1, t1 = usage()
    cpus = (used1 - used0) / (t1 - t0)
    stat = dict(line.split() for line in (cpu / "cpu.stat").read_text().splitlines())
    print(
        f"job {job_id}: {cpus:.3f} CPUs over {t1 - t0:.1f}s with --cpus 1 and two busy loops;"
        f" throttled in {stat.get('nr_throttled')} of {stat.get('nr_periods')} periods"
    )
    assert 0 < cpus <= 1.2
    confined.gshare("cancel", str(job_id))
    confined.wait_state(job_id, "CANCELLED")


def test_a_job_cannot_open_another_jobs_gpu(confined: Cluster, workdir: Path) -> None:
    other = confined.submit(
        "--gpus", "1", script(workdir, "sleep.sh", SLEEP), user="nobody", cwd=workdir
    )
    confined.wait_state(other, "RUNNING")
    dev = confined.root / "agent-node0" / "fake-gpus"
    prober = confined.submit(
        "--gpus",
        "1",
        script(workdir, "probe.py", PROBE_GPUS),
        str(dev),
        user="nobody",
        cwd=workdir,
    )
    assert pb_state(confined.wait_state(prober, {"COMPLETED", "FAILED"})) == "COMPLETED"
    result = json.loads(output(confined, prober))
    theirs = str(confined.job(other).gpus[0].index)
    own = result["own"]
    assert own != theirs and {own, theirs} == {"0", "1"}
    # its own device: allowed by its cgroup, and then the (missing) driver answers ENXIO;
    # the other job's: refused by the devices cgroup, EPERM, though the file is mode 0666
    assert result["open"] == {own: "ENXIO", theirs: "EPERM"}, result
    assert (dev / f"nvidia{theirs}").stat().st_mode & 0o777 == 0o666
    confined.gshare("cancel", str(other))


def test_a_fork_bomb_stops_at_the_pids_limit(confined: Cluster, workdir: Path) -> None:
    job_id = confined.submit(script(workdir, "bomb.py", FORK_BOMB), user="nobody", cwd=workdir)
    job = confined.wait_state(job_id, {"COMPLETED", "FAILED"})
    assert pb_state(job) == "COMPLETED", job.reason
    text = output(confined, job_id)
    forked = int(text.split()[1])
    assert text.split()[3] == errno.errorcode[errno.EAGAIN], text
    assert 0 < forked < 64, text  # 64 processes at most, the job's own first one included


def test_an_agent_that_is_not_root_runs_jobs_unconfined_and_says_so(
    cluster_factory: Callable[..., Cluster], open_tmp: Path
) -> None:
    """An agent run as nobody (over TCP with TLS, with its node's token) confines nothing
    and says so. (Jobs it would start cannot run here: this machine's Python lives under
    /root, which nobody cannot reach; unconfined jobs run in every other integration test,
    whose agents have --confine off.)"""
    ca = open_tmp / "ca"
    for args in (("init",), ("scheduler", "127.0.0.1", "localhost")):
        made = subprocess.run(
            [str(BIN / "gshare"), "ca", *args, "--dir", str(ca)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert made.returncode == 0, made.stderr
    ca_pem = open_tmp / "ca.pem"  # the CA dir is root's alone: the agent reads a copy
    ca_pem.write_bytes((ca / "ca.pem").read_bytes())
    ca_pem.chmod(0o644)
    tls = (
        f'[server.tls]\ncert_file = "{ca / "scheduler.pem"}"\nkey_file = "{ca / "scheduler.key"}"\n'
    )
    cluster = cluster_factory(config='[server]\ntcp = "127.0.0.1:0"\n' + tls, agents=0)
    state = cluster.root / "sched"
    address = (state / "tcp.address").read_text().strip()
    token = subprocess.run(
        [PY, "-m", "schedulerd.main", "--state-dir", str(state), "--node-token", "plain"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    token_file = open_tmp / "plain.token"
    token_file.write_text(token)
    token_file.chmod(0o644)
    agent_dir = open_tmp / "plain-agent"
    agent_dir.mkdir()
    agent_conf = open_tmp / "plain-agent.toml"
    agent_conf.write_text(f'[agent]\nca_file = "{ca_pem}"\n')
    agent_conf.chmod(0o644)
    subprocess.run(["chown", "nobody:nogroup", str(agent_dir)], check=True)
    log = open(open_tmp / "plain-agent.log", "wb")  # noqa: SIM115
    agent = subprocess.Popen(
        [
            "setpriv",
            "--reuid=nobody",
            "--regid=nogroup",
            "--clear-groups",
            str(BIN / "gshare-nodeagent"),
            "--address",
            address,
            "--node",
            "plain",
            "--state-dir",
            str(agent_dir / "state"),
            "--fake-gpus",
            "1",
            "--token-file",
            str(token_file),
            "--config",
            str(agent_conf),
        ],
        stdout=log,
        stderr=log,
    )
    try:
        cluster.wait_nodes_up(1)
        nodes = json.loads(cluster.gshare("nodes", "--json").out)
        assert nodes[0]["confinement"] == "none (agent not root)"
        assert "none (agent not root)" in cluster.gshare("nodes").out
    finally:
        agent.terminate()
        agent.wait(10)
        log.close()
    text = (open_tmp / "plain-agent.log").read_text()
    assert "jobs run unconfined: none (agent not root)" in text


ESCAPE = f"""#!{SYSTEM_PYTHON}
# try to leave the job's cgroup, and to raise its own memory limit
import os, sys
parent, own = sys.argv[1], sys.argv[2]
for path, value in ((parent + "/cgroup.procs", str(os.getpid())),
                    (own + "/memory.limit_in_bytes", str(1 << 40))):
    try:
        with open(path, "w") as f:
            f.write(value)
        print(path, "written")
    except OSError as exc:
        print(path, exc.strerror)
print(open("/proc/self/cgroup").read())
"""


def test_a_job_cannot_leave_its_cgroup_or_raise_its_limit(confined: Cluster, workdir: Path) -> None:
    mem_root = job_cgroup(confined, 0, "memory").parent
    job_id = confined.submit(
        "--mem",
        "128M",
        script(workdir, "escape.py", ESCAPE),
        str(mem_root),
        str(mem_root / "job-1"),  # its own: the first job of this cluster
        user="nobody",
        cwd=workdir,
    )
    assert job_id == 1
    job = confined.wait_state(job_id, {"COMPLETED", "FAILED"})
    text = output(confined, job_id)
    assert pb_state(job) == "COMPLETED", (job.reason, text)
    assert f"{mem_root}/cgroup.procs Permission denied" in text, text
    assert f"{mem_root}/job-1/memory.limit_in_bytes Permission denied" in text, text
    assert "written" not in text
    memory_line = next(line for line in text.splitlines() if ":memory:" in line)
    assert memory_line.endswith(f"/{confined.cgroup_root}/node0/job-1"), memory_line


def test_an_oom_kill_while_the_agent_is_down_is_reported_by_the_next_agent(
    confined: Cluster, workdir: Path
) -> None:
    release = workdir / "release"
    waiter = f"#!{SYSTEM_PYTHON}\nimport os, time\nwhile not os.path.exists({str(release)!r}):\n"
    waiter += "    time.sleep(0.2)\n" + ALLOCATE.split("\n", 1)[1]
    job_id = confined.submit(
        "--mem", "64M", script(workdir, "late-hog.py", waiter), user="nobody", cwd=workdir
    )
    confined.wait_state(job_id, "RUNNING")
    confined.kill_agent("node0")
    release.touch()
    exit_record = confined.root / "agent-node0" / "jobs" / str(job_id) / "exit.json"
    wait_until("the job to end, its agent away", exit_record.exists)
    assert json.loads(exit_record.read_text())["oom_kills"] >= 1
    assert not any(
        d.exists() for d in cgroups.detect("auto", f"{confined.cgroup_root}/node0").job_dirs(job_id)
    )  # its supervisor removed its cgroup
    confined.start_agent("node0")
    job = confined.wait_state(job_id, {"FAILED", "COMPLETED"})
    assert job.reason == "out of memory (limit 64M)", job.reason


def test_what_a_job_leaves_running_outside_its_process_group_ends_with_it(
    confined: Cluster, workdir: Path
) -> None:
    pid_file = workdir / "stray.pid"
    body = f"#!/bin/sh\nsetsid sleep 600 &\necho $! > {pid_file}\nexit 0\n"
    job_id = confined.submit(script(workdir, "stray.sh", body), user="nobody", cwd=workdir)
    job = confined.wait_state(job_id, {"COMPLETED", "FAILED"})
    assert pb_state(job) == "COMPLETED", job.reason
    stray = int(pid_file.read_text())
    # its supervisor killed it (it was in the job's cgroup, not in its process group)
    # before it wrote the end the agent reported
    try:
        proc = psutil.Process(stray)
        alive = proc.cmdline() == ["sleep", "600"] and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:  # gone (or its pid reused since by something else)
        alive = False
    assert not alive


def _segments(key: int) -> list[str]:
    out = subprocess.run(["ipcs", "-m"], capture_output=True, text=True, check=True).stdout
    return [line for line in out.splitlines() if line.startswith(f"0x{key:08x}")]


def test_a_jobs_shared_memory_and_dev_shm_go_with_it(confined: Cluster, workdir: Path) -> None:
    """What a job puts in /dev/shm or in SysV shared memory is its own (an IPC namespace, a
    /dev/shm tmpfs of its --mem) and is gone when it ends: nothing stays pinned."""
    key = 0x5EC1300 + os.getpid() % 0xFF
    name = f"/dev/shm/gshare-test-{os.getpid()}"
    script = workdir / "leave.py"
    script.write_text(LEAVE_SHM.format(name=name, key=key))
    script.chmod(0o755)
    try:
        job_id = confined.submit("--mem", "128M", str(script), user="nobody", cwd=workdir)
        job = confined.wait_state(job_id, {"COMPLETED", "FAILED"}, timeout=60)
        out = Path(job.output_path).read_text()
        assert confined.state(job_id) == "COMPLETED", (job.reason, out)
        seen = json.loads(out.strip().splitlines()[-1])
        assert seen["shmid"] >= 0 and seen["shm_size"] == 128 << 20
        assert not Path(name).exists()
        assert _segments(key) == []
    finally:
        Path(name).unlink(missing_ok=True)
        subprocess.run(["ipcrm", "-M", str(key)], capture_output=True)
