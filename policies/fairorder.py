"""The fairshare policy's order of pending jobs: max-min over the GPUs held now, team first,
then user, with Fair Tree (decayed usage) between equals, and an aging that brings every
job to the front in time.

Within a priority class, a job's place is where a progressive filling would start it: the
team holding the fewest GPUs for its share goes next, and inside it the user holding the
fewest for theirs; each job counts, for the jobs behind it, as if it already ran. So the
k-th job of a user ranks by

    user key = (GPUs the user holds + GPUs of the user's jobs before it) / the user's share

(its share among its account's members), and its team by the same sum over the team's
jobs in that order over the team's share of the root. Teams and users with nothing
running come first, ordered by their Fair Tree factor (least decayed usage for their
share first); a user's own jobs keep their submit order. The team key halves for every
`aging_s` a job has waited, so a job of a team far over its share still moves up in time
(a job waiting 3 aging periods counts as if its team held an eighth of what it does).

Why held GPUs and not usage alone: a user with heavy past usage but nothing running is not
made to wait behind light users' whole backlogs (the order the fair share index measures,
and the one that keeps average completion times short); decayed usage still decides
between those who hold the same, and the preemption rule works on the same held-GPU
arithmetic (fairshare.py).
"""

from __future__ import annotations

from collections.abc import Sequence

from policies.accounts import AccountTree
from policies.fairtree import FairTree
from policies.snapshot import PendingJob, RunningJob

INF = float("inf")


def fair_order(
    pending: Sequence[PendingJob],
    running: Sequence[RunningJob],
    tree: AccountTree,
    ft: FairTree,
    now: float,
    aging_s: float,
) -> list[PendingJob]:
    held_user: dict[str, int] = {}
    for r in running:
        held_user[r.user] = held_user.get(r.user, 0) + r.gpus
    # each user's share among the members of its account, its team's share of the root
    user_share: dict[str, float] = {}
    team_of: dict[str, str] = {}
    standings = ft.standings
    factors = ft.factors
    for user in {j.user for j in pending} | held_user.keys():
        path = tree.path_of(user)
        team_of[user] = path[0]
        s = standings.get((*path, user))
        user_share[user] = s.share if s is not None else 0.0
    held_team: dict[str, int] = {}
    for user, gpus in held_user.items():
        team = team_of[user]
        held_team[team] = held_team.get(team, 0) + gpus
    team_share = {
        team: (s.share if (s := standings.get((team,))) is not None else 0.0)
        for team in set(team_of.values())
    }

    # 1. each user's jobs in class and submit order, with the user key of each
    by_user: dict[str, list[PendingJob]] = {}
    for j in pending:
        by_user.setdefault(j.user, []).append(j)
    by_team: dict[str, list[tuple[int, float, float, float, int, PendingJob]]] = {}
    for user, jobs in by_user.items():
        jobs.sort(key=_class_then_submit)
        share = user_share[user]
        cum = float(held_user.get(user, 0))
        factor = -factors.get(user, 0.0)
        entries = by_team.setdefault(team_of[user], [])
        for j in jobs:
            key = cum / share if share > 0 else INF
            entries.append((-j.priority, key, factor, j.submit_time, j.job_id, j))
            cum += j.gpus
    # 2. each team's jobs interleaved by user key, then the team key over that order
    keyed: list[tuple[int, float, float, float, float, int, PendingJob]] = []
    for team, entries in by_team.items():
        entries.sort()  # job ids are unique: comparisons never reach the job
        share = team_share.get(team, 0.0)
        cum = float(held_team.get(team, 0))
        for prio, user_key, factor, submit, job_id, j in entries:
            team_key = cum / share if share > 0 else INF
            if team_key:
                team_key *= 0.5 ** (max(0.0, now - submit) / aging_s)
            keyed.append((prio, team_key, user_key, factor, submit, job_id, j))
            cum += j.gpus
    keyed.sort()
    return [k[-1] for k in keyed]


def _class_then_submit(j: PendingJob) -> tuple[int, float, int]:
    return (-j.priority, j.submit_time, j.job_id)
