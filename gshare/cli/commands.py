"""The gshare commands: one function each, over the client library."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from gshare.api import gshare_pb2 as pb
from gshare.arrays import fold
from gshare.cli.common import UsageError, fail
from gshare.cli.render import (
    _first_clause,
    _gpu_table,
    _gpu_use,
    _metrics_json,
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


def cmd_usage(client: Client, args: argparse.Namespace) -> int:
    report = client.usage()
    if args.json:
        print(
            json.dumps(
                {
                    "half_life_s": report.half_life_s,
                    "cluster_gpus": report.cluster_gpus,
                    "accounts": [
                        {
                            "path": list(a.path),
                            "kind": "user" if a.is_user else "account",
                            "shares": a.shares,
                            "share": a.share,
                            "usage_gpu_s": a.usage,
                            "usage_share": a.usage_share,
                            "level_fairshare": None if a.level_fairshare < 0 else a.level_fairshare,
                            "fairshare_factor": a.fairshare_factor if a.is_user else None,
                            "running_gpus": a.running_gpus,
                            "pending_gpus": a.pending_gpus,
                            "idle_gpu_s": a.idle_gpu_s,
                            **_quota_json(a),
                        }
                        for a in report.accounts
                    ],
                    "reclaim_after_s": report.reclaim_after_s,
                    "warnings": list(report.warnings),
                },
                indent=2,
            )
        )
        return 0
    rows = []
    for a in report.accounts:
        name = "  " * (len(a.path) - 1) + a.path[-1]
        lf = "inf" if a.level_fairshare < 0 else f"{a.level_fairshare:.2f}"
        rows.append(
            [
                name,
                f"{a.shares:g}",
                f"{a.share:.3f}",
                f"{a.usage / 3600:.1f}",
                f"{a.usage_share:.3f}",
                lf,
                f"{a.fairshare_factor:.3f}" if a.is_user else "",
                str(a.running_gpus),
                str(a.pending_gpus),
                f"{a.idle_gpu_s / 3600:.1f}",
            ]
        )
    days = report.half_life_s / 86400
    gpus = report.cluster_gpus
    print(f"usage: decayed GPU-hours, half-life {days:g} days; {gpus} GPUs in the cluster")
    print(
        table(
            rows,
            [
                "ACCOUNT/USER",
                "SHARES",
                "SHARE",
                "USAGE(GPU-h)",
                "USAGE-SHARE",
                "LEVEL-FS",
                "FS-FACTOR",
                "RUNNING",
                "PENDING",
                "IDLE(GPU-h)",
            ],
        )
    )
    quota_rows = [a for a in report.accounts if _has_quota(a)]
    if quota_rows:
        print()
        after = _ago(report.reclaim_after_s)
        print(f"quotas (GPUs; a team under its guarantee reclaims after {after}):")
        print(
            table(
                [
                    [
                        printable(a.path[-1]),
                        printable(a.guaranteed) or "-",
                        printable(a.limit) or "-",
                        "yes" if a.lend else "no",
                        str(a.held_gpus),
                        str(a.borrowing) if a.borrowing else "",
                        _borrow_text(a),
                    ]
                    for a in quota_rows
                ],
                ["ACCOUNT", "GUARANTEED", "LIMIT", "LENDS", "HOLDS", "BORROWS", "RECLAIM"],
            )
        )
    for warning in report.warnings:
        print(f"warning: {printable(warning)}")
    return 0


def _has_quota(a: pb.AccountUsage) -> bool:
    return not a.is_user and bool(a.guaranteed or a.limit or a.held_gpus or a.borrowing)


def _ago(seconds: float) -> str:
    return format_duration(seconds) if seconds >= 60 else f"{seconds:.0f}s"


def _borrow_text(a: pb.AccountUsage) -> str:
    """Who it borrows from, and when its reclaim happens."""
    parts = []
    if a.borrowing:
        source = ", ".join(a.borrows_from) or "unguaranteed GPUs"
        parts.append(f"borrows from {printable(source)}")
    if a.reclaim_from:
        who = printable(", ".join(a.reclaim_from))
        when = "now" if a.reclaim_in_s <= 0 else f"in {_ago(a.reclaim_in_s)}"
        parts.append(f"reclaims from {who} {when}")
    return "; ".join(parts)


def _quota_json(a: pb.AccountUsage) -> dict[str, object]:
    if not _has_quota(a):
        return {}
    return {
        "guaranteed": a.guaranteed or None,
        "limit": a.limit or None,
        "lend": a.lend,
        "held_gpus": a.held_gpus,
        "borrowing": a.borrowing,
        "borrows_from": list(a.borrows_from),
        "reclaim_in_s": None if a.reclaim_in_s < 0 else a.reclaim_in_s,
        "reclaim_from": list(a.reclaim_from),
    }


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


def cmd_nodes(client: Client, args: argparse.Namespace) -> int:
    nodes = client.nodes()
    if args.json:
        print(
            json.dumps(
                [
                    {
                        "name": n.name,
                        "state": pb.NodeState.Name(n.state).removeprefix("NODE_"),
                        "reason": n.reason,
                        "gpu_backend": n.gpu_backend,
                        "confinement": n.confinement or None,
                        "telemetry": n.telemetry or None,
                        "drained": n.drained,
                        "gpus": [
                            {
                                "index": g.index,
                                "uuid": g.uuid,
                                "model": g.model,
                                "memory_mb": g.memory_mb,
                                "nvlink_peers": list(g.nvlink_peers),
                                "busy": g.index in n.busy_gpus,
                                "drained": g.drained or None,
                                "warnings": list(g.warnings),
                                "metrics": _metrics_json(g.metrics)
                                if g.HasField("metrics")
                                else None,
                            }
                            for g in n.gpus
                        ],
                        "cpus": n.cpus,
                        "mem_mb": n.mem_mb,
                    }
                    for n in nodes
                ],
                indent=2,
            )
        )
        return 0
    rows = []
    for n in nodes:
        models = sorted({g.model for g in n.gpus})
        rows.append(
            [
                printable(n.name),
                pb.NodeState.Name(n.state).removeprefix("NODE_"),
                f"{len(n.busy_gpus)}/{len(n.gpus)}",
                printable(", ".join(models)) or "-",
                printable(n.gpu_backend) or "-",
                str(n.cpus),
                f"{n.mem_mb // 1024}G",
                _short(printable(n.confinement), 40) or "-",
                _short(printable(n.reason), 40),
            ]
        )
    print(
        table(
            rows,
            [
                "NODE",
                "STATE",
                "GPUS(USED/ALL)",
                "MODEL",
                "BACKEND",
                "CPUS",
                "MEM",
                "CONFINED",
                "REASON",
            ],
        )
    )
    if args.gpus:
        print()
        print(_gpu_table(nodes))
    notes = [
        printable(f"  {n.name} GPU {g.index}: {text}")
        for n in nodes
        for g in n.gpus
        for text in ([f"drained: {g.drained}"] if g.drained else []) + list(g.warnings)
    ]
    if notes:
        print("\nGPUs out of scheduling or with stray processes:")
        print("\n".join(notes))
    return 0


def cmd_drain(client: Client, args: argparse.Namespace) -> int:
    node, gpu = _node_gpu(args.target)
    resume = args.command == "resume"
    n = client.drain(node, gpu, resume, args.reason or "")
    what = f"{node} GPU {gpu}" if gpu >= 0 else node
    print(f"{what}: {'back in scheduling' if resume else 'drained'}")
    if not resume and gpu < 0 and n.busy_gpus:
        print(f"  {len(n.busy_gpus)} GPUs still run jobs; they finish where they are")
    return 0


def _node_gpu(target: str) -> tuple[str, int]:
    node, sep, gpu = target.partition(":")
    if not node or (sep and not gpu.isdigit()):
        raise UsageError(f"expected NODE or NODE:GPU, not {target!r}")
    return node, int(gpu) if sep else -1


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


def _param(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise UsageError(f"--policy-param needs KEY=VALUE, not {text!r}")
    lowered = value.lower()
    if lowered in ("true", "false"):
        return key, lowered == "true"
    for kind in (int, float):
        try:
            return key, kind(value)
        except ValueError:
            pass
    return key, value


def cmd_sim(args: argparse.Namespace) -> int:
    # the simulator drives the scheduler's own decision code, so it lives beside it
    from policies import PolicyError, make_policy
    from schedulerd.sim import (
        TraceError,
        check_dependencies,
        plot,
        read_trace,
        report,
        simulate,
    )

    if args.nodes < 1 or args.gpus_per_node < 1:
        raise UsageError("--nodes and --gpus-per-node must be at least 1")
    if args.checkpoint_every < 0 or args.restart_cost < 0:
        raise UsageError("--checkpoint-every and --restart-cost must not be negative")
    if args.half_life <= 0:
        raise UsageError("--half-life must be positive")
    params: dict[str, Any] = {"explain": False}
    params.update(_param(p) for p in args.policy_param)
    try:
        policy = make_policy(args.policy, params)
        jobs = read_trace(args.trace)
        if args.running_at_start:
            jobs += read_trace(args.running_at_start, measured=False)
        check_dependencies(jobs, str(args.trace))
    except (PolicyError, TraceError) as exc:
        return fail("gshare sim", str(exc), 2)
    result = simulate(
        jobs,
        policy,
        args.nodes,
        args.gpus_per_node,
        half_life_s=args.half_life,
        checkpoint_every_s=args.checkpoint_every * 60,
        restart_cost_s=args.restart_cost,
        record_series=args.plot is not None,
        group_by=args.group_by,
    )
    if args.plot is not None:
        try:
            plot(result, args.plot)
        except ImportError:
            return fail("gshare sim", "--plot needs matplotlib: pip install 'gshare[sim]'")
        except OSError as exc:
            return fail("gshare sim", f"cannot write {args.plot}: {exc.strerror}")
    print(json.dumps(result.as_json(), indent=2) if args.json else report(result, args.trace.name))
    return 0


def cmd_top(args: argparse.Namespace) -> int:
    from tui.app import run  # Textual is imported only by the terminal UI

    return run(args.address)


def cmd_ca(args: argparse.Namespace) -> int:
    from gshare.ca import CaError, init, issue

    days = args.days if args.days is not None else (3650 if args.what == "init" else 825)
    if not 0 < days <= 36500:
        return fail("gshare ca", f"--days must be between 1 and 36500, not {days}", 2)
    try:
        if args.what == "init":
            if args.names:
                return fail("gshare ca", "init takes no names (use --dir)", 2)
            made = init(args.dir, days)
        else:
            made = issue(args.dir, args.what, list(args.names), days)
    except CaError as exc:
        return fail("gshare ca", str(exc), 2 if "name" in str(exc) else 1)
    print(made)
    return 0
