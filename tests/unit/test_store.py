from __future__ import annotations

from pathlib import Path

import pytest

from schedulerd.jobstate import IllegalTransition, JobState
from schedulerd.model import JobRecord
from schedulerd.store import Change, NewJob, Store


def record(**kw: object) -> JobRecord:
    values: dict[str, object] = dict(
        job_id=0,
        user="alice",
        uid=1000,
        gid=1000,
        name="j",
        queue="default",
        gpus=1,
        priority=0,
        time_limit_s=0,
        cpus=0,
        mem_mb=0,
        workdir="/tmp",
        env={"A": "1"},
        output="",
        args=[],
        script_name="j.sh",
        state=JobState.PENDING,
        submit_time=1.0,
    )
    values.update(kw)
    return JobRecord(**values)  # type: ignore[arg-type]


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(f"sqlite:///{tmp_path / 'db.sqlite'}")


def test_submit_writes_jobs_and_their_events(store: Store) -> None:
    ids = store.submit_many(
        [NewJob(record(), b"#!/bin/sh\n"), NewJob(record(user="bob"), b"#!/bin/sh\ntrue\n")],
        now=5.0,
    )
    assert ids == [(1, True), (2, True)]
    assert store.script(2) == b"#!/bin/sh\ntrue\n"
    assert [(e.kind, e.to_state, e.actor) for e in store.events(2)] == [
        ("submit", "PENDING", "bob")
    ]
    assert {j.job_id for j in store.live_jobs()} == {1, 2}


def test_a_change_and_its_event_commit_together(store: Store) -> None:
    [(job_id, _)] = store.submit_many([NewJob(record(), b"#!/bin/sh\n")])
    store.apply(
        [Change(job_id, JobState.STARTING, "start", "scheduler", "placed", (("node", "a"),))],
        now=7.0,
    )
    job = store.job(job_id)
    assert job is not None and job.state is JobState.STARTING and job.node == "a"
    assert [e.to_state for e in store.events(job_id)] == ["PENDING", "STARTING"]


def test_an_illegal_change_writes_nothing_of_its_batch(store: Store) -> None:
    (a, _), (b, _) = store.submit_many(
        [NewJob(record(), b"#!/bin/sh\n"), NewJob(record(), b"#!/bin/sh\n")]
    )
    with pytest.raises(IllegalTransition):
        store.apply(
            [
                Change(a, JobState.HELD, "hold", "alice"),
                Change(
                    b, JobState.RUNNING, "running", "agent"
                ),  # PENDING -> RUNNING is not allowed
            ]
        )
    assert store.job(a).state is JobState.PENDING  # type: ignore[union-attr]
    assert len(store.events(a)) == 1


def test_state_survives_reopening(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    first = Store(url)
    [(job_id, _)] = first.submit_many([NewJob(record(), b"#!/bin/sh\n")])
    first.apply([Change(job_id, JobState.CANCELLED, "cancel", "alice")])
    first.close()
    again = Store(url)  # the migration is a no-op the second time
    assert again.job(job_id).state is JobState.CANCELLED  # type: ignore[union-attr]
    assert again.live_jobs() == []
    assert [j.job_id for j in again.finished_jobs()] == [job_id]


def test_sqlite_runs_in_wal_mode(store: Store) -> None:
    with store.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"


def test_the_ledger_keeps_usage_and_idle_time_per_user(store: Store) -> None:
    assert store.usage() == ({}, {}, 0.0)
    store.save_usage({"ann": 100.0, "bob": 5.0}, 1000.0, {"ann": 30.0, "cat": 2.0})
    usage, idle, at = store.usage()
    assert usage == {"ann": 100.0, "bob": 5.0, "cat": 0.0}
    assert idle == {"ann": 30.0, "bob": 0.0, "cat": 2.0} and at == 1000.0


def test_a_retried_submit_finds_its_first_job(store: Store) -> None:
    """The same (uid, key) makes one job, in one batch or across batches; another user's
    same key is their own."""
    key = "k-1"
    first = store.submit_many(
        [
            NewJob(record(submit_key=key), b"#!/bin/sh\n"),
            NewJob(record(submit_key=key), b"#!/bin/sh\n"),
            NewJob(record(), b"#!/bin/sh\n"),
        ]
    )
    assert first == [(1, True), (1, False), (2, True)]
    again = store.submit_many(
        [
            NewJob(record(submit_key=key), b"#!/bin/sh\n"),
            NewJob(record(uid=1001, user="bob", submit_key=key), b"#!/bin/sh\n"),
        ]
    )
    assert again == [(1, False), (3, True)]
    assert len(store.live_jobs()) == 3 and len(store.events(1)) == 1
    assert store.job(3).submit_key == key  # type: ignore[union-attr]
    assert store.job(2).submit_key == ""  # type: ignore[union-attr]


def test_the_cluster_id_is_made_once_with_the_database(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    first = Store(url).cluster_id()
    assert len(first) == 8 and Store(url).cluster_id() == first
    assert Store(f"sqlite:///{tmp_path / 'other.sqlite'}").cluster_id() != first


def test_a_jobs_gpu_types_survive_reopening_and_older_rows_mean_any(tmp_path: Path) -> None:
    import sqlite3

    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    first = Store(url)
    [(typed, _), (old, _)] = first.submit_many(
        [
            NewJob(record(gpu_types=["A100", "h100"]), b"#!/bin/sh\n"),
            NewJob(record(), b"#!/bin/sh\n"),
        ]
    )
    first.close()
    with sqlite3.connect(tmp_path / "db.sqlite") as db:  # as a row stored before 0008
        db.execute("UPDATE jobs SET gpu_types = NULL WHERE id = ?", (old,))
    again = Store(url)
    by_id = {j.job_id: j for j in again.live_jobs()}
    assert by_id[typed].gpu_types == ["A100", "h100"] and by_id[old].gpu_types == []
