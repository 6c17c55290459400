"""priority: a multifactor priority, like Slurm's priority/multifactor.

    score = w_qos * qos + w_fairshare * fair_share + w_age * age + w_size * size

each factor in [0, 1]: qos is the job's priority class (--priority, -max..max mapped onto
0..1), fair_share is the user's Fair Tree factor, age grows linearly to 1 over max_age,
size is the job's share of the cluster's GPUs. A higher priority class may preempt.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from policies.engine import Knobs, decide
from policies.fairtree import fair_tree
from policies.preemption import VICTIM_ORDERS
from policies.snapshot import ClusterSnapshot, PendingJob, Plan, RunningJob


class ParameterError(ValueError):
    pass


def check_params(policy: object) -> None:
    """Each parameter of a policy (a dataclass) has its default's type, and a number is
    finite (NaN would turn a comparison off silently: `age >= nan` is never true)."""
    for f in dataclasses.fields(policy):  # type: ignore[arg-type]
        value, default = getattr(policy, f.name), f.default
        if isinstance(default, bool):
            if not isinstance(value, bool):
                raise ParameterError(f"{f.name} must be true or false, not {value!r}")
        elif isinstance(default, int | float):
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ParameterError(f"{f.name} must be a number, not {value!r}")
            if not math.isfinite(value):
                raise ParameterError(f"{f.name} must be a finite number, not {value!r}")
        elif isinstance(default, str) and not isinstance(value, str):
            raise ParameterError(f"{f.name} must be a string, not {value!r}")


def check_victim_order(name: object) -> None:
    if name not in VICTIM_ORDERS:
        known = ", ".join(VICTIM_ORDERS)
        raise ParameterError(f"victim_order must be one of {known}, not {name!r}")


def priority_class_claim(job: PendingJob, victim: RunningJob) -> str | None:
    if job.priority > victim.priority:
        return f"job {job.job_id} has a higher priority class ({job.priority} > {victim.priority})"
    return None


@dataclass(frozen=True)
class Multifactor:
    name: str = "priority"
    weight_qos: float = 10000.0
    weight_fairshare: float = 5000.0
    weight_age: float = 1000.0
    weight_size: float = 100.0
    max_age_s: float = 7 * 86400.0
    max_priority: int = 1000
    backfill: bool = True
    preemption: bool = True
    min_runtime_s: float = 600.0
    explain: bool = True
    victim_order: str = "least_work_lost"  # or youngest, lowest_priority (preemption.py)

    def __post_init__(self) -> None:
        check_victim_order(self.victim_order)
        check_params(self)
        weights = (self.weight_qos, self.weight_fairshare, self.weight_age, self.weight_size)
        if min(weights) < 0:
            raise ParameterError("priority weights must not be negative")
        if self.max_age_s <= 0 or self.max_priority <= 0:
            raise ParameterError("max_age_s and max_priority must be positive")
        if self.min_runtime_s < 0:
            raise ParameterError("min_runtime_s must not be negative")

    def knobs(self) -> Knobs:
        return Knobs(
            self.backfill,
            self.preemption,
            self.min_runtime_s,
            explain=self.explain,
            victim_order=self.victim_order,
        )

    def scores(self, snapshot: ClusterSnapshot) -> dict[int, float]:
        users = {j.user for j in snapshot.pending} | {r.user for r in snapshot.running}
        factors = fair_tree(snapshot.accounts.with_users(users), snapshot.usage).factors
        total = sum(n.gpu_count for n in snapshot.nodes) or 1
        out = {}
        top = self.max_priority
        qos_w, fs_w = self.weight_qos / (2 * top), self.weight_fairshare
        age_w, size_w = self.weight_age / self.max_age_s, self.weight_size / total
        now = snapshot.now
        for j in snapshot.pending:
            out[j.job_id] = (
                qos_w * (max(-top, min(top, j.priority)) + top)
                + fs_w * factors.get(j.user, 0.0)
                + (
                    self.weight_age
                    if now - j.submit_time >= self.max_age_s
                    else age_w * max(0.0, now - j.submit_time)
                )
                + size_w * min(total, j.gpus)
            )
        return out

    def decide(self, snapshot: ClusterSnapshot) -> Plan:
        scores = self.scores(snapshot)
        ranked = sorted(
            snapshot.pending, key=lambda j: (-scores[j.job_id], j.submit_time, j.job_id)
        )
        return decide(
            snapshot,
            ranked,
            self.knobs(),
            priority_class_claim,
            lambda job: f"priority {scores[job.job_id]:.0f}",
        )
