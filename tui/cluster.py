"""The cluster view: every node, and each GPU as a cell with the job and user holding it,
its utilization and memory as bars, and a short sparkline of recent utilization."""

from __future__ import annotations

import time
from collections.abc import Iterable

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text
from textual.reactive import reactive
from textual.widgets import Static

from gshare.api import gshare_pb2 as pb
from gshare.render import printable
from tui.model import ClusterModel, node_state, user_colour

STATE_STYLE = {"up": "green", "draining": "yellow", "down": "red"}
CELL = 18  # characters per GPU cell, its gap included
BAR = CELL - 8  # "U " + bar + " 100%"
SPARK = "▁▂▃▄▅▆▇█"
STALE_S = 30.0  # older samples are shown dim: the figures may no longer hold


def bar(fraction: float, width: int = BAR) -> Text:
    fraction = min(1.0, max(0.0, fraction))
    full = round(fraction * width)
    style = "green" if fraction < 0.5 else "yellow" if fraction < 0.85 else "red"
    return Text.assemble(("█" * full, style), ("·" * (width - full), "grey35"))


def sparkline(values: Iterable[float], width: int) -> str:
    points = list(values)[-width:]
    return "".join(SPARK[min(7, int(v / 100 * 8))] for v in points).rjust(width)


def _busy_by_type(nodes: Iterable[pb.Node]) -> dict[str, tuple[int, int]]:
    """GPU model -> (busy, total) over `nodes`."""
    out: dict[str, tuple[int, int]] = {}
    for node in nodes:
        busy = set(node.busy_gpus)
        for g in node.gpus:
            b, t = out.get(g.model, (0, 0))
            out[g.model] = (b + (g.index in busy), t + 1)
    return dict(sorted(out.items()))


class ClusterView(Static):
    """Re-rendered in place from the model whenever a node or a job changes."""

    # bumped by the app when the model has moved on: the view redraws itself
    revision: reactive[int] = reactive(0, init=False)

    def __init__(self, model: ClusterModel, **kwargs: object) -> None:
        super().__init__("", **kwargs)  # type: ignore[arg-type]
        self.model = model
        self.now = time.time

    def watch_revision(self) -> None:
        self.refresh_view()

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
        telemetry = False
        for name in sorted(self.model.nodes):
            node = self.model.nodes[name]
            state = node_state(node)
            total += len(node.gpus)
            busy += len(node.busy_gpus)
            telemetry = telemetry or any(g.HasField("metrics") for g in node.gpus)
            head = Text.assemble(
                (printable(name), "bold"),
                " · ",
                (state, STATE_STYLE.get(state, "")),
                f" · {len(node.busy_gpus)}/{len(node.gpus)} GPUs busy",
                (f" · CPU {node.host_cpu_pct:.0f}%" if node.telemetry == "online" else "", ""),
                (" · telemetry offline" if node.telemetry == "offline" else "", "yellow"),
                ("  " + printable(", ".join(sorted({g.model for g in node.gpus}))), "dim"),
                (f"  ({printable(node.gpu_backend)})" if node.gpu_backend else "", "dim"),
                (" · unconfined" if node.confinement.startswith("none") else "", "yellow"),
                (f"  {printable(node.reason)}" if node.reason else "", "italic yellow"),
            )
            grid = Table.grid(padding=(0, 1))
            for _ in range(min(per_row, max(1, len(node.gpus)))):
                grid.add_column(width=CELL - 1, no_wrap=True)
            cells = [self._cell(node, g) for g in node.gpus]
            for start in range(0, len(cells), per_row):
                grid.add_row(*cells[start : start + per_row])
            blocks += [head, grid, Text("")]
        summary = Text(f"{len(self.model.nodes)} nodes, {busy}/{total} GPUs busy", style="bold")
        by_type = _busy_by_type(self.model.nodes.values())
        if len(by_type) > 1:  # a cluster of several GPU types: each one's busy count
            summary.append(
                " · " + " · ".join(f"{printable(m)} {b}/{t}" for m, (b, t) in by_type.items())
            )
        parts: list[RenderableType] = [summary, Text(""), *blocks]
        if not telemetry:
            parts.append(
                Text("No telemetry yet: agents publish it when [mqtt] url is set.", style="dim")
            )
        return Group(*parts)

    def _cell(self, node: pb.Node, g: pb.Gpu) -> RenderableType:
        job = self.model.holder(node.name, g.index)
        width = CELL - 1
        if g.drained:
            head = Text(f"{g.index} drained"[:width].ljust(width), style="bold white on red")
        elif job is None:
            head = Text(f"{g.index} free".ljust(width), style="dim")
        else:
            label = printable(f"{g.index} {job.job_id} {job.user}")[:width].ljust(width)
            head = Text(label, style=f"bold black on {user_colour(job.user)}")
        if g.warnings:
            head = Text.assemble(head[: width - 1], ("!", "bold white on red"))
        lines: list[Text] = [head]
        if not g.HasField("metrics"):
            lines += [Text("U " + "·" * BAR, style="dim"), Text("M " + "·" * BAR, style="dim")]
            return Group(*lines, Text(""))
        m = g.metrics
        total = m.mem_total_mb or g.memory_mb or 1
        lines.append(Text.assemble("U ", bar(m.util_pct / 100), f"{m.util_pct:4.0f}%"))
        lines.append(
            Text.assemble("M ", bar(m.mem_used_mb / total), f"{m.mem_used_mb / 1024:4.0f}G")
        )
        history = self.model.history.get((node.name, g.index), ())
        lines.append(Text.assemble((sparkline(history, width - 5), "cyan"), f" {m.temp_c:3.0f}°"))
        if self.now() - m.time > STALE_S:
            lines = [Text(line.plain, style="dim") for line in lines]
        return Group(*lines)
