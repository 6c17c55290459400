"""Pure scheduling decisions: frozen snapshots in, a Plan out. No I/O, no event loop."""

from policies.accounts import Account, AccountTree, decay_factor, decayed_usage
from policies.engine import Knobs
from policies.fairtree import FairTree, Standing, fair_tree
from policies.handoff import handoff_after
from policies.placement import FreeMap, Placement, place
from policies.reclaim import idle_claimant
from policies.registry import Policy, PolicyError, available_policies, make_policy
from policies.snapshot import (
    ClusterSnapshot,
    GpuSlot,
    Handoff,
    NodeView,
    Part,
    PendingJob,
    Plan,
    Preemption,
    RunningJob,
    SlurmCapacity,
    Start,
)

__all__ = [
    "Account",
    "AccountTree",
    "ClusterSnapshot",
    "FairTree",
    "FreeMap",
    "GpuSlot",
    "Handoff",
    "Knobs",
    "NodeView",
    "Part",
    "PendingJob",
    "Placement",
    "Plan",
    "Policy",
    "PolicyError",
    "Preemption",
    "RunningJob",
    "SlurmCapacity",
    "Standing",
    "Start",
    "available_policies",
    "decay_factor",
    "decayed_usage",
    "fair_tree",
    "handoff_after",
    "idle_claimant",
    "make_policy",
    "place",
]
