"""The job side of preemption: save, resume, and yield when asked.

    from gshare.checkpoint import Checkpointer

    ckpt = Checkpointer()                      # GSHARE_CHECKPOINT_DIR, keeps the last 3
    state = ckpt.load_torch(model, optimizer, scheduler)   # None on a fresh start
    step = state["step"] if state else 0
    while step < total:
        train_one_step()
        step += 1
        if step % 100 == 0 or ckpt.should_stop():
            ckpt.save_torch(step, model, optimizer, scheduler)
            if ckpt.should_stop():
                ckpt.exit_yielded()            # exit code 75: "requeue me"

The contract, for any program: a preemptible job gets GSHARE_CHECKPOINT_DIR (a directory
that stays the same across its restarts), GSHARE_RESTART_COUNT, and GSHARE_PREEMPT_SIGNAL
(the signal that asks it to yield, SIGUSR1 unless `gsub --signal` says otherwise). When
that signal arrives it has its grace period (`gsub --grace`) to save and exit with code
75 (EX_TEMPFAIL); after the grace it gets SIGTERM, then SIGKILL. A job that yields is
queued again and restarted with the same checkpoint directory. To let the scheduler know
how much work a preemption would lose, append a line to GSHARE_CHECKPOINT_LOG after each
save: {"time": UNIX_TIME, "size": BYTES, "step": N}. This module does all of it.

In a job of several processes (torchrun's workers, a multi-node job's parts) the rank is
read from RANK (as torchrun sets it; 0 when absent): only rank 0 writes checkpoints and
tells the agent, every rank can load them (the directory is the same for all, on a file
system they share). A distributed job should agree on when to stop (e.g. an all-reduce
of `should_stop()`) so every rank yields at the same step, after rank 0 has saved.

torch is imported only by the torch helpers; `save`/`load` work for any picklable state.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import random
import re
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO, NoReturn

__all__ = ["YIELD_EXIT_CODE", "Checkpointer"]

YIELD_EXIT_CODE = 75  # EX_TEMPFAIL: "try again later"
_NAME = re.compile(r"^ckpt-(\d{12})\.pt$")


class Checkpointer:
    def __init__(
        self,
        directory: str | os.PathLike[str] | None = None,
        keep: int = 3,
        signals: tuple[int, ...] | None = None,
    ) -> None:
        env_dir = os.environ.get("GSHARE_CHECKPOINT_DIR")
        job = os.environ.get("GSHARE_JOB_ID", "local")
        self.directory = Path(directory or env_dir or f"checkpoints/job-{job}")
        self.directory.mkdir(parents=True, exist_ok=True)
        if keep < 1:
            raise ValueError("keep must be at least 1")
        self.keep = keep
        self.log_path = os.environ.get("GSHARE_CHECKPOINT_LOG")
        self.restart_count = int(os.environ.get("GSHARE_RESTART_COUNT", "0") or 0)
        self.rank = _rank(os.environ.get("RANK", "0"))
        self._stop = False
        if signals is None:
            signals = (int(os.environ.get("GSHARE_PREEMPT_SIGNAL", signal.SIGUSR1)),)
        for sig in signals:
            signal.signal(sig, self._on_signal)

    # ------------------------------------------------------------ yielding

    def _on_signal(self, signum: int, frame: object) -> None:
        self._stop = True

    def should_stop(self) -> bool:
        """True once the scheduler has asked this job to yield its GPUs."""
        return self._stop

    def exit_yielded(self) -> NoReturn:
        """Exit with the code that tells gshare "checkpointed, requeue me"."""
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(YIELD_EXIT_CODE)

    # ------------------------------------------------------------ files

    def checkpoints(self) -> list[Path]:
        """Complete checkpoints, oldest first (temp files of an interrupted save are not)."""
        found = [p for p in self.directory.iterdir() if _NAME.match(p.name)]
        return sorted(found, key=lambda p: int(_NAME.match(p.name).group(1)))  # type: ignore[union-attr]

    @property
    def writes(self) -> bool:
        """Whether this process writes checkpoints: rank 0 does, the others only load."""
        return self.rank == 0

    def save(self, step: int, state: Any) -> Path:
        """Write `state` atomically as the checkpoint of `step` (temp file, fsync, rename,
        fsync of the directory); keep the newest `keep`; tell the agent. On a rank other
        than 0, nothing is written: the path rank 0 writes is returned."""
        payload = {"step": step, "time": time.time(), "state": state}
        return self._write(step, lambda f: pickle.dump(payload, f, protocol=5))

    def _write(self, step: int, write: Callable[[BinaryIO], object]) -> Path:
        """Stream the checkpoint into a temp file (no copy in memory), then make it durable
        and give it its final name in one rename."""
        final = self.directory / f"ckpt-{step:012d}.pt"
        if not self.writes:
            return final
        tmp = self.directory / f".ckpt-{step:012d}.pt.tmp-{os.getpid()}"
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
            size = f.tell()
        os.replace(tmp, final)
        dir_fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        for old in self.checkpoints()[: -self.keep]:
            with contextlib.suppress(FileNotFoundError):
                old.unlink()
        self._tell(step, size)
        return final

    def _tell(self, step: int, size: int) -> None:
        if not self.log_path:
            return
        line = json.dumps({"time": time.time(), "size": size, "step": step}) + "\n"
        with contextlib.suppress(OSError), open(self.log_path, "a") as f:
            f.write(line)

    def load(self) -> tuple[int, Any] | None:
        """(step, state) of the newest checkpoint that loads; None if there is none."""
        for path in reversed(self.checkpoints()):
            try:
                with open(path, "rb") as f:
                    data = pickle.load(f)
                return int(data["step"]), data["state"]
            except (OSError, EOFError, pickle.UnpicklingError, KeyError, ValueError):
                continue  # torn or damaged: try the one before
        return None

    # ------------------------------------------------------------ torch

    def save_torch(
        self, step: int, model: Any, optimizer: Any = None, scheduler: Any = None, **extra: Any
    ) -> Path:
        """Model, optimizer and LR scheduler state, every RNG (Python, NumPy, torch CPU and
        CUDA), the step and `extra`, as one atomic checkpoint (rank 0's RNG, in a job of
        several ranks: only rank 0 writes)."""
        import torch

        if not self.writes:
            return self.directory / f"ckpt-{step:012d}.pt"

        state = {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict() if optimizer is not None else None,
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "rng": _rng_state(),
            "extra": extra,
        }
        payload = {"step": step, "time": time.time(), "state": state}
        return self._write(step, lambda f: torch.save(payload, f))

    def load_torch(
        self, model: Any, optimizer: Any = None, scheduler: Any = None, map_location: Any = None
    ) -> dict[str, Any] | None:
        """Restore the newest complete checkpoint into the given objects; returns
        {"step": N, "extra": {...}}, or None when there is nothing to resume."""
        import torch

        for path in reversed(self.checkpoints()):
            try:
                data = torch.load(path, map_location=map_location, weights_only=False)
                state = data["state"]
            except Exception:
                continue
            model.load_state_dict(state["model"])
            if optimizer is not None and state["optimizer"] is not None:
                optimizer.load_state_dict(state["optimizer"])
            if scheduler is not None and state["scheduler"] is not None:
                scheduler.load_state_dict(state["scheduler"])
            _set_rng_state(state["rng"])
            return {"step": int(data["step"]), "extra": state["extra"]}
        return None


def _rank(text: str) -> int:
    try:
        rank = int(text)
    except ValueError:
        raise ValueError(f"RANK must be a whole number, not {text!r}") from None
    if rank < 0:
        raise ValueError(f"RANK must not be negative, not {rank}")
    return rank


def _rng_state() -> dict[str, Any]:
    import torch

    state: dict[str, Any] = {"python": random.getstate(), "torch": torch.get_rng_state()}
    with contextlib.suppress(ImportError):
        import numpy

        state["numpy"] = numpy.random.get_state()
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    import torch

    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if "numpy" in state:
        with contextlib.suppress(ImportError):
            import numpy

            numpy.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
