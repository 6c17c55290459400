"""The node's lease: how long its jobs may run without word from the scheduler.

The agent renews it each time the scheduler answers; every job's supervisor (the shim)
reads it about once a second and stops its job when it has run out. It lives in the
supervisors, not only in the agent, so that it holds while the agent is frozen or dead.

The record is one root-owned file, STATE/lease.json: {"boot_id", "deadline", "term_s"}.
The deadline is on CLOCK_BOOTTIME: one clock for every process on the machine (the agent
writes it, each shim reads it), which no NTP or admin can step (wall time can), and which,
unlike CLOCK_MONOTONIC, keeps counting while the machine is suspended, as the scheduler's
clock does. It restarts at boot, so the record names its boot; one from another boot has
run out. Standard library only (the shim imports it).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path

BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


def now() -> float:
    return time.clock_gettime(time.CLOCK_BOOTTIME)


def boot_id() -> str:
    try:
        return BOOT_ID.read_text().strip()
    except OSError:
        return ""


def window(lease_s: float, heartbeat_s: float) -> float:
    """How long a renewal lasts: one heartbeat short of the scheduler's lease, so that the
    node stops its jobs before the scheduler could call it down and start them elsewhere;
    never so short that the next heartbeat's answer cannot come in time."""
    return max(lease_s - heartbeat_s, min(lease_s, 1.5 * heartbeat_s))


def term_wait(lease_s: float, heartbeat_s: float) -> float:
    """How long a stopped job has between SIGTERM and SIGKILL: the margin `window` kept
    (so the whole stop ends within the grace after the scheduler's own deadline), 1-10 s."""
    return min(max(lease_s - window(lease_s, heartbeat_s), 1.0), 10.0)


class Lease:
    """The agent's side: renew the record from what the scheduler said and when."""

    def __init__(self, path: Path, clock: Callable[[], float] = now) -> None:
        self.path = path
        self.clock = clock
        self.deadline = 0.0
        self._boot = boot_id()

    def renew(self, heard_at: float, lease_s: float, heartbeat_s: float) -> None:
        """The scheduler was alive at `heard_at` (this clock) and gave us `lease_s`."""
        deadline = heard_at + window(lease_s, heartbeat_s)
        if deadline <= self.deadline:
            return
        self.deadline = deadline
        record = {
            "boot_id": self._boot,
            "deadline": deadline,
            "term_s": term_wait(lease_s, heartbeat_s),
        }
        tmp = self.path.with_name(self.path.name + ".tmp")
        # no fsync: a record that a crash loses belonged to processes the crash took too
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        with open(fd, "w") as f:
            json.dump(record, f)
        os.replace(tmp, self.path)

    def left(self) -> float:
        return self.deadline - self.clock()


def read(path: Path) -> tuple[float, float]:
    """(deadline, term_s) from the record; a missing, unreadable or foreign one has run out:
    without it there is no evidence the scheduler was heard from."""
    try:
        data = json.loads(path.read_text())
        if data.get("boot_id") != boot_id():
            return 0.0, 1.0
        return float(data["deadline"]), float(data.get("term_s", 1.0))
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return 0.0, 1.0
