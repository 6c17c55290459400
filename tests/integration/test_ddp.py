"""examples/ddp.sh on two nodes for real: torchrun with the c10d rendezvous on
MASTER_ADDR:MASTER_PORT, DistributedDataParallel over gloo on the CPU, two workers per
node; trained to the end, and preempted then resumed on another pair of nodes with final
weights bitwise equal to an uninterrupted run."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest

from gshare.api import gshare_pb2 as pb
from tests.cluster import Cluster, wait_until

torch = pytest.importorskip("torch")

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "ddp.sh"


def cluster_of(factory: Callable[..., Cluster], agents: int) -> Cluster:
    addresses = {f"node{i}": f"127.0.0.{i + 2}" for i in range(agents)}
    return factory(
        agents=agents,
        gpus_per_node=2,
        # (MASTER_PORTs below the kernel's ephemeral range, 32768-60999 here: a port in it
        # may be any connection's own port when torchrun comes to listen on it)
        config='[scheduler]\nkill_grace_s = 5\nmaster_ports = "28600-28699"\n',
        node_addresses=addresses,
    )


def submit(cluster: Cluster, workdir: Path, name: str, *args: str) -> int:
    return cluster.submit(
        str(EXAMPLE),
        "--nodes", "2", "--gpus-per-node", "2",
        "--env", "GLOO_SOCKET_IFNAME=lo",
        "--checkpoint-dir", str(workdir / name),
        "--output", f"{name}.%n.log",
        "--grace", "60s",
        "--", "--steps", "60", "--save-every", "20", *args,
        cwd=workdir,
    )  # fmt: skip


def logs_of(workdir: Path, name: str) -> str:
    return "".join((workdir / f"{name}.{rank}.log").read_text() for rank in (0, 1))


def weights(path: Path) -> dict[str, object]:
    state = torch.load(path, weights_only=True)
    assert isinstance(state, dict)
    return state


@pytest.mark.timeout(900)  # two trainings of torch over gloo on a 2-core machine
def test_ddp_across_two_nodes_and_resumed_elsewhere_bitwise(
    cluster_factory: Callable[..., Cluster], workdir: Path
) -> None:
    cluster = cluster_of(cluster_factory, agents=4)
    whole = submit(cluster, workdir, "whole")
    job = cluster.wait_state(whole, {"COMPLETED", "FAILED", "CANCELLED"}, timeout=300)
    logs = logs_of(workdir, "whole")  # global rank 0 is on whichever node the rendezvous says
    assert job.state == pb.COMPLETED, logs
    assert "done: 60 steps, 4 ranks" in logs
    # every rank once, two on each node, each part's workers seeing that part's GPUs
    seen = re.findall(r"^rank (\d)/4 local (\d) on (node\d) GPUs (\S*)$", logs, re.M)
    assert sorted(r for r, _, _, _ in seen) == ["0", "1", "2", "3"], seen
    assert sorted((n, lr) for _, lr, n, _ in seen) == [
        ("node0", "0"),
        ("node0", "1"),
        ("node1", "0"),
        ("node1", "1"),
    ]
    assert {g for _, _, _, g in seen} == {"0,1"}
    assert "part 1 of 2 on node1 (127.0.0.2:" in (workdir / "whole.1.log").read_text()

    # the same run, preempted after its first checkpoint, resumes on two other nodes
    cut = submit(cluster, workdir, "cut", "--step-sleep", "0.1")
    first = cluster.wait_state(cut, "RUNNING")
    assert sorted({g.node for g in first.gpus}) == ["node0", "node1"]
    wait_until(
        "the first checkpoint",
        lambda: (workdir / "cut" / "ckpt-000000000020.pt").exists(),
        timeout=300,
    )
    for node in ("node0", "node1"):
        assert cluster.gshare("drain", node, "--reason", "test: resume elsewhere").code == 0
    assert cluster.gshare("preempt", str(cut)).code == 0
    job = cluster.wait_state(cut, {"COMPLETED", "FAILED", "CANCELLED"}, timeout=300)
    log0 = logs_of(workdir, "cut")
    assert job.state == pb.COMPLETED, log0
    assert job.restarts == 1 and sorted({g.node for g in job.gpus}) == ["node2", "node3"]
    yielded = re.search(r"all 4 ranks yield at step (\d+)", log0)
    assert yielded is not None and 20 <= int(yielded.group(1)) < 60, log0
    assert f"resumed at step {yielded.group(1)} (restart 1)" in log0
    a, b = weights(workdir / "whole" / "final.pt"), weights(workdir / "cut" / "final.pt")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
