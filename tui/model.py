"""What the cluster view knows: the latest state of every node and job, from the stream."""

from __future__ import annotations

import collections
import hashlib
from dataclasses import dataclass, field

from rich.markup import escape

from gshare.api import gshare_pb2 as pb
from gshare.render import printable

HISTORY = 24  # utilization samples kept per GPU for its sparkline
# colours that read on dark and light terminals; a user keeps theirs across runs
PALETTE = [
    "dodger_blue1",
    "orange1",
    "medium_spring_green",
    "hot_pink",
    "gold1",
    "medium_purple1",
    "turquoise2",
    "salmon1",
    "chartreuse3",
    "plum2",
    "steel_blue1",
    "light_goldenrod2",
]


def shown(text: str) -> str:
    """Text from the scheduler for a place that reads markup: control characters escaped
    (gshare.render.printable) and [brackets] taken literally."""
    return escape(printable(text))


def user_colour(user: str) -> str:
    return PALETTE[hashlib.blake2s(user.encode()).digest()[0] % len(PALETTE)]


def node_state(node: pb.Node) -> str:
    return pb.NodeState.Name(node.state).removeprefix("NODE_").lower()


@dataclass
class ClusterModel:
    nodes: dict[str, pb.Node] = field(default_factory=dict)
    jobs: dict[int, pb.Job] = field(default_factory=dict)
    synced: bool = False
    # (node, GPU index) -> recent utilization %, one per telemetry sample seen
    history: dict[tuple[str, int], collections.deque[float]] = field(default_factory=dict)
    _sampled: dict[tuple[str, int], float] = field(default_factory=dict)

    def apply(self, change: pb.ClusterChange) -> str:
        """Take one change; returns what it was about: 'job', 'node' or 'synced'."""
        kind = change.WhichOneof("change") or ""
        if kind == "job":
            self.jobs[change.job.job_id] = change.job
        elif kind == "node":
            self.nodes[change.node.name] = change.node
            self._remember(change.node)
        elif kind == "synced":
            self.synced = True
        return kind

    def _remember(self, node: pb.Node) -> None:
        for g in node.gpus:
            if not g.HasField("metrics"):
                continue
            key = (node.name, g.index)
            if g.metrics.time > self._sampled.get(key, 0.0):
                self._sampled[key] = g.metrics.time
                self.history.setdefault(key, collections.deque(maxlen=HISTORY)).append(
                    g.metrics.util_pct
                )

    def reset(self) -> None:
        # the history is kept: a reconnect resends the same samples, which are skipped
        self.nodes.clear()
        self.jobs.clear()
        self.synced = False

    def holder(self, node: str, gpu: int) -> pb.Job | None:
        """The live job holding GPU `gpu` of `node`, if any."""
        for job in self.jobs.values():
            live = job.state in (pb.STARTING, pb.RUNNING, pb.PREEMPTING)
            # a multi-node job holds GPUs on each of its parts' nodes
            if live and any(g.node == node and g.index == gpu for g in job.gpus):
                return job
        return None
