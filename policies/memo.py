"""What a policy keeps from one scheduling cycle to the next, so that a cycle costs about
what changed rather than everything there is.

The daemon's snapshot keeps the same frozen view object for a job or node that did not
change (schedulerd/cycle.py), so what changed between two snapshots is found by object
identity, at C speed: the views new in this snapshot and those of the last one that are
gone. Each index here is patched with that difference. A fresh memo, or one handed an
unrelated snapshot, finds everything new and builds its indexes whole; either way the
indexes answer exactly what the same question asked of the snapshot alone would
(tests/unit/test_memo.py runs long sequences of cycles both ways and compares the plans).
"""

from __future__ import annotations

import bisect
import operator
from collections.abc import Callable, Hashable, Iterable, Sequence
from typing import Generic, TypeVar

from policies.fairorder import OrderMemo
from policies.placement import FreeBase
from policies.preemption import MANY, VictimPool, VictimRank
from policies.snapshot import ClusterSnapshot, NodeView, RunningJob

T = TypeVar("T")
_JOB_ID = operator.attrgetter("job_id")
_NAME = operator.attrgetter("name")
INF = float("inf")


class Changes(Generic[T]):
    """The objects of a sequence, kept by identity from one call to the next (kept alive,
    so that no new object can take a kept one's id)."""

    def __init__(self) -> None:
        self._live: dict[int, T] = {}

    def live(self) -> Iterable[T]:
        return self._live.values()

    def update(self, items: Sequence[T]) -> tuple[list[T], list[T]]:
        """(new, gone) since the last call, each in no particular order."""
        live = dict(zip(map(id, items), items, strict=True))
        old, self._live = self._live, live
        if not old:
            return list(live.values()), []
        gone = [old[k] for k in old.keys() - live.keys()]
        new = [live[k] for k in live.keys() - old.keys()]
        return new, gone


class RunningIndex:
    """The running jobs of the last snapshot, indexed for one cycle's questions."""

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self._changes: Changes[RunningJob] = Changes()
        self.held_user: dict[str, int] = {}  # GPUs each user's running jobs hold
        self._jobs_of: dict[str, int] = {}  # how many running jobs each user has
        # every part of every running job, (expected end, GPUs, node, job id), sorted
        self.by_end: list[tuple[float, int, str, int]] = []
        self.on_node: dict[str, list[tuple[float, int]]] = {}  # node -> (end, GPUs) of parts
        self.yielding: dict[int, dict[int, RunningJob]] = {}  # preemptor -> id(view) -> victim
        # preemptible jobs not yielding, by priority class: their start times, sorted
        self.class_starts: dict[int, list[float]] = {}
        self._pool: VictimPool | None = None
        self._pool_key: tuple[object, ...] = ()

    def update(self, running: Sequence[RunningJob]) -> None:
        try:
            self._update(running)
        except (KeyError, ValueError):  # views that cannot be told apart: start over
            self._reset()
            self._update(running)

    def _update(self, running: Sequence[RunningJob]) -> None:
        new, gone = self._changes.update(running)
        pool = self._pool
        for r in gone:
            self._drop(r)
            if pool is not None:
                pool.drop(r)
        many = len(new) > MANY  # (then appended, and each list sorted once)
        for r in new:
            self._add(r, sort=not many)
        if many:
            self.by_end.sort()
            for starts in self.class_starts.values():
                starts.sort()
        if pool is not None:
            pool.add_all(new)

    def _add(self, r: RunningJob, sort: bool) -> None:
        self.held_user[r.user] = self.held_user.get(r.user, 0) + r.gpus
        self._jobs_of[r.user] = self._jobs_of.get(r.user, 0) + 1
        end = r.expected_end()
        for where, held in r.parts:
            part = (end, len(held), where, r.job_id)
            if sort:
                bisect.insort(self.by_end, part)
            else:
                self.by_end.append(part)
            self.on_node.setdefault(where, []).append((end, len(held)))
        if r.yielding_to:
            self.yielding.setdefault(r.yielding_to, {})[id(r)] = r
        elif r.preemptible:
            starts = self.class_starts.setdefault(r.priority, [])
            if sort:
                bisect.insort(starts, r.start_time)
            else:
                starts.append(r.start_time)

    def _drop(self, r: RunningJob) -> None:
        if self._jobs_of[r.user] == 1:  # (a user whose jobs hold no GPU is still there)
            del self._jobs_of[r.user], self.held_user[r.user]
        else:
            self._jobs_of[r.user] -= 1
            self.held_user[r.user] -= r.gpus
        end = r.expected_end()
        for where, held in r.parts:
            _remove_sorted(self.by_end, (end, len(held), where, r.job_id))
            here = self.on_node[where]
            here.remove((end, len(held)))
            if not here:
                del self.on_node[where]
        if r.yielding_to:
            victims = self.yielding[r.yielding_to]
            del victims[id(r)]
            if not victims:
                del self.yielding[r.yielding_to]
        elif r.preemptible:
            starts = self.class_starts[r.priority]
            _remove_sorted(starts, r.start_time)
            if not starts:
                del self.class_starts[r.priority]

    def yielding_to(self) -> dict[int, list[RunningJob]]:
        """Preemptor -> the jobs yielding their GPUs to it, by job id."""
        return {k: sorted(v.values(), key=_JOB_ID) for k, v in self.yielding.items()}

    def lowest_eligible_class(self, now: float, min_runtime_s: float) -> int | None:
        """The lowest priority class with a job that may be preempted now; None: none may."""
        return min(
            (c for c, starts in self.class_starts.items() if now - starts[0] >= min_runtime_s),
            default=None,
        )

    def pool(
        self,
        key: tuple[object, ...],
        victim_key: Callable[[RunningJob], Hashable] | None,
        rank: VictimRank,
    ) -> VictimPool:
        """Every preemptible job not yielding (of any age: the search checks it), grouped by
        `victim_key` and in `rank` order, kept across cycles while `key` (what the two
        functions depend on) is the same."""
        if self._pool is None or self._pool_key != key:
            pool = VictimPool(victim_key, rank)
            pool.add_all(list(self._changes.live()))
            self._pool, self._pool_key = pool, key
        return self._pool


def _remove_sorted(items: list[T], item: T) -> None:
    at = bisect.bisect_left(items, item)  # type: ignore[call-overload]
    if at == len(items) or items[at] != item:
        raise KeyError(item)
    del items[at]


class NodeIndex:
    """The schedulable nodes' free GPUs of the last snapshot (placement.FreeBase)."""

    def __init__(self) -> None:
        self._changes: Changes[NodeView] = Changes()
        self.free = FreeBase()
        self._twice = False  # the last snapshot named a node twice

    def update(self, nodes: Sequence[NodeView]) -> None:
        new, gone = self._changes.update(nodes)
        names = set(map(_NAME, nodes))
        if self._twice or len(names) != len(nodes):
            # a name twice (in this snapshot or the last): the views that count are the
            # last of each name, in snapshot order; read them all again
            self._twice = len(names) != len(nodes)
            self.free = FreeBase()
            new, gone = list(nodes), []
        for node in gone:
            self.free.drop(node)
        for node in new:
            self.free.add(node)


class CycleMemo:
    """One policy's memory between cycles: call update() with each cycle's snapshot."""

    def __init__(self) -> None:
        self.running = RunningIndex()
        self.nodes = NodeIndex()
        self.order = OrderMemo()  # the fair order's (fairorder.py), kept by fairshare

    def update(self, snapshot: ClusterSnapshot) -> None:
        self.running.update(snapshot.running)
        self.nodes.update(snapshot.nodes)
