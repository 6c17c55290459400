"""One job in detail: its facts, why it waits, its events, checkpoints, and its log live."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import ClassVar

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical, VerticalScroll
from textual.screen import Screen
from textual.widgets import Footer, Header, Log, Static

from gshare.api import gshare_pb2 as pb
from gshare.jobs import state_name
from gshare.render import printable

LOG_TAIL = 64 * 1024


def when(t: float) -> str:
    return datetime.fromtimestamp(t).strftime("%H:%M:%S") if t else "-"


class JobDetail(Screen[None]):
    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape,q", "app.pop_screen", "Back")]

    def __init__(self, job_id: int) -> None:
        super().__init__()
        self.job_id = job_id
        self.job: pb.Job | None = None
        self._log_pos = 0
        self._log_path: Path | None = None

    def compose(self) -> ComposeResult:
        yield Header()
        with Vertical(id="detail"):
            with VerticalScroll(id="detail-top"):
                yield Static("loading…", id="detail-facts")
                yield Static("", id="detail-events")
            yield Log(id="detail-log", max_lines=2000, highlight=False)
        yield Footer()

    def show(self, job: pb.Job) -> None:
        self.job = job
        label = f"{job.array_job_id}_{job.array_task_id}" if job.array_job_id else job.job_id
        self.title = f"job {label}: {printable(job.spec.name)}"
        facts = Table.grid(padding=(0, 2))
        facts.add_column(style="bold")
        facts.add_column()
        gpus = ", ".join(f"{g.node}:{g.index}" for g in job.gpus) or "-"
        reason = printable(job.reason).replace("; ", "\n") if job.reason else "-"
        rows = [
            (
                "state",
                f"{state_name(job)}" + (f" ({job.position} in line)" if job.position else ""),
            ),
            ("why" if job.state == pb.PENDING else "reason", reason),
            ("dependency", printable(job.dependency) or "-"),
            (
                "user / queue",
                printable(f"{job.user} / {job.spec.queue}  priority {job.spec.priority}"),
            ),
            ("GPUs", f"{job.spec.gpus} requested; {gpus}"),
            (
                "times",
                f"submitted {when(job.submit_time)}, started {when(job.start_time)}, "
                f"ended {when(job.end_time)}",
            ),
            ("restarts", f"{job.restarts} (preempted {job.preemptions} times)"),
            ("checkpoints", f"{printable(job.checkpoint_dir)}, last {when(job.last_checkpoint)}"),
            ("output", printable(job.output_path)),
        ]
        for key, value in rows:
            facts.add_row(key, Text(value))  # Text: taken literally, never as markup
        self.query_one("#detail-facts", Static).update(facts)
        events = Table(title="events", expand=True, show_edge=False)
        for column in ("time", "event", "change", "by", "why"):
            events.add_column(column, overflow="fold")
        for e in job.events:
            style = (
                "cyan"
                if e.kind == "checkpoint"
                else "orange1"
                if e.kind.startswith("preempt")
                else ""
            )
            change = (
                e.to_state
                if e.from_state == e.to_state
                else f"{e.from_state or '-'} → {e.to_state}"
            )
            events.add_row(
                when(e.time),
                Text(printable(e.kind), style=style),
                Text(printable(change)),
                Text(printable(e.actor)),
                Text(printable(e.reason)),
            )
        self.query_one("#detail-events", Static).update(events)
        path = Path(job.output_path)
        if path != self._log_path:
            self._log_path, self._log_pos = path, 0
            self.query_one("#detail-log", Log).clear()
        self.follow_log()

    def follow_log(self) -> None:
        """Append what the job wrote since last time (the file is read where it lies)."""
        if self._log_path is None:
            return
        log = self.query_one("#detail-log", Log)
        try:
            with open(self._log_path, "rb") as f:
                size = f.seek(0, 2)
                start = max(self._log_pos, size - LOG_TAIL)
                f.seek(start)
                chunk = f.read()
        except OSError as exc:
            if self._log_pos == 0:
                log.write_line(f"(no log to show: {exc.strerror}: {self._log_path})")
                self._log_pos = -1
            return
        if chunk:
            self._log_pos = start + len(chunk)
            log.write(chunk.decode(errors="replace"))

    def on_mount(self) -> None:
        self.set_interval(1.0, self.follow_log)
