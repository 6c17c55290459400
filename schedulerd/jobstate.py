"""The job state machine (docs/architecture.md, "A job's life")."""

from __future__ import annotations

from enum import StrEnum


class JobState(StrEnum):
    PENDING = "PENDING"
    HELD = "HELD"
    STARTING = "STARTING"
    RUNNING = "RUNNING"
    PREEMPTING = "PREEMPTING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    TIMEOUT = "TIMEOUT"
    LOST = "LOST"
    HANDED_OFF = "HANDED_OFF"
    RUNNING_REMOTE = "RUNNING_REMOTE"

    @property
    def final(self) -> bool:
        return self in FINAL

    @property
    def on_node(self) -> bool:
        """Holds GPUs on a node."""
        return self in ON_NODE


S = JobState
FINAL = frozenset({S.COMPLETED, S.FAILED, S.CANCELLED, S.TIMEOUT})
ON_NODE = frozenset({S.STARTING, S.RUNNING, S.PREEMPTING})
_ENDS = FINAL

TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    S.PENDING: frozenset({S.STARTING, S.HELD, S.CANCELLED, S.HANDED_OFF, S.FAILED}),
    S.HELD: frozenset({S.PENDING, S.CANCELLED}),
    # STARTING -> PENDING: the node never confirmed the launch (it came back without the job).
    S.STARTING: frozenset({S.RUNNING, S.PENDING, S.LOST, S.PREEMPTING} | _ENDS),
    S.RUNNING: frozenset({S.PREEMPTING, S.LOST} | _ENDS),
    S.PREEMPTING: frozenset({S.PENDING, S.LOST} | _ENDS),
    S.LOST: frozenset({S.PENDING, S.FAILED, S.CANCELLED}),
    S.HANDED_OFF: frozenset({S.RUNNING_REMOTE, S.PENDING} | _ENDS),
    S.RUNNING_REMOTE: frozenset(_ENDS),
    S.COMPLETED: frozenset(),
    S.FAILED: frozenset(),
    S.CANCELLED: frozenset(),
    S.TIMEOUT: frozenset(),
}


class IllegalTransition(ValueError):
    def __init__(self, job_id: int, current: JobState, target: JobState) -> None:
        super().__init__(f"job {job_id} is {current}, it cannot become {target}")
        self.job_id = job_id
        self.current = current
        self.target = target


def check_transition(job_id: int, current: JobState, target: JobState) -> None:
    if target not in TRANSITIONS[current]:
        raise IllegalTransition(job_id, current, target)
