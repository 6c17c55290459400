"""`gshare`: its argument parser and its entry point."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from gshare import __version__
from gshare.address import AddressError
from gshare.cli.commands import (
    cmd_cancel,
    cmd_hold,
    cmd_logs,
    cmd_preempt,
    cmd_priority,
    cmd_queue,
    cmd_release,
    cmd_show,
    cmd_sweep,
    cmd_why,
)
from gshare.cli.common import UsageError, _OneLineParser, fail
from gshare.cli.nodes import cmd_drain, cmd_nodes
from gshare.cli.options import _duration, _int32, _job_id, _job_ref, _one_job
from gshare.cli.standalone import cmd_ca, cmd_sim, cmd_top
from gshare.cli.usage import cmd_usage
from gshare.client import Client, ClientError
from gshare.limits import MAX_NODES_PER_JOB


def gshare_parser() -> argparse.ArgumentParser:
    p = _OneLineParser(
        prog="gshare",
        description="gshare: a fair GPU cluster-sharing scheduler. Submit jobs with gsub.",
    )
    p.add_argument(
        "--address",
        help="scheduler: unix:PATH or HOST:PORT (default: $GSHARE_ADDRESS, else the local socket)",
    )
    p.add_argument("--version", action="version", version=f"gshare {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    q = sub.add_parser(
        "queue",
        help="list pending and running jobs",
        description="List jobs, like squeue. Live jobs by default; --all adds ended ones.",
    )
    q.add_argument("-u", "--user", action="append", help="only this user's jobs (repeatable)")
    q.add_argument("--me", action="store_true", help="only my jobs")
    q.add_argument("-s", "--state", action="append", help="only jobs in this state (repeatable)")
    q.add_argument("-q", "--queue", action="append", help="only jobs in this queue (repeatable)")
    q.add_argument("-a", "--all", action="store_true", help="include ended jobs")
    q.add_argument(
        "-r",
        "--array",
        action="store_true",
        help="one line per array task (by default an array's pending tasks share one line)",
    )
    q.add_argument("--json", action="store_true", help="JSON list")
    q.set_defaults(func=cmd_queue)

    s = sub.add_parser("show", help="one job in detail, with its events")
    s.add_argument("job", type=_one_job, help="a job id, or a task of an array (12_7)")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_show)

    for name, func, text in (
        ("cancel", cmd_cancel, "cancel jobs (a running job is stopped: SIGTERM, grace, SIGKILL)"),
        ("hold", cmd_hold, "keep pending jobs from starting"),
        ("release", cmd_release, "let held jobs start again"),
        ("preempt", cmd_preempt, "ask running jobs to checkpoint, yield their GPUs and requeue"),
    ):
        c = sub.add_parser(name, help=text, description=text)
        c.add_argument(
            "jobs",
            type=_job_ref,
            nargs="+",
            metavar="JOB",
            help="a job id; an array's id (all its tasks), 12_7 (a task), 12_[3-5] (tasks)",
        )
        c.set_defaults(func=func)

    sw = sub.add_parser(
        "sweep",
        help="a sweep's trials with their parameters and results, best first",
        description="Every task of a sweep (or any array): parameters, state, run time, "
        "restarts and the metrics each wrote to GSHARE_RESULT_FILE, best first.",
    )
    sw.add_argument("job", type=_job_id, help="the sweep's (array's) job id")
    sw.add_argument("--sort", metavar="METRIC", help="rank by this metric (default: the first)")
    sw.add_argument("--max", action="store_true", help="higher is better (default: lower)")
    sw.add_argument("--json", action="store_true")
    sw.set_defaults(func=cmd_sweep)

    w = sub.add_parser(
        "why",
        help="why a job waits, and its place in line",
        description="Why a job is not running: the reason from the last scheduling "
        "cycle, its place in line, and its team's standing.",
    )
    w.add_argument("job", type=_one_job)
    w.set_defaults(func=cmd_why)

    us = sub.add_parser(
        "usage",
        help="the fair-share account tree",
        description="The account tree: shares, decayed usage, Fair Tree level fair "
        "share and each user's fair-share factor, with running and pending GPUs.",
    )
    us.add_argument("--json", action="store_true")
    us.set_defaults(func=cmd_usage)

    pr = sub.add_parser(
        "priority",
        help="change jobs' priority (admins; owners may lower theirs)",
        description="Set the priority of jobs. Admins may set any value; a job's "
        "owner may only lower it (0 or less).",
    )
    pr.add_argument("priority", type=_int32("priority"), metavar="PRIORITY")
    pr.add_argument("jobs", type=_job_ref, nargs="+", metavar="JOB")
    pr.set_defaults(func=cmd_priority)

    n = sub.add_parser("nodes", help="nodes and their GPUs")
    n.add_argument("--json", action="store_true")
    n.add_argument(
        "-g", "--gpus", action="store_true", help="a line per GPU with its latest telemetry"
    )
    n.set_defaults(func=cmd_nodes)

    for name, text in (
        ("drain", "take a node or one GPU out of scheduling (admins); running jobs stay"),
        ("resume", "put a drained node or GPU back into scheduling (admins)"),
    ):
        d = sub.add_parser(name, help=text, description=text)
        d.add_argument("target", metavar="NODE[:GPU]")
        d.add_argument("--reason", help="why (shown in gshare nodes)" if name == "drain" else "")
        d.set_defaults(func=cmd_drain)

    lg = sub.add_parser(
        "logs",
        help="print a job's output",
        description="Print a job's output "
        "file (read where the job writes it: on this machine or a shared file system).",
    )
    lg.add_argument("job", type=_one_job)
    lg.add_argument("-f", "--follow", action="store_true", help="keep printing until the job ends")
    lg.add_argument(
        "--rank",
        type=_int32("--rank", 0, MAX_NODES_PER_JOB - 1),
        default=0,
        help="a multi-node job: the part whose log to print, by node rank (default 0)",
    )
    lg.set_defaults(func=cmd_logs)

    sm = sub.add_parser(
        "sim",
        help="replay a job trace through a scheduling policy",
        description="Replay a trace (CSV: job_id,submit_time_s,duration_s,gpus,user,group,status) "
        "through the scheduler's own policy code with a virtual clock, and report job completion "
        "times, queueing delays, utilization, preemptions and fairness.",
    )
    sm.add_argument("trace", type=Path, metavar="TRACE.csv")
    sm.add_argument("--policy", default="fairshare", help="fairshare (default), priority or fifo")
    sm.add_argument(
        "--policy-param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a policy parameter, e.g. weight_age=0 or backfill=false (repeatable)",
    )
    sm.add_argument("--nodes", type=int, default=16, help="nodes (default 16)")
    sm.add_argument("--gpus-per-node", type=int, default=8, help="GPUs per node (default 8)")
    sm.add_argument(
        "--half-life",
        type=_duration,
        default=7 * 86400,
        metavar="DURATION",
        help="fair-share usage half-life, e.g. 7d (default), 12h",
    )
    sm.add_argument(
        "--checkpoint-every",
        type=float,
        default=30.0,
        metavar="MIN",
        help="minutes between a job's checkpoints; a preempted job keeps the work up to "
        "its last one (default 30; 0: no checkpoints)",
    )
    sm.add_argument(
        "--restart-cost",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="seconds a preempted job loses when it starts again (default 60)",
    )
    sm.add_argument(
        "--running-at-start",
        type=Path,
        metavar="FILE.csv",
        help="jobs already running when the trace starts (same format)",
    )
    sm.add_argument(
        "--group-by",
        choices=("group", "user"),
        default="group",
        help="the fair-share unit: the trace's group column (default; an empty one means "
        "the user alone), or each user",
    )
    sm.add_argument("--json", action="store_true", help="the figures as JSON")
    sm.add_argument(
        "--plot",
        type=Path,
        metavar="FILE.png",
        help="plot each group's GPU share and the queue length over time",
    )
    sm.set_defaults(func=cmd_sim)

    top = sub.add_parser(
        "top",
        help="the cluster, its jobs and fair share, live (a terminal UI)",
        description="A live view of the cluster: nodes and GPUs, jobs with "
        "filters and search, the fair-share tree, job details with the log, and "
        "actions (cancel, hold, release, preempt). Press ? inside for keys.",
    )
    top.set_defaults(func=cmd_top)

    ca = sub.add_parser(
        "ca",
        help="make the cluster's CA and its TLS certificates",
        description="The certificates of a cluster over TCP: `init` makes the CA "
        "(DIR/ca.pem for everyone, DIR/ca.key for the admin alone); `scheduler HOST...` the "
        "scheduler's certificate for the names clients use; `node NAME` a node agent's "
        "certificate, which lets it register as NAME only; `reader NAME` a read-only "
        "client certificate. Existing files are never replaced.",
    )
    ca.add_argument("what", choices=["init", "scheduler", "node", "reader"])
    ca.add_argument("names", nargs="*", metavar="NAME")
    ca.add_argument(
        "--dir", type=Path, default=Path("gshare-ca"), help="where the CA is (default ./gshare-ca)"
    )
    ca.add_argument(
        "--days", type=int, default=None, help="validity (default: 3650 for the CA, else 825)"
    )
    ca.set_defaults(func=cmd_ca)

    from gshare.up import add_up_parser

    add_up_parser(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = gshare_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    if args.command in ("up", "sim", "top", "ca"):
        try:
            return int(args.func(args))
        except UsageError as exc:
            return fail("gshare", str(exc), 2)
    try:
        with Client(args.address) as client:
            return int(args.func(client, args))
    except UsageError as exc:
        return fail("gshare", str(exc), 2)
    except (ClientError, AddressError) as exc:
        return fail("gshare", str(exc))
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0
