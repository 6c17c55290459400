"""`gshare top` against a real scheduler: driven with Textual's Pilot, and in a real
terminal under tmux."""

from __future__ import annotations

import io
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from rich.console import Console

from gshare.api import gshare_pb2 as pb
from tests.cluster import BIN, Cluster, wait_until
from tui.app import GshareTop
from tui.cluster import ClusterView
from tui.jobs import JobsView


def text_of(renderable: object) -> str:
    console = Console(width=100, record=True, file=io.StringIO())
    console.print(renderable)
    return console.export_text()


async def settle(pilot: object, check: object, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        await pilot.pause(0.2)  # type: ignore[attr-defined]
        if check():  # type: ignore[operator]
            return
    raise AssertionError("the view did not show what was expected")


async def test_navigate_filter_and_cancel_a_running_job(cluster: Cluster, workdir: Path) -> None:
    running = cluster.submit("--wrap", "sleep 300", "--gpus", "2", "--name", "alpha", cwd=workdir)
    other = cluster.submit("--wrap", "sleep 300", "--gpus", "1", "--name", "beta", cwd=workdir)
    for job_id in (running, other):
        cluster.wait_state(job_id, "RUNNING")
    app = GshareTop(cluster.address)
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(pilot, lambda: app.model.synced and running in app.model.jobs)
        cluster_text = text_of(app.query_one(ClusterView).render_cluster())
        assert "node0 · up" in cluster_text and "node1 · up" in cluster_text
        assert f"{running} root" in cluster_text and "3/8 GPUs busy" in cluster_text
        await pilot.press("2")
        view = app.query_one(JobsView)
        await settle(pilot, lambda: view.table.row_count == 2)
        await pilot.press("slash", *"alpha", "enter")
        await settle(pilot, lambda: view.table.row_count == 1 and view.selected_job() == running)
        await pilot.press("c")
        await pilot.pause(0.3)
        await pilot.press("y")
        await settle(pilot, lambda: app.model.jobs[running].state == pb.CANCELLED, timeout=30)
        await settle(pilot, lambda: view.table.row_count == 0)  # gone from the live jobs
        await pilot.press("escape")
        await settle(pilot, lambda: view.table.row_count == 1)
        assert cluster.state(running) == "CANCELLED" and cluster.state(other) == "RUNNING"


async def test_a_refused_action_shows_the_servers_reason(cluster: Cluster, workdir: Path) -> None:
    job_id = cluster.submit("--wrap", "sleep 300", cwd=workdir)
    cluster.wait_state(job_id, "RUNNING")
    app = GshareTop(cluster.address)
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(pilot, lambda: job_id in app.model.jobs)
        await pilot.press("2")
        view = app.query_one(JobsView)
        await settle(pilot, lambda: view.selected_job() == job_id)
        await pilot.press("h")  # hold a running job: refused
        await pilot.press("y")
        await settle(
            pilot,
            lambda: any(
                "only a pending job can be held" in str(n.message) for n in app._notifications
            ),
        )


@pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux")
def test_gshare_top_in_a_real_terminal(cluster: Cluster, workdir: Path) -> None:
    job_id = cluster.submit("--wrap", "sleep 300", "--gpus", "2", "--name", "in-tmux", cwd=workdir)
    cluster.wait_state(job_id, "RUNNING")
    session = f"gshare-top-{job_id}-{int(time.time())}"
    subprocess.run(
        [
            "tmux",
            "new-session",
            "-d",
            "-s",
            session,
            "-x",
            "100",
            "-y",
            "30",
            f"GSHARE_ADDRESS={cluster.address} {BIN / 'gshare'} top",
        ],
        check=True,
    )

    def screen() -> str:
        return subprocess.run(
            ["tmux", "capture-pane", "-p", "-t", session], capture_output=True, text=True
        ).stdout

    try:
        wait_until("the cluster view", lambda: "GPUs busy" in screen() and "connected" in screen())
        assert f"{job_id} root" in screen()
        subprocess.run(["tmux", "send-keys", "-t", session, "2"], check=True)
        wait_until("the jobs view", lambda: "in-tmux" in screen() and "RUNNING" in screen())
        subprocess.run(["tmux", "send-keys", "-t", session, "q"], check=True)
        wait_until(
            "gshare top to exit",
            lambda: (
                subprocess.run(
                    ["tmux", "has-session", "-t", session], capture_output=True
                ).returncode
                != 0
            ),
        )
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)


async def test_an_admin_changes_a_priority_from_the_view(cluster: Cluster, workdir: Path) -> None:
    blocker = cluster.submit("--wrap", "sleep 300", "--gpus", "4", cwd=workdir)
    cluster.submit("--wrap", "sleep 300", "--gpus", "4", cwd=workdir)
    waiting = cluster.submit("--wrap", "true", "--gpus", "4", cwd=workdir)
    cluster.wait_state(blocker, "RUNNING")
    app = GshareTop(cluster.address)
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(pilot, lambda: waiting in app.model.jobs)
        await pilot.press("2", "slash", *str(waiting), "enter")
        view = app.query_one(JobsView)
        await settle(pilot, lambda: view.selected_job() == waiting)
        await pilot.press("P")
        await pilot.pause(0.3)
        await pilot.press("end", "backspace", "backspace", "7", "enter")
        await settle(pilot, lambda: app.model.jobs[waiting].spec.priority == 7)
    assert cluster.job(waiting).spec.priority == 7
    assert any(
        e.kind == "priority" and "0 -> 7 by root" in e.reason for e in cluster.job(waiting).events
    )
