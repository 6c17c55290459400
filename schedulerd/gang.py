"""A multi-node job's rendezvous, decided by the scheduler: the port its rank 0 listens on
and what every part is told. Pure: no I/O, no clock.

The variables follow what torchrun, DeepSpeed and Horovod read (as Slurm's enroot hook
derives them from `SLURM_*`): `MASTER_ADDR` is rank 0's address, `MASTER_PORT` a port of
the configured range that no other job holds on any of the job's nodes, `WORLD_SIZE` the
GPUs of all parts, `NNODES`, `NODE_RANK` and `LOCAL_WORLD_SIZE`; `GSHARE_HOSTS` lists the
parts' addresses by rank and `GSHARE_HOSTFILE` names a file of `host slots=G` lines (the
form DeepSpeed and mpirun read), which the part's launcher writes from `hostfile_text`.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class GangPart:
    """One node's share of a job: where it runs, the address the other parts reach it
    at (the node's `[agent] address`), and its GPUs there."""

    node: str
    address: str
    gpus: tuple[int, ...]


def ports_in_use(held: Iterable[tuple[Iterable[str], int]]) -> dict[str, set[int]]:
    """node -> the master ports its live multi-node jobs hold, from (nodes, port) pairs
    (a port of 0: none)."""
    used: dict[str, set[int]] = {}
    for nodes, port in held:
        if port:
            for node in nodes:
                used.setdefault(node, set()).add(port)
    return used


def choose_master_port(
    ports: tuple[int, int], nodes: Iterable[str], used: Mapping[str, Collection[int]]
) -> int | None:
    """The lowest port of the range `ports` (both ends in) that no job holds on any of
    `nodes`; None when every one is held somewhere among them."""
    taken: set[int] = set()
    for node in nodes:
        taken.update(used.get(node, ()))
    first, last = ports
    for port in range(first, last + 1):
        if port not in taken:
            return port
    return None


def hostfile_text(parts: Sequence[GangPart]) -> str:
    """`host slots=G` per part, by rank."""
    return "".join(f"{p.address} slots={len(p.gpus)}\n" for p in parts)


def rendezvous_env(
    parts: Sequence[GangPart], rank: int, port: int, hostfile: str
) -> dict[str, str]:
    """What part `rank` of a job placed on `parts` (rank order) is told, besides the
    variables every job gets; `hostfile` is where its launcher writes `hostfile_text`."""
    if not 0 <= rank < len(parts):
        raise ValueError(f"rank {rank} is not one of the job's {len(parts)} parts")
    return {
        "MASTER_ADDR": parts[0].address,
        "MASTER_PORT": str(port),
        "WORLD_SIZE": str(sum(len(p.gpus) for p in parts)),
        "NNODES": str(len(parts)),
        "NODE_RANK": str(rank),
        "LOCAL_WORLD_SIZE": str(len(parts[rank].gpus)),
        "GSHARE_HOSTS": ",".join(p.address for p in parts),
        "GSHARE_HOSTFILE": hostfile,
    }
