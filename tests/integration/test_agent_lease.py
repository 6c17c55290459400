"""The node's lease, enforced on the node: a job whose agent has not heard from the
scheduler for longer than the lease gets its checkpoint signal, its grace, SIGTERM and
SIGKILL, whether the agent is frozen or only cut off; while all is well, nothing stops.
Times come from the job itself (bash traps writing to a file)."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from nodeagent import lease
from tests.cluster import FINAL, Cluster, wait_until

LEASE_S, HEARTBEAT_S, GRACE_S = 4.0, 0.5, 3.0
CONFIG = f"""
[scheduler]
node_lease_s = {LEASE_S}
heartbeat_s = {HEARTBEAT_S}
kill_grace_s = 2
"""
SLACK = 2.5  # for a loaded two-core machine: generous, yet well below what is measured

# records when it starts and each signal it gets; ignores them unless told to yield
JOB = """#!/bin/bash
say() {{ echo "$1 $(date +%s.%N) $GSHARE_NODE" >> {log}; }}
say start
trap 'say usr1; {on_usr1}' USR1
trap 'say term' TERM
for _ in $(seq {ticks}); do sleep 0.1; done
say end
"""


def job_script(workdir: Path, on_usr1: str = ":", secs: float = 600) -> tuple[str, Path]:
    log = workdir / "times"
    path = workdir / "job.sh"
    path.write_text(JOB.format(log=log, on_usr1=on_usr1, ticks=int(secs * 10)))
    path.chmod(0o755)
    return str(path), log


def times(log: Path, what: str, node: str | None = None) -> list[float]:
    lines = [line.split() for line in log.read_text().splitlines()] if log.exists() else []
    return [float(t) for kind, t, n in lines if kind == what and node in (None, n)]


def exit_record(cluster: Cluster, node: str, job_id: int) -> dict[str, object] | None:
    path = cluster.root / f"agent-{node}" / "jobs" / str(job_id) / "exit.json"
    if not path.exists():
        return None
    data = json.loads(path.read_text())
    assert isinstance(data, dict)
    return data


@contextmanager
def frozen(proc: subprocess.Popen[bytes] | None) -> Iterator[float]:
    """SIGSTOP `proc` (it stays connected, and silent) for the block; when it began."""
    assert proc is not None
    proc.send_signal(signal.SIGSTOP)
    try:
        yield time.time()
    finally:
        proc.send_signal(signal.SIGCONT)


def running(cluster: Cluster, job_id: int, log: Path) -> str:
    node = cluster.wait_state(job_id, "RUNNING").node
    wait_until("the job to start", lambda: times(log, "start"))
    return node


def test_a_frozen_agent_s_job_is_stopped_after_the_lease(
    cluster_factory: Callable[..., Cluster], workdir: Path
) -> None:
    cluster = cluster_factory(config=CONFIG, agents=2)
    path, log = job_script(workdir)  # ignores USR1 and TERM: it takes SIGKILL to end it
    job_id = cluster.submit(path, "--gpus", "4", "--grace", f"{GRACE_S:g}s", cwd=workdir)
    node = running(cluster, job_id, log)
    time.sleep(2 * HEARTBEAT_S)
    with frozen(cluster.agent_procs[node]) as since:
        end = wait_until(
            "the job to be stopped", lambda: exit_record(cluster, node, job_id), timeout=40
        )
        (usr1,) = times(log, "usr1", node)
        (term,) = times(log, "term", node)
        assert since < usr1 <= since + LEASE_S + SLACK, usr1 - since
        assert GRACE_S - 0.5 <= term - usr1 <= GRACE_S + SLACK, term - usr1
        assert end["lease_lost"] is True and end["exit_signal"] == signal.SIGKILL
        stopped = float(str(end["end_time"]))
        assert stopped <= since + LEASE_S + GRACE_S + lease.term_wait(LEASE_S, HEARTBEAT_S) + SLACK
        assert not times(log, "end", node)
    # a copy the scheduler started elsewhere may overlap the stale one by the grace, no more
    print(f"stopped {usr1 - since:.2f}s after the freeze; ended {stopped - since:.2f}s after")
    for start in times(log, "start"):
        if start > usr1:
            print(f"a second copy started {start - since:.2f}s after the freeze")
            assert stopped - start <= GRACE_S + 1.0
    cluster.gshare("cancel", str(job_id))


def test_a_job_is_stopped_when_its_agent_cannot_hear_the_scheduler(
    cluster_factory: Callable[..., Cluster], workdir: Path
) -> None:
    cluster = cluster_factory(config=CONFIG, agents=1)
    path, log = job_script(workdir, on_usr1="exit 75")  # yields at once, as a good job does
    job_id = cluster.submit(path, "--gpus", "4", "--grace", f"{GRACE_S:g}s", cwd=workdir)
    node = running(cluster, job_id, log)
    time.sleep(2 * HEARTBEAT_S)
    with frozen(cluster.scheduler) as since:
        end = wait_until(
            "the job to be stopped", lambda: exit_record(cluster, node, job_id), timeout=40
        )
        (usr1,) = times(log, "usr1")
        assert since < usr1 <= since + LEASE_S + SLACK, usr1 - since
        assert end["lease_lost"] is True and end["exit_code"] == 75
        assert float(str(end["end_time"])) - usr1 < 1.5  # it yielded within its grace
        assert not times(log, "term")
    # the scheduler is back: the agent is heard again and runs new work to its end
    cluster.gshare("cancel", str(job_id))  # however the scheduler took the stop, this ends it
    cluster.wait_state(job_id, FINAL, timeout=30)
    after = cluster.submit("--wrap", "sleep 1", "--gpus", "4", cwd=workdir)
    assert cluster.wait_state(after, FINAL, timeout=30).exit_code == 0
    assert cluster.state(after) == "COMPLETED"


def test_while_the_scheduler_answers_nothing_is_stopped(
    cluster_factory: Callable[..., Cluster], workdir: Path
) -> None:
    cluster = cluster_factory(config=CONFIG, agents=1)
    secs = 3.5 * LEASE_S
    path, log = job_script(workdir, secs=secs)
    job_id = cluster.submit(path, "--gpus", "4", "--grace", f"{GRACE_S:g}s", cwd=workdir)
    node = running(cluster, job_id, log)
    record = cluster.root / f"agent-{node}" / "lease.json"
    left = []
    while cluster.state(job_id) == "RUNNING":
        left.append(lease.read(record)[0] - lease.now())
        time.sleep(0.5)
    done = cluster.wait_state(job_id, FINAL)
    assert cluster.state(job_id) == "COMPLETED" and done.exit_code == 0, done.reason
    assert not times(log, "usr1") and not times(log, "term") and times(log, "end")
    assert len(left) >= 5  # sampled all along: the lease was always being renewed
    assert min(left) > 0, left
