"""The job commands: queue, show, why, sweep, logs, and the actions on jobs (cancel,
hold, release, preempt, priority), one function each over the client library.

The other gshare commands: usage.py (`gshare usage`), nodes.py (nodes, drain, resume),
standalone.py (sim, top, ca).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from gshare.api import gshare_pb2 as pb
from gshare.arrays import fold
from gshare.cli.common import UsageError
from gshare.cli.render import (
    _first_clause,
    _gpu_use,
    _runtime,
    _short,
    _signal_label,
    _slurm_line,
    _state,
    _when,
    display_id,
    job_json,
    table,
)
from gshare.client import Client, ClientError
from gshare.jobs import LIVE, STATE_NAMES, where
from gshare.limits import format_mem_mb
from gshare.render import printable
from gshare.timefmt import format_duration


def cmd_why(client: Client, args: argparse.Namespace) -> int:
    job = client.job(args.job)
    state = _state(job)
    name = display_id(job)
    if job.state == pb.PENDING:
        place = f", {job.position} in line" if job.position else ""
        print(f"job {name} is PENDING{place}:")
        for clause in (job.reason or "waiting for the next scheduling cycle").split("; "):
            print(f"  {printable(clause)}")
    elif job.state == pb.HELD:
        reason = printable(job.reason)
        print(f"job {name} is HELD ({reason}); `gshare release {name}` lets it run")
    else:
        print(f"job {name} is {state}" + (f": {printable(job.reason)}" if job.reason else ""))
    if job.dependency:
        print(f"  dependency: {printable(job.dependency)}")
    return 0


def cmd_queue(client: Client, args: argparse.Namespace) -> int:
    users = list(args.user or [])
    if args.me:
        users.append(os.environ.get("USER") or str(os.getuid()))
    states = []
    for s in args.state or []:
        name = s.upper()
        if name not in STATE_NAMES:
            raise UsageError(f"unknown state {s!r} (states: {', '.join(STATE_NAMES)})")
        states.append(pb.JobState.Value(name))
    jobs = client.jobs(users, states, args.queue or [], include_finished=args.all)
    if args.json:
        print(json.dumps([job_json(j) for j in jobs], indent=2))
        return 0
    now = time.time()
    rows = [
        [
            label,
            _short(printable(j.spec.name), 20),
            printable(j.user),
            printable(j.spec.queue),
            _state(j),
            str(j.spec.gpus),
            printable(where(j)),
            _runtime(j, now),
            _short(
                printable(_first_clause(j.reason))
                or ("" if j.state != pb.PENDING else "waiting for a cycle")
            ),
        ]
        for label, j in (_each_row(jobs) if args.array else fold_tasks(jobs))
    ]
    print(
        table(rows, ["JOBID", "NAME", "USER", "QUEUE", "STATE", "GPUS", "NODE", "TIME", "REASON"])
    )
    if client.truncated:
        print(
            f"gshare: the scheduler cut this listing at the newest {len(jobs)} jobs; "
            "narrow it with --user, --state or --queue",
            file=sys.stderr,
        )
    return 0


def _each_row(jobs: list[pb.Job]) -> list[tuple[str, pb.Job]]:
    return [(display_id(j), j) for j in jobs]


def fold_tasks(jobs: list[pb.Job]) -> list[tuple[str, pb.Job]]:
    """Pending tasks of an array on one line, as squeue folds them: `12_[40-99%16]` (the
    limit, if the array has one); every other job on a line of its own. The folded line
    shows its first task's name and reason."""
    out: list[tuple[str, pb.Job]] = []
    folded: dict[int, list[pb.Job]] = {}
    for j in jobs:
        if j.array_job_id and j.state == pb.PENDING:
            group = folded.get(j.array_job_id)
            if group is None:
                folded[j.array_job_id] = group = []
                out.append(("", j))  # its place: where its first pending task was
            group.append(j)
        else:
            out.append((display_id(j), j))
    rows = []
    for label, j in out:
        if label:
            rows.append((label, j))
            continue
        group = folded[j.array_job_id]
        if len(group) == 1:
            rows.append((display_id(j), j))
            continue
        ids = sorted(t.array_task_id for t in group)
        limit = j.array_spec.partition("%")[2]
        rows.append((f"{j.array_job_id}_[{fold(ids)}{'%' + limit if limit else ''}]", j))
    return rows


def cmd_sweep(client: Client, args: argparse.Namespace) -> int:
    """Every trial of a sweep (or task of an array): its parameters, state, run time,
    restarts and the metrics it wrote to GSHARE_RESULT_FILE; best first by --sort."""
    from gshare.sweep import read_result

    tasks = client.array(args.job)
    if not tasks:
        raise ClientError(f"job {args.job} is not an array (or has no tasks)")
    results = {t.job_id: read_result(f"{t.checkpoint_dir.rstrip('/')}/result.json") for t in tasks}
    metrics = sorted({k for r in results.values() if isinstance(r, dict) for k in r})
    params = sorted({k for t in tasks for k in t.params})
    key = args.sort or (metrics[0] if metrics else "")
    if args.sort and args.sort not in metrics:
        raise UsageError(
            f"no trial reported {args.sort!r} (metrics: {', '.join(metrics) or 'none yet'})"
        )

    def rank(t: pb.Job) -> tuple[int, float, int]:
        r = results[t.job_id]
        if isinstance(r, dict) and key in r:
            return (0, -r[key] if args.max else r[key], t.array_task_id)
        return (1, 0.0, t.array_task_id)

    tasks.sort(key=rank)
    now = time.time()
    if args.json:
        out = []
        for t in tasks:
            r = results[t.job_id]
            out.append(
                {
                    "id": display_id(t),
                    "job_id": t.job_id,
                    "task": t.array_task_id,
                    "params": dict(t.params),
                    "state": _state(t),
                    "run_time_s": round(_run_seconds(t, now), 3),
                    "restarts": t.restarts,
                    "result": r if isinstance(r, dict) else None,
                    "result_missing": None if isinstance(r, dict) else r,
                }
            )
        print(json.dumps({"sort": key or None, "max": args.max, "trials": out}, indent=2))
        return 0
    rows = []
    for t in tasks:
        r = results[t.job_id]
        cells = [display_id(t), _state(t), _runtime(t, now), str(t.restarts)]
        cells += [_short(printable(t.params.get(p, "")), 16) for p in params]
        if isinstance(r, dict):
            cells += [f"{r[m]:.6g}" if m in r else "-" for m in metrics]
        else:
            cells += [r] + ["" for _ in metrics[1:]] if metrics else [r]
        rows.append(cells)
    heads = ["TASK", "STATE", "TIME", "RESTARTS", *(p.upper() for p in params)]
    heads += [m.upper() for m in metrics] if metrics else ["RESULT"]
    order = f"; best first by {key} ({'highest' if args.max else 'lowest'})" if key else ""
    print(f"sweep {args.job}: {len(tasks)} trials{order}")
    print(table(rows, heads))
    return 0


def _run_seconds(job: pb.Job, now: float) -> float:
    if not job.start_time:
        return 0.0
    return (job.end_time or now) - job.start_time


def _parts_line(job: pb.Job) -> str:
    """A multi-node job's parts: `rank node GPUs state pid/exit`, by rank."""
    if job.spec.nodes <= 1:
        return "-"
    if not job.parts:
        return f"{job.spec.nodes} nodes x {job.spec.gpus_per_node} GPUs, not placed"
    return "; ".join(
        f"{p.rank} {p.node} GPUs {','.join(map(str, p.gpus))} {p.state.lower()}"
        + (f" exit {p.exit_code}" if p.state == "EXITED" else f" pid {p.pid}" if p.pid else "")
        for p in job.parts
    )


def cmd_show(client: Client, args: argparse.Namespace) -> int:
    job = client.job(args.job)
    if args.json:
        print(json.dumps(job_json(job), indent=2))
        return 0
    d = job_json(job)
    gpus = ", ".join(f"{g['node']}:{g['index']}" for g in d["gpus"]) or "-"
    fields = [
        ("Job", f"{display_id(job)} ({job.spec.name})"),
        ("State", d["state"] + (f" - {job.reason}" if job.reason else "")),
        ("User", f"{job.user} (uid {job.uid})"),
        ("Queue", job.spec.queue),
        ("Priority", str(job.spec.priority)),
        ("GPUs", f"{job.spec.gpus} requested; assigned {gpus}"),
        ("GPU types", printable(", ".join(job.spec.gpu_types)) or "any"),
        ("Time limit", format_duration(job.spec.time_limit_s) if job.spec.time_limit_s else "none"),
        (
            "CPUs, memory",
            f"{job.spec.cpus or 'any'}, "
            f"{format_mem_mb(job.spec.mem_mb) if job.spec.mem_mb else 'any'}",
        ),
        ("Submitted", _when(job.submit_time)),
        ("Started", _when(job.start_time)),
        ("Ended", _when(job.end_time)),
        ("Run time", _runtime(job, time.time())),
        (
            "Exit",
            (f"code {job.exit_code}" + (f", signal {job.exit_signal}" if job.exit_signal else ""))
            if job.has_exit
            else "-",
        ),
        ("Restarts", str(job.restarts)),
        (
            "Array",
            f"task {job.array_task_id} of {job.array_job_id} (tasks {job.array_spec}; "
            f"job id {job.job_id})"
            if job.array_job_id
            else "-",
        ),
        ("Parts", _parts_line(job)),
        ("Dependency", job.dependency or "-"),
        ("Parameters", json.dumps(dict(job.params), sort_keys=True) if job.params else "-"),
        (
            "Preemption",
            "never (--no-preempt)"
            if job.spec.no_preempt
            else f"{_signal_label(job.spec.preempt_signal)}, {job.spec.grace_s:g}s grace, "
            f"max restarts {'unlimited' if job.spec.max_restarts < 0 else job.spec.max_restarts}; "
            f"preempted {job.preemptions} times",
        ),
        ("Checkpoints", f"{job.checkpoint_dir}; last {_when(job.last_checkpoint)}"),
        ("GPU use", _gpu_use(job)),
        ("Slurm", _slurm_line(job)),
        ("Script", f"{job.spec.script_name} {' '.join(job.spec.args)}".strip()),
        ("Workdir", job.spec.workdir),
        ("Output", job.output_path),
    ]
    width = max(len(k) for k, _ in fields)
    for key, value in fields:
        # GPU use is ours, with its (escaped) warnings on lines of their own
        print(f"{key.rjust(width)}: {value if key == 'GPU use' else printable(value)}")
    print("\nEvents:")
    for e in job.events:
        move = printable(f"{e.from_state or '-'} -> {e.to_state}")
        why = f": {printable(e.reason)}" if e.reason else ""
        print(f"  {_when(e.time)}  {printable(e.kind):<16} {move:<24} {printable(e.actor)}{why}")
    return 0


def _each(client: Client, refs: list[str], verb: str, done: str, priority: int = 0) -> int:
    """The action on each job named: a job, a whole array (`12`), tasks (`12_[3-5]`)."""
    status = 0
    for ref in refs:
        try:
            reply = client.act(verb, ref, priority)
        except ClientError as exc:
            print(f"gshare: job {ref}: {printable(str(exc))}", file=sys.stderr)
            status = 1
            continue
        if reply.count == 1 and not reply.skipped and not reply.job.array_job_id:
            print(f"job {ref}: {done} ({_state(reply.job)})")
            continue
        skipped = f"; {reply.skipped} skipped (ended, or not in a state for it)"
        print(f"job {ref}: {done}: {reply.count} jobs{skipped if reply.skipped else ''}")
    return status


def cmd_cancel(client: Client, args: argparse.Namespace) -> int:
    return _each(client, args.jobs, "cancel", "cancel requested")


def cmd_hold(client: Client, args: argparse.Namespace) -> int:
    return _each(client, args.jobs, "hold", "held")


def cmd_preempt(client: Client, args: argparse.Namespace) -> int:
    return _each(client, args.jobs, "preempt", "asked to checkpoint and yield")


def cmd_priority(client: Client, args: argparse.Namespace) -> int:
    return _each(client, args.jobs, "priority", f"priority set to {args.priority}", args.priority)


def cmd_release(client: Client, args: argparse.Namespace) -> int:
    return _each(client, args.jobs, "release", "released")


def cmd_logs(client: Client, args: argparse.Namespace) -> int:
    job = client.job(args.job)
    nodes = max(job.spec.nodes, 1)
    if args.rank >= nodes:
        raise UsageError(f"--rank {args.rank}: job {job.job_id} runs on {nodes} node(s)")
    path = Path(job.output_path.replace("%n", str(args.rank)))
    deadline = time.monotonic() + 10
    while not path.exists():
        if (
            not args.follow
            or _state(job) not in LIVE
            or (time.monotonic() > deadline and job.start_time)
        ):
            raise ClientError(f"no log yet at {path} (job {job.job_id} is {_state(job)})")
        time.sleep(0.5)
        job = client.job(args.job)
    with open(path, "rb") as f:
        while True:
            chunk = f.read(65536)
            if chunk:
                sys.stdout.buffer.write(chunk)
                sys.stdout.flush()
                continue
            if not args.follow:
                return 0
            if _state(client.job(args.job)) not in LIVE:
                rest = f.read()
                sys.stdout.buffer.write(rest)
                sys.stdout.flush()
                return 0
            time.sleep(0.5)
