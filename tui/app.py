"""`gshare top`: the cluster, the jobs and the fair-share tree, live."""

from __future__ import annotations

from typing import ClassVar

from textual import work
from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.reactive import reactive
from textual.screen import ModalScreen
from textual.widgets import Footer, Header, Static, TabbedContent, TabPane

from gshare.api import gshare_pb2 as pb
from gshare.client import Client, ClientError
from gshare.jobs import state_name
from tui.cluster import ClusterView
from tui.confirm import Confirm
from tui.detail import JobDetail
from tui.fairshare import FairShareView
from tui.feed import Feed
from tui.jobs import JobsView
from tui.model import ClusterModel, shown
from tui.prompt import PriorityPrompt

HELP = """\
[b]gshare top[/b]: the cluster, live from the scheduler.

  [b]1 2 3[/b]      cluster, jobs, fair share
  [b]enter[/b]      a job's details: why it waits, events, checkpoints, its log
  [b]/[/b]          search jobs (id, name, user, queue, node, reason); [b]esc[/b] clears
  [b]m[/b]          my jobs / everyone's
  [b]f[/b]          state filter: live, pending, running, ended, all
  [b]s[/b]          sort by the next column
  [b]c[/b] cancel   [b]h[/b] hold   [b]r[/b] release   [b]p[/b] preempt (checkpoint and requeue)
             your own jobs; root and admins any. Each asks first.
  [b]P[/b]          change priority (admins; owners may lower their own)
  [b]?[/b] this help   [b]q[/b] quit

Press any key to close.
"""


class Help(ModalScreen[None]):
    def compose(self) -> ComposeResult:
        with VerticalScroll(id="help-box"):
            yield Static(HELP)

    def on_key(self) -> None:
        self.dismiss()


class GshareTop(App[None]):
    CSS_PATH: ClassVar = [
        "app.tcss",
        "cluster.tcss",
        "jobs.tcss",
        "fairshare.tcss",
        "confirm.tcss",
        "detail.tcss",
        "prompt.tcss",
    ]
    TITLE = "gshare top"
    connected: reactive[bool] = reactive(False)
    status_text: reactive[str] = reactive("connecting…", init=False)
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("1", "tab('cluster')", "Cluster"),
        Binding("2", "tab('jobs')", "Jobs"),
        Binding("3", "tab('fairshare')", "Fair share"),
        Binding("c", "act('cancel')", "Cancel"),
        Binding("h", "act('hold')", "Hold"),
        Binding("r", "act('release')", "Release"),
        Binding("p", "act('preempt')", "Preempt"),
        Binding("P", "priority", "Priority"),
        Binding("question_mark", "help", "Help"),
        Binding("q", "quit", "Quit"),
    ]

    def __init__(self, address: str | None = None, live: bool = True) -> None:
        """`live=False`: no connection; changes come from `load()` (for pictures and tests)."""
        super().__init__()
        self.address = address
        self.live = live
        self.model = ClusterModel()
        self._feed = Feed(address, self.post_message)
        self._redraw_due = False

    def compose(self) -> ComposeResult:
        yield Header()
        with TabbedContent(initial="cluster"):
            with TabPane("Cluster [1]", id="cluster"), VerticalScroll():
                yield ClusterView(self.model, id="cluster-view")
            with TabPane("Jobs [2]", id="jobs"):
                yield JobsView(self.model, id="jobs-view")
            with TabPane("Fair share [3]", id="fairshare"):
                yield FairShareView(id="fairshare-view")
        yield Static("connecting…", id="status")
        yield Footer()

    def on_mount(self) -> None:
        if not self.live:
            self.set_status("not connected: showing loaded data", False)
            return
        self.run_feed()
        self.set_interval(1.0, self.tick)
        self.set_interval(5.0, self.poll_usage)
        self.poll_usage()

    def load(
        self, changes: list[pb.ClusterChange], usage: pb.GetUsageResponse | None = None
    ) -> None:
        for change in changes:
            self._apply(change)
        self.redraw()
        if usage is not None:
            self.query_one(FairShareView).show(usage)

    # ------------------------------------------------------------ the feed

    @work(thread=True, exclusive=True, group="feed")
    def run_feed(self) -> None:
        self._feed.run()

    def on_feed_changed(self, message: Feed.Changed) -> None:
        self._apply(message.change)
        if not self._redraw_due:  # a burst of changes (the initial state) makes one redraw
            self._redraw_due = True
            self.set_timer(0.1, self.redraw)

    def on_feed_status(self, message: Feed.Status) -> None:
        self.set_status(message.text, message.ok)

    def _apply(self, change: pb.ClusterChange) -> None:
        if change.WhichOneof("change") is None:
            self.model.reset()
        else:
            self.model.apply(change)

    def set_status(self, text: str, ok: bool) -> None:
        self.connected = ok
        self.status_text = ("● " if ok else "○ ") + text

    def watch_status_text(self, text: str) -> None:
        status = self.query_one("#status", Static)
        status.update(text)
        status.set_class(not self.connected, "-disconnected")

    def tick(self) -> None:
        if self.model.jobs:
            self.redraw()  # run times move on
        screen = self.screen
        if isinstance(screen, JobDetail):
            self.load_detail(screen.job_id)

    def redraw(self) -> None:
        """Tell the views the model moved on; each redraws itself (attributes down)."""
        self._redraw_due = False
        self.query_one(ClusterView).revision += 1
        self.query_one(JobsView).revision += 1
        screen = self.screen
        if (
            isinstance(screen, JobDetail)
            and screen.job_id in self.model.jobs
            and screen.job is None
        ):
            self.load_detail(screen.job_id)

    @work(thread=True, exclusive=True, group="usage")
    def poll_usage(self) -> None:
        try:
            with Client(self.address, timeout=5) as client:
                report = client.usage()
        except ClientError:
            return
        self.call_from_thread(self.query_one(FairShareView).show, report)

    # ------------------------------------------------------------ navigation

    def action_tab(self, tab: str) -> None:
        self.query_one(TabbedContent).active = tab
        if tab == "jobs":
            self.query_one(JobsView).table.focus()

    def action_help(self) -> None:
        self.push_screen(Help())

    def on_jobs_view_selected(self, message: JobsView.Selected) -> None:
        self.push_screen(JobDetail(message.job_id))
        self.load_detail(message.job_id)

    @work(thread=True, exclusive=True, group="detail")
    def load_detail(self, job_id: int) -> None:
        try:
            with Client(self.address, timeout=5) as client:
                job = client.job(job_id)
        except ClientError as exc:
            self.call_from_thread(self.notify, str(exc), severity="error")
            return

        def show() -> None:
            screen = self.screen
            if isinstance(screen, JobDetail) and screen.job_id == job_id:
                screen.show(job)

        self.call_from_thread(show)

    # ------------------------------------------------------------ actions

    def _target(self) -> int | None:
        screen = self.screen
        if isinstance(screen, JobDetail):
            return screen.job_id
        if self.query_one(TabbedContent).active == "jobs":
            return self.query_one(JobsView).selected_job()
        return None

    def action_act(self, verb: str) -> None:
        job_id = self._target()
        if job_id is None:
            self.notify("select a job first (2: jobs)", severity="warning")
            return
        job = self.model.jobs.get(job_id)
        what = f"job {job_id}" + (
            f" ({shown(job.spec.name)}, {state_name(job).lower()})" if job else ""
        )

        def answered(yes: bool | None) -> None:
            if yes:
                self.do_act(verb, job_id)

        self.push_screen(Confirm(f"{verb.capitalize()} {what}?"), answered)

    def action_priority(self) -> None:
        job_id = self._target()
        if job_id is None:
            self.notify("select a job first (2: jobs)", severity="warning")
            return
        job = self.model.jobs.get(job_id)
        current = job.spec.priority if job else 0

        def answered(value: int | None) -> None:
            if value is not None and value != current:
                self.do_act("set_priority", job_id, value)

        self.push_screen(
            PriorityPrompt(f"New priority for job {job_id} (now {current}):", current), answered
        )

    @work(thread=True, group="actions")
    def do_act(self, verb: str, job_id: int, *args: int) -> None:
        try:
            with Client(self.address, timeout=10) as client:
                job = getattr(client, verb)(job_id, *args)
            self.call_from_thread(self.notify, f"job {job_id}: {verb} done ({state_name(job)})")
        except ClientError as exc:  # the server's reason, as it gave it
            self.call_from_thread(
                self.notify, f"job {job_id}: {shown(str(exc))}", severity="error", timeout=8
            )

    async def action_quit(self) -> None:
        self._feed.stop()
        self.exit()

    def on_unmount(self) -> None:
        self._feed.stop()  # the stream is read in a thread: end it, or it outlives the app


def run(address: str | None = None) -> int:
    GshareTop(address).run()
    return 0
