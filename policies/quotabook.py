"""`QuotaBook`: the decision's scratch copy of who holds what. decide() asks it whether a
job may start (and on which types) and charges each start to it; claims ask it whether a
job may take GPUs back for its account's guarantee. The rules are policies/quota.py's.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

from policies.quota import ANY, NO_QUOTA, AccountQuota, Quotas, accepts, type_matches

if TYPE_CHECKING:
    from policies.placement import FreeMap
    from policies.snapshot import ClusterSnapshot, Part, PendingJob, RunningJob


def _key_text(key: str) -> str:
    return f"{key} " if key else ""


def _when(seconds: float) -> str:
    if seconds < 90:
        return f"in {max(1, math.ceil(seconds))}s"
    return f"in about {round(seconds / 60)} min"


class QuotaBook:
    """Who holds which GPUs, by account, user and GPU model, as decide() starts jobs."""

    def __init__(self, snapshot: ClusterSnapshot, quotas: Quotas) -> None:
        self.quotas = quotas
        self.now = snapshot.now
        users = {j.user for j in snapshot.pending} | {r.user for r in snapshot.running}
        tree = snapshot.accounts.with_users(users)
        self._teams: dict[str, str] = {}
        self._path_team: Callable[[str], str] = tree.team_of
        # derived figures (holds, borrowers), dropped whenever a holding changes
        self._cache: dict[tuple[str, str, str], object] = {}
        self.model: dict[tuple[str, int], str] = {
            (n.name, g.index): g.model for n in snapshot.nodes for g in n.gpus
        }
        self.capacity: Counter[str] = Counter(
            g.model for n in snapshot.nodes if n.schedulable for g in n.gpus
        )
        # Two ledgers. `held` is for guarantees and borrowing: GPUs being freed for a
        # waiting job count as that job's already, not the victim's (else its team could
        # reclaim again while they are being freed). `physical` (and `user_gpus`) is for
        # limits and user caps: a victim holds its GPUs until it stops, and a claimant's
        # promised GPUs count for its team from the promise on (both, while they yield).
        self.held: dict[str, Counter[str]] = {}  # account -> model -> GPUs
        self.physical: dict[str, Counter[str]] = {}  # account -> model -> GPUs
        self.user_gpus: Counter[str] = Counter()
        claimants = {j.job_id: j for j in snapshot.pending}
        freed: dict[int, list[Part]] = {}
        self.preemptible: list[RunningJob] = []  # who a reclaim could take, whoever asks
        self.min_runtime_s = 0.0  # the policy's: a younger job is not taken yet
        for r in snapshot.running:
            if r.yielding_to and r.yielding_to in claimants:  # (0: yielding to no one)
                freed.setdefault(r.yielding_to, []).extend(r.parts)
                self._charge(r.user, r.parts, guarantee=False)
            else:
                self._charge(r.user, r.parts)
                if r.preemptible and len(r.parts) == 1:
                    self.preemptible.append(r)
        # GPUs each account waits for within its guarantees: free GPUs are not lent while
        # an account has work waiting for them (what it waits for, by type key)
        self.wanting: dict[str, Counter[str]] = {}
        self._wants: dict[int, tuple[str, tuple[str, ...]]] = {}
        for job in snapshot.pending:
            team = self.team_of(job.user)
            keys = tuple(
                key
                for key in quotas.accounts.get(team, NO_QUOTA).guaranteed
                if key == ANY
                or not job.gpu_types
                or any(type_matches(key, t) for t in job.gpu_types)
            )
            if keys and job.job_id not in freed:
                self._wants[job.job_id] = (team, keys)
                wanting = self.wanting.setdefault(team, Counter())
                for key in keys:
                    wanting[key] += job.gpus
        for job_id, parts in freed.items():
            self.promise(claimants[job_id], parts)
        for user, gpus in snapshot.elsewhere.items():
            self.elsewhere(user, gpus)

    def elsewhere(self, user: str, gpus: int) -> None:
        """GPUs `user`'s jobs ask of Slurm: for limits and user caps, as GPUs of no known
        model (so only a limit over every type counts them), never for guarantees."""
        self._cache.clear()
        self.physical.setdefault(self.team_of(user), Counter())[""] += gpus
        self.user_gpus[user] += gpus

    # ------------------------------------------------------------ holdings

    def team_of(self, user: str) -> str:
        team = self._teams.get(user)
        if team is None:
            team = self._teams[user] = self._path_team(user)
        return team

    def _charge(self, user: str, parts: Iterable[Part], guarantee: bool = True) -> None:
        """Charge `user`'s account for `parts`: for limits always, for its guarantee too
        unless the GPUs are being freed for another job (`guarantee` False)."""
        self._cache.clear()
        team = self.team_of(user)
        books = [self.physical.setdefault(team, Counter())]
        if guarantee:
            books.append(self.held.setdefault(team, Counter()))
        for node, gpus in parts:
            for g in gpus:
                model = self.model.get((node, g), "")
                for held in books:
                    held[model] += 1
                self.user_gpus[user] += 1

    def charge(self, job: PendingJob, parts: Iterable[Part]) -> None:
        self._charge(job.user, parts)
        self._served(job)

    def _served(self, job: PendingJob) -> None:
        wants = self._wants.pop(job.job_id, None)
        if wants is not None:
            self._cache.clear()  # what is kept for others changes with what they wait for
            team, keys = wants
            for key in keys:
                self.wanting[team][key] -= job.gpus

    def promise(
        self, job: PendingJob, freed: Iterable[Part], victims: Iterable[RunningJob] = ()
    ) -> None:
        """`job` will run on GPUs freed by preempting `victims`: charge it for as many of
        them as it takes, and the victims' accounts no longer."""
        self._cache.clear()
        gone = {v.job_id for v in victims}
        if gone:
            self.preemptible = [r for r in self.preemptible if r.job_id not in gone]
        for victim in victims:  # they still hold them physically: `physical` keeps them
            held = self.held.setdefault(self.team_of(victim.user), Counter())
            for node, gpus in victim.parts:
                for g in gpus:
                    held[self.model.get((node, g), "")] -= 1
        taken = [(node, g) for node, gs in freed for g in gs][: job.gpus]
        self._charge(job.user, [(node, (g,)) for node, g in taken])
        self._served(job)

    def holds(self, team: str, key: str = ANY, physical: bool = False) -> int:
        """GPUs (of `key`) `team` holds: for its guarantee, or for its limits (`physical`:
        what its jobs still hold, and what is promised to it)."""
        memo = ("physical" if physical else "holds", team, key)
        got = self._cache.get(memo)
        if got is not None:
            return got  # type: ignore[return-value]
        held = (self.physical if physical else self.held).get(team)
        if not held:
            count = 0
        elif key == ANY:
            count = sum(held.values())
        else:
            count = sum(c for m, c in held.items() if type_matches(key, m))
        self._cache[memo] = count
        return count

    def quota(self, team: str) -> AccountQuota:
        return self.quotas.accounts.get(team, NO_QUOTA)

    def borrowing(self, team: str, key: str = ANY) -> int:
        """GPUs `team` holds beyond its guarantee (of `key` GPUs): what it has borrowed."""
        return max(0, self.holds(team, key) - self.quota(team).guaranteed.get(key, 0))

    def _models_for(self, job: PendingJob) -> set[str]:
        return {m for m in self.capacity if not job.gpu_types or accepts(job.gpu_types, m)}

    # ------------------------------------------------------------ admission

    def over_limits(self, job: PendingJob) -> str:
        """Why `job` would take its user over max_running_gpus or its account over its
        limit over every type ('' when it would not), wherever it runs."""
        cap = self.quotas.user_limits(job.user).max_running_gpus
        if cap and self.user_gpus[job.user] + job.gpus > cap:
            return (
                f"user {job.user} runs {self.user_gpus[job.user]} GPUs; {job.gpus} more would "
                f"be over their max_running_gpus of {cap}"
            )
        team = self.team_of(job.user)
        limit = self.quota(team).limit.get(ANY)
        holds = self.holds(team, physical=True)
        if limit is not None and holds + job.gpus > limit:
            return (
                f"team {team} holds {holds} GPUs; {job.gpus} more would be over "
                f"its limit of {limit}"
            )
        return ""

    def admit(self, job: PendingJob, free: FreeMap) -> tuple[PendingJob, str]:
        """The job as it may start (its GPU types narrowed to those its quotas leave room
        on), or why it may not start now."""
        over = self.over_limits(job)
        if over:
            return job, over
        team = self.team_of(job.user)
        quota = self.quota(team)
        models = self._models_for(job)
        shut: list[str] = []
        for key, cap_k in quota.limit.items():
            if key != ANY and self.holds(team, key, physical=True) + job.gpus > cap_k:
                models = {m for m in models if not type_matches(key, m)}
                shut.append(f"its {key} limit of {cap_k}")
        # a job that would borrow leaves free the GPUs others are guaranteed and wait for
        # (or, if they do not lend, do not use); a job within a typed guarantee of its team
        # borrows nothing on GPUs of that type, and keeps to them while others wait
        if self.holds(team) + job.gpus <= quota.guaranteed.get(ANY, 0):
            under: tuple[str, int, int] | None = (ANY, 0, 0)  # within its any-type one
        elif len(quota.guaranteed) > (ANY in quota.guaranteed):
            under = self._under(job)  # it has typed guarantees: within one of them?
        else:
            under = None
        kept = self._kept_for_others(team) if under is None or under[0] != ANY else {}
        if kept and under is not None:
            within = {m for m in models if type_matches(under[0], m)}
            if self._free_of(free, ANY, within) >= job.gpus:
                if within != models:
                    models = within
                    shut.append(f"its {under[0]} guarantee")
                kept = {}
        for key, count in kept.items():
            room = self._free_of(free, key, models)
            if room - job.gpus < count:
                if key == ANY:
                    return job, self._kept_reason(team, ANY)
                models = {m for m in models if not type_matches(key, m)}
                shut.append(self._kept_reason(team, key))
        if not shut:
            return job, ""
        if not models:
            return job, f"team {team} is at " + "; ".join(shut)
        return replace(job, gpu_types=frozenset(models)), ""

    def admit_after(self, job: PendingJob, free: FreeMap, victims: Sequence[RunningJob]) -> str:
        """Why `job` could not start once `victims` are gone ("" if it could): a claim is
        made only for a job its quotas would then let start."""
        parts = [p for v in victims for p in v.parts]
        saved = {t: Counter(c) for t, c in self.held.items()}
        saved_phys = {t: Counter(c) for t, c in self.physical.items()}
        saved_users = Counter(self.user_gpus)
        for v in victims:
            team = self.team_of(v.user)
            for node, gpus in v.parts:
                for g in gpus:
                    model = self.model.get((node, g), "")
                    self.held.setdefault(team, Counter())[model] -= 1
                    self.physical.setdefault(team, Counter())[model] -= 1
                    self.user_gpus[v.user] -= 1
        self._cache.clear()
        free.give(parts)
        try:
            return self.admit(job, free)[1]
        finally:
            free.take(parts)
            self.held, self.physical, self.user_gpus = saved, saved_phys, saved_users
            self._cache.clear()

    def _kept(self, other: str, key: str, count: int, lend: bool) -> int:
        idle = count - self.holds(other, key)
        if lend:  # lent, unless the account has work waiting for them
            wanting = self.wanting.get(other)
            idle = min(idle, wanting[key] if wanting else 0)
        return max(0, idle)

    def _kept_for_others(self, team: str) -> dict[str, int]:
        """Free GPUs kept for other accounts' guarantees, by type key."""
        memo = ("kept", team, "")
        got = self._cache.get(memo)
        if got is not None:
            return dict(got)  # type: ignore[call-overload, no-any-return]
        kept: dict[str, int] = {}
        for other, quota in self.quotas.accounts.items():
            if other == team:
                continue
            for key, count in quota.guaranteed.items():
                idle = self._kept(other, key, count, quota.lend)
                if idle > 0:
                    kept[key] = kept.get(key, 0) + idle
        self._cache[memo] = dict(kept)
        return kept

    def _kept_reason(self, team: str, key: str) -> str:
        owners = sorted(
            (q.lend, other)
            for other, q in self.quotas.accounts.items()
            if other != team and self._kept(other, key, q.guaranteed.get(key, 0), q.lend) > 0
        )
        lenders = [o for lend, o in owners if lend]
        keepers = [o for lend, o in owners if not lend]
        why = []
        if keepers:
            why.append(f"team {', '.join(keepers)}, which does not lend them")
        if lenders:
            why.append(f"team {', '.join(lenders)}, which has work waiting for them")
        return f"the free {_key_text(key)}GPUs are guaranteed to " + " and ".join(why)

    def _free_of(self, free: FreeMap, key: str, models: set[str]) -> int:
        if key == ANY and len(models) == len(self.capacity):
            return free.free_count
        return sum(
            1
            for node, gpus in free.free.items()
            for g in gpus
            if (m := self.model.get((node, g), "")) in models
            and (key == ANY or type_matches(key, m))
        )

    # ------------------------------------------------------------ reclaim

    def _under(self, job: PendingJob) -> tuple[str, int, int] | None:
        """The guarantee this job would run within: (key, held, guaranteed), or None."""
        team = self.team_of(job.user)
        for key, count in sorted(self.quota(team).guaranteed.items()):
            if (
                key != ANY
                and job.gpu_types
                and not any(type_matches(key, m) for m in self._models_for(job))
            ):
                continue
            held = self.holds(team, key)
            if held + job.gpus <= count:
                return key, held, count
        return None

    def _takeable(self, team: str, key: str) -> Iterator[RunningJob]:
        """`team`'s jobs a reclaim of `key` GPUs could take (some only once they are past
        the minimum runtime)."""
        return (
            r
            for r in self.preemptible
            if self.team_of(r.user) == team
            and (
                key == ANY
                or all(
                    type_matches(key, self.model.get((n, g), "")) for n, gs in r.parts for g in gs
                )
            )
            and self.leaves_guarantees(team, (r,), reclaim=True)
        )

    def _borrowing_teams(self, team: str, key: str) -> list[str]:
        return sorted(t for t in self.held if t != team and self.borrowing(t, key) > 0)

    def _borrowers(self, team: str, key: str) -> list[str]:
        """The teams borrowing `key` GPUs that a reclaim by `team` could take some from."""
        memo = ("borrowers", team, key)
        got = self._cache.get(memo)
        if got is None:
            got = self._cache[memo] = [
                t for t in self._borrowing_teams(team, key) if any(self._takeable(t, key))
            ]
        return got  # type: ignore[return-value]

    def _reclaim_wait(self, job: PendingJob, key: str, borrowers: Iterable[str]) -> float:
        """Seconds until a reclaim by `job` can take a borrower's job: its reclaim_after,
        and the borrowers' jobs' minimum runtime."""
        due = self.quotas.reclaim_after_s - (self.now - job.submit_time)
        ripe = min(
            (
                r.start_time + self.min_runtime_s - self.now
                for t in borrowers
                for r in self._takeable(t, key)
            ),
            default=0.0,
        )
        return max(due, ripe, 0.0)

    def could_reclaim(self, job: PendingJob) -> bool:
        if self.now - job.submit_time < self.quotas.reclaim_after_s:
            return False
        under = self._under(job)
        return under is not None and bool(self._borrowers(self.team_of(job.user), under[0]))

    def reclaim(self, job: PendingJob, victim: RunningJob) -> str | None:
        """Why `job` may take `victim`'s GPUs back for its team's guarantee, or None."""
        if self.now - job.submit_time < self.quotas.reclaim_after_s:
            return None
        mine, theirs = self.team_of(job.user), self.team_of(victim.user)
        under = self._under(job)
        if mine == theirs or under is None:
            return None
        key, held, count = under
        if key != ANY and not all(
            type_matches(key, self.model.get((n, g), "")) for n, gs in victim.parts for g in gs
        ):
            return None
        if self.borrowing(theirs, key) <= 0 or not self.leaves_guarantees(theirs, (victim,), True):
            return None
        return (
            f"team {mine} reclaims its guarantee ({held} of {count} {_key_text(key)}GPUs held) "
            f"from team {theirs}, which borrows {self.borrowing(theirs, key)}"
        )

    def leaves_guarantees(
        self, team: str, victims: Sequence[RunningJob], reclaim: bool = False
    ) -> bool:
        """Whether taking `victims` (jobs of `team`) leaves the team at or above every
        guarantee that covers their GPUs (the any-type one and each matching typed one).
        For a reclaim, whole jobs round: only the largest victim may cross the line."""
        for key, count in self.quota(team).guaranteed.items():
            sizes = [
                sum(
                    1
                    for node, gpus in v.parts
                    for g in gpus
                    if key == ANY or type_matches(key, self.model.get((node, g), ""))
                )
                for v in victims
            ]
            taken = sum(sizes)
            if not taken:
                continue
            left = self.holds(team, key) - taken
            if reclaim:
                left += max(sizes) - 1  # before the last victim it still borrowed
            if left < count:
                return False
        return True

    def protected(self, victim: RunningJob) -> bool:
        """Whether taking `victim` would leave its account under a guarantee: then no
        fair-share claim may take it."""
        team = self.team_of(victim.user)
        for key, count in self.quota(team).guaranteed.items():
            mine = sum(
                1
                for node, gpus in victim.parts
                for g in gpus
                if key == ANY or type_matches(key, self.model.get((node, g), ""))
            )
            if mine and self.holds(team, key) - mine < count:
                return True
        return False

    # ------------------------------------------------------------ words

    def context(self, job: PendingJob) -> str:
        """Where the job's team stands against its guarantee, for `gshare why`."""
        team = self.team_of(job.user)
        under = self._under(job)
        if under is not None:
            key, held, count = under
            text = f"team {team} is under its guarantee ({held} of {count} {_key_text(key)}GPUs)"
            borrowers = self._borrowers(team, key)
            if not borrowers:
                lenders = self._borrowing_teams(team, key)
                if lenders:
                    who = ", ".join(lenders)
                    return (
                        f"{text}; team {who} borrows, but no borrowing job can be preempted "
                        "(--no-preempt, or it would take the team below a guarantee)"
                    )
                return f"{text}; no team borrows, the GPUs are in use within guarantees"
            wait = self._reclaim_wait(job, key, borrowers)
            who = ", ".join(f"{b} ({self.borrowing(b, key)})" for b in borrowers)
            if wait > 0:
                return f"{text}; reclaims from borrowing teams {who} {_when(wait)}"
            return f"{text}; reclaiming from borrowing teams {who}"
        over = self.borrowing(team)
        if over > 0:
            return f"team {team} borrows {over} GPUs beyond its guarantee"
        return ""

    def with_context(
        self, context: Callable[[PendingJob], str] | None
    ) -> Callable[[PendingJob], str]:
        """The policy's words for a waiting job, then the team's standing on its guarantee."""

        def both(job: PendingJob) -> str:
            first = context(job) if context is not None else ""
            mine = self.context(job)
            return f"{first}; {mine}" if first and mine else first or mine

        return both

    def lenders(self, key: str = ANY) -> list[str]:
        return sorted(
            t
            for t, q in self.quotas.accounts.items()
            if q.lend and q.guaranteed.get(key, 0) > self.holds(t, key)
        )
