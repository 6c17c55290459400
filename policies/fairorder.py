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
share first); a user's own jobs keep their submit order. The team's ratio halves for every
`aging_s` a job has waited, so a job of a team far over its share still moves up in time
(a job waiting 3 aging periods counts as if its team held an eighth of what it does).

The aging is ranked in logarithms, so that a job's key does not move as the clock does:

    team key = log2(team's GPUs before it / team's share) + min(submit time, now) / aging_s

which orders jobs as ratio x 0.5 ** (waited / aging_s) does (that is the key plus the same
now / aging_s for every job). A team holding nothing has -inf for its first job, a team
without a share +inf for all of its. Only a job submitted after `now` has a key that moves
with the clock (it has not started waiting).

Why held GPUs and not usage alone: a user with heavy past usage but nothing running is not
made to wait behind light users' whole backlogs (the order the fair share index measures,
and the one that keeps average completion times short); decayed usage still decides
between those who hold the same, and the preemption rule works on the same held-GPU
arithmetic (fairshare.py).

The order changes little from one cycle to the next, so `OrderMemo` keeps it per team and
ranks again only the teams whose jobs, held GPUs, factors or shares changed; `fair_order`
is the same computation from nothing. Both require distinct job ids among the pending jobs
(ties end on the job id) and GPU counts that are not negative.
"""

from __future__ import annotations

import operator
from bisect import bisect_left, bisect_right, insort
from collections.abc import Iterable, Mapping, Sequence
from itertools import accumulate, chain, compress, count, groupby, islice, repeat
from math import log2
from typing import TypeVar

from policies.accounts import AccountTree
from policies.fairtree import FairTree
from policies.snapshot import PendingJob, RunningJob

INF = float("inf")
# Rebuild a user's list rather than insert or remove one job at a time past this many.
FEW = 8

# A job's rank inside its team: (-priority, user key, -factor, submit time, job id).
RankKey = tuple[int, float, float, float, int]
T = TypeVar("T")


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
    return OrderMemo().order(pending, held_user, tree, ft, now, aging_s)


class _User:
    """One user's pending jobs in submit order (class first), with what ranks them."""

    __slots__ = (
        "changed",
        "classes",
        "factor",
        "gpus",
        "held",
        "ids",
        "jobs",
        "keys",
        "latest",
        "name",
        "now",
        "path",
        "share",
        "submits",
        "team",
        "waits",
    )

    def __init__(self, name: str, path: tuple[str, ...]) -> None:
        self.name = name
        self.team = path[0]
        self.path = (*path, name)  # its key in the Fair Tree standings
        self.jobs: list[PendingJob] = []
        self.changed = True  # jobs came or went since it was last ranked
        self.gpus: list[int] = []
        self.classes: list[int] = []  # -priority, so that the highest class sorts first
        self.submits: list[float] = []
        self.ids: list[int] = []
        self.latest = -INF  # the latest submit time among its jobs
        self.held = -1.0  # what the keys were computed with (-1: never)
        self.share = -1.0
        self.factor = 0.0
        self.keys: list[RankKey] = []
        self.waits: list[float] = []  # min(submit time, now) / aging_s of each job
        self.now = -INF

    def remove(self, gone: list[PendingJob]) -> None:
        if len(gone) > FEW:
            ids = set(map(id, gone))
            self.jobs = [j for j in self.jobs if id(j) not in ids]
            return
        for job in gone:
            i = bisect_left(self.jobs, _submit_key(job), key=_submit_key)
            del self.jobs[i]  # job ids are distinct: the one at i is this job

    def add(self, came: list[PendingJob]) -> None:
        """`came` is in submit order (class first)."""
        if not self.jobs:
            self.jobs = came
        elif len(came) > FEW:
            self.jobs.extend(came)
            _in_submit_order(self.jobs)
        else:
            for job in came:
                insort(self.jobs, job, key=_submit_key)

    def refresh(self, held: float, share: float, factor: float, now: float, aging_s: float) -> bool:
        """Recompute what changed; whether anything did."""
        jobs_changed = self.changed
        if jobs_changed:
            jobs = self.jobs
            self.gpus = list(map(_GPUS, jobs))
            self.classes = list(map(operator.neg, map(_CLASS, jobs)))
            self.submits = list(map(_SUBMIT_TIME, jobs))
            self.ids = list(map(_JOB_ID, jobs))
            self.latest = max(self.submits)
            self.changed = False
        keys_changed = jobs_changed or held != self.held or share != self.share
        if keys_changed or factor != self.factor:
            self.held, self.share, self.factor = held, share, factor
            if share > 0:
                cum = list(accumulate(self.gpus, initial=held))
                cum.pop()
                user_keys: Iterable[float] = map((1 / share).__mul__, cum)
            else:
                user_keys = repeat(INF, len(self.jobs))
            self.keys = list(zip(self.classes, user_keys, repeat(-factor), self.submits, self.ids))
            keys_changed = True
        # a job's wait term moves with the clock only while it was submitted after now
        waits_valid = now == self.now or (self.latest <= self.now and self.latest <= now)
        if jobs_changed or not waits_valid:
            self.now = now
            submits: Iterable[float] = self.submits
            if self.latest > now:
                submits = map(min, submits, repeat(now))
            self.waits = list(map(operator.truediv, submits, repeat(aging_s)))
            keys_changed = True
        return keys_changed


class _Team:
    """A team's pending jobs ranked, each class apart: jobs, team keys and rank keys, in
    the order of (team key, rank key)."""

    __slots__ = ("classes", "held", "share", "users")

    def __init__(self) -> None:
        self.users: dict[str, _User] = {}
        self.held = -1.0
        self.share = -1.0
        self.classes: dict[int, tuple[list[PendingJob], list[float], list[RankKey]]] = {}

    def rank(self, held: float, share: float) -> None:
        self.held, self.share = held, share
        users = self.users.values()
        keys = list(chain.from_iterable(u.keys for u in users))
        # 1. the team's jobs as a progressive filling takes them: the users' runs merged
        by_rank = sorted(range(len(keys)), key=keys.__getitem__)
        jobs = _pick(chain.from_iterable(u.jobs for u in users), by_rank)
        gpus = _pick(chain.from_iterable(u.gpus for u in users), by_rank)
        waits = _pick(chain.from_iterable(u.waits for u in users), by_rank)
        keys = _pick(keys, by_rank)
        # 2. each job's team key from the GPUs the team holds and asked for before it
        n = len(keys)
        if share > 0:
            cum = list(accumulate(gpus, initial=held))
            cum.pop()
            zero = bisect_right(cum, 0)  # cum never falls: GPU counts are not negative
            team_keys = [-INF] * zero
            ratios = map(operator.truediv, islice(cum, zero, None), repeat(share))
            team_keys.extend(map(operator.add, map(log2, ratios), islice(waits, zero, None)))
        else:
            team_keys = [INF] * n
        # 3. each class by team key; a stable sort keeps the rank order between equals
        classes = list(map(_FIRST, keys))
        self.classes = {}
        lo = 0
        while lo < n:
            c = classes[lo]
            hi = bisect_right(classes, c, lo)
            order = sorted(range(lo, hi), key=team_keys.__getitem__)
            self.classes[c] = (
                list(map(jobs.__getitem__, order)),
                list(map(team_keys.__getitem__, order)),
                list(map(keys.__getitem__, order)),
            )
            lo = hi


class OrderMemo:
    """`fair_order` across scheduling cycles, for one policy instance.

    Between two cycles few jobs come or go and few users' held GPUs change, so it keeps
    each user's jobs and each team's ranked jobs, ranks again only the teams something
    changed for, and merges the teams by their keys. The result is the list `fair_order`
    returns for the same inputs. Jobs are told apart by identity: a changed job must be a
    new object (the snapshot's jobs are frozen)."""

    def __init__(self) -> None:
        self._tree: AccountTree | None = None
        self._aging_s = 0.0
        self._forget()

    def _forget(self) -> None:
        self._by_id: dict[int, PendingJob] = {}  # id(job) -> job
        self._by_job_id: dict[int, PendingJob] = {}
        self._users: dict[str, _User] = {}
        self._teams: dict[str, _Team] = {}
        self._team_of: dict[str, str] = {}
        self._stale: set[str] = set()  # teams a user left: rank them again
        self._result: list[PendingJob] = []

    def order(
        self,
        pending: Sequence[PendingJob],
        held_user: Mapping[str, int],
        tree: AccountTree,
        ft: FairTree,
        now: float,
        aging_s: float,
    ) -> list[PendingJob]:
        """The pending jobs in fair order; `held_user` is the GPUs each user holds now."""
        if (tree is not self._tree and tree != self._tree) or aging_s != self._aging_s:
            self._forget()
        self._tree, self._aging_s = tree, aging_s
        changed = self._take(pending, tree)
        dirty = self._refresh(held_user, ft, now, aging_s)
        if not (changed or dirty):
            return list(self._result)
        for team in dirty:
            self._teams[team].rank(*dirty[team])
        self._result = self._merge()
        return list(self._result)

    def _take(self, pending: Sequence[PendingJob], tree: AccountTree) -> bool:
        """Bring each user's jobs up to `pending`; whether a team came or went."""
        current = dict(zip(map(id, pending), pending, strict=True))
        if len(current) != len(pending):
            raise ValueError("a pending job is listed twice")
        old = self._by_id
        if len(old) == len(current) and old.keys() == current.keys():
            return False
        gone = [old[i] for i in old.keys() - current.keys()]
        came = [current[i] for i in current.keys() - old.keys()]
        self._by_id = current
        by_job_id = self._by_job_id
        for job in gone:
            del by_job_id[job.job_id]
        by_job_id.update(zip(map(_JOB_ID, came), came, strict=True))
        if len(by_job_id) != len(current):
            self._forget()  # leave nothing half updated
            raise ValueError("pending jobs must have distinct job ids")
        users, teams = self._users, self._teams
        teams_before = len(teams)
        gone.sort(key=_USER)
        for name, group in groupby(gone, _USER):
            user = users[name]
            user.remove(list(group))
            user.changed = True
            if not user.jobs:
                del users[name]
                team = teams[user.team]
                del team.users[name]
                if not team.users:
                    del teams[user.team]
                    teams_before = -1
                else:
                    self._stale.add(user.team)
        _in_submit_order(came)
        came.sort(key=_USER)  # stable: each user's jobs stay in submit order
        for name, group in groupby(came, _USER):
            known = users.get(name)
            if known is None:
                user = users[name] = _User(name, tree.path_of(name))
                teams.setdefault(user.team, _Team()).users[name] = user
                teams_before = -1
            else:
                user = known
            user.add(list(group))
            user.changed = True
        return teams_before != len(teams)

    def _refresh(
        self, held_user: Mapping[str, int], ft: FairTree, now: float, aging_s: float
    ) -> dict[str, tuple[float, float]]:
        """The teams to rank again, with the GPUs each holds and its share."""
        standings, factors = ft.standings, ft.factors
        touched, self._stale = self._stale, set()
        for user in self._users.values():
            s = standings.get(user.path)
            share = s.share if s is not None else 0.0
            held = held_user.get(user.name, 0)
            if user.refresh(held, share, factors.get(user.name, 0.0), now, aging_s):
                touched.add(user.team)
        held_team: dict[str, float] = {}
        team_of = self._team_of
        tree = self._tree
        assert tree is not None
        for name, gpus in held_user.items():
            team = team_of.get(name)
            if team is None:
                team = team_of[name] = tree.path_of(name)[0]
            held_team[team] = held_team.get(team, 0) + gpus
        dirty: dict[str, tuple[float, float]] = {}
        for name, ranked in self._teams.items():
            s = standings.get((name,))
            share = s.share if s is not None else 0.0
            team_held = held_team.get(name, 0.0)
            if name in touched or team_held != ranked.held or share != ranked.share:
                dirty[name] = (team_held, share)
        return dirty

    def _merge(self) -> list[PendingJob]:
        """All teams' jobs, class by class, by team key and then rank key."""
        out: list[PendingJob] = []
        teams = self._teams.values()
        for c in sorted({c for t in teams for c in t.classes}):
            parts = [t.classes[c] for t in teams if c in t.classes]
            jobs = list(chain.from_iterable(p[0] for p in parts))
            team_keys = list(chain.from_iterable(p[1] for p in parts))
            order = sorted(range(len(jobs)), key=team_keys.__getitem__)
            keys = list(map(team_keys.__getitem__, order))
            # equal team keys of different teams go by rank key (each team's already do)
            ties = list(compress(count(), map(operator.eq, keys, islice(keys, 1, None))))
            if ties:
                rank_keys = list(chain.from_iterable(p[2] for p in parts))
                _settle_ties(order, ties, rank_keys)
            out.extend(map(jobs.__getitem__, order))
        return out


def _settle_ties(order: list[int], ties: list[int], rank_keys: list[RankKey]) -> None:
    """Sort each run of equal team keys by rank key; `ties` are the positions in `order`
    whose team key equals the next one's."""
    start = ties[0]
    for a, b in zip(ties, [*ties[1:], -1], strict=True):
        if b != a + 1:  # the run of equals is order[start : a + 2]
            order[start : a + 2] = sorted(order[start : a + 2], key=rank_keys.__getitem__)
            start = b


def _pick(items: Iterable[T], order: list[int]) -> list[T]:
    return list(map(list(items).__getitem__, order))


def _in_submit_order(jobs: list[PendingJob]) -> None:
    """Class first, then submit time, then job id: one key at a time, no tuple per job."""
    jobs.sort(key=_JOB_ID)
    jobs.sort(key=_SUBMIT_TIME)
    jobs.sort(key=_CLASS, reverse=True)  # stable: submit order within a class


def _submit_key(job: PendingJob) -> tuple[int, float, int]:
    return -job.priority, job.submit_time, job.job_id


_JOB_ID = operator.attrgetter("job_id")
_SUBMIT_TIME = operator.attrgetter("submit_time")
_CLASS = operator.attrgetter("priority")
_USER = operator.attrgetter("user")
_GPUS = operator.attrgetter("gpus")
_FIRST = operator.itemgetter(0)
