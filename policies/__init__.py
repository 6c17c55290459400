"""Pure scheduling decisions: frozen snapshots in, a Plan out. No I/O, no event loop."""

from policies.placement import Placement, largest_free_block, place
from policies.registry import Policy, PolicyError, available_policies, make_policy
from policies.snapshot import (
    ClusterSnapshot,
    GpuSlot,
    NodeView,
    PendingJob,
    Plan,
    RunningJob,
    Start,
)

__all__ = [
    "ClusterSnapshot",
    "GpuSlot",
    "NodeView",
    "PendingJob",
    "Placement",
    "Plan",
    "Policy",
    "PolicyError",
    "RunningJob",
    "Start",
    "available_policies",
    "largest_free_block",
    "make_policy",
    "place",
]
