from __future__ import annotations

import pytest

from policies import place
from tests.builders import job, node

FULL_MESH_4 = {i: {j for j in range(4) if j != i} for i in range(4)}
# two NVLink pairs, (0,1) and (2,3), no link between the pairs
PAIRS = {0: {1}, 1: {0}, 2: {3}, 3: {2}}


@pytest.mark.parametrize(
    ("nodes", "want", "expect"),
    [
        ([node("a").gpus(4)], 2, ("a", (0, 1))),
        # best fit: the node that is left with the fewest free GPUs
        ([node("a").gpus(8), node("b").gpus(4).busy(0, 1)], 2, ("b", (2, 3))),
        ([node("a").gpus(4).busy(0), node("b").gpus(4)], 3, ("a", (1, 2, 3))),
        # a gang never spans nodes
        ([node("a").gpus(4).busy(0, 1), node("b").gpus(4).busy(0, 1)], 3, None),
        ([node("a").gpus(2)], 4, None),
        # a node that is not schedulable is skipped
        ([node("a").gpus(4).down(), node("b").gpus(4).busy(0)], 2, ("b", (1, 2))),
        # NVLink: a linked pair beats the lowest indexes
        ([node("a").gpus(4, PAIRS).busy(1)], 2, ("a", (2, 3))),
        ([node("a").gpus(4, FULL_MESH_4).busy(1)], 2, ("a", (0, 2))),
        # ties between nodes go to the name, so the choice is deterministic
        ([node("b").gpus(4), node("a").gpus(4)], 1, ("a", (0,))),
    ],
)
def test_place(nodes: list[node], want: int, expect: tuple[str, tuple[int, ...]] | None) -> None:
    placement = place(job(1).gpus(want).build(), [n.build() for n in nodes])
    got = None if placement is None else (placement.node, placement.gpu_indexes)
    assert got == expect


def test_cpu_request_is_checked_against_the_node() -> None:
    nodes = [
        node("a").gpus(4).host(cpus=2, mem_mb=1000).build(),
        node("b").gpus(4).host(8, 1000).build(),
    ]
    placement = place(job(1).gpus(1).cpus(4).build(), nodes)
    assert placement is not None and placement.node == "b"
