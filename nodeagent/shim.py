"""The per-job supervisor: `python -m nodeagent.shim JOBDIR`.

The agent starts one shim per job, in a session of its own, so jobs outlive the agent. The
shim starts the job in a new session (its process group is the job), as the job's owner,
with its output going to the job's log file; waits for it; kills what is left of its
process group; and writes JOBDIR/exit.json atomically. An agent that restarts finds the
job through JOBDIR and learns how it ended from exit.json. Standard library only.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import time
from pathlib import Path

SHIELDED = (signal.SIGHUP, signal.SIGINT, signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)


def write_atomic(path: Path, data: dict[str, object]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(data, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _child(spec: dict[str, object], err_w: int) -> None:
    """In the forked child: become the job. Never returns."""
    try:
        for sig in SHIELDED:  # the shim ignores these; the job must not inherit that
            signal.signal(sig, signal.SIG_DFL)
        os.setsid()
        if spec.get("run_as"):
            os.setgroups([int(g) for g in spec["groups"]])  # type: ignore[attr-defined]
            os.setgid(int(spec["gid"]))  # type: ignore[call-overload]
            os.setuid(int(spec["uid"]))  # type: ignore[call-overload]
        out = os.open(str(spec["output"]), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(out, 1)
        os.dup2(out, 2)
        os.chdir(str(spec["cwd"]))
        argv = [str(a) for a in spec["argv"]]  # type: ignore[attr-defined]
        env = {str(k): str(v) for k, v in spec["env"].items()}  # type: ignore[attr-defined]
        os.execve(argv[0], argv, env)
    except OSError as exc:
        what = f"{exc.strerror}: {exc.filename}" if exc.filename else str(exc.strerror)
        os.write(err_w, what.encode())
    except BaseException as exc:
        os.write(err_w, repr(exc).encode())
    os._exit(127)


def run(job_dir: Path) -> int:
    spec = json.loads((job_dir / "launch.json").read_text())
    err_r, err_w = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:
        os.close(err_r)
        _child(spec, err_w)
    os.close(err_w)
    started = time.time()
    write_atomic(job_dir / "pid.json", {"pid": pid, "start_time": started})
    error = b""
    while chunk := os.read(err_r, 4096):
        error += chunk
    os.close(err_r)
    while True:
        try:
            _, status = os.waitpid(pid, 0)
            break
        except ChildProcessError:
            status = 0
            break
        except InterruptedError:
            continue
    with contextlib.suppress(OSError):  # what the job left in its process group goes with it
        os.killpg(pid, signal.SIGKILL)
    result: dict[str, object] = {
        "end_time": time.time(),
        "exit_code": 0,
        "exit_signal": 0,
        "error": "",
    }
    if error:
        result["error"] = error.decode(errors="replace")
        result["exit_code"] = 127
    elif os.WIFSIGNALED(status):
        result["exit_signal"] = os.WTERMSIG(status)
    else:
        result["exit_code"] = os.waitstatus_to_exitcode(status)
    write_atomic(job_dir / "exit.json", result)
    return 0


if __name__ == "__main__":
    for sig in SHIELDED:
        signal.signal(sig, signal.SIG_IGN)
    sys.exit(run(Path(sys.argv[1])))
