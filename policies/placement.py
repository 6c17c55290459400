"""Gang placement: all of a job's GPUs at once or none.

A job that fits on one node goes on one node: the node left with the fewest free GPUs
(best fit, against fragmentation), ties by name; on it, the GPUs with the most NVLink
links among them. A job larger than any node takes whole idle nodes, the fewest that
hold it. A job asked as N parts of G GPUs takes G on each of N nodes, best fit.

`FreeMap` is the decision's scratch copy of free GPUs, indexed by how many each node has
free, so asking "does a 4-GPU job fit anywhere" costs a few lookups, not a scan.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable
from dataclasses import dataclass

from policies.quota import accepts
from policies.snapshot import GpuSlot, NodeView, Part, PendingJob


@dataclass(frozen=True, slots=True)
class Placement:
    parts: tuple[Part, ...]

    @property
    def node(self) -> str:
        return self.parts[0][0]

    @property
    def gpu_indexes(self) -> tuple[int, ...]:
        return self.parts[0][1]


def choose_gpus(
    free: Iterable[int], peers: dict[int, frozenset[int]], count: int
) -> tuple[int, ...]:
    """The `count` GPUs of `free` with the most NVLink links among them (greedy from each
    seed; ties to the lowest indexes, so the choice is deterministic)."""
    ordered = sorted(free)
    if count <= 1 or count >= len(ordered) or not any(peers.values()):
        return tuple(ordered[:count])
    everyone = frozenset(ordered)
    if all(everyone - {g} <= peers.get(g, frozenset()) for g in ordered):
        return tuple(ordered[:count])  # all linked to all (one NVSwitch): any is as good
    best: tuple[int, tuple[int, ...]] | None = None
    for seed in ordered:
        chosen = [seed]
        links = 0
        while len(chosen) < count:
            gain, neg = max(
                (sum(1 for c in chosen if g in peers.get(c, ())), -g)
                for g in ordered
                if g not in chosen
            )
            chosen.append(-neg)
            links += gain
        candidate = tuple(sorted(chosen))
        if best is None or links > best[0] or (links == best[0] and candidate < best[1]):
            best = (links, candidate)
    assert best is not None
    return best[1]


# NVLink peers by GPU index, per tuple of GPU slots: the snapshot keeps a node's tuple while
# its GPUs are unchanged, so each is read once, not once a cycle for every node
_LINKS: dict[int, tuple[tuple[GpuSlot, ...], dict[int, frozenset[int]]]] = {}


def links_of(gpus: tuple[GpuSlot, ...]) -> dict[int, frozenset[int]]:
    kept = _LINKS.get(id(gpus))
    if kept is not None and kept[0] is gpus:
        return kept[1]
    links = {g.index: g.nvlink_peers for g in gpus}
    if len(_LINKS) >= 100_000:
        _LINKS.clear()
    _LINKS[id(gpus)] = (gpus, links)
    return links


class FreeMap:
    def __init__(self, nodes: Iterable[NodeView], base: FreeBase | None = None) -> None:
        """`base`: the same nodes, kept from earlier cycles (policies/memo.py); this map
        then starts as a copy of it (its sets are never changed in place, only replaced)."""
        if base is not None:
            self.nodes = base.nodes
            self.free = dict(base.free)
            self.cpus = dict(base.cpus)
            self.mem = dict(base.mem)
            self.widest = base.widest()
            self.total = base.total
            self.free_count = base.free_count
            self.buckets = [list(base.buckets.get(k, ())) for k in range(self.widest + 1)]
        else:
            self.nodes = {n.name: n for n in nodes if n.schedulable}
            self.free = {name: n.free_gpus for name, n in self.nodes.items()}
            self.cpus = {name: n.free_cpus for name, n in self.nodes.items()}
            self.mem = {name: n.free_mem_mb for name, n in self.nodes.items()}
            counts = [len(n.gpus) for n in self.nodes.values()]
            self.widest = max(counts, default=0)
            self.total = sum(counts)
            self.free_count = sum(map(len, self.free.values()))
            self.buckets = [[] for _ in range(self.widest + 1)]
            for name in sorted(self.nodes):
                self.buckets[len(self.free[name])].append(name)
        self._largest = -1  # cached largest_block(); -1 once a change makes it stale
        self._typed: dict[frozenset[str], frozenset[tuple[str, int]]] = {}

    def links(self, name: str) -> dict[int, frozenset[int]]:
        """Node `name`'s NVLink peers of each GPU."""
        return links_of(self.nodes[name].gpus)

    # ------------------------------------------------------------ GPU types

    def of_types(self, types: frozenset[str]) -> frozenset[tuple[str, int]]:
        """The (node, GPU index) of every GPU whose model `types` accepts."""
        kept = self._typed.get(types)
        if kept is None:
            kept = self._typed[types] = frozenset(
                (name, g.index)
                for name, n in self.nodes.items()
                for g in n.gpus
                if accepts(types, g.model)
            )
        return kept

    def all_of_types(self, name: str, types: frozenset[str]) -> bool:
        """Whether every GPU of node `name` is of one of `types`."""
        ok = self.of_types(types)
        return all((name, g.index) in ok for g in self.nodes[name].gpus)

    def typed_total(self, types: frozenset[str]) -> int:
        return len(self.of_types(types))

    # ------------------------------------------------------------ queries

    def largest_block(self) -> int:
        if self._largest < 0:
            self._largest = next((k for k in range(self.widest, 0, -1) if self.buckets[k]), 0)
        return self._largest

    def idle_nodes(self) -> list[str]:
        return [n for n in self.nodes if len(self.free[n]) == self.nodes[n].gpu_count]

    def _host_ok(self, name: str, job: PendingJob) -> bool:
        node = self.nodes[name]
        if job.cpus and node.cpus and job.cpus > self.cpus[name]:
            return False
        return not (job.mem_mb and node.mem_mb and job.mem_mb > self.mem[name])

    def find(self, job: PendingJob, exclude: frozenset[str] = frozenset()) -> Placement | None:
        if job.nodes > 1:
            return self._find_parts(job, exclude)
        if job.gpu_types:
            return self._find_typed(job, exclude)
        if job.gpus <= self.widest:
            for k in range(job.gpus, self.widest + 1):
                for name in self.buckets[k]:
                    if name not in exclude and self._host_ok(name, job):
                        gpus = choose_gpus(self.free[name], self.links(name), job.gpus)
                        return Placement(((name, gpus),))
            return None
        return self._whole_nodes(job, (n for n in self.idle_nodes() if n not in exclude))

    def _whole_nodes(self, job: PendingJob, idle: Iterable[str]) -> Placement | None:
        """A job wider than a node on whole idle nodes: the largest first, ties by name."""
        chosen, total = [], 0
        for name in sorted(idle, key=lambda n: (-self.nodes[n].gpu_count, n)):
            if total >= job.gpus:
                break
            chosen.append(name)
            total += self.nodes[name].gpu_count
        if total < job.gpus:
            return None
        return Placement(tuple((n, tuple(sorted(self.free[n]))) for n in sorted(chosen)))

    def _find_typed(self, job: PendingJob, exclude: frozenset[str]) -> Placement | None:
        ok = self.of_types(job.gpu_types)
        if job.gpus <= self.widest:
            for k in range(job.gpus, self.widest + 1):
                for name in self.buckets[k]:
                    if name in exclude or not self._host_ok(name, job):
                        continue
                    usable = [g for g in self.free[name] if (name, g) in ok]
                    if len(usable) >= job.gpus:
                        gpus = choose_gpus(usable, self.links(name), job.gpus)
                        return Placement(((name, gpus),))
            return None
        return self._whole_nodes(
            job,
            (
                n
                for n in self.idle_nodes()
                if n not in exclude and self.all_of_types(n, job.gpu_types)
            ),
        )

    def _find_parts(self, job: PendingJob, exclude: frozenset[str]) -> Placement | None:
        """`nodes` parts of `gpus_per_node` GPUs, each on its own node: the nodes left with
        the fewest free GPUs first (best fit), ties by name; NVLink-close GPUs on each."""
        each = job.gpus_per_node
        chosen: list[str] = []
        for k in range(each, self.widest + 1):
            for name in self.buckets[k]:
                if name in exclude or not self._host_ok(name, job):
                    continue
                if job.gpu_types and not self.all_of_types(name, job.gpu_types):
                    continue  # each part on GPUs of the job's types
                chosen.append(name)
                if len(chosen) == job.nodes:
                    return Placement(
                        tuple(
                            (n, choose_gpus(self.free[n], self.links(n), each))
                            for n in sorted(chosen)
                        )
                    )
        return None

    # ------------------------------------------------------------ changes

    def _move(self, name: str, before: int) -> None:
        self._largest = -1
        bucket = self.buckets[before]
        del bucket[bisect.bisect_left(bucket, name)]
        bisect.insort(self.buckets[len(self.free[name])], name)

    def take(self, parts: Iterable[Part], job: PendingJob | None = None) -> None:
        for name, gpus in parts:
            before = len(self.free[name])
            self.free[name] = self.free[name] - set(gpus)  # a new set: a base's stays as it is
            self.free_count -= before - len(self.free[name])
            if job is not None:
                self.cpus[name] -= job.cpus
                self.mem[name] -= job.mem_mb
            self._move(name, before)

    def give(self, parts: Iterable[Part]) -> None:
        for name, gpus in parts:
            if name not in self.nodes:
                continue
            before = len(self.free[name])
            # (only GPUs the node still lists: a job may hold one its agent no longer reports)
            here = {g.index for g in self.nodes[name].gpus}
            self.free[name] = self.free[name] | (set(gpus) & here)
            self.free_count += len(self.free[name]) - before
            self._move(name, before)


class FreeBase:
    """The schedulable nodes' free GPUs, CPUs and memory as a snapshot has them, kept from
    one cycle to the next and patched node by node (policies/memo.py); FreeMap copies it."""

    def __init__(self) -> None:
        self.nodes: dict[str, NodeView] = {}
        self.free: dict[str, frozenset[int]] = {}
        self.cpus: dict[str, int] = {}
        self.mem: dict[str, int] = {}
        self.buckets: dict[int, list[str]] = {}  # free GPUs -> node names, sorted
        self.sizes: dict[int, int] = {}  # GPUs a node has -> how many nodes have that many
        self.total = 0
        self.free_count = 0

    def widest(self) -> int:
        return max(self.sizes, default=0)

    def add(self, node: NodeView) -> None:
        if not node.schedulable:
            return
        name = node.name
        if name in self.nodes:  # (named twice in one snapshot: the last one counts)
            self.drop(self.nodes[name])
        self.nodes[name] = node
        self.free[name] = node.free_gpus
        self.cpus[name] = node.free_cpus
        self.mem[name] = node.free_mem_mb
        bisect.insort(self.buckets.setdefault(len(node.free_gpus), []), name)
        size = len(node.gpus)
        self.sizes[size] = self.sizes.get(size, 0) + 1
        self.total += size
        self.free_count += len(node.free_gpus)

    def drop(self, node: NodeView) -> None:
        name = node.name
        if self.nodes.get(name) is not node:
            return  # not schedulable: never added
        del self.nodes[name], self.free[name], self.cpus[name], self.mem[name]
        bucket = self.buckets[len(node.free_gpus)]
        del bucket[bisect.bisect_left(bucket, name)]
        if not bucket:
            del self.buckets[len(node.free_gpus)]
        size = len(node.gpus)
        self.sizes[size] -= 1
        if not self.sizes[size]:
            del self.sizes[size]
        self.total -= size
        self.free_count -= len(node.free_gpus)


def place(job: PendingJob, nodes: Iterable[NodeView]) -> Placement | None:
    """Where `job` would go on `nodes` as they are (a one-off; decide() keeps a FreeMap)."""
    return FreeMap(nodes).find(job)
