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
from bisect import bisect_left, bisect_right
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

# What orders the jobs of one class and one team key: (user key, -factor, submit time, job id).
RankKey = tuple[float, float, float, int]
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


class _Run:
    """A user's pending jobs of one priority class in submit order, with their GPUs, submit
    times, user keys and wait terms."""

    __slots__ = ("gpus", "jobs", "keys", "priority", "submits", "waits")

    def __init__(self, priority: int, jobs: list[PendingJob]) -> None:
        self.priority = priority
        self.keys: list[float] = []
        self.waits: list[float] = []  # min(submit time, now) / aging_s of each job
        self._reset(jobs)

    def _reset(self, jobs: list[PendingJob]) -> None:
        self.jobs = jobs
        self.gpus = list(map(_GPUS, jobs))
        self.submits = list(map(_SUBMIT_TIME, jobs))

    def remove(self, gone: list[PendingJob]) -> None:
        if len(gone) > FEW:
            ids = set(map(id, gone))
            self._reset([j for j in self.jobs if id(j) not in ids])
            return
        for job in gone:  # job ids are distinct: the one at i is this job
            i = bisect_left(self.jobs, _submit_key(job), key=_submit_key)
            del self.jobs[i], self.gpus[i], self.submits[i]

    def add(self, came: list[PendingJob]) -> None:
        """`came` is in submit order."""
        if len(came) > FEW:
            jobs = self.jobs + came
            _in_submit_order(jobs)
            self._reset(jobs)
            return
        for job in came:
            i = bisect_right(self.jobs, _submit_key(job), key=_submit_key)
            self.jobs.insert(i, job)
            self.gpus.insert(i, job.gpus)
            self.submits.insert(i, job.submit_time)


class _User:
    """One user's pending jobs, a run per class, with what ranks them."""

    __slots__ = (
        "changed",
        "factor",
        "held",
        "latest",
        "name",
        "now",
        "path",
        "runs",
        "share",
        "team",
    )

    def __init__(self, name: str, path: tuple[str, ...]) -> None:
        self.name = name
        self.team = path[0]
        self.path = (*path, name)  # its key in the Fair Tree standings
        self.changed = True  # jobs came or went since it was last ranked
        self.runs: dict[int, _Run] = {}  # by priority
        self.latest = -INF  # the latest submit time among its jobs
        self.held = -1.0  # what the keys were computed with (-1: never)
        self.share = -1.0
        self.factor = 0.0
        self.now = -INF

    def remove(self, gone: list[PendingJob]) -> None:
        gone.sort(key=_CLASS)  # stable: submit order within a class
        for p, group in groupby(gone, _CLASS):
            run = self.runs[p]
            run.remove(list(group))
            if not run.jobs:
                del self.runs[p]

    def add(self, came: list[PendingJob]) -> None:
        """`came` is in submit order (class first)."""
        for p, group in groupby(came, _CLASS):
            run = self.runs.get(p)
            if run is None:
                self.runs[p] = _Run(p, list(group))
            else:
                run.add(list(group))

    def refresh(self, held: float, share: float, factor: float, now: float, aging_s: float) -> bool:
        """Recompute what changed; whether anything that ranks its jobs did."""
        jobs_changed = self.changed
        runs = sorted(self.runs.values(), key=_PRIORITY, reverse=True)
        if jobs_changed:
            self.latest = max(run.submits[-1] for run in runs)  # each in submit order
            self.changed = False
        changed = jobs_changed or factor != self.factor
        self.factor = factor
        if jobs_changed or held != self.held or share != self.share:
            self.held, self.share = held, share
            before = held  # the GPUs before each job, on across classes
            for run in runs:
                cum = list(accumulate(run.gpus, initial=before))
                before = cum.pop()
                run.keys = list(map((1 / share).__mul__, cum)) if share > 0 else [INF] * len(cum)
            changed = True
        # a job's wait term moves with the clock only while it was submitted after now
        waits_valid = now == self.now or (self.latest <= self.now and self.latest <= now)
        if jobs_changed or not waits_valid:
            self.now = now
            for run in runs:
                submits: Iterable[float] = run.submits
                if self.latest > now:
                    submits = map(min, submits, repeat(now))
                run.waits = list(map(operator.truediv, submits, repeat(aging_s)))
            changed = True
        return changed


class _Ranked:
    """A team's jobs of one class in rank order (user key, -factor, submit time, job id),
    with their team keys; the user keys stay in the order they were sorted from."""

    __slots__ = ("by_rank", "jobs", "keys", "team_keys")

    def __init__(
        self, jobs: list[PendingJob], team_keys: list[float], keys: list[float], by_rank: list[int]
    ) -> None:
        self.jobs = jobs
        self.team_keys = team_keys
        self.keys = keys
        self.by_rank = by_rank

    def user_keys(self) -> list[float]:
        return list(map(self.keys.__getitem__, self.by_rank))


class _Team:
    """A team's pending jobs ranked, each class apart."""

    __slots__ = ("classes", "held", "share", "users")

    def __init__(self) -> None:
        self.users: dict[str, _User] = {}
        self.held = -1.0
        self.share = -1.0
        self.classes: dict[int, _Ranked] = {}  # by priority

    def rank(self, held: float, share: float) -> None:
        self.held, self.share = held, share
        # The users' runs, the highest factor first and those of equal factors merged in
        # submit order: then a stable sort by user key alone gives the rank order.
        users = sorted(self.users.values(), key=_FACTOR, reverse=True)
        groups = [list(group) for _, group in groupby(users, _FACTOR)]
        priorities = sorted({p for u in users for p in u.runs}, reverse=True)
        self.classes = {}
        before: float = held  # the team's GPUs before each job, on across classes
        for p in priorities:
            runs: list[_Run] = []
            for group in groups:
                alike = [u.runs[p] for u in group if p in u.runs]
                runs.extend(alike if len(alike) < 2 else [_in_submit_order_merged(alike)])
            # 1. the team's jobs as a progressive filling takes them: the runs merged
            keys = list(chain.from_iterable(run.keys for run in runs))
            by_rank = sorted(_indexes(len(keys)), key=keys.__getitem__)
            jobs = _pick(chain.from_iterable(run.jobs for run in runs), by_rank)
            gpus = _pick(chain.from_iterable(run.gpus for run in runs), by_rank)
            waits = _pick(chain.from_iterable(run.waits for run in runs), by_rank)
            # 2. each job's team key from the GPUs the team holds and asked for before it
            cum = list(accumulate(gpus, initial=before))
            before = cum.pop()
            if share > 0:
                zero = bisect_right(cum, 0)  # cum never falls: GPU counts are not negative
                team_keys = [-INF] * zero
                ratios = map(operator.truediv, islice(cum, zero, None), repeat(share))
                team_keys.extend(map(operator.add, map(log2, ratios), islice(waits, zero, None)))
            else:
                team_keys = [INF] * len(cum)
            self.classes[p] = _Ranked(jobs, team_keys, keys, by_rank)


class OrderMemo:
    """`fair_order` across scheduling cycles, for one policy instance.

    Between two cycles few jobs come or go, so it keeps each user's jobs (in runs of one
    class) and each team's ranked jobs, ranks again only the teams something changed for,
    and merges the teams by their keys. The result is the list `fair_order` returns for
    the same inputs. Jobs are told apart by identity: a changed job must be a new object
    (the snapshot's jobs are frozen).

    Each job costs a few passes of C-level work (`map`, `accumulate`, sorts of floats on
    `list.__getitem__`) and no object of its own: a team's rank order is one sort of the
    users' sorted runs by user key, the class's order one sort by team key, and only runs
    of equal team keys from different teams build tuples."""

    def __init__(self) -> None:
        self._tree: AccountTree | None = None
        self._aging_s = 0.0
        self._forget()

    def _forget(self) -> None:
        self._pending: Sequence[PendingJob] = ()  # as last given
        self._known: set[int] = set()  # their id()s
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
        old, known = self._pending, self._known
        changes = _changes_in_place(old, pending, known) or _changes(old, pending, known)
        gone = list(map(old.__getitem__, changes[0]))
        came = list(map(pending.__getitem__, changes[1]))
        if len(set(map(id, came))) != len(came):
            raise ValueError("a pending job is listed twice")
        self._pending = tuple(pending)
        if not (gone or came):
            return False
        known.difference_update(map(id, gone))
        known.update(map(id, came))
        by_job_id = self._by_job_id
        for job in gone:
            del by_job_id[job.job_id]
        by_job_id.update(zip(map(_JOB_ID, came), came, strict=True))
        if len(by_job_id) != len(known):
            self._forget()  # leave nothing half updated
            raise ValueError("pending jobs must have distinct job ids")
        users, teams = self._users, self._teams
        teams_before = len(teams)
        gone.sort(key=_USER)
        for name, group in groupby(gone, _USER):
            user = users[name]
            user.remove(list(group))
            user.changed = True
            if not user.runs:
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
            existing = users.get(name)
            if existing is None:
                user = users[name] = _User(name, tree.path_of(name))
                teams.setdefault(user.team, _Team()).users[name] = user
                teams_before = -1
            else:
                user = existing
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
        for p in sorted({p for t in teams for p in t.classes}, reverse=True):
            parts = [t.classes[p] for t in teams if p in t.classes]
            jobs = list(chain.from_iterable(part.jobs for part in parts))
            team_keys = list(chain.from_iterable(part.team_keys for part in parts))
            # stable: each team's jobs of equal team keys stay in rank order
            order = sorted(_indexes(len(jobs)), key=team_keys.__getitem__)
            keys = list(map(team_keys.__getitem__, order))
            ties = list(compress(count(), map(operator.eq, keys, islice(keys, 1, None))))
            if ties:
                self._settle_ties(order, ties, jobs, parts)
            out.extend(map(jobs.__getitem__, order))
        return out

    def _settle_ties(
        self, order: list[int], ties: list[int], jobs: list[PendingJob], parts: list[_Ranked]
    ) -> None:
        """Sort by rank key each run of equal team keys that holds jobs of more than one
        team; `ties` are the positions in `order` whose team key equals the next one's."""
        ends = list(accumulate(len(part.jobs) for part in parts))  # of each team in `jobs`
        user_keys = list(chain.from_iterable(part.user_keys() for part in parts))
        users = self._users

        def rank_key(i: int) -> RankKey:
            job = jobs[i]
            return user_keys[i], -users[job.user].factor, job.submit_time, job.job_id

        start = ties[0]
        for a, b in zip(ties, [*ties[1:], -1], strict=True):
            if b != a + 1:  # the run of equals is order[start : a + 2], in `jobs` order
                run = order[start : a + 2]
                if bisect_right(ends, run[0]) != bisect_right(ends, run[-1]):
                    order[start : a + 2] = sorted(run, key=rank_key)
                start = b


def _in_submit_order_merged(runs: list[_Run]) -> _Run:
    """One run of several users' runs of a class, in submit order (then job id)."""
    jobs = list(chain.from_iterable(run.jobs for run in runs))
    ids = list(map(_JOB_ID, jobs))
    submits = list(chain.from_iterable(run.submits for run in runs))
    order = sorted(range(len(jobs)), key=ids.__getitem__)
    order.sort(key=submits.__getitem__)  # stable: by job id within a submit time
    merged = _Run(runs[0].priority, _pick(jobs, order))
    merged.keys = _pick(chain.from_iterable(run.keys for run in runs), order)
    merged.waits = _pick(chain.from_iterable(run.waits for run in runs), order)
    return merged


def _changes_in_place(
    old: Sequence[PendingJob], new: Sequence[PendingJob], known: set[int]
) -> tuple[list[int], list[int]] | None:
    """Where `new` is `old` with jobs taken out and others put in, the rest in the same order
    (as each cycle's snapshot lists them): the places of the jobs gone in `old` and of those
    come in `new`, found by walking both. None where a job was moved or is listed twice, or
    where so many changed that sets are the quicker way."""
    gone_at: list[int] = []
    came_at: list[int] = []
    limit = 64 + len(new) // 32
    i = j = 0
    while True:
        run = _same_run(new, i, old, j)
        i += run
        j += run
        if i == len(new) or j == len(old):
            break
        if len(gone_at) + len(came_at) > limit:
            return None
        if id(new[i]) in known:  # it comes later in `old` (or not at all: then None below)
            gone_at.append(j)
            j += 1
        else:
            came_at.append(i)
            i += 1
    if any(map(known.__contains__, map(id, islice(new, i, None)))):
        return None
    came_at.extend(range(i, len(new)))
    gone_at.extend(range(j, len(old)))
    return gone_at, came_at


def _changes(
    old: Sequence[PendingJob], new: Sequence[PendingJob], known: set[int]
) -> tuple[list[int], list[int]]:
    """As `_changes_in_place`, for any `new`."""
    ids = list(map(id, new))
    current = set(ids)
    if len(current) != len(ids):
        raise ValueError("a pending job is listed twice")
    came_at = list(compress(count(), map(operator.not_, map(known.__contains__, ids))))
    gone_at = list(compress(count(), map(operator.not_, map(current.__contains__, map(id, old)))))
    return gone_at, came_at


def _same_run(a: Sequence[T], i: int, b: Sequence[T], j: int) -> int:
    """How many of a[i:] are b[j:], object for object: compared in slices that double while
    they match, the way a long run costs a few passes at C speed."""
    n = min(len(a) - i, len(b) - j)
    run, step = 0, 8
    while run < n:
        step = min(step, n - run)
        x, y = a[i + run : i + run + step], b[j + run : j + run + step]
        if not all(map(operator.is_, x, y)):
            return run + next(compress(count(), map(operator.is_not, x, y)))
        run += step
        step *= 2
    return run


_INDEXES: list[int] = []


def _indexes(n: int) -> list[int]:
    """list(range(n)), from ints made once: a sort of 45k indexes then allocates none."""
    if len(_INDEXES) < n:
        _INDEXES.extend(range(len(_INDEXES), n))
    return _INDEXES[:n]


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
_FACTOR = operator.attrgetter("factor")
_PRIORITY = operator.attrgetter("priority")
