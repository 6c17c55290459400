"""A hostile job against its own node: the agent and the per-job supervisor run as root,
the job as `nobody`. Nothing root reads to decide or writes to record may be the job's to
write (ARCHITECTURE.md, "Trust boundaries")."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import stat
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.cluster import FINAL, Cluster, wait_until
from tests.conftest import needs_root

pytestmark = needs_root

NOBODY = 65534

# the job's view: its checkpoint log, the directory that holds it, and the one above
DIRS = """log_dir=$(dirname "$GSHARE_CHECKPOINT_LOG")
for d in "$log_dir" "$(dirname "$log_dir")"; do
"""

SYMLINKS = f"""#!/bin/bash
{DIRS}  for name in exit.json.tmp exit.json pid.json.tmp killed-after-grace; do
    ln -sf {{victim}} "$d/$name" 2>/dev/null && echo "linked $d/$name" >> {{report}}
  done
done
echo tried >> {{report}}
sleep 1
"""

FORGE_EXIT = f"""#!/bin/bash
echo $$ > {{leader}}
{DIRS}  echo '{{{{"exit_code": 0, "exit_signal": 0, "end_time": 1}}}}' \\
    > "$d/exit.json.new" 2>/dev/null \\
    && mv -f "$d/exit.json.new" "$d/exit.json" 2>/dev/null && echo "forged $d" >> {{report}}
done
echo tried >> {{report}}
sleep 120
"""

FORGE_PID = f"""#!/bin/bash
echo $$ > {{leader}}
{DIRS}  echo '{{{{"pid": {{victim}}, "start_time": '$(date +%s)'}}}}' \\
    > "$d/pid.json.new" 2>/dev/null \\
    && mv -f "$d/pid.json.new" "$d/pid.json" 2>/dev/null && echo "forged $d" >> {{report}}
done
echo tried >> {{report}}
sleep 120
"""


@pytest.fixture
def victim_file(open_tmp: Path) -> Path:
    """A root-owned file a job must never be able to make root write."""
    where = open_tmp / "root-only"
    where.mkdir(mode=0o755)
    path = where / "precious"
    path.write_text("precious\n")
    path.chmod(0o644)
    return path


@pytest.fixture
def victim_process() -> Iterator[subprocess.Popen[bytes]]:
    """A root process (a process group of its own) that no job may get signalled."""
    proc = subprocess.Popen(["sleep", "300"], start_new_session=True)
    yield proc
    proc.kill()
    proc.wait(10)


@pytest.fixture
def leaders() -> Iterator[list[Path]]:
    """Files where a job writes its pid: whatever the outcome, the test's jobs end with it."""
    files: list[Path] = []
    yield files
    for path in files:
        with contextlib.suppress(OSError, ValueError):
            os.killpg(int(path.read_text()), signal.SIGKILL)


def as_nobody(path: Path, text: str) -> str:
    path.write_text(text)
    path.chmod(0o755)
    return str(path)


def job_dir(cluster: Cluster, job_id: int) -> Path:
    return cluster.root / f"agent-{cluster.job(job_id).node}" / "jobs" / str(job_id)


def tried(report: Path) -> bool:
    return report.exists() and "tried" in report.read_text()


def test_the_job_dir_and_its_records_are_roots(cluster: Cluster, workdir: Path) -> None:
    path = as_nobody(workdir / "job.sh", "#!/bin/bash\nsleep 120\n")
    job_id = cluster.submit(path, user="nobody", cwd=workdir)
    cluster.wait_state(job_id, "RUNNING")
    jdir = job_dir(cluster, job_id)
    wait_until("the job's pid record", lambda: (jdir / "pid.json").exists())
    for d in (jdir.parent.parent, jdir.parent, jdir):
        st = d.lstat()
        assert st.st_uid == 0 and not st.st_mode & 0o022, f"{d} is {oct(st.st_mode)}"
        assert st.st_mode & 0o001, f"{d} is not traversable by the job's user"
    for entry in jdir.iterdir():
        st = entry.lstat()
        if entry.name in ("script", "checkpoints.jsonl"):  # the job's own, nobody else's
            assert st.st_uid == NOBODY and stat.S_IMODE(st.st_mode) & 0o077 == 0
            assert stat.S_ISREG(st.st_mode), entry
        else:
            assert st.st_uid == 0 and stat.S_ISREG(st.st_mode), entry
            assert not st.st_mode & 0o022, entry
    cluster.gshare("cancel", str(job_id))
    cluster.wait_state(job_id, FINAL)


FILL = """#!/bin/bash
log_dir=$(dirname "$GSHARE_CHECKPOINT_LOG")
for i in 1 2 3; do
  : > "$log_dir/f$i" 2>/dev/null && echo "made $log_dir/f$i" >> {report}
  mkdir "$log_dir/d$i" 2>/dev/null && echo "made $log_dir/d$i" >> {report}
done
echo '{{"time": 1, "size": 1, "step": 1}}' >> "$GSHARE_CHECKPOINT_LOG" && echo logged >> {report}
echo tried >> {report}
"""


def test_a_job_can_make_nothing_in_the_agents_state_dir(cluster: Cluster, workdir: Path) -> None:
    """A job writes its checkpoint log and nothing else there: it cannot fill the agent's
    state dir with entries (whose removal once held up the agent's heartbeats)."""
    report = workdir / "report"
    path = as_nobody(workdir / "fill.sh", FILL.format(report=report))
    job_id = cluster.submit(path, user="nobody", cwd=workdir)
    done = cluster.wait_state(job_id, FINAL, timeout=30)
    assert cluster.state(job_id) == "COMPLETED", done.reason
    assert report.read_text().splitlines() == ["logged", "tried"]


def test_a_symlink_from_the_job_never_makes_root_write_elsewhere(
    cluster: Cluster, workdir: Path, victim_file: Path
) -> None:
    report = workdir / "report"
    path = as_nobody(workdir / "links.sh", SYMLINKS.format(victim=victim_file, report=report))
    job_id = cluster.submit(path, user="nobody", cwd=workdir)
    done = cluster.wait_state(job_id, FINAL, timeout=30)
    assert tried(report)
    assert victim_file.read_text() == "precious\n"
    assert victim_file.stat().st_uid == 0
    assert cluster.state(job_id) == "COMPLETED", done.reason


def test_a_forged_exit_record_does_not_end_a_running_job(
    cluster: Cluster, workdir: Path, leaders: list[Path]
) -> None:
    report, leader = workdir / "report", workdir / "leader"
    leaders.append(leader)
    path = as_nobody(workdir / "forge.sh", FORGE_EXIT.format(report=report, leader=leader))
    job_id = cluster.submit(path, user="nobody", cwd=workdir)
    cluster.wait_state(job_id, {"RUNNING", *FINAL})
    wait_until("the job's forgery", lambda: tried(report))
    time.sleep(2)  # the agent looks at its jobs several times a second
    job = cluster.job(job_id)
    assert cluster.state(job_id) == "RUNNING", (job.reason, report.read_text())
    assert len(job.gpus) == 1
    assert cluster.gshare("cancel", str(job_id)).code == 0
    cluster.wait_state(job_id, FINAL, timeout=30)


def test_a_forged_pid_record_never_gets_a_root_process_signalled(
    cluster: Cluster,
    workdir: Path,
    victim_process: subprocess.Popen[bytes],
    leaders: list[Path],
) -> None:
    report, leader = workdir / "report", workdir / "leader"
    leaders.append(leader)
    body = FORGE_PID.format(report=report, leader=leader, victim=victim_process.pid)
    job_id = cluster.submit(as_nobody(workdir / "forge.sh", body), user="nobody", cwd=workdir)
    node = cluster.wait_state(job_id, "RUNNING").node
    wait_until("the job's forgery", lambda: tried(report))
    cluster.kill_agent(node, signal.SIGKILL)
    cluster.start_agent(node)  # re-adopts the job from what it finds on disk
    assert cluster.gshare("cancel", str(job_id)).code == 0
    wait_until(
        "the job to end (or the victim to be hit)",
        lambda: victim_process.poll() is not None or cluster.state(job_id) in FINAL,
        timeout=30,
    )
    time.sleep(0.5)
    assert victim_process.poll() is None, "a root process was signalled on a job's word"


def _record(path: Path) -> dict[str, object]:
    data = json.loads(path.read_text())
    assert isinstance(data, dict)
    return data


def test_a_recycled_pid_is_never_signalled_after_a_restart(
    cluster_factory: Callable[..., Cluster],
    workdir: Path,
    victim_process: subprocess.Popen[bytes],
) -> None:
    """The job and its supervisor die while the agent is away, and the job's pid is taken by
    another process: the agent that comes back must see it is not the job."""
    cluster = cluster_factory(agents=1)
    job_id = cluster.submit("--wrap", "sleep 300", cwd=workdir)
    node = cluster.wait_state(job_id, "RUNNING").node
    jdir = job_dir(cluster, job_id)
    wait_until("the job's pid record", lambda: (jdir / "pid.json").exists())
    cluster.kill_agent(node, signal.SIGKILL)
    record = _record(jdir / "pid.json")
    shim_file = jdir / "shim.json"
    shim_pid = int(str(_record(shim_file)["pid"])) if shim_file.exists() else 0
    if not shim_pid:
        shim_pid = int((jdir / "shim.pid").read_text())
    os.kill(shim_pid, signal.SIGKILL)
    os.killpg(int(str(record["pid"])), signal.SIGKILL)
    wait_until("the job to be gone", lambda: not os.path.exists(f"/proc/{record['pid']}"))
    # the pid now names another process, started at about the same time
    (jdir / "pid.json").write_text(json.dumps({**record, "pid": victim_process.pid}))
    cluster.start_agent(node)
    cluster.gshare("cancel", str(job_id))
    cluster.wait_state(job_id, FINAL, timeout=30)
    time.sleep(1)
    assert victim_process.poll() is None, "the agent signalled a process that was not the job"
