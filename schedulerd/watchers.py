"""The WatchCluster streams (`Watchers`): each is told of every job and node change, and
how many one caller, and all of them, may hold is bounded."""

from __future__ import annotations

import asyncio
import contextlib

from gshare.api import gshare_pb2 as pb
from schedulerd.convert import job_to_pb, node_to_pb
from schedulerd.daemon import Scheduler
from schedulerd.errors import Refused
from schedulerd.model import JobRecord, NodeRecord
from schedulerd.peercred import Caller

MAX_WATCHERS = 512  # WatchCluster streams at once: each holds a queue of up to 10,000
WATCHERS_PER_CALLER = 16  # streams one uid (or one reader certificate) may hold at once
WATCHERS_RESERVED = 32  # of MAX_WATCHERS, kept for root and admins


class Watchers:
    """The WatchCluster streams: each is told of every job and node change."""

    def __init__(
        self,
        scheduler: Scheduler,
        most: int = MAX_WATCHERS,
        per_caller: int = WATCHERS_PER_CALLER,
        reserved: int = WATCHERS_RESERVED,
    ) -> None:
        self.s = scheduler
        self.most = most
        self.per_caller = per_caller
        self.reserved = reserved
        self.queues: set[asyncio.Queue[pb.ClusterChange | None]] = set()
        self.holders: dict[asyncio.Queue[pb.ClusterChange | None], str] = {}
        self.held: dict[str, int] = {}  # streams per caller
        scheduler.state.job_listeners.append(self.job_changed)
        scheduler.state.node_listeners.append(self.node_changed)

    def join(
        self, caller: Caller | None = None, privileged: bool = False
    ) -> asyncio.Queue[pb.ClusterChange | None]:
        """A new stream's queue, so readers (anonymous ones over TCP too) cannot hold the
        scheduler's memory without bound: at most `per_caller` streams per uid (or reader
        certificate), and the last `reserved` of `most` kept for root and admins."""
        who = _watcher(caller)
        if len(self.queues) >= self.most:
            raise Refused(
                f"the scheduler serves {self.most} watch streams already; try again later",
                "RESOURCE_EXHAUSTED",
            )
        if not privileged:
            if self.held.get(who, 0) >= self.per_caller:
                raise Refused(
                    f"{who} holds {self.per_caller} watch streams already (the most one "
                    "caller may); close one first",
                    "RESOURCE_EXHAUSTED",
                )
            if len(self.queues) >= self.most - self.reserved:
                raise Refused(
                    f"the scheduler serves {len(self.queues)} watch streams already (the "
                    f"last {self.reserved} are kept for root and admins); try again later",
                    "RESOURCE_EXHAUSTED",
                )
        queue: asyncio.Queue[pb.ClusterChange | None] = asyncio.Queue(maxsize=10_000)
        self.queues.add(queue)
        self.holders[queue] = who
        self.held[who] = self.held.get(who, 0) + 1
        return queue

    def leave(self, queue: asyncio.Queue[pb.ClusterChange | None]) -> None:
        """A stream ended: its place (and its caller's) is free."""
        self.queues.discard(queue)
        who = self.holders.pop(queue, None)
        if who is not None:
            self.held[who] -= 1
            if not self.held[who]:
                del self.held[who]

    def job_changed(self, job: JobRecord) -> None:
        if self.queues:
            self._publish(pb.ClusterChange(job=job_to_pb(job)))

    def node_changed(self, node: NodeRecord) -> None:
        if self.queues:
            self._publish(pb.ClusterChange(node=node_pb(self.s, node)))

    def _publish(self, change: pb.ClusterChange) -> None:
        for q in list(self.queues):
            try:
                q.put_nowait(change)
            except asyncio.QueueFull:
                # a watcher that cannot keep up is dropped; it reconnects and resyncs
                self.queues.discard(q)
                with contextlib.suppress(asyncio.QueueFull):
                    q.get_nowait()
                q.put_nowait(None)

    def close(self) -> None:
        for q in list(self.queues):
            with contextlib.suppress(asyncio.QueueFull):
                q.put_nowait(None)


def _watcher(caller: Caller | None) -> str:
    """Whose a watch stream is: a uid (Unix socket, MUNGE), else a reader certificate."""
    if caller is None:
        return "anonymous"
    return f"uid {caller.uid}" if caller.uid >= 0 else caller.user


def node_pb(s: Scheduler, node: NodeRecord) -> pb.Node:
    return node_to_pb(node, s.state.busy_gpus(node.name), s.telemetry)
