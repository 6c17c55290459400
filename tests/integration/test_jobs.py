"""Real schedulerd + two real nodeagents (fake GPUs), driven through gsub and gshare."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import psutil
import pytest

from tests.cluster import Cluster, wait_until

REPORT = """#!/bin/bash
#GSUB --name report
echo "start $(date +%s.%N) $GSHARE_NODE $CUDA_VISIBLE_DEVICES $GSHARE_JOB_ID" >> {log}
sleep {secs}
echo "end $(date +%s.%N) $GSHARE_NODE $CUDA_VISIBLE_DEVICES $GSHARE_JOB_ID" >> {log}
"""


def script(path: Path, body: str) -> Path:
    path.write_text(body)
    return path


def test_two_gpu_job_gets_two_distinct_free_gpus(cluster: Cluster, workdir: Path) -> None:
    log = workdir / "seen.log"
    job_script = script(workdir / "two.sh", REPORT.format(log=log, secs=1))
    other = cluster.submit(str(job_script), "--gpus", "3", cwd=workdir)
    job = cluster.submit(str(job_script), "--gpus", "2", cwd=workdir)
    for job_id in (other, job):
        assert cluster.wait_state(job_id, "COMPLETED").exit_code == 0
    shown = json.loads(cluster.gshare("show", str(job), "--json").out)
    gpus = [(g["node"], g["index"]) for g in shown["gpus"]]
    assert len(set(gpus)) == 2 and len({n for n, _ in gpus}) == 1
    assert all(g["uuid"].startswith("GPU-") for g in shown["gpus"])
    starts = [line.split() for line in log.read_text().splitlines() if line.startswith("start")]
    by_job = {int(s[4]): (s[2], s[3].split(",")) for s in starts}
    node, visible = by_job[job]
    assert node == gpus[0][0] and sorted(map(int, visible)) == sorted(i for _, i in gpus)
    other_node, other_visible = by_job[other]
    if other_node == node:  # they ran at the same time on one node: no GPU in common
        assert not set(visible) & set(other_visible)


def test_twenty_mixed_jobs_complete_without_sharing_a_gpu(cluster: Cluster, workdir: Path) -> None:
    log = workdir / "seen.log"
    sizes = [1, 2, 3, 4, 1, 1, 2, 4, 3, 1, 2, 2, 1, 4, 1, 3, 2, 1, 1, 2]
    ids = []
    for n, gpus in enumerate(sizes):
        path = script(workdir / f"j{n}.sh", REPORT.format(log=log, secs=0.3 + (n % 4) * 0.2))
        ids.append(cluster.submit(str(path), "--gpus", str(gpus), cwd=workdir))
    for job_id in ids:
        assert cluster.wait_state(job_id, {"COMPLETED", "FAILED"}, timeout=120).exit_code == 0
    spans: dict[int, dict[str, object]] = {}
    for line in log.read_text().splitlines():
        kind, t, node, visible, job_id = line.split()
        span = spans.setdefault(int(job_id), {"node": node, "gpus": set(visible.split(","))})
        span[kind] = float(t)
    assert sorted(spans) == sorted(ids)
    for job_id, gpus in zip(ids, sizes, strict=True):
        assert len(spans[job_id]["gpus"]) == gpus  # type: ignore[arg-type]
    items = list(spans.items())
    for i, (a_id, a) in enumerate(items):
        for b_id, b in items[i + 1 :]:
            if a["node"] != b["node"] or not (a["gpus"] & b["gpus"]):  # type: ignore[operator]
                continue
            overlap = min(a["end"], b["end"]) - max(a["start"], b["start"])  # type: ignore[type-var,operator]
            assert overlap <= 0, f"jobs {a_id} and {b_id} held GPU {a['gpus'] & b['gpus']} at once"  # type: ignore[operator]


TREE = """#!/bin/bash
sleep 300 &
echo $! > {pids}
( sleep 300 ) &
echo $! >> {pids}
echo $$ >> {pids}
wait
"""


def test_cancel_pending_and_running_jobs(cluster: Cluster, workdir: Path) -> None:
    pids_file = workdir / "pids"
    running = cluster.submit(
        str(script(workdir / "tree.sh", TREE.format(pids=pids_file))), "--gpus", "4", cwd=workdir
    )
    cluster.wait_state(running, "RUNNING")
    wait_until(
        "the job's processes",
        lambda: pids_file.exists() and len(pids_file.read_text().split()) == 3,
    )
    pids = [int(p) for p in pids_file.read_text().split()]
    assert all(psutil.pid_exists(p) for p in pids)
    # fill the other node too, so a further job stays pending
    blocker = cluster.submit("--wrap", "sleep 300", "--gpus", "4", cwd=workdir)
    cluster.wait_state(blocker, "RUNNING")
    pending = cluster.submit("--wrap", "true", "--gpus", "4", cwd=workdir)
    assert cluster.state(pending) == "PENDING"

    res = cluster.gshare("cancel", str(pending))
    assert res.code == 0, res.err
    assert cluster.wait_state(pending, "CANCELLED").start_time == 0

    res = cluster.gshare("cancel", str(running))
    assert res.code == 0, res.err
    job = cluster.wait_state(running, "CANCELLED", timeout=20)
    assert "cancelled by" in job.reason

    def gone() -> bool:
        alive = [
            p
            for p in pids
            if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE
        ]
        return not alive

    wait_until("the whole process tree to be gone", gone, timeout=10)
    res = cluster.gshare("cancel", str(running))
    assert res.code != 0 and "already ended" in res.err
    cluster.gshare("cancel", str(blocker))


def test_agent_killed_and_restarted_readopts_its_job(cluster: Cluster, workdir: Path) -> None:
    marker = workdir / "runs"
    path = script(
        workdir / "long.sh", f"#!/bin/bash\necho run >> {marker}\nsleep 4\necho done >> {marker}\n"
    )
    job_id = cluster.submit(str(path), "--gpus", "4", cwd=workdir)
    job = cluster.wait_state(job_id, "RUNNING")
    node = job.node
    cluster.kill_agent(node, signal.SIGKILL)
    time.sleep(0.5)
    assert cluster.state(job_id) == "RUNNING"  # within the lease: the job is not given up
    cluster.start_agent(node)
    done = cluster.wait_state(job_id, {"COMPLETED", "FAILED"}, timeout=30)
    assert pb_name(done) == "COMPLETED" and done.exit_code == 0
    assert marker.read_text().split() == ["run", "done"]  # ran once, to the end
    events = cluster.job(job_id).events
    assert [e.to_state for e in events].count("RUNNING") == 1
    assert done.restarts == 0


def pb_name(job: object) -> str:
    from gshare.api import gshare_pb2 as pb

    return pb.JobState.Name(job.state)  # type: ignore[attr-defined]


def test_scheduler_killed_and_restarted_loses_nothing(cluster: Cluster, workdir: Path) -> None:
    marker = workdir / "runs"
    path = script(
        workdir / "long.sh", f"#!/bin/bash\necho run >> {marker}\nsleep 5\necho done >> {marker}\n"
    )
    running = [cluster.submit(str(path), "--gpus", "4", cwd=workdir) for _ in range(2)]
    for job_id in running:
        cluster.wait_state(job_id, "RUNNING")
    queued = [cluster.submit("--wrap", "echo queued", "--gpus", "1", cwd=workdir) for _ in range(5)]
    cluster.kill_scheduler(signal.SIGKILL)
    time.sleep(1)
    cluster.start_scheduler()
    assert set(running + queued) <= set(cluster.queue_ids())
    for job_id in running + queued:
        done = cluster.wait_state(job_id, {"COMPLETED", "FAILED", "CANCELLED"}, timeout=60)
        assert pb_name(done) == "COMPLETED", done.reason
    # each of the two ran once, to the end (they ran side by side, so lines interleave)
    assert sorted(marker.read_text().split()) == ["done", "done", "run", "run"]
    for job_id in running:
        assert [e.to_state for e in cluster.job(job_id).events].count("RUNNING") == 1


def test_submit_is_refused_when_no_node_could_ever_hold_the_job(
    cluster: Cluster, workdir: Path
) -> None:
    res = cluster.gsub("--wrap", "true", "--gpus", "5", cwd=workdir)
    assert res.code != 0 and "largest node has 4" in res.err
    res = cluster.gsub("--wrap", "true", "--queue", "nope", cwd=workdir)
    assert res.code != 0 and "unknown queue 'nope'" in res.err


def test_hold_and_release(cluster: Cluster, workdir: Path) -> None:
    blockers = [cluster.submit("--wrap", "sleep 30", "--gpus", "4", cwd=workdir) for _ in range(2)]
    for b in blockers:
        cluster.wait_state(b, "RUNNING")
    job_id = cluster.submit("--wrap", "true", "--gpus", "1", cwd=workdir)
    assert cluster.gshare("hold", str(job_id)).code == 0
    assert cluster.state(job_id) == "HELD"
    res = cluster.gshare("hold", str(job_id))
    assert res.code != 0 and "only a pending job can be held" in res.err
    assert cluster.gshare("release", str(job_id)).code == 0
    assert cluster.state(job_id) == "PENDING"
    res = cluster.gshare("queue", "--json")
    queued = {j["job_id"]: j for j in json.loads(res.out)}
    assert queued[job_id]["reason"]  # a pending job says why it waits
    for b in blockers:
        cluster.gshare("cancel", str(b))
    cluster.wait_state(job_id, "COMPLETED")


def test_time_limit_ends_a_job_as_timeout(cluster: Cluster, workdir: Path) -> None:
    job_id = cluster.submit("--wrap", "sleep 60", "--time", "2s", cwd=workdir)
    job = cluster.wait_state(job_id, {"TIMEOUT", "FAILED", "COMPLETED"}, timeout=30)
    assert pb_name(job) == "TIMEOUT" and "time limit" in job.reason


def test_logs_prints_the_jobs_output(cluster: Cluster, workdir: Path) -> None:
    job_id = cluster.submit("--wrap", "echo hello from the job; echo oops >&2", cwd=workdir)
    cluster.wait_state(job_id, "COMPLETED")
    res = cluster.gshare("logs", str(job_id))
    assert res.code == 0 and "hello from the job" in res.out and "oops" in res.out
    assert Path(cluster.job(job_id).output_path).exists()
    follow = cluster.gshare(
        "logs", "-f", str(cluster.submit("--wrap", "echo a; sleep 1; echo b", cwd=workdir))
    )
    assert follow.code == 0 and follow.out.split() == ["a", "b"]


def test_a_job_that_cannot_launch_fails_with_the_reason(cluster: Cluster, workdir: Path) -> None:
    job_id = cluster.submit(
        "--wrap",
        "true",
        "--workdir",
        str(workdir / "missing"),
        "--output",
        str(workdir / "x.out"),
        cwd=workdir,
    )
    job = cluster.wait_state(job_id, {"FAILED", "COMPLETED"})
    assert pb_name(job) == "FAILED" and "No such file or directory" in job.reason


@pytest.mark.parametrize("code", [0, 3])
def test_exit_code_is_reported(cluster: Cluster, workdir: Path, code: int) -> None:
    job_id = cluster.submit("--wrap", f"exit {code}", cwd=workdir)
    job = cluster.wait_state(job_id, {"COMPLETED", "FAILED"})
    shown = json.loads(cluster.gshare("show", str(job_id), "--json").out)
    assert shown["exit_code"] == code and job.exit_code == code
    assert shown["state"] == ("COMPLETED" if code == 0 else "FAILED")
    assert [e["to"] for e in shown["events"]] == ["PENDING", "STARTING", "RUNNING", shown["state"]]


def test_environment_and_gsub_directives_reach_the_job(cluster: Cluster, workdir: Path) -> None:
    path = script(
        workdir / "env.sh",
        "#!/bin/bash\n#GSUB --name from-script\n#GSUB --env A=script --env B=script\n"
        'echo "$A $B $GSHARE_GPUS $GSHARE_NODE $NVIDIA_VISIBLE_DEVICES $1 $2"\n',
    )
    job_id = cluster.submit(
        str(path), "x", "--env", "B=cli", "--gpus", "2", "--", "--flag", cwd=workdir
    )
    job = cluster.wait_state(job_id, "COMPLETED")
    assert job.spec.name == "from-script"
    words = Path(cluster.job(job_id).output_path).read_text().split()
    assert words[:2] == ["script", "cli"] and words[-2:] == ["x", "--flag"]
    assert len(words[2].split(",")) == 2 and words[3] == job.node and words[4] == words[2]
    assert os.environ.get("GSHARE_JOB_ID") is None


def _alive(pid: int, cmdline: list[str]) -> bool:
    try:
        proc = psutil.Process(pid)
        return proc.cmdline() == cmdline and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:  # gone (or its pid reused since by something else)
        return False


@pytest.mark.parametrize("end", ["completes", "is cancelled"])
def test_what_an_unconfined_job_leaves_in_a_session_of_its_own_ends_with_it(
    cluster: Cluster, workdir: Path, end: str
) -> None:
    # as torchrun's workers do: a session of their own, outside the job's process group,
    # and their parent gone first (no cgroup here to find them by)
    pid_file = workdir / f"stray-{end[:2]}.pid"
    wait = "sleep 3" if end == "completes" else "sleep 600"  # (the stray seen alive first)
    path = script(
        workdir / "stray.sh",
        f"#!/bin/sh\nsh -c 'setsid sleep 601 & echo $! > {pid_file}'\n{wait}\n",
    )
    job_id = cluster.submit(str(path), cwd=workdir)
    wait_until("the stray's pid", lambda: pid_file.exists() and pid_file.read_text().strip())
    stray = int(pid_file.read_text())
    assert _alive(stray, ["sleep", "601"])
    if end == "is cancelled":
        cluster.wait_state(job_id, "RUNNING")
        cluster.gshare("cancel", str(job_id))
        cluster.wait_state(job_id, "CANCELLED")
    else:
        cluster.wait_state(job_id, "COMPLETED")
    wait_until("the stray to end with its job", lambda: not _alive(stray, ["sleep", "601"]))
