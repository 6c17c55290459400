"""gsub's options and #GSUB directives: values parsed and checked, the script read, the
JobSpec built."""

from __future__ import annotations

import argparse
import os
import re
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gshare import __version__
from gshare.api import gshare_pb2 as pb
from gshare.arrays import parse_array, parse_dependency, parse_job_ref
from gshare.cli.common import INT32_MAX, INT64_MAX, UsageError, _Parser
from gshare.jobscript import JobScript, read_script, wrap
from gshare.limits import (
    MAX_CPUS,
    MAX_GPUS_PER_JOB,
    MAX_GRACE_S,
    MAX_NODES_PER_JOB,
    MAX_TASK_PARAMS_BYTES,
    MAX_TIME_LIMIT_S,
    env_name_ok,
    parse_mem_mb,
)
from gshare.sweep import load_sweep
from gshare.timefmt import TimeFormatError, format_duration, parse_duration

# gsub checks an array's syntax; the scheduler's max_array_size bounds it further
MAX_ARRAY_TASK_ID = 1_000_000


def _memory_mb(text: str) -> int:
    try:
        return parse_mem_mb(text)
    except ValueError as exc:
        if str(exc).startswith("bad"):
            raise argparse.ArgumentTypeError(str(exc)) from None
        raise argparse.ArgumentTypeError(f"--mem {exc}") from None


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


def _job_ref(text: str) -> str:
    """`12` (a job, or a whole array), `12_7` (one task), `12_[3-5]` (some tasks)."""
    if "_" not in text:
        return str(_job_id(text))  # a plain id: its own checks and messages
    try:
        parse_job_ref(text)
        return text.strip()  # as typed: `12_[0-2999:3]` stays short on the wire
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _one_job(text: str) -> int | str:
    """A job id, or one task of an array (`12_7`)."""
    ref = _job_ref(text)
    if ref.isdigit():
        return _job_id(ref)
    if "[" in ref:
        raise argparse.ArgumentTypeError(f"{text!r} names several tasks; name one (e.g. 12_7)")
    return ref


def _array(text: str) -> str:
    try:
        parse_array(text, MAX_ARRAY_TASK_ID + 1)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("--array: ")) from None
    return text.strip()


def _dependency(text: str) -> str:
    try:
        return str(parse_dependency(text))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("--dependency: ")) from None


def _count(name: str, limit: int, too_many: str) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} needs a whole number, not {text!r}") from None
        if value < 1:
            raise argparse.ArgumentTypeError(f"{name} must be at least 1, not {value}")
        if value > limit:
            raise argparse.ArgumentTypeError(f"{name} {value} is {too_many}")
        return value

    return parse


_gpus = _count("--gpus", MAX_GPUS_PER_JOB, "more than any node can have")


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
    p.add_argument(
        "-N",
        "--nodes",
        type=_count("--nodes", MAX_NODES_PER_JOB, f"over the limit of {MAX_NODES_PER_JOB}"),
        help="run the script on this many nodes at once, gang-started (with --gpus-per-node)",
    )
    p.add_argument(
        "--gpus-per-node",
        type=_count("--gpus-per-node", MAX_GPUS_PER_JOB, "more than any node can have"),
        help="GPUs on each node of a multi-node job",
    )
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
        help="log file for stdout and stderr, %%j is the job id, %%A the array's id and %%a "
        "the task id (default: gshare-%%j.out in the working directory)",
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
        "-a",
        "--array",
        type=_array,
        help="a job array: 0-99, 0-99:4 (every 4th), 1,3,7-9; %%K runs at most K tasks at "
        "once (0-999%%16); each task gets GSHARE_ARRAY_TASK_ID",
    )
    p.add_argument(
        "-d",
        "--dependency",
        type=_dependency,
        help="wait for other jobs: afterok:ID[:ID...], afterany, afternotok, after (started), "
        "singleton; ',' all of them, '?' any one (e.g. afterok:12,afterany:13_4)",
    )
    p.add_argument(
        "--gpu-type",
        type=_gpu_types,
        metavar="NAME[,NAME]",
        help="only GPUs of these models, e.g. A100 or a100,h100 (case does not matter; "
        "A100 matches NVIDIA A100-SXM4-80GB)",
    )
    p.add_argument(
        "--checkpoint-dir",
        help="GSHARE_CHECKPOINT_DIR, kept across restarts; "
        "%%j is the job id (default: .gshare/checkpoints/job-%%j in the workdir)",
    )


MAX_GPU_TYPES = 16
MAX_GPU_TYPE_CHARS = 64


def _gpu_types(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",")]
    if not all(names) or len(names) > MAX_GPU_TYPES:
        raise argparse.ArgumentTypeError(
            f"expected 1 to {MAX_GPU_TYPES} GPU type names separated by commas, not {text!r}"
        )
    for name in names:
        if len(name) > MAX_GPU_TYPE_CHARS or not name.isprintable():
            raise argparse.ArgumentTypeError(
                f"{name[:MAX_GPU_TYPE_CHARS]!r} is not a GPU type name "
                f"(printable, at most {MAX_GPU_TYPE_CHARS} characters)"
            )
    return names


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
    p.add_argument(
        "--sweep",
        metavar="SWEEP.toml",
        help="a parameter sweep: run the script once per point of the file's axes, as an "
        "array (see README: Sweeps)",
    )
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
        script = read_script(Path(args.script))
        content, name = script.content, Path(args.script).name
        from_script = directive_options(script)
    else:
        raise UsageError("no job script given (gsub SCRIPT [ARGS...] --gpus N, or --wrap COMMAND)")
    options = dict(from_script)
    if any(getattr(args, key, None) is not None for key in _SHAPE):
        for key in _SHAPE:  # the command line's shape replaces the script's, whole
            options.pop(key, None)
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
    array = options.get("array") or ""
    task_params: list[pb.TaskParams] = []
    if getattr(args, "sweep", None):
        if array:
            raise UsageError("give either --array or --sweep (a sweep makes its own array)")
        try:
            sweep = load_sweep(Path(args.sweep))
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        points = sweep.trials
        array = f"0-{len(points) - 1}" + (
            f"%{sweep.max_concurrent}" if sweep.max_concurrent else ""
        )
        task_params = [pb.TaskParams(params=p) for p in points]
        size = sum(t.ByteSize() for t in task_params)
        if size > MAX_TASK_PARAMS_BYTES:
            raise UsageError(
                f"{args.sweep}: {len(points)} trials take {size} bytes of parameters, over "
                f"the limit of {MAX_TASK_PARAMS_BYTES // (1 << 20)} MiB"
            )
    nodes, per_node = _shape(options)
    return pb.JobSpec(
        name=options.get("name") or name,
        queue=options.get("queue") or "",
        gpus=nodes * per_node if nodes > 1 else per_node,
        nodes=nodes if nodes > 1 else 0,
        gpus_per_node=per_node if nodes > 1 else 0,
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
        array=array,
        dependency=options.get("dependency") or "",
        task_params=task_params,
        gpu_types=options.get("gpu_type") or [],
    )


_SHAPE = ("gpus", "nodes", "gpus_per_node")


def _shape(options: dict[str, Any]) -> tuple[int, int]:
    """How many nodes, and GPUs on each. `--gpus` alone means one node; `--nodes N` needs
    `--gpus-per-node G` (the same as `--gpus G` for one node)."""
    nodes = options.get("nodes") or 1
    gpus, per_node = options.get("gpus"), options.get("gpus_per_node")
    if gpus is not None and per_node is not None and (nodes > 1 or gpus != per_node):
        raise UsageError(
            "give --gpus (one node) or --nodes with --gpus-per-node (several), not both"
        )
    if nodes > 1:
        if per_node is None:
            raise UsageError(f"--nodes {nodes} needs --gpus-per-node (the GPUs on each node)")
        return nodes, per_node
    return 1, per_node or gpus or 1


def _sendable(text: str) -> bool:
    """Whether a variable of our environment can travel: text the wire takes (UTF-8; an
    undecodable byte is a surrogate here) and no NUL."""
    return "\0" not in text and not any("\ud800" <= c <= "\udfff" for c in text)
