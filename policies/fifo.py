"""fifo: submit order alone. Backfill still fills the gaps; nothing is preempted."""

from __future__ import annotations

from dataclasses import dataclass

from policies.engine import Knobs, decide
from policies.snapshot import ClusterSnapshot, Plan


@dataclass(frozen=True)
class Fifo:
    name: str = "fifo"
    backfill: bool = True
    explain: bool = True

    def decide(self, snapshot: ClusterSnapshot) -> Plan:
        ranked = sorted(snapshot.pending, key=lambda j: (j.submit_time, j.job_id))
        return decide(
            snapshot, ranked, Knobs(backfill=self.backfill, preemption=False, explain=self.explain)
        )
