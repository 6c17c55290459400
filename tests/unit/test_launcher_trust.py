"""What the launcher takes from a job's checkpoint log (written by the job, read by root),
how it keeps its state dir, and the lease arithmetic."""

from __future__ import annotations

import json
import os
import shutil
import stat
import threading
from pathlib import Path

import pytest

from nodeagent import lease
from nodeagent.jobfiles import CHECKPOINT_LOG, LOG_CHUNK, OWNER_DIR
from nodeagent.launcher import Launcher
from nodeagent.runner import JobProcess

LINE = json.dumps({"time": 1.0, "size": 10, "step": 3}) + "\n"


def launcher_with_job(tmp_path: Path) -> tuple[Launcher, JobProcess, list[float], Path]:
    steps: list[float] = []
    launcher = Launcher(tmp_path / "state", lambda p: None, lambda j, d: steps.append(d["step"]))
    launcher.report_every_s = 0.0
    proc = JobProcess(1, launcher.jobs_dir / "1", exited=True, owner_uid=os.geteuid())
    (proc.dir / OWNER_DIR).mkdir(parents=True)
    launcher.jobs[1] = proc
    return launcher, proc, steps, proc.dir / OWNER_DIR / CHECKPOINT_LOG


def test_a_checkpoint_log_is_read_line_by_line(tmp_path: Path) -> None:
    launcher, _, steps, log = launcher_with_job(tmp_path)
    log.write_text(LINE + '{"time": 2, "size": 1')
    launcher.poll()
    assert steps == [3.0]
    with log.open("a") as f:
        f.write(', "step": 4}\n')
    launcher.poll()
    assert steps == [3.0, 4.0]


@pytest.mark.parametrize("kind", ["symlink", "fifo", "hardlink", "directory"])
def test_a_checkpoint_log_that_is_no_plain_file_of_its_own_gives_no_checkpoints(
    tmp_path: Path, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    launcher, _, steps, log = launcher_with_job(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.write_text(LINE)
    if kind == "symlink":
        log.symlink_to(elsewhere)
    elif kind == "fifo":
        os.mkfifo(log)  # opened without blocking, then refused
    elif kind == "hardlink":
        os.link(elsewhere, log)
    else:
        log.mkdir()
    launcher.poll()
    launcher.poll()
    assert steps == []
    refusals = [r for r in caplog.records if "checkpoint log is not read" in r.getMessage()]
    assert len(refusals) == 1  # said once, not at every poll


def test_a_flood_of_checkpoints_is_told_as_the_newest_one_at_most_once_a_second(
    tmp_path: Path,
) -> None:
    launcher, _, steps, log = launcher_with_job(tmp_path)
    launcher.report_every_s = 3600.0
    log.write_text(
        "".join(json.dumps({"time": 1, "size": 1, "step": i}) + "\n" for i in range(5000))
    )
    launcher.poll()
    with log.open("a") as f:
        f.write(LINE)
    launcher.poll()
    assert steps == [4999.0]  # the newest of the first poll; the next waits its turn


@pytest.mark.parametrize(
    "line",
    [
        '{"time": 1, "size": 1e999, "step": 0}',  # inf
        '{"time": NaN, "size": 1, "step": 0}',
        '{"time": 1, "size": 1e30, "step": 0}',  # over int64
        '{"time": 1, "size": 1, "step": -5}',
        '{"time": 1, "size": 1, "step": "many"}',
        "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[",
    ],
)
def test_a_checkpoint_line_out_of_range_is_passed_over_and_the_agent_carries_on(
    tmp_path: Path, line: str
) -> None:
    launcher, _, steps, log = launcher_with_job(tmp_path)
    log.write_text(line + "\n" + LINE)
    launcher.poll()
    assert steps == [3.0]


def test_an_overlong_line_is_passed_over(tmp_path: Path) -> None:
    launcher, proc, steps, log = launcher_with_job(tmp_path)
    log.write_bytes(b"x" * (LOG_CHUNK + 10) + b"\n" + LINE.encode())
    for _ in range(3):
        launcher.poll()
    assert steps == [3.0] and proc.checkpoint_offset == LOG_CHUNK + 11 + len(LINE)


def test_the_state_dir_is_nobody_else_s_to_write(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    state.chmod(0o777)
    launcher = Launcher(state, lambda p: None)
    assert stat.S_IMODE(state.stat().st_mode) == 0o755
    assert stat.S_IMODE(launcher.jobs_dir.stat().st_mode) == 0o711


def test_the_lease_runs_out_a_heartbeat_before_the_scheduler_s() -> None:
    assert lease.window(60, 5) == 55 and lease.term_wait(60, 5) == 5
    assert lease.window(4, 0.5) == 3.5 and lease.term_wait(4, 0.5) == 1
    # never so short that the next heartbeat's answer comes too late
    assert lease.window(2, 1) == 1.5 and lease.window(5, 4) == 5


def test_a_lease_record_only_moves_forward(tmp_path: Path) -> None:
    record = tmp_path / "lease.json"
    assert lease.read(record)[0] == 0  # none: run out
    clock = [100.0]
    held = lease.Lease(record, clock=lambda: clock[0])
    held.renew(100.0, 4, 0.5)
    assert lease.read(record) == (103.5, 1.0)
    held.renew(90.0, 4, 0.5)  # a late answer to an old heartbeat
    assert lease.read(record)[0] == 103.5 and stat.S_IMODE(record.stat().st_mode) == 0o600
    record.write_text(json.dumps({"boot_id": "another boot", "deadline": 1e12}))
    assert lease.read(record)[0] == 0


def test_forget_deletes_a_jobs_directory_off_the_callers_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A job's directory may hold anything the job made: forget() only renames it, and the
    deleting (and the cgroup's removal) happen on the cleaner's thread, never the loop's."""
    launcher, proc, _, _ = launcher_with_job(tmp_path)
    for i in range(100):
        (proc.dir / OWNER_DIR / f"f{i}").touch()
    threads: list[str] = []
    real_rmtree = shutil.rmtree

    def rmtree(path: Path, ignore_errors: bool = False) -> None:
        threads.append(threading.current_thread().name)
        real_rmtree(path, ignore_errors)

    monkeypatch.setattr(shutil, "rmtree", rmtree)
    removed: list[str] = []

    def remove(job_id: int) -> bool:
        removed.append(threading.current_thread().name)
        return True

    monkeypatch.setattr(launcher.confinement, "remove", remove)
    launcher.forget(1)
    assert not proc.dir.exists()  # out of the way at once
    launcher.drain_cleanup()
    assert list(launcher.trash_dir.iterdir()) == []
    me = threading.current_thread().name
    assert threads and me not in threads
    assert removed and me not in removed


def test_a_relaunch_takes_the_cgroup_back_from_the_cleaner(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A job launched here again before the cleaner got to it: the cleaner leaves its
    (new) cgroup alone."""
    launcher, _, _, _ = launcher_with_job(tmp_path)
    removed: list[int] = []

    def remove(job_id: int) -> bool:
        removed.append(job_id)
        return True

    monkeypatch.setattr(launcher.confinement, "remove", remove)
    blocker = threading.Event()
    launcher._cleaner.submit(blocker.wait, 30)
    launcher.forget(1)
    with launcher._cleaning_lock:
        launcher._cleaning.discard(1)  # what launch() does for a job it runs again
    blocker.set()
    launcher.drain_cleanup()
    assert removed == []
