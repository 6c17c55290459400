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

import operator
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

    # 1. all jobs in class and submit order (C-level keys: this runs on every pending job)
    ordered = sorted(pending, key=_JOB_ID)  # one key at a time: no tuple per job
    ordered.sort(key=_SUBMIT_TIME)
    ordered.sort(key=_CLASS, reverse=True)  # stable: submit order within a class
    n = len(ordered)
    # 2. the user key of each job: GPUs the user holds and asked for before it, per share
    inverse = {u: 1 / s if s > 0 else INF for u, s in user_share.items()}
    cum_user = {u: float(held_user.get(u, 0)) for u in user_share}
    negative_factor = {u: -factors.get(u, 0.0) for u in user_share}
    users = [j.user for j in ordered]
    sizes = [j.gpus for j in ordered]
    user_key = [0.0] * n
    by_team: dict[str, list[int]] = {t: [] for t in team_share}
    for i, user in enumerate(users):
        cum = cum_user[user]
        cum_user[user] = cum + sizes[i]
        inv = inverse[user]
        user_key[i] = cum * inv if inv < INF else INF
        by_team[team_of[user]].append(i)
    factor = [negative_factor[u] for u in users]
    # how much a job's team key is discounted for its wait
    decay = [
        0.5 ** ((now - j.submit_time) / aging_s) if j.submit_time < now else 1.0 for j in ordered
    ]
    classes = [-j.priority for j in ordered]
    several_classes = classes[0] != classes[-1] if n else False
    # Lexicographic orders below are stable sorts of job indexes from the least significant
    # key up, each on a list of floats: far cheaper than sorting tuples.
    # 3. each team's jobs interleaved by (class, user key, factor), and the team key of each
    team_key = [0.0] * n
    for team, indexes in by_team.items():
        indexes.sort(key=factor.__getitem__)
        indexes.sort(key=user_key.__getitem__)
        if several_classes:
            indexes.sort(key=classes.__getitem__)
        share = team_share[team]
        if share <= 0:
            for i in indexes:
                team_key[i] = INF
            continue
        cum = float(held_team.get(team, 0))
        for i in indexes:
            team_key[i] = cum / share * decay[i]
            cum += sizes[i]
    # 4. all jobs by (class, team key, user key, factor, submit order)
    final = list(range(n))
    final.sort(key=factor.__getitem__)
    final.sort(key=user_key.__getitem__)
    final.sort(key=team_key.__getitem__)
    if several_classes:
        final.sort(key=classes.__getitem__)
    return [ordered[i] for i in final]


_JOB_ID = operator.attrgetter("job_id")
_SUBMIT_TIME = operator.attrgetter("submit_time")
_CLASS = operator.attrgetter("priority")
