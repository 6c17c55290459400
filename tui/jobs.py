"""The jobs view: a table of jobs with sorting, filters and incremental search."""

from __future__ import annotations

import os
import time
from typing import ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.message import Message
from textual.reactive import reactive
from textual.widgets import DataTable, Input, Static

from gshare.api import gshare_pb2 as pb
from gshare.jobs import FINAL, state_name, where
from gshare.render import printable
from gshare.timefmt import format_duration
from tui.model import ClusterModel, shown, user_colour

COLUMNS = ("id", "name", "user", "queue", "state", "GPUs", "node", "runtime", "reason")
STATE_FILTERS = ("live", "pending", "running", "ended", "all")
STATE_STYLE = {
    "RUNNING": "green",
    "PENDING": "yellow",
    "HELD": "magenta",
    "PREEMPTING": "orange1",
    "STARTING": "cyan",
    "COMPLETED": "dim",
    "FAILED": "red",
    "CANCELLED": "dim",
    "TIMEOUT": "red",
}


def runtime(job: pb.Job, now: float) -> str:
    if not job.start_time:
        return "-"
    return format_duration((job.end_time or now) - job.start_time)


class JobsView(Vertical):
    # bumped by the app when the model has moved on: the view redraws itself
    revision: reactive[int] = reactive(0, init=False)
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("slash", "search", "Search"),
        Binding("m", "mine", "Mine/all"),
        Binding("f", "state_filter", "State filter"),
        Binding("s", "sort", "Sort"),
        Binding("escape", "clear", "Clear filters", show=False),
    ]

    class Selected(Message):
        def __init__(self, job_id: int) -> None:
            super().__init__()
            self.job_id = job_id

    def __init__(self, model: ClusterModel, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.model = model
        self.me = os.environ.get("USER") or str(os.getuid())
        self.only_mine = False
        self.state_filter = "live"
        self.search = ""
        self.sort_column = 0
        self.shown: list[int] = []

    def compose(self) -> ComposeResult:
        yield Static("", id="jobs-filters")
        yield Input(placeholder="search: id, name, user, queue, node or reason", id="jobs-search")
        table: DataTable[Text | str] = DataTable(
            id="jobs-table", cursor_type="row", zebra_stripes=True
        )
        table.add_columns(*COLUMNS)
        yield table

    @property
    def table(self) -> DataTable[Text | str]:
        return self.query_one("#jobs-table", DataTable)

    def selected_job(self) -> int | None:
        table = self.table
        if not table.row_count:
            return None
        key = table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value
        return int(key) if key is not None else None

    def _wanted(self, job: pb.Job) -> bool:
        state = state_name(job)
        if self.only_mine and job.user != self.me:
            return False
        if self.state_filter == "live" and job.state in FINAL:
            return False
        if self.state_filter == "pending" and job.state not in (pb.PENDING, pb.HELD):
            return False
        if self.state_filter == "running" and job.state not in (
            pb.STARTING,
            pb.RUNNING,
            pb.PREEMPTING,
        ):
            return False
        if self.state_filter == "ended" and job.state not in FINAL:
            return False
        if self.search:
            text = " ".join(
                (
                    str(job.job_id),
                    job_label(job),
                    job.spec.name,
                    job.user,
                    job.spec.queue,
                    where(job),
                    job.reason,
                    state,
                )
            ).lower()
            return self.search.lower() in text
        return True

    def _row(self, job: pb.Job, now: float) -> list[Text | str]:
        state = state_name(job)
        return [
            job_label(job),
            shown(job.spec.name),
            Text(printable(job.user), style=user_colour(job.user)),
            shown(job.spec.queue),
            Text(state, style=STATE_STYLE.get(state, "")),
            str(job.spec.gpus),
            shown(where(job)),
            runtime(job, now),
            shown(job.reason.split(";", 1)[0]),
        ]

    def _sort_key(self, job: pb.Job) -> tuple[object, ...]:
        column = COLUMNS[self.sort_column]
        value: object = {
            "id": job.job_id,
            "name": job.spec.name,
            "user": job.user,
            "queue": job.spec.queue,
            "state": state_name(job),
            "GPUs": job.spec.gpus,
            "node": job.node,
            "runtime": (job.end_time or time.time()) - job.start_time if job.start_time else -1,
            "reason": job.reason,
        }[column]
        return (value, job.job_id)

    def watch_revision(self) -> None:
        self.refresh_view()

    def refresh_view(self) -> None:
        """Update the table in place: rows change, appear and go; the cursor stays put."""
        now = time.time()
        jobs = sorted((j for j in self.model.jobs.values() if self._wanted(j)), key=self._sort_key)
        wanted = [j.job_id for j in jobs]
        table = self.table
        keep = self.selected_job()
        if wanted != self.shown:
            table.clear()
            for job in jobs:
                table.add_row(*self._row(job, now), key=str(job.job_id))
            self.shown = wanted
            if keep in wanted:
                table.move_cursor(row=wanted.index(keep))
        else:
            for job in jobs:
                for column, value in zip(table.columns, self._row(job, now), strict=True):
                    table.update_cell(str(job.job_id), column, value)
        mine = f"user {self.me}" if self.only_mine else "all users"
        search = f", search '{self.search}'" if self.search else ""
        sort = COLUMNS[self.sort_column]
        self.query_one("#jobs-filters", Static).update(
            f"{len(jobs)} jobs: {self.state_filter}, {mine}{search}; sorted by {sort}   "
            "[dim](/ search  m mine  f state  s sort  enter details)[/]"
        )

    def on_mount(self) -> None:
        self.query_one("#jobs-search", Input).display = False
        self.refresh_view()

    def action_search(self) -> None:
        box = self.query_one("#jobs-search", Input)
        box.display = True
        box.focus()

    def on_input_changed(self, event: Input.Changed) -> None:
        self.search = event.value.strip()
        self.refresh_view()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.table.focus()

    def action_clear(self) -> None:
        box = self.query_one("#jobs-search", Input)
        box.value = ""
        box.display = False
        self.search, self.only_mine, self.state_filter = "", False, "live"
        self.table.focus()
        self.refresh_view()

    def action_mine(self) -> None:
        self.only_mine = not self.only_mine
        self.refresh_view()

    def action_state_filter(self) -> None:
        self.state_filter = STATE_FILTERS[
            (STATE_FILTERS.index(self.state_filter) + 1) % len(STATE_FILTERS)
        ]
        self.refresh_view()

    def action_sort(self) -> None:
        self.sort_column = (self.sort_column + 1) % len(COLUMNS)
        self.refresh_view()

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        if event.row_key.value is not None:
            self.post_message(self.Selected(int(event.row_key.value)))


def job_label(job: pb.Job) -> str:
    """`12_7` for task 7 of array 12, else the job id."""
    return f"{job.array_job_id}_{job.array_task_id}" if job.array_job_id else str(job.job_id)
