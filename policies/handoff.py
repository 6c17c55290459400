"""Handing jobs to a Slurm cluster: which waiting jobs go, decided like any other part of
the plan, after local starts and preemptions.

A job may go when its hand-off rule allows it (`PendingJob.handoff_after_s`):
- 0 ("always"): as soon as Slurm answers, whether or not it has free GPUs (Slurm then
  queues it);
- T > 0 ("when idle capacity lacks"): once it has waited T here, and only while Slurm
  reports a node with enough free GPUs for it;
- < 0 ("never").
Jobs being started here, or claiming GPUs freed for them, stay.
"""

from __future__ import annotations

from dataclasses import replace
from types import MappingProxyType

from policies.quotabook import QuotaBook
from policies.snapshot import ClusterSnapshot, Handoff, Plan


def choose_handoffs(snapshot: ClusterSnapshot, plan: Plan, book: QuotaBook | None = None) -> Plan:
    """`book`: the cycle's quota ledger, with this cycle's starts charged; a job that
    would take its user or account over a limit is not handed off (its GPUs in Slurm
    count against limits as GPUs here do)."""
    slurm = snapshot.slurm
    if slurm is None:
        return plan
    staying = {s.job_id for s in plan.starts} | {p.for_job for p in plan.preemptions}
    pending = {j.job_id: j for j in snapshot.pending}
    free = sorted(slurm.free_gpus, reverse=True)  # per Slurm node; spent as jobs are sent
    handoffs: list[Handoff] = []
    reasons = dict(plan.reasons)
    for job_id in plan.order:
        job = pending.get(job_id)
        if job is None or job.job_id in staying or job.claimed_node or job.handoff_after_s < 0:
            continue
        waited = snapshot.now - job.submit_time
        if not slurm.reachable:
            if job.handoff_after_s == 0 or waited >= job.handoff_after_s:
                reasons[job_id] = f"{reasons.get(job_id, 'waiting')}; Slurm: {slurm.detail}"
            continue
        fits = next((i for i, n in enumerate(free) if n >= job.gpus), None)
        if job.handoff_after_s == 0:
            why = "handed to Slurm (--slurm always, or the queue hands every job off)"
        elif waited < job.handoff_after_s:
            continue
        elif fits is None:
            reasons[job_id] = (
                f"{reasons.get(job_id, 'waiting')}; Slurm has no node with {job.gpus} free GPUs"
            )
            continue
        else:
            why = (
                f"handed to Slurm: waited {waited / 60:.0f} min here while Slurm had "
                f"{free[fits]} free GPUs on one node"
            )
        over = book.over_limits(job) if book is not None else ""
        if over:
            reasons[job_id] = f"{reasons.get(job_id, 'waiting')}; not handed to Slurm: {over}"
            continue
        if book is not None:
            book.elsewhere(job.user, job.gpus)
        if fits is not None:
            free[fits] -= job.gpus
        handoffs.append(Handoff(job_id, why))
        reasons.pop(job_id, None)
    if not handoffs and reasons == plan.reasons:
        return plan
    return replace(plan, handoffs=tuple(handoffs), reasons=MappingProxyType(reasons))


def handoff_after(job_rule: str, queue_rule: str, queue_after_s: float, slurm: bool) -> float:
    """A job's hand-off rule as `PendingJob.handoff_after_s`: -1 never, 0 at once, T after
    waiting T seconds. `job_rule` is the job's own ("never", "always", or "" for its
    queue's), `queue_rule` its queue's ("never", "always", or "when_idle_capacity_lacks"
    after `queue_after_s`); without a Slurm cluster (`slurm` False), never."""
    if not slurm or job_rule == "never":
        return -1.0
    if job_rule == "always":
        return 0.0
    if queue_rule == "never":
        return -1.0
    return 0.0 if queue_rule == "always" else float(max(1.0, queue_after_s))
