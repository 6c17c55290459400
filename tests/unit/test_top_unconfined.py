"""gshare top says which nodes run their jobs unconfined (an agent not root, or
confine = off): what a user there should know before trusting --mem."""

from __future__ import annotations

from rich.console import Console

from gshare.api import gshare_pb2 as pb
from tui.cluster import ClusterView
from tui.model import ClusterModel


def test_gshare_top_marks_the_nodes_whose_jobs_run_unconfined() -> None:
    model = ClusterModel()
    for name, confinement in (("a", "cgroup v1"), ("b", "none (agent not root)"), ("c", "")):
        model.apply(pb.ClusterChange(node=pb.Node(name=name, confinement=confinement)))
    console = Console(width=200, record=True)
    console.print(ClusterView(model).render_cluster())
    lines = {line.split(" ")[0]: line for line in console.export_text().splitlines() if line}
    assert "unconfined" in lines["b"]
    assert "unconfined" not in lines["a"] and "unconfined" not in lines["c"]  # c: older agent
