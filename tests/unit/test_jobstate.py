from __future__ import annotations

import pytest

from schedulerd.jobstate import IllegalTransition, JobState, check_transition

S = JobState
ALLOWED = [
    (S.PENDING, S.STARTING),
    (S.PENDING, S.HELD),
    (S.HELD, S.PENDING),
    (S.PENDING, S.CANCELLED),
    (S.STARTING, S.RUNNING),
    (S.STARTING, S.PENDING),
    (S.RUNNING, S.COMPLETED),
    (S.RUNNING, S.FAILED),
    (S.RUNNING, S.CANCELLED),
    (S.RUNNING, S.TIMEOUT),
    (S.RUNNING, S.PREEMPTING),
    (S.PREEMPTING, S.PENDING),
    (S.RUNNING, S.LOST),
    (S.LOST, S.PENDING),
    (S.LOST, S.FAILED),
    (S.PENDING, S.HANDED_OFF),
    (S.HANDED_OFF, S.RUNNING_REMOTE),
    (S.RUNNING_REMOTE, S.COMPLETED),
]
REFUSED = [
    (S.COMPLETED, S.PENDING),
    (S.CANCELLED, S.RUNNING),
    (S.PENDING, S.RUNNING),
    (S.HELD, S.STARTING),
    (S.RUNNING, S.HELD),
    (S.RUNNING, S.PENDING),
    (S.FAILED, S.COMPLETED),
    (S.RUNNING_REMOTE, S.RUNNING),
]


@pytest.mark.parametrize(("a", "b"), ALLOWED)
def test_allowed(a: JobState, b: JobState) -> None:
    check_transition(1, a, b)


@pytest.mark.parametrize(("a", "b"), REFUSED)
def test_refused(a: JobState, b: JobState) -> None:
    with pytest.raises(IllegalTransition, match=f"job 1 is {a}, it cannot become {b}"):
        check_transition(1, a, b)


def test_final_states_are_final() -> None:
    for state in JobState:
        if state.final:
            for target in JobState:
                with pytest.raises(IllegalTransition):
                    check_transition(1, state, target)
