"""Multi-node jobs at submit: gsub's --nodes/--gpus-per-node and #GSUB lines, the
scheduler's edge (a shape checked, a job wider than the cluster refused with the reason),
the hand-off to Slurm with --nodes, and the rendezvous the scheduler decides
(schedulerd/gang.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gshare.address import host_name_ok, route_address
from gshare.api import gshare_pb2 as pb
from gshare.cli import UsageError, build_spec, gsub_parser
from gshare.config import Config, ConfigError, SlurmConfig, load_config
from schedulerd.convert import spec_of
from schedulerd.gang import (
    GangPart,
    choose_master_port,
    hostfile_text,
    ports_in_use,
    rendezvous_env,
)
from schedulerd.model import GpuInfo, NodeRecord
from schedulerd.peercred import Caller
from schedulerd.requests import Refused, validate
from slurm_bridge import SlurmJobSpec
from slurm_bridge._v0038 import V0038
from slurm_bridge._v0040 import V0040

ALICE = Caller("alice", 1000, 1000)


def gsub(argv: list[str]) -> pb.JobSpec:
    return build_spec(gsub_parser().parse_intermixed_args(argv), {"PATH": "/bin"})


def script(tmp_path: Path, *lines: str) -> str:
    path = tmp_path / "train.sh"
    path.write_text("#!/bin/bash\n" + "".join(f"{line}\n" for line in lines) + "torchrun x\n")
    return str(path)


# ------------------------------------------------------------ gsub


def test_nodes_and_gpus_per_node_make_the_total(tmp_path: Path) -> None:
    spec = gsub([script(tmp_path), "--nodes", "4", "--gpus-per-node", "8"])
    assert (spec.nodes, spec.gpus_per_node, spec.gpus) == (4, 8, 32)


def test_gpus_alone_is_one_node(tmp_path: Path) -> None:
    spec = gsub([script(tmp_path), "--gpus", "3"])
    assert (spec.nodes, spec.gpus_per_node, spec.gpus) == (0, 0, 3)
    one = gsub([script(tmp_path), "-N", "1", "--gpus-per-node", "2"])
    assert (one.nodes, one.gpus_per_node, one.gpus) == (0, 0, 2)


def test_gsub_lines_give_the_shape_and_the_command_line_replaces_it(tmp_path: Path) -> None:
    path = script(tmp_path, "#GSUB --nodes 2 --gpus-per-node 4")
    spec = gsub([path])
    assert (spec.nodes, spec.gpus_per_node, spec.gpus) == (2, 4, 8)
    # the command line's shape wins whole: --gpus 2 here is one node of 2
    alone = gsub([path, "--gpus", "2"])
    assert (alone.nodes, alone.gpus_per_node, alone.gpus) == (0, 0, 2)
    wider = gsub([path, "--nodes", "3", "--gpus-per-node", "1"])
    assert (wider.nodes, wider.gpus_per_node, wider.gpus) == (3, 1, 3)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--nodes", "2"], "--nodes 2 needs --gpus-per-node"),
        (["--nodes", "2", "--gpus", "4"], "--nodes 2 needs --gpus-per-node"),
        (["--nodes", "2", "--gpus-per-node", "2", "--gpus", "4"], "not both"),
        (["--nodes", "0", "--gpus-per-node", "2"], "--nodes must be at least 1, not 0"),
        (["--nodes", "-3", "--gpus-per-node", "2"], "--nodes must be at least 1"),
        (["--nodes", "two", "--gpus-per-node", "2"], "--nodes needs a whole number"),
        (["--nodes", "1e9", "--gpus-per-node", "2"], "--nodes needs a whole number"),
        (["--nodes", "99999", "--gpus-per-node", "2"], "--nodes 99999 is over the limit of 1024"),
        (["--nodes", "2", "--gpus-per-node", "0"], "--gpus-per-node must be at least 1"),
        (["--nodes", "2", "--gpus-per-node", "5000"], "more than any node can have"),
        (["--nodes", "2", "--gpus-per-node", "nan"], "--gpus-per-node needs a whole number"),
    ],
)
def test_bad_shapes_are_refused_by_name(tmp_path: Path, argv: list[str], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        gsub([script(tmp_path), *argv])


def test_a_bad_gsub_line_names_its_line(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"train.sh:2: #GSUB --nodes x: .*whole number"):
        gsub([script(tmp_path, "#GSUB --nodes x")])


# ------------------------------------------------------------ the scheduler's edge


def node(name: str, gpus: int) -> NodeRecord:
    return NodeRecord(
        name, [GpuInfo(i, f"GPU-{name}-{i}", "fake", 1000) for i in range(gpus)], 8, 8000
    )


NODES = {"a": node("a", 4), "b": node("b", 4), "c": node("c", 2)}
SLURM = Config(slurm=SlurmConfig(url="http://127.0.0.1:1", user="slurm", token="t"))


def check(cluster: dict[str, NodeRecord] = NODES, config: Config | None = None, **kw: Any) -> Any:
    values: dict[str, Any] = dict(workdir="/tmp", script=b"#!/bin/sh\ntrue\n")
    values.update(kw)
    return validate(ALICE, pb.JobSpec(**values), config or Config(), cluster, lambda c: False, 1.0)


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        (dict(gpus=8, nodes=2, gpus_per_node=0), "--gpus-per-node 0 is not between 1 and 4096"),
        (dict(gpus=8, nodes=2, gpus_per_node=5000), "--gpus-per-node 5000 is not between"),
        (dict(gpus=7, nodes=2, gpus_per_node=4), "--gpus 7 is not --nodes 2 times"),
        (dict(gpus=2, nodes=2000, gpus_per_node=1), "--nodes 2000 is over the limit of 1024"),
        (dict(gpus=2, nodes=-1), "--nodes must be at least 1, not -1"),
        (dict(gpus=0, nodes=2, gpus_per_node=0), "--gpus must be at least 1"),
        (
            dict(gpus=12, nodes=3, gpus_per_node=4),
            "--nodes 3 --gpus-per-node 4: the cluster has 2 nodes with 4 or more GPUs",
        ),
        (
            dict(gpus=16, nodes=2, gpus_per_node=8),
            "--nodes 2 --gpus-per-node 8: the cluster has 0 nodes with 8 or more GPUs",
        ),
    ],
)
def test_bad_multi_node_requests_are_refused_with_the_reason(
    kw: dict[str, Any], message: str
) -> None:
    with pytest.raises(Refused, match=message):
        check(**kw)


def test_a_job_the_cluster_can_hold_is_taken() -> None:
    job = check(gpus=6, nodes=3, gpus_per_node=2)  # a, b and c have 2 GPUs or more
    assert (job.nodes, job.gpus_per_node, job.gpus, job.parts) == (3, 2, 6, [])


def test_slurm_always_takes_a_job_wider_than_this_cluster() -> None:
    job = check(gpus=64, nodes=8, gpus_per_node=8, slurm="always", config=SLURM)
    assert (job.nodes, job.gpus_per_node, job.gpus) == (8, 8, 64)
    listed = spec_of(job)
    assert (listed.nodes, listed.gpus_per_node, listed.gpus) == (8, 8, 64)


def test_a_single_node_job_keeps_one_node() -> None:
    job = check(gpus=4)
    assert (job.nodes, job.gpus_per_node) == (1, 0)
    assert (spec_of(job).nodes, spec_of(job).gpus_per_node) == (0, 0)
    with pytest.raises(Refused, match="job needs 5 GPUs on one node, but the largest node has 4"):
        check(gpus=5)


# ------------------------------------------------------------ Slurm gets --nodes


def test_slurm_requests_carry_the_node_count_and_gpus_per_node() -> None:
    spec = SlurmJobSpec("ddp", "#!/bin/bash\n", "/srv", gpus=8, nodes=4)
    v38 = V0038().submit_body(spec)["job"]
    assert (v38["nodes"], v38["gres"], v38["tasks"], v38["tasks_per_node"]) == (
        [4, 4],
        "gpu:8",
        4,
        1,
    )
    v40 = V0040().submit_body(spec)["job"]
    assert (v40["minimum_nodes"], v40["maximum_nodes"], v40["tres_per_node"]) == (
        4,
        4,
        "gres/gpu:8",
    )
    one = V0038().submit_body(SlurmJobSpec("one", "#!/bin/bash\n", "/srv", gpus=2))["job"]
    assert "nodes" not in one and one["tasks"] == 1
    with pytest.raises(ValueError, match="nodes must be 1 or more, not 0"):
        SlurmJobSpec("bad", "#!/bin/bash\n", "/srv", nodes=0)


# ------------------------------------------------------------ the rendezvous


PARTS = (
    GangPart("n1", "127.0.0.2", (0, 1)),
    GangPart("n2", "127.0.0.3", (2, 3)),
)


def test_every_part_is_told_the_same_rendezvous_and_its_own_rank() -> None:
    envs = [rendezvous_env(PARTS, rank, 29501, f"/run/h{rank}") for rank in range(2)]
    for rank, env in enumerate(envs):
        assert env == {
            "MASTER_ADDR": "127.0.0.2",
            "MASTER_PORT": "29501",
            "WORLD_SIZE": "4",
            "NNODES": "2",
            "NODE_RANK": str(rank),
            "LOCAL_WORLD_SIZE": "2",
            "GSHARE_HOSTS": "127.0.0.2,127.0.0.3",
            "GSHARE_HOSTFILE": f"/run/h{rank}",
        }
    assert hostfile_text(PARTS) == "127.0.0.2 slots=2\n127.0.0.3 slots=2\n"
    with pytest.raises(ValueError, match="rank 2 is not one of the job's 2 parts"):
        rendezvous_env(PARTS, 2, 29501, "/h")


def test_master_ports_are_never_shared_on_a_node() -> None:
    used = ports_in_use([(("n1", "n2"), 29500), (("n2", "n3"), 29501), (("n4",), 0)])
    assert used == {"n1": {29500}, "n2": {29500, 29501}, "n3": {29501}}
    assert choose_master_port((29500, 29999), ["n1", "n3"], used) == 29502
    assert choose_master_port((29500, 29999), ["n3"], used) == 29500
    assert choose_master_port((29500, 29999), ["n9"], used) == 29500
    assert choose_master_port((29500, 29501), ["n2"], used) is None
    # many jobs placed one after another on the same two nodes: all ports differ
    taken: list[tuple[tuple[str, ...], int]] = []
    for _ in range(50):
        port = choose_master_port((30000, 30049), ["a", "b"], ports_in_use(taken))
        assert port is not None
        taken.append((("a", "b"), port))
    assert len({p for _, p in taken}) == 50
    assert choose_master_port((30000, 30049), ["b"], ports_in_use(taken)) is None


# ------------------------------------------------------------ config and addresses


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[scheduler]\nmaster_ports = "29500"\n', "master_ports must be a range like"),
        ('[scheduler]\nmaster_ports = "a-b"\n', "master_ports must be a range like"),
        ('[scheduler]\nmaster_ports = "30000-29000"\n', "low end first"),
        ('[scheduler]\nmaster_ports = "80-90"\n', "within 1024-65535"),
        ('[scheduler]\nmaster_ports = "60000-70000"\n', "within 1024-65535"),
        ("[scheduler]\nmaster_ports = 29500\n", "master_ports"),
        ('[agent]\naddress = "bad host!"\n', "[agent]: address must be a host name"),
        ('[agent]\naddress = "a\\u0000b"\n', "[agent]: address must be a host name"),
        ("[agent]\naddress = 12\n", "address"),
    ],
)
def test_bad_rendezvous_config_names_the_key(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "gshare.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_config(path)


def test_rendezvous_config(tmp_path: Path) -> None:
    path = tmp_path / "gshare.toml"
    path.write_text('[scheduler]\nmaster_ports = "40000-40010"\n[agent]\naddress = "10.0.0.7"\n')
    config = load_config(path)
    assert config.master_ports == (40000, 40010) and config.agent_address == "10.0.0.7"
    assert Config().master_ports == (29500, 29999) and Config().agent_address == ""


def test_host_names_and_route_addresses() -> None:
    for good in ("127.0.0.2", "::1", "node-7.cluster.example", "n1"):
        assert host_name_ok(good), good
    for bad in ("", "a b", "-x", "x" * 300, "a\0b", "a..b", "host\n"):
        assert not host_name_ok(bad), bad
    assert route_address("unix:/run/gshare.sock") == "127.0.0.1"
    assert route_address("127.0.0.1:1") == "127.0.0.1"
