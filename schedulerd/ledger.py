"""The usage ledger: each user's decayed GPU-seconds, and the idle GPU-seconds they held.

The fair-share policies read `usage`; the ledger is brought up to a moment by `accrue`,
which decays what was there and charges the GPUs held since the last accrual. GPU time
used elsewhere (a job handed to Slurm) is put in with `charge`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from policies import decayed_usage
from schedulerd.jobstate import ON_NODE
from schedulerd.model import JobRecord


class Ledger:
    def __init__(self, half_life_s: float) -> None:
        self.half_life_s = half_life_s
        self.usage: dict[str, float] = {}  # decayed GPU-seconds per user
        self.idle_usage: dict[str, float] = {}  # decayed idle GPU-seconds per user
        self.at = 0.0  # the moment both are brought up to
        self._started = False  # the first accrual only sets the moment (it may be 0.0)
        self.saved_at = 0.0  # the moment of the last save to the store

    def load(self, usage: Mapping[str, float], idle: Mapping[str, float], at: float) -> None:
        self.usage, self.idle_usage, self.at = dict(usage), dict(idle), at
        self._started = at > 0

    def accrue(
        self, now: float, jobs: Iterable[JobRecord], idle: Mapping[str, float] | None = None
    ) -> None:
        """Decay the ledger to `now` and charge the GPUs `jobs` held since it was last
        brought up; `idle` adds idle GPU-seconds seen since (telemetry)."""
        if not self._started:
            self.at, self._started = now, True
            return
        held: dict[str, int] = {}
        for job in jobs:
            if job.state in ON_NODE:
                count = len(job.gpu_indexes)
                if job.parts:  # a job across nodes: the GPUs of every part
                    count = sum(len(p.gpus) for p in job.parts)
                held[job.user] = held.get(job.user, 0) + count
        dt = now - self.at
        if dt > 0:
            self.usage = decayed_usage(self.usage, held, dt, self.half_life_s)
            if self.idle_usage:
                self.idle_usage = decayed_usage(self.idle_usage, {}, dt, self.half_life_s)
            self.at = now
        for user, seconds in (idle or {}).items():
            self.idle_usage[user] = self.idle_usage.get(user, 0.0) + seconds

    def charge(self, user: str, gpu_seconds: float) -> None:
        """GPU time used elsewhere, charged now (call `accrue` first)."""
        self.usage[user] = self.usage.get(user, 0.0) + gpu_seconds
