"""Job arrays, dependencies and sweeps with a real scheduler and real agents (fake GPUs):
what the tasks themselves recorded is the evidence, not what the queue says."""

from __future__ import annotations

import contextlib
import json
import signal
import sqlite3
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from gshare.api import gshare_pb2 as pb
from tests.cluster import BIN, Cluster, wait_until
from tests.conftest import needs_root

TASK = """#!/bin/bash
echo "start $(date +%s.%N) $GSHARE_ARRAY_JOB_ID $GSHARE_ARRAY_TASK_ID $GSHARE_JOB_ID \
$GSHARE_ARRAY_TASK_COUNT $GSHARE_ARRAY_TASK_MIN $GSHARE_ARRAY_TASK_MAX" >> {log}
sleep {secs}
echo "end $(date +%s.%N) $GSHARE_ARRAY_JOB_ID $GSHARE_ARRAY_TASK_ID $GSHARE_JOB_ID" >> {log}
"""

STAMP = """#!/bin/bash
echo "start $(date +%s.%N) $GSHARE_JOB_ID" >> {log}
sleep {secs}
echo "end $(date +%s.%N) $GSHARE_JOB_ID" >> {log}
exit {code}
"""


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def spans(log: Path, key: int = 3) -> dict[str, dict[str, float]]:
    """start and end time per job (by the field at `key`) from what the jobs wrote."""
    out: dict[str, dict[str, float]] = {}
    for line in log.read_text().splitlines():
        words = line.split()
        out.setdefault(words[key], {})[words[0]] = float(words[1])
    return out


def most_at_once(intervals: list[tuple[float, float]]) -> int:
    edges = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])
    now = peak = 0
    for _, step in edges:  # an end before a start at the same instant
        now += step
        peak = max(peak, now)
    return peak


def end_states(cluster: Cluster, array_id: int) -> dict[int, str]:
    with cluster.client() as c:
        return {t.array_task_id: pb.JobState.Name(t.state) for t in c.array(array_id)}


def wait_array(
    cluster: Cluster, array_id: int, done: Callable[[dict[int, str]], bool], timeout: float = 90
) -> dict[int, str]:
    return wait_until(
        f"array {array_id}", lambda: (s := end_states(cluster, array_id)) and done(s) and s, timeout
    )


FINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"}


def test_array_limit_holds_and_each_task_sees_its_own_id(cluster: Cluster, workdir: Path) -> None:
    log = workdir / "tasks.log"
    job = write(workdir / "task.sh", TASK.format(log=log, secs=0.6))
    res = cluster.gsub(
        "--json", str(job), "--array", "1-9:2,10%2", "-o", "out-%A_%a.log", cwd=workdir
    )
    assert res.code == 0, res.err
    reply = json.loads(res.out)
    array_id, count = reply["job_id"], reply["tasks"]
    assert count == 6
    states = wait_array(cluster, array_id, lambda s: set(s.values()) <= FINAL)
    assert set(states.values()) == {"COMPLETED"}, states
    assert sorted(states) == [1, 3, 5, 7, 9, 10]
    seen = {}
    for line in log.read_text().splitlines():
        words = line.split()
        if words[0] == "start":
            seen[int(words[3])] = words[2:]
    assert sorted(seen) == [1, 3, 5, 7, 9, 10]
    for task, (array, task_id, job_id, total, low, high) in seen.items():
        assert (int(array), int(task_id), total, low, high) == (array_id, task, "6", "1", "10")
        assert (workdir / f"out-{array_id}_{task}.log").exists()
        assert task != 1 or int(job_id) == array_id  # the array's id is its first task's
    times = spans(log, key=3)
    intervals = [(t["start"], t["end"]) for t in times.values()]
    # the cluster has 8 GPUs free: without the limit all six would run at once
    assert most_at_once(intervals) <= 2, times


def test_queue_folds_pending_tasks_and_cancel_takes_task_ranges(
    cluster: Cluster, workdir: Path
) -> None:
    job = write(workdir / "long.sh", "#!/bin/bash\nsleep 120\n")
    array_id = cluster.submit(str(job), "--array", "0-9%1", cwd=workdir)
    wait_until("a task to run", lambda: "RUNNING" in end_states(cluster, array_id).values())
    queue = cluster.gshare("queue")
    assert queue.code == 0, queue.err
    assert f"{array_id}_[1-9%1]" in queue.out, queue.out
    each = cluster.gshare("queue", "-r")
    assert f"{array_id}_5 " in each.out and f"{array_id}_[" not in each.out, each.out

    res = cluster.gshare("cancel", f"{array_id}_[3-5]")
    assert res.code == 0, res.err
    assert "3 jobs" in res.out, res.out
    states = end_states(cluster, array_id)
    assert [states[t] for t in (3, 4, 5)] == ["CANCELLED"] * 3
    assert all(states[t] != "CANCELLED" for t in (0, 1, 2, 6, 7, 8, 9)), states

    # one task by its name; hold and release of the rest
    assert cluster.gshare("hold", str(array_id)).code == 0
    states = end_states(cluster, array_id)
    assert all(states[t] == "HELD" for t in (1, 2, 6, 7, 8, 9)), states
    assert cluster.gshare("release", f"{array_id}_[6-9]").code == 0
    states = end_states(cluster, array_id)
    assert [states[t] for t in (1, 2, 6)] == ["HELD", "HELD", "PENDING"], states
    shown = cluster.gshare("show", f"{array_id}_7", "--json")
    assert json.loads(shown.out)["id"] == f"{array_id}_7"

    bad = cluster.gshare("cancel", f"{array_id}_[40]")
    assert bad.code == 1 and "has no task 40" in bad.err, bad
    bad = cluster.gshare("cancel", f"{array_id}_[x]")
    assert bad.code == 2 and len(bad.err.strip().splitlines()) == 1, bad

    assert cluster.gshare("cancel", str(array_id)).code == 0
    states = wait_array(cluster, array_id, lambda s: set(s.values()) <= FINAL)
    assert set(states.values()) == {"CANCELLED"}


@needs_root
def test_another_user_cannot_touch_an_array(cluster: Cluster, workdir: Path) -> None:
    job = write(workdir / "long.sh", "#!/bin/bash\nsleep 120\n")
    job.chmod(0o755)
    array_id = cluster.submit(str(job), "--array", "0-3", "--gpus", "4", cwd=workdir)
    for verb in ("cancel", "hold"):
        for target in (str(array_id), f"{array_id}_[1-2]", f"{array_id}_3"):
            res = cluster.gshare(verb, target, user="nobody")
            assert res.code == 1 and "belongs to" in res.err, (verb, target, res)
    res = cluster.gshare("priority", "5", str(array_id), user="nobody")
    assert res.code == 1, res
    assert "CANCELLED" not in end_states(cluster, array_id).values()
    cluster.gshare("cancel", str(array_id))


def test_afterok_afterany_and_a_dependency_that_can_never_be_met(
    cluster: Cluster, workdir: Path
) -> None:
    log = workdir / "deps.log"
    a = cluster.submit(str(write(workdir / "a.sh", STAMP.format(log=log, secs=1.5, code=0))))
    b = cluster.submit(
        str(write(workdir / "b.sh", STAMP.format(log=log, secs=0, code=0))),
        "--dependency",
        f"afterok:{a}",
    )
    bad = cluster.submit(str(write(workdir / "f.sh", STAMP.format(log=log, secs=0.5, code=3))))
    c = cluster.submit(
        str(write(workdir / "c.sh", STAMP.format(log=log, secs=0, code=0))),
        "-d",
        f"afterok:{bad}",
    )
    long = cluster.submit(str(write(workdir / "l.sh", "#!/bin/bash\nsleep 120\n")))
    d = cluster.submit(
        str(write(workdir / "d.sh", STAMP.format(log=log, secs=0, code=0))),
        "-d",
        f"afterany:{long}",
    )
    # while it waits, it says for what
    why = cluster.gshare("why", str(b))
    if cluster.state(b) == "PENDING":
        assert f"afterok:{a}" in why.out, why.out
    assert cluster.wait_state(b, "COMPLETED").exit_code == 0
    times = spans(log, key=2)
    assert times[str(b)]["start"] >= times[str(a)]["end"]

    cancelled = cluster.wait_state(c, "CANCELLED")
    assert f"afterok:{bad} can never be met" in cancelled.reason, cancelled.reason
    assert str(c) not in spans(log, key=2)

    time.sleep(1)
    assert cluster.state(d) == "PENDING"
    assert cluster.gshare("cancel", str(long)).code == 0
    assert cluster.wait_state(d, "COMPLETED").exit_code == 0


def test_dependency_on_a_whole_array_and_singleton(cluster: Cluster, workdir: Path) -> None:
    log = workdir / "s.log"
    task = write(workdir / "t.sh", TASK.format(log=log, secs=0.5))
    array_id = cluster.submit(str(task), "--array", "0-3", cwd=workdir)
    after = cluster.submit(
        str(write(workdir / "after.sh", STAMP.format(log=log, secs=0, code=0))),
        "-d",
        f"afterok:{array_id}",
    )
    assert cluster.wait_state(after, "COMPLETED").exit_code == 0
    started = float(
        next(
            w[1]
            for line in log.read_text().splitlines()
            if (w := line.split())[0] == "start" and w[2] == str(after)
        )
    )
    ends = [float(w[1]) for line in log.read_text().splitlines() if (w := line.split())[0] == "end"]
    assert len(ends) >= 4 and started >= max(ends[:4])

    single = workdir / "single.log"
    one = write(workdir / "one.sh", STAMP.format(log=single, secs=0.8, code=0))
    ids = [cluster.submit(str(one), "-J", "nightly", "-d", "singleton") for _ in range(3)]
    for job_id in ids:
        assert cluster.wait_state(job_id, "COMPLETED").exit_code == 0
    runs = spans(single, key=2)
    intervals = sorted((runs[str(i)]["start"], runs[str(i)]["end"]) for i in ids)
    assert most_at_once(intervals) == 1, intervals


def test_bad_arrays_and_dependencies_are_refused_in_one_line(
    cluster_factory: Callable[..., Cluster], workdir: Path
) -> None:
    cluster = cluster_factory(config="[scheduler]\nkill_grace_s = 3\nmax_array_size = 100\n")
    job = write(workdir / "j.sh", "#!/bin/bash\ntrue\n")
    known = cluster.submit(str(job))
    cases = [
        ("--array", ""),
        ("--array", "5-1"),
        ("--array", "0-9%0"),
        ("--array", "1-x"),
        ("--array", "1," * 5000),
        ("--array", "0-9%2%3"),
        ("--array", "0-100"),  # over max_array_size at the scheduler
        ("--dependency", "afterok"),
        ("--dependency", "afterok:12,afterany:3?after:4"),
        ("--dependency", "before:3"),
        ("--dependency", f"afterok:{known + 1000}"),  # no such job, so no cycle either
        ("--dependency", f"afterok:{known}_3"),  # not an array
        ("--sweep", str(write(workdir / "s1.toml", "[params]\nlr = []\n"))),
        ("--sweep", str(write(workdir / "s2.toml", "[params]\n'bad-name' = [1]\n"))),
        ("--sweep", str(write(workdir / "s3.toml", "[params\n"))),
    ]
    before = cluster.queue_ids()
    for option, value in cases:
        res = cluster.gsub(str(job), option, value)
        assert len(res.err.strip().splitlines()) == 1, (option, value, res.err)
        assert res.code == 2 and "Traceback" not in res.err, (option, value, res)
    assert cluster.queue_ids() == before


def test_scheduler_killed_during_a_large_array_submit_loses_nothing_acknowledged(
    cluster: Cluster, workdir: Path
) -> None:
    job = write(workdir / "held.sh", "#!/bin/bash\nsleep 60\n")
    db = cluster.root / "sched" / "gshare.db"
    acknowledged: list[int] = []
    for delay in (0.05, 0.4, 1.2):
        proc = subprocess.Popen(
            [str(BIN / "gsub"), "--json", str(job), "--array", "0-4999", "--gpus", "4"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=cluster.env(),
            cwd=workdir,
        )
        time.sleep(delay)
        cluster.kill_scheduler(signal.SIGKILL)
        out, _ = proc.communicate(timeout=60)
        if proc.returncode == 0:
            acknowledged.append(json.loads(out)["job_id"])
        cluster.start_scheduler()
        with contextlib.closing(sqlite3.connect(db)) as conn:
            counts = dict(
                conn.execute(
                    "SELECT array_job_id, COUNT(*) FROM jobs WHERE array_job_id > 0 "
                    "GROUP BY array_job_id"
                ).fetchall()
            )
        assert all(n == 5000 for n in counts.values()), counts  # no half array, ever
        assert set(acknowledged) <= set(counts), (acknowledged, counts)
        for array_id in counts:
            cluster.gshare("cancel", str(array_id), timeout=120)


SWEEP_TASK = """#!/bin/bash
mkdir -p "$(dirname "$GSHARE_RESULT_FILE")"
loss=$(python3 -c "print(abs($GSHARE_PARAM_LR - 0.01) * $GSHARE_PARAM_LAYERS)")
echo "{{\\"loss\\": $loss, \\"task\\": $GSHARE_ARRAY_TASK_ID}}" > "$GSHARE_RESULT_FILE"
echo "$GSHARE_PARAMS" >> {log}
"""


def test_a_two_by_three_sweep_runs_six_trials_ranked_by_their_metric(
    cluster: Cluster, workdir: Path
) -> None:
    log = workdir / "sweep.log"
    sweep = write(
        workdir / "sweep.toml",
        'method = "grid"\nmax_concurrent = 4\n[params]\nlr = [0.1, 0.01]\n'
        "layers = { from = 1, to = 3 }\n",
    )
    task = write(workdir / "trial.sh", SWEEP_TASK.format(log=log))
    res = cluster.gsub("--json", str(task), "--sweep", str(sweep), cwd=workdir)
    assert res.code == 0, res.err
    array_id = json.loads(res.out)["job_id"]
    states = wait_array(cluster, array_id, lambda s: len(s) == 6 and set(s.values()) <= FINAL)
    assert set(states.values()) == {"COMPLETED"}, states
    seen = [json.loads(line) for line in log.read_text().splitlines()]
    params = sorted(f"{p['layers']}@{p['lr']}" for p in seen)
    assert params == sorted(f"{n}@{lr}" for n in "123" for lr in ("0.1", "0.01"))
    ranked = json.loads(cluster.gshare("sweep", str(array_id), "--json").out)
    losses = [t["result"]["loss"] for t in ranked["trials"]]
    assert ranked["sort"] == "loss" and losses == sorted(losses) and len(losses) == 6
    assert {t["params"]["lr"] for t in ranked["trials"][:3]} == {"0.01"}
    text = cluster.gshare("sweep", str(array_id), "--sort", "loss", "--max")
    assert text.code == 0 and "best first by loss (highest)" in text.out, text
    best = text.out.splitlines()[2].split()  # after the title and the header
    assert best[0].startswith(f"{array_id}_") and "0.1" in best, text.out
