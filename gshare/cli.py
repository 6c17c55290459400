"""The command line: `gsub` submits jobs, `gshare` does the rest."""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import stat
import sys
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, NoReturn

from gshare import __version__
from gshare.address import AddressError
from gshare.api import gshare_pb2 as pb
from gshare.client import Client, ClientError
from gshare.jobscript import MAX_SCRIPT_BYTES, JobScript, ScriptError, directives, wrap
from gshare.render import printable
from gshare.timefmt import TimeFormatError, format_duration, parse_duration
from schedulerd.requests import (
    MAX_CPUS,
    MAX_GPUS_PER_JOB,
    MAX_GRACE_S,
    MAX_MEM_MB,
    MAX_TIME_LIMIT_S,
    env_name_ok,
)
from tui.model import where

INT32_MAX = 2**31 - 1
INT64_MAX = 2**63 - 1
LIVE = (
    "PENDING",
    "HELD",
    "STARTING",
    "RUNNING",
    "PREEMPTING",
    "LOST",
    "HANDED_OFF",
    "RUNNING_REMOTE",
)
STATE_NAMES = [n for n in pb.JobState.keys() if n != "JOB_STATE_UNSPECIFIED"]  # noqa: SIM118


class UsageError(Exception):
    """Bad input on the command line or in a #GSUB line (exit 2)."""


class _Parser(argparse.ArgumentParser):
    """Raises instead of exiting, so #GSUB lines can report their line number."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


class _OneLineParser(argparse.ArgumentParser):
    """A usage error in one line (and exit 2), not the usage text before it."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {printable(message)} (see {self.prog} --help)\n")


def fail(prog: str, message: str, code: int = 1) -> int:
    print(f"{prog}: {printable(message)}", file=sys.stderr)
    return code


# ---------------------------------------------------------------- gsub


def _memory_mb(text: str) -> int:
    match = re.fullmatch(r"(\d+)\s*([kKmMgGtT]?)[bB]?", text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"bad memory size {text!r} (use e.g. 16G, 512M, 32000)")
    value, unit = int(match.group(1)), match.group(2).upper()
    kib = value * {"": 1024, "K": 1, "M": 1024, "G": 1024**2, "T": 1024**3}[unit]
    mb = max(1, kib // 1024) if value else 0  # whole numbers: no float to overflow
    if mb > MAX_MEM_MB:
        raise argparse.ArgumentTypeError(
            f"--mem {text.strip()} is more than the limit of {MAX_MEM_MB // 1024**2}T"
        )
    return mb


def _duration(text: str) -> int:
    return _bounded_duration("--time", MAX_TIME_LIMIT_S)(text)


def _bounded_duration(name: str, limit: float) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            seconds = parse_duration(text)
        except TimeFormatError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
        except (ValueError, OverflowError):
            raise argparse.ArgumentTypeError(f"bad duration {text!r}") from None
        if seconds > limit:
            raise argparse.ArgumentTypeError(
                f"{name} {text} is over the limit of {format_duration(int(limit))}"
            )
        return seconds

    return parse


def _job_id(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a job id is a whole number, not {text!r}") from None
    if not 0 < value <= INT64_MAX:
        raise argparse.ArgumentTypeError(f"no job can have the id {text} (ids are 1 to 2^63-1)")
    return value


def _gpus(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--gpus needs a whole number, not {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"--gpus must be at least 1, not {value}")
    if value > MAX_GPUS_PER_JOB:
        raise argparse.ArgumentTypeError(f"--gpus {value} is more than any node can have")
    return value


def _int32(name: str, low: int = -INT32_MAX, high: int = INT32_MAX) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} needs a whole number, not {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{name} {text} is not between {low} and {high}")
        return value

    return parse


def _env(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
        raise argparse.ArgumentTypeError(f"--env needs KEY=VALUE, not {text!r}")
    return key, value


def _job_options(p: argparse.ArgumentParser) -> None:
    """Options valid both on the command line and on #GSUB lines. Defaults are None so the
    command line can be told apart from what it did not say."""
    p.add_argument("-g", "--gpus", type=_gpus, help="GPUs, all on one node (default 1)")
    p.add_argument("-J", "--name", help="job name (default: the script's name)")
    p.add_argument("-q", "--queue", help="queue (default: the scheduler's default queue)")
    p.add_argument(
        "--priority",
        type=_int32("--priority"),
        help="priority; users may lower their own jobs (negative), admins raise",
    )
    p.add_argument(
        "-t",
        "--time",
        type=_duration,
        help="time limit: 30m, 2h, 1d, 1:30:00 or minutes (default: the queue's)",
    )
    p.add_argument(
        "-c", "--cpus", type=_int32("--cpus", 0, MAX_CPUS), help="CPU cores the job needs"
    )
    p.add_argument("--mem", type=_memory_mb, help="host memory the job needs, e.g. 32G")
    p.add_argument("-D", "--workdir", help="working directory (default: the current one)")
    p.add_argument(
        "--env",
        type=_env,
        action="append",
        metavar="KEY=VALUE",
        help="set a variable in the job's environment (repeatable)",
    )
    p.add_argument(
        "-o",
        "--output",
        help="log file for stdout and stderr, %%j is the job id "
        "(default: gshare-%%j.out in the working directory)",
    )
    p.add_argument(
        "--signal",
        type=_signal,
        dest="preempt_signal",
        help="the signal that asks the job to checkpoint and yield (default USR1)",
    )
    p.add_argument(
        "--grace",
        type=_bounded_duration("--grace", MAX_GRACE_S),
        help="time the job has to yield before SIGTERM "
        "and SIGKILL, e.g. 90s (default: the queue's, 60s)",
    )
    p.add_argument(
        "--no-preempt",
        action="store_const",
        const=True,
        default=None,
        help="never preempt this job",
    )
    p.add_argument(
        "--max-restarts",
        type=_int32("--max-restarts"),
        help="fail the job instead of restarting it after this many preemptions (-1: no limit)",
    )
    p.add_argument(
        "--slurm",
        choices=["never", "auto", "always"],
        help="hand the job to Slurm: never, auto (the queue's rule; default) or always",
    )
    p.add_argument(
        "--checkpoint-dir",
        help="GSHARE_CHECKPOINT_DIR, kept across restarts; "
        "%%j is the job id (default: .gshare/checkpoints/job-%%j in the workdir)",
    )


def _signal(text: str) -> int:
    name = text.strip().upper()
    try:
        number = (
            int(name) if name.isdigit() else int(signal.Signals["SIG" + name.removeprefix("SIG")])
        )
    except KeyError:
        raise argparse.ArgumentTypeError(
            f"unknown signal {text!r} (e.g. USR1, USR2, INT, 12)"
        ) from None
    if number in (signal.SIGKILL, signal.SIGSTOP) or not 1 <= number < signal.NSIG:
        raise argparse.ArgumentTypeError(f"--signal {text}: a job cannot catch that signal")
    return number


def read_job_script(path: Path, limit: int = MAX_SCRIPT_BYTES) -> JobScript:
    """The script at `path`, read only from a regular file and never more than `limit` + 1
    bytes: a FIFO, a device (/dev/zero) or a directory is refused, not read or waited on."""
    try:
        # O_NONBLOCK: opening a FIFO with no writer must not wait for one
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except IsADirectoryError:
        raise ScriptError(f"{path} is a directory, not a job script") from None
    except OSError as exc:
        raise ScriptError(f"cannot read script {path}: {exc.strerror}") from exc
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise ScriptError(f"{path} is a directory, not a job script")
        if not stat.S_ISREG(mode):
            raise ScriptError(
                f"{path} is not a regular file (a FIFO or a device?), not a job script"
            )
        chunks: list[bytes] = []
        left = limit + 1
        while left > 0 and (chunk := os.read(fd, min(left, 1 << 20))):
            chunks.append(chunk)
            left -= len(chunk)
    except OSError as exc:
        raise ScriptError(f"cannot read script {path}: {exc.strerror}") from exc
    finally:
        os.close(fd)
    content = b"".join(chunks)
    if len(content) > limit:
        raise ScriptError(f"{path} is over {limit} bytes; job scripts are limited to {limit} bytes")
    if not content.strip():
        raise ScriptError(f"{path} is empty")
    try:
        if b"\0" in content:
            raise UnicodeDecodeError("utf-8", content, 0, 1, "NUL byte")
        text = content.decode("utf-8")
    except UnicodeDecodeError:
        raise ScriptError(f"{path} is a binary file, not a job script") from None
    if not text.startswith("#!"):
        raise ScriptError(f"{path}: the first line must be an interpreter line such as #!/bin/bash")
    return JobScript(path, content, directives(text, str(path)))


def gsub_parser() -> _Parser:
    p = _Parser(
        prog="gsub",
        description="Submit a job to gshare. Options may also be given as '#GSUB --option' "
        "lines at the top of the script; the command line wins.",
        epilog="Arguments after the script go to it; put script arguments that start with '-' "
        "after '--'.  Example: gsub train.sh --gpus 2 -- --lr 0.1",
    )
    p.add_argument("script", nargs="?", help="the job script (must start with #!)")
    p.add_argument("args", nargs="*", help="arguments for the script")
    p.add_argument(
        "--wrap", metavar="COMMAND", help="submit COMMAND as a /bin/sh script instead of a file"
    )
    p.add_argument("--json", action="store_true", help='print {"job_id": N}')
    p.add_argument("--address", help="scheduler: unix:PATH or HOST:PORT (default: $GSHARE_ADDRESS)")
    p.add_argument("--version", action="version", version=f"gsub {__version__}")
    _job_options(p)
    return p


def directive_options(script: JobScript) -> dict[str, Any]:
    parser = _Parser(prog="#GSUB", add_help=False)
    _job_options(parser)
    merged: dict[str, Any] = {}
    for number, words in script.directives:
        try:
            ns, extra = parser.parse_known_args(words)
        except UsageError as exc:
            raise UsageError(f"{script.path}:{number}: #GSUB {' '.join(words)}: {exc}") from None
        if extra:
            raise UsageError(f"{script.path}:{number}: #GSUB: unknown option {' '.join(extra)}")
        for key, value in vars(ns).items():
            if value is None:
                continue
            if key == "env":
                merged.setdefault("env", []).extend(value)
            else:
                merged[key] = value
    return merged


def build_spec(args: argparse.Namespace, environ: dict[str, str]) -> pb.JobSpec:
    if args.wrap and args.script:
        raise UsageError("give either a script or --wrap, not both")
    if args.wrap:
        content, name, from_script = wrap(args.wrap), "wrap", {}
    elif args.script:
        script = read_job_script(Path(args.script))
        content, name = script.content, Path(args.script).name
        from_script = directive_options(script)
    else:
        raise UsageError("no job script given (gsub SCRIPT [ARGS...] --gpus N, or --wrap COMMAND)")
    options = dict(from_script)
    for key, value in vars(args).items():
        if value is None:
            continue
        if key == "env":
            options["env"] = options.get("env", []) + value
        else:
            options[key] = value
    # what the scheduler would refuse (a name like a-b, bytes that are not UTF-8) stays here
    env = {k: v for k, v in environ.items() if env_name_ok(k) and _sendable(k) and _sendable(v)}
    if args.script:
        env["GSHARE_SCRIPT_DIR"] = str(Path(args.script).resolve().parent)
    env["GSHARE_SUBMIT_DIR"] = os.getcwd()
    env.update(dict(options.get("env", [])))
    workdir = os.path.abspath(options.get("workdir") or os.getcwd())
    return pb.JobSpec(
        name=options.get("name") or name,
        queue=options.get("queue") or "",
        gpus=options.get("gpus") or 1,
        priority=options.get("priority") or 0,
        time_limit_s=options.get("time") or 0,
        cpus=options.get("cpus") or 0,
        mem_mb=options.get("mem") or 0,
        workdir=workdir,
        env=env,
        output=options.get("output") or "",
        script=content,
        args=list(args.args),
        script_name=name,
        preempt_signal=options.get("preempt_signal") or 0,
        grace_s=float(options.get("grace") or 0),
        no_preempt=bool(options.get("no_preempt")),
        max_restarts=options.get("max_restarts"),
        checkpoint_dir=options.get("checkpoint_dir") or "",
        slurm=options.get("slurm") or "",
    )


def _sendable(text: str) -> bool:
    """Whether a variable of our environment can travel: text the wire takes (UTF-8; an
    undecodable byte is a surrogate here) and no NUL."""
    return "\0" not in text and not any("\ud800" <= c <= "\udfff" for c in text)


def gsub_main(argv: Sequence[str] | None = None) -> int:
    parser = gsub_parser()
    try:
        args = parser.parse_intermixed_args(argv)
        spec = build_spec(args, dict(os.environ))
    except (UsageError, ScriptError) as exc:
        return fail("gsub", str(exc), 2)
    try:
        with Client(args.address) as client:
            job_id = client.submit(spec)
    except (ClientError, AddressError) as exc:
        return fail("gsub", str(exc))
    print(json.dumps({"job_id": job_id}) if args.json else job_id)
    return 0


# ---------------------------------------------------------------- gshare


def _state(job: pb.Job) -> str:
    return pb.JobState.Name(job.state)


def _when(t: float) -> str:
    return datetime.fromtimestamp(t).strftime("%Y-%m-%d %H:%M:%S") if t else "-"


def _runtime(job: pb.Job, now: float) -> str:
    if not job.start_time:
        return "-"
    return format_duration((job.end_time or now) - job.start_time)


def job_json(job: pb.Job) -> dict[str, Any]:
    return {
        "job_id": job.job_id,
        "name": job.spec.name,
        "user": job.user,
        "queue": job.spec.queue,
        "state": _state(job),
        "priority": job.spec.priority,
        "gpus_requested": job.spec.gpus,
        "gpus": [{"node": g.node, "index": g.index, "uuid": g.uuid} for g in job.gpus],
        "node": job.node or None,
        "slurm_job_id": job.slurm_job_id or None,
        "slurm_state": job.slurm_state or None,
        "time_limit_s": job.spec.time_limit_s or None,
        "submit_time": job.submit_time,
        "start_time": job.start_time or None,
        "end_time": job.end_time or None,
        "exit_code": job.exit_code if job.has_exit else None,
        "exit_signal": job.exit_signal or None,
        "restarts": job.restarts,
        "preemptions": job.preemptions,
        "no_preempt": job.spec.no_preempt,
        "checkpoint_dir": job.checkpoint_dir,
        "last_checkpoint": job.last_checkpoint or None,
        "checkpoints": [
            {"time": e.time, "detail": e.reason} for e in job.events if e.kind == "checkpoint"
        ],
        "reason": job.reason,
        "position": job.position or None,
        "workdir": job.spec.workdir,
        "output": job.output_path,
        "script": job.spec.script_name,
        "args": list(job.spec.args),
        "events": [
            {
                "time": e.time,
                "kind": e.kind,
                "from": e.from_state,
                "to": e.to_state,
                "actor": e.actor,
                "reason": e.reason,
            }
            for e in job.events
        ],
        "gpu_stats": {
            "util_avg_pct": job.gpu_util_avg,
            "util_now_pct": job.gpu_util_now,
            "mem_peak_mb": job.gpu_mem_peak_mb,
            "idle_s": job.idle_s,
            "idle_gpu_s": job.idle_gpu_s,
            "warnings": list(job.warnings),
        }
        if job.has_gpu_stats
        else None,
    }


def table(rows: list[list[str]], headers: list[str]) -> str:
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)
    ]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    for r in rows:
        lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    return "\n".join(lines)


def _short(text: str, width: int = 60) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _first_clause(reason: str) -> str:
    """The short form of a reason, for tables: up to its first ';'."""
    return reason.split(";", 1)[0]


def cmd_why(client: Client, args: argparse.Namespace) -> int:
    job = client.job(args.job)
    state = _state(job)
    if job.state == pb.PENDING:
        place = f", {job.position} in line" if job.position else ""
        print(f"job {job.job_id} is PENDING{place}:")
        for clause in (job.reason or "waiting for the next scheduling cycle").split("; "):
            print(f"  {printable(clause)}")
    elif job.state == pb.HELD:
        reason = printable(job.reason)
        print(f"job {job.job_id} is HELD ({reason}); `gshare release {job.job_id}` lets it run")
    else:
        print(f"job {job.job_id} is {state}" + (f": {printable(job.reason)}" if job.reason else ""))
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
                        }
                        for a in report.accounts
                    ],
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
            str(j.job_id),
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
        for j in jobs
    ]
    print(
        table(rows, ["JOBID", "NAME", "USER", "QUEUE", "STATE", "GPUS", "NODE", "TIME", "REASON"])
    )
    return 0


def cmd_show(client: Client, args: argparse.Namespace) -> int:
    job = client.job(args.job)
    if args.json:
        print(json.dumps(job_json(job), indent=2))
        return 0
    d = job_json(job)
    gpus = ", ".join(f"{g['node']}:{g['index']}" for g in d["gpus"]) or "-"
    fields = [
        ("Job", f"{job.job_id} ({job.spec.name})"),
        ("State", d["state"] + (f" - {job.reason}" if job.reason else "")),
        ("User", f"{job.user} (uid {job.uid})"),
        ("Queue", job.spec.queue),
        ("Priority", str(job.spec.priority)),
        ("GPUs", f"{job.spec.gpus} requested; assigned {gpus}"),
        ("Time limit", format_duration(job.spec.time_limit_s) if job.spec.time_limit_s else "none"),
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


def _slurm_line(job: pb.Job) -> str:
    rule = {"": "the queue's rule", "never": "never", "always": "always"}.get(
        job.spec.slurm, job.spec.slurm
    )
    if job.slurm_job_id:
        return f"job {job.slurm_job_id}, {job.slurm_state or 'submitted'} (hand-off: {rule})"
    if job.state == pb.HANDED_OFF:
        return f"being submitted (hand-off: {rule})"
    return f"not handed off (hand-off: {rule})"


def _gpu_use(job: pb.Job) -> str:
    if not job.has_gpu_stats:
        return "no telemetry" if job.start_time else "-"
    text = f"{job.gpu_util_avg:.0f}% average"
    if job.gpu_util_now or job.idle_s:
        text += f", {job.gpu_util_now:.0f}% now"
    text += f", peak memory {job.gpu_mem_peak_mb} MB"
    if job.idle_s:
        text += f"; idle for {format_duration(int(job.idle_s))}"
    if job.idle_gpu_s >= 1:
        text += f"; {job.idle_gpu_s / 3600:.2f} idle GPU-hours"
    for warning in job.warnings:
        text += f"\n{'':>12}  warning: {printable(warning)}"
    return text


def _signal_label(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _each(client: Client, ids: list[int], action: Callable[[int], pb.Job], verb: str) -> int:
    status = 0
    for job_id in ids:
        try:
            job = action(job_id)
            print(f"job {job_id}: {verb} ({_state(job)})")
        except ClientError as exc:
            print(f"gshare: job {job_id}: {printable(str(exc))}", file=sys.stderr)
            status = 1
    return status


def cmd_cancel(client: Client, args: argparse.Namespace) -> int:
    return _each(client, args.jobs, client.cancel, "cancel requested")


def cmd_hold(client: Client, args: argparse.Namespace) -> int:
    return _each(client, args.jobs, client.hold, "held")


def cmd_preempt(client: Client, args: argparse.Namespace) -> int:
    return _each(client, args.jobs, client.preempt, "asked to checkpoint and yield")


def cmd_priority(client: Client, args: argparse.Namespace) -> int:
    return _each(
        client,
        args.jobs,
        lambda j: client.set_priority(j, args.priority),
        f"priority set to {args.priority}",
    )


def cmd_release(client: Client, args: argparse.Namespace) -> int:
    return _each(client, args.jobs, client.release, "released")


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
                _short(printable(n.reason), 40),
            ]
        )
    print(
        table(
            rows, ["NODE", "STATE", "GPUS(USED/ALL)", "MODEL", "BACKEND", "CPUS", "MEM", "REASON"]
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


def _metrics_json(m: pb.GpuMetrics) -> dict[str, object]:
    return {
        "time": m.time,
        "util_pct": m.util_pct,
        "mem_used_mb": m.mem_used_mb,
        "mem_total_mb": m.mem_total_mb,
        "temp_c": m.temp_c,
        "power_w": m.power_w,
        "sm_clock_mhz": m.sm_clock_mhz,
        "mem_clock_mhz": m.mem_clock_mhz,
        "ecc_sbe": m.ecc_sbe,
        "ecc_dbe": m.ecc_dbe,
        "processes": [
            {"pid": p.pid, "used_mb": p.used_mb, "job_id": p.job_id} for p in m.processes
        ],
    }


def _gpu_table(nodes: list[pb.Node]) -> str:
    rows = []
    now = time.time()
    for n in nodes:
        for g in n.gpus:
            m = g.metrics
            seen = g.HasField("metrics")
            jobs = sorted({p.job_id for p in m.processes if p.job_id})
            rows.append(
                [
                    n.name,
                    str(g.index),
                    "drained" if g.drained else "busy" if g.index in n.busy_gpus else "free",
                    f"{m.util_pct:.0f}%" if seen else "-",
                    f"{m.mem_used_mb / 1024:.1f}/{m.mem_total_mb / 1024:.0f}G" if seen else "-",
                    f"{m.temp_c:.0f}C" if seen else "-",
                    f"{m.power_w:.0f}W" if seen else "-",
                    str(m.ecc_dbe) if seen else "-",
                    ",".join(map(str, jobs)) or "-",
                    format_duration(int(now - m.time)) if seen else "never",
                ]
            )
    return table(
        rows, ["NODE", "GPU", "USE", "UTIL", "MEM", "TEMP", "POWER", "ECC-DBE", "JOBS", "SAMPLED"]
    )


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
    path = Path(job.output_path)
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
    from schedulerd.sim import TraceError, plot, read_trace, report, simulate

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
    q.add_argument("--json", action="store_true", help="JSON list")
    q.set_defaults(func=cmd_queue)

    s = sub.add_parser("show", help="one job in detail, with its events")
    s.add_argument("job", type=_job_id)
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_show)

    for name, func, text in (
        ("cancel", cmd_cancel, "cancel jobs (a running job is stopped: SIGTERM, grace, SIGKILL)"),
        ("hold", cmd_hold, "keep pending jobs from starting"),
        ("release", cmd_release, "let held jobs start again"),
        ("preempt", cmd_preempt, "ask running jobs to checkpoint, yield their GPUs and requeue"),
    ):
        c = sub.add_parser(name, help=text, description=text)
        c.add_argument("jobs", type=_job_id, nargs="+", metavar="JOB")
        c.set_defaults(func=func)

    w = sub.add_parser(
        "why",
        help="why a job waits, and its place in line",
        description="Why a job is not running: the reason from the last scheduling "
        "cycle, its place in line, and its team's standing.",
    )
    w.add_argument("job", type=_job_id)
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
    pr.add_argument("jobs", type=_job_id, nargs="+", metavar="JOB")
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
    lg.add_argument("job", type=_job_id)
    lg.add_argument("-f", "--follow", action="store_true", help="keep printing until the job ends")
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

    from gshare.up import add_up_parser

    add_up_parser(sub)
    return p


def gshare_main(argv: Sequence[str] | None = None) -> int:
    parser = gshare_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    if args.command in ("up", "sim", "top"):
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
