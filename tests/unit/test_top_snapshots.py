"""Pictures of `gshare top` drawn from fixed data (pytest-textual-snapshot): a change in
what the views show fails here. Update on purpose with: scripts/test --snapshot-update"""

from __future__ import annotations

from typing import Any

from gshare.api import gshare_pb2 as pb
from tui.app import GshareTop

NOW = 4_000_000_000.0  # samples from the future are never stale (stale ones are dimmed)
UTIL_A = [97, 95, 99, 93, 71, 64, 0, 0]  # gpu-a: alice's 4, bob's 2, two free


def gpu(i: int, util: float | None = None, t: float = NOW, **kw: Any) -> pb.Gpu:
    g = pb.Gpu(index=i, uuid=f"GPU-{i}", model="NVIDIA H100 80GB HBM3", memory_mb=81559, **kw)
    if util is not None:
        g.metrics.CopyFrom(
            pb.GpuMetrics(
                time=t,
                util_pct=util,
                mem_used_mb=int(util * 700),
                mem_total_mb=81559,
                temp_c=35 + util * 0.4,
                power_w=70 + util * 6,
            )
        )
    return g


def node_a(step: int) -> pb.ClusterChange:
    """gpu-a sampled `step` intervals ago: a rising, then steady, history."""
    scale = max(0.0, 1 - step / 8)
    return pb.ClusterChange(
        node=pb.Node(
            name="gpu-a",
            state=pb.NODE_UP,
            gpus=[gpu(i, u * scale, NOW - step * 5) for i, u in enumerate(UTIL_A)],
            busy_gpus=[0, 1, 2, 3, 4, 5],
            gpu_backend="nvml",
            telemetry="online",
            host_cpu_pct=38,
        )
    )


def job(
    job_id: int,
    name: str,
    user: str,
    state: int,
    gpus: int,
    node: str = "",
    held: tuple[int, ...] = (),
    reason: str = "",
    start: float = 0.0,
    end: float = 0.0,
) -> pb.ClusterChange:
    spec = pb.JobSpec(name=name, queue="default", gpus=gpus)
    refs = [pb.GpuRef(node=node, index=i, uuid=f"GPU-{i}") for i in held]
    return pb.ClusterChange(
        job=pb.Job(
            job_id=job_id,
            spec=spec,
            state=state,
            user=user,
            node=node,  # type: ignore[arg-type]
            gpus=refs,
            reason=reason,
            start_time=start,
            end_time=end,
        )
    )


CHANGES = [
    *[node_a(step) for step in range(12, -1, -1)],
    pb.ClusterChange(
        node=pb.Node(
            name="gpu-b",
            state=pb.NODE_DRAINING,
            gpus=[
                gpu(0, 2.0, warnings=["pid 77, not a gshare job's, is on GPU 0"]),
                gpu(1, 0.0, drained="double-bit ECC errors on GPU 1 (count 2) (telemetry)"),
                gpu(2, 0.0),
                gpu(3, 0.0),
            ],
            busy_gpus=[0],
            gpu_backend="nvml",
            reason="drained by admin",
            telemetry="online",
            host_cpu_pct=3,
        )
    ),
    job(11, "resnet", "alice", pb.RUNNING, 4, "gpu-a", (0, 1, 2, 3)),
    job(12, "bert", "bob", pb.RUNNING, 2, "gpu-a", (4, 5)),
    job(13, "sweep-3", "carol", pb.PREEMPTING, 1, "gpu-b", (0,), "preempted for job 14"),
    job(
        14,
        "llm-ft",
        "dave",
        pb.PENDING,
        8,
        reason="needs 8 GPUs on one node, largest free block is 2; team nlp at 0.4x its share",
    ),
    job(9, "eval", "alice", pb.COMPLETED, 1, "gpu-b", (), start=1000.0, end=1125.0),
    pb.ClusterChange(synced=True),
]
USAGE = pb.GetUsageResponse(
    half_life_s=7 * 86400,
    cluster_gpus=12,
    accounts=[
        pb.AccountUsage(
            path=["vision"],
            shares=60,
            share=0.6,
            usage=7.2e5,
            usage_share=0.8,
            level_fairshare=0.75,
            running_gpus=6,
        ),
        pb.AccountUsage(
            path=["vision", "alice"],
            is_user=True,
            shares=1,
            share=0.5,
            usage=5.4e5,
            usage_share=0.75,
            level_fairshare=0.67,
            fairshare_factor=0.5,
            running_gpus=4,
        ),
        pb.AccountUsage(
            path=["nlp"],
            shares=40,
            share=0.4,
            usage=1.8e5,
            usage_share=0.2,
            level_fairshare=2.0,
            running_gpus=1,
            pending_gpus=8,
        ),
        pb.AccountUsage(
            path=["nlp", "dave"],
            is_user=True,
            shares=1,
            share=1.0,
            usage=1.8e5,
            usage_share=1.0,
            level_fairshare=1.0,
            fairshare_factor=1.0,
            pending_gpus=8,
        ),
    ],
)


def loaded(top: GshareTop, *keys: str) -> Any:
    """A run_before for snap_compare: load the fixed data, then press `keys`."""

    async def run_before(pilot: Any) -> None:
        top.load(CHANGES, USAGE)
        await pilot.press(*keys)
        await pilot.pause()

    return run_before


def test_cluster_view(snap_compare: Any) -> None:
    top = GshareTop(live=False)
    assert snap_compare(top, terminal_size=(100, 30), run_before=loaded(top))


def test_jobs_view(snap_compare: Any) -> None:
    top = GshareTop(live=False)
    # the state filter round to "all": live, pending, running, ended, all
    assert snap_compare(
        top, terminal_size=(100, 30), run_before=loaded(top, "2", "f", "f", "f", "f")
    )


def test_fair_share_view_at_80_columns(snap_compare: Any) -> None:
    top = GshareTop(live=False)
    assert snap_compare(top, terminal_size=(80, 24), run_before=loaded(top, "3"))
