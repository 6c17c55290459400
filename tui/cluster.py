"""The cluster view: every node, and each GPU as a cell with the job and user holding it."""

from __future__ import annotations

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text
from textual.widgets import Static

from tui.model import ClusterModel, node_state, user_colour

STATE_STYLE = {"up": "green", "draining": "yellow", "down": "red"}
CELL = 14  # characters per GPU cell


class ClusterView(Static):
    """Re-rendered in place from the model whenever a node or a job changes."""

    def __init__(self, model: ClusterModel, **kwargs: object) -> None:
        super().__init__("", **kwargs)  # type: ignore[arg-type]
        self.model = model

    def refresh_view(self) -> None:
        self.update(self.render_cluster())

    def render_cluster(self) -> RenderableType:
        if not self.model.nodes:
            return Text(
                "no nodes have registered yet" if self.model.synced else "connecting…", style="dim"
            )
        per_row = max(1, (self.size.width - 2) // CELL) if self.size.width else 4
        blocks: list[RenderableType] = []
        total = busy = 0
        for name in sorted(self.model.nodes):
            node = self.model.nodes[name]
            state = node_state(node)
            total += len(node.gpus)
            busy += len(node.busy_gpus)
            head = Text.assemble(
                (f"{name}", "bold"),
                " · ",
                (state, STATE_STYLE.get(state, "")),
                f" · {len(node.busy_gpus)}/{len(node.gpus)} GPUs busy",
                (f"  {node.gpus[0].model}" if node.gpus else "", "dim"),
                (f"  ({node.gpu_backend})" if node.gpu_backend else "", "dim"),
                (f"  {node.reason}" if node.reason else "", "italic yellow"),
            )
            grid = Table.grid(padding=(0, 1))
            for _ in range(min(per_row, max(1, len(node.gpus)))):
                grid.add_column(width=CELL - 1, no_wrap=True)
            cells = [self._cell(name, g.index) for g in node.gpus]
            for start in range(0, len(cells), per_row):
                grid.add_row(*cells[start : start + per_row])
            blocks += [head, grid, Text("")]
        summary = Text(f"{len(self.model.nodes)} nodes, {busy}/{total} GPUs busy", style="bold")
        note = Text("GPU utilization appears here once nodes publish telemetry.", style="dim")
        return Group(summary, Text(""), *blocks, note)

    def _cell(self, node: str, index: int) -> Text:
        job = self.model.holder(node, index)
        if job is None:
            return Text(f"{index}: free", style="dim")
        label = f"{index}: {job.job_id} {job.user}"[: CELL - 1]
        return Text(label, style=f"bold black on {user_colour(job.user)}")
