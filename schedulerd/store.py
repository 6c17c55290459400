"""Durable cluster state through SQLAlchemy 2: SQLite (WAL) by default, any SQLAlchemy URL.

Every job change is written with its event row in one transaction. The store is
synchronous; the daemon runs it on one dedicated thread, so writes are serialised. The
tables, and a job's record to and from its row, are in `schedulerd/tables.py`.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from sqlalchemy import JSON, Table, create_engine, event, func, insert, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import StaticPool

from schedulerd.jobstate import JobState, check_transition
from schedulerd.model import EventRecord, GpuInfo, JobRecord, NodeRecord
from schedulerd.tables import (
    ClusterRow,
    EventRow,
    JobGpuStatsRow,
    JobRow,
    NodeRow,
    UsageRow,
    _column,
    _record,
    _row,
    _submit_event,
)


def _insert_tasks(session: Session, arrays: list[tuple[int, NewJob]], now: float) -> None:
    """The tasks of arrays whose first tasks were just inserted, with their submit events.

    The hot path of a large array (10,000 tasks in one call): ids are given here, following
    the largest id in the table (this store is the only writer and holds the write
    transaction, so they are free), and the rows go to the driver's executemany as
    tuples, not through the ORM. A task row keeps neither the script nor the environment:
    both are its array's, read from the first task's row.
    """
    connection = session.connection()
    for array_id, n in arrays:
        n.record.array_job_id = array_id
    session.execute(update(JobRow), [{"id": a, "array_job_id": a} for a, _ in arrays])
    tasks = [(array_id, t) for array_id, n in arrays for t in n.tasks]
    if not tasks:
        return
    top = session.execute(select(func.max(JobRow.id))).scalar_one()
    table = cast(Table, JobRow.__table__)
    columns = [c.name for c in table.columns]
    events_table = cast(Table, EventRow.__table__)
    event_columns = ["job_id", "time", "kind", "from_state", "to_state", "actor", "reason"]
    rows: list[tuple[Any, ...]] = []
    events: list[tuple[Any, ...]] = []
    templates: dict[int, list[Any]] = {}
    where = {name: i for i, name in enumerate(columns)}
    for number, (array_id, task) in enumerate(tasks, start=1):
        job_id = top + number
        task.array_job_id, task.job_id = array_id, job_id
        template = templates.get(array_id)
        if template is None:  # the columns every task of this array shares
            values = _row(task, b"")
            values["env"] = {}
            template = [values.get(c) for c in columns]
            for c in columns:
                kind = table.columns[c].type
                if isinstance(kind, JSON) and template[where[c]] is not None:
                    template[where[c]] = json.dumps(template[where[c]])
            templates[array_id] = template
        row = template.copy()
        row[where["id"]] = job_id
        row[where["array_task_id"]] = task.array_task_id
        row[where["params"]] = json.dumps(task.params) if task.params else None
        row[where["submit_key"]] = None
        rows.append(tuple(row))
        events.append((job_id, now, "submit", "", task.state.value, task.user, task.reason))
    style = connection.dialect.paramstyle
    if style in ("qmark", "format", "pyformat"):
        mark = "?" if style == "qmark" else "%s"
        connection.exec_driver_sql(
            f"INSERT INTO {table.name} ({', '.join(columns)}) "
            f"VALUES ({', '.join([mark] * len(columns))})",
            rows,
        )
        connection.exec_driver_sql(
            f"INSERT INTO {events_table.name} ({', '.join(event_columns)}) "
            f"VALUES ({', '.join([mark] * len(event_columns))})",
            events,
        )
    else:  # a driver with another parameter style: the generic (slower) path
        connection.execute(insert(table), [dict(zip(columns, r, strict=True)) for r in rows])
        connection.execute(
            insert(events_table), [dict(zip(event_columns, e, strict=True)) for e in events]
        )
    if connection.dialect.name == "postgresql":  # ids given by hand: move the sequence on
        connection.exec_driver_sql(
            "SELECT setval(pg_get_serial_sequence('jobs', 'id'), (SELECT max(id) FROM jobs))"
        )


@dataclass(frozen=True, slots=True)
class NewJob:
    """A validated submission, before it has an id. An array: `record` is its first task
    and `tasks` the others, all stored in the same transaction; the array's id is the
    first task's, which alone stores the script."""

    record: JobRecord  # job_id is ignored
    script: bytes
    tasks: tuple[JobRecord, ...] = ()

    @property
    def records(self) -> tuple[JobRecord, ...]:
        return (self.record, *self.tasks)


@dataclass(frozen=True, slots=True)
class Change:
    """One state change of one job, with the fields it sets and the event that explains it."""

    job_id: int
    to_state: JobState
    kind: str
    actor: str
    reason: str = ""
    fields: tuple[tuple[str, Any], ...] = ()


class StoreError(RuntimeError):
    pass


class DatabaseFull(StoreError):
    """A write refused because the database (or its disk) is full; nothing was written."""

    def __init__(self) -> None:
        super().__init__("the scheduler's database is full (disk full?); nothing was changed")


def _is_full(exc: OperationalError) -> bool:
    # SQLITE_FULL's message; other databases' "disk full" errors name themselves alike
    text = str(exc.orig).lower()
    return any(t in text for t in ("database or disk is full", "disk full", "no space left"))


def default_url(state_dir: Path) -> str:
    return f"sqlite:///{state_dir / 'gshare.db'}"


def _sqlite_pragmas(synchronous: str) -> Any:
    def on_connect(dbapi_conn: Any, _record: Any) -> None:
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA synchronous={synchronous}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=5000")
        cursor.close()

    return on_connect


def make_engine(url: str, sqlite_synchronous: str = "FULL") -> Engine:
    if url.startswith("sqlite"):
        # in memory: one connection for every thread, or each would see a database of its own
        memory = url in ("sqlite://", "sqlite:///:memory:")
        engine = create_engine(
            url,
            connect_args={"check_same_thread": False},
            **({"poolclass": StaticPool} if memory else {}),
        )
        event.listen(engine, "connect", _sqlite_pragmas(sqlite_synchronous))
        return engine
    return create_engine(url, pool_pre_ping=True)


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest Alembic revision."""
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")


class Store:
    def __init__(self, url: str, sqlite_synchronous: str = "FULL") -> None:
        self.url = url
        self.engine = make_engine(url, sqlite_synchronous)
        migrate(self.engine)
        self._session = sessionmaker(self.engine, expire_on_commit=False)

    def close(self) -> None:
        self.engine.dispose()

    @contextlib.contextmanager
    def _writing(self) -> Iterator[Session]:
        """A write transaction; a full disk is told as DatabaseFull, not as the driver's error."""
        try:
            with self._session.begin() as session:
                yield session
        except OperationalError as exc:
            if _is_full(exc):
                raise DatabaseFull() from exc
            raise

    # ------------------------------------------------------------ jobs

    def submit_many(
        self, jobs: Sequence[NewJob], now: float | None = None
    ) -> list[tuple[int, bool]]:
        """Insert the jobs and their submit events in one transaction; return each one's id
        and whether it is new. A job whose (uid, submit key) is already stored, or comes
        earlier in the same batch, is a retried submit: it gets the first one's id.

        Core bulk inserts (one statement per table), not ORM units of work: this is the
        hot path of every submission.
        """
        now = time.time() if now is None else now
        with self._writing() as session:
            known: dict[tuple[int, str], int] = {}
            keyed = [n.record for n in jobs if n.record.submit_key]
            if keyed:
                found = session.execute(
                    select(JobRow.uid, JobRow.submit_key, JobRow.id).where(
                        JobRow.submit_key.in_({r.submit_key for r in keyed})
                    )
                )
                known = {(uid, key): job_id for uid, key, job_id in found if key}
            fresh: list[NewJob] = []
            slot: list[tuple[int, str] | None] = []  # per job: the key of a retry, or None
            batch_keys: set[tuple[int, str]] = set()
            for n in jobs:
                key = (n.record.uid, n.record.submit_key)
                if n.record.submit_key and (key in known or key in batch_keys):
                    slot.append(key)
                    continue
                if n.record.submit_key:
                    batch_keys.add(key)
                fresh.append(n)
                slot.append(None)
            rows = [_row(n.record, n.script) for n in fresh]
            ids: list[int] = []
            if rows:
                result = session.execute(
                    insert(JobRow).returning(JobRow.id, sort_by_parameter_order=True), rows
                )
                ids = [row[0] for row in result]
                events = [
                    _submit_event(job_id, n.record, now)
                    for job_id, n in zip(ids, fresh, strict=True)
                ]
                session.execute(insert(EventRow), events)
                arrays = [
                    (job_id, n) for job_id, n in zip(ids, fresh, strict=True) if n.record.array_spec
                ]
                if arrays:
                    _insert_tasks(session, arrays, now)
        for n, job_id in zip(fresh, ids, strict=True):
            if n.record.submit_key:
                known[(n.record.uid, n.record.submit_key)] = job_id
        made = iter(ids)
        return [(known[key], False) if key else (next(made), True) for key in slot]

    def cluster_id(self) -> str:
        """The id of this cluster's database (made by migration 0006)."""
        with self._session() as session:
            row = session.execute(select(ClusterRow.id)).first()
            if row is None:
                raise StoreError("the store has no cluster id (migration 0006 missing)")
            return str(row[0])

    def apply(self, changes: Iterable[Change], now: float | None = None) -> list[JobRecord]:
        """Apply state changes, each with its event, in one transaction.

        Raises IllegalTransition (and writes nothing) if any change is not allowed.
        """
        now = time.time() if now is None else now
        out: list[JobRecord] = []
        with self._writing() as session:
            for change in changes:
                row = session.get(JobRow, change.job_id)
                if row is None:
                    raise StoreError(f"no job {change.job_id}")
                current = JobState(row.state)
                if change.to_state is not current:  # same state: an annotation event
                    check_transition(change.job_id, current, change.to_state)
                for key, value in change.fields:
                    setattr(row, key, _column(key, value))
                row.state = change.to_state.value
                session.add(
                    EventRow(
                        job_id=row.id,
                        time=now,
                        kind=change.kind,
                        from_state=current.value,
                        to_state=change.to_state.value,
                        actor=change.actor,
                        reason=change.reason,
                    )
                )
                out.append(_record(row))
        return out

    def set_fields(self, job_id: int, values: dict[str, Any]) -> None:
        """Fields that change often and need no event (a handed-off job's Slurm state)."""
        with self._writing() as session:
            row = session.get(JobRow, job_id)
            if row is None:
                raise StoreError(f"no job {job_id}")
            for key, value in values.items():
                setattr(row, key, value)

    def job(self, job_id: int) -> JobRecord | None:
        with self._session() as session:
            row = session.get(JobRow, job_id)
            return _record(row) if row is not None else None

    def script(self, job_id: int) -> bytes:
        """The job's script; an array task's is its array's (stored once, with the first)."""
        with self._session() as session:
            row = session.get(JobRow, job_id)
            if row is None:
                raise StoreError(f"no job {job_id}")
            if row.array_job_id and row.array_job_id != row.id:
                head = session.get(JobRow, row.array_job_id)
                if head is None:
                    raise StoreError(f"no array {row.array_job_id} for job {job_id}")
                return head.script
            return row.script

    def outcomes(self, ids: Iterable[int]) -> list[JobRecord]:
        """The ended jobs among `ids`, and the ended tasks of the arrays among them: what
        the live jobs' dependencies are about, at start-up."""
        wanted = sorted(set(ids))
        if not wanted:
            return []
        finals = [s.value for s in JobState if s.final]
        out: list[JobRecord] = []
        with self._session() as session:
            for start in range(0, len(wanted), 500):
                chunk = wanted[start : start + 500]
                query = select(JobRow).where(
                    JobRow.state.in_(finals),
                    JobRow.id.in_(chunk) | JobRow.array_job_id.in_(chunk),
                )
                out += [_record(r) for r in session.scalars(query)]
        return out

    def exists(self, ids: Iterable[int]) -> set[int]:
        """Which of `ids` are jobs (ended or not)."""
        wanted = sorted(set(ids))
        found: set[int] = set()
        with self._session() as session:
            for start in range(0, len(wanted), 500):
                chunk = wanted[start : start + 500]
                found.update(session.scalars(select(JobRow.id).where(JobRow.id.in_(chunk))))
        return found

    def task_job_id(self, array_job_id: int, task: int) -> int | None:
        """The job id of task `task` of array `array_job_id`, if there is one."""
        query = select(JobRow.id).where(
            JobRow.array_job_id == array_job_id, JobRow.array_task_id == task
        )
        with self._session() as session:
            return session.scalars(query).first()

    def array_tasks(self, array_job_id: int) -> list[JobRecord]:
        """Every task of an array, ended or not."""
        query = select(JobRow).where(JobRow.array_job_id == array_job_id).order_by(JobRow.id)
        with self._session() as session:
            return [_record(r) for r in session.scalars(query)]

    def live_jobs(self) -> list[JobRecord]:
        """The jobs not ended; an array's tasks get its environment (kept once, with the
        first task) back, one shared dict per array."""
        finals = [s.value for s in JobState if s.final]
        with self._session() as session:
            rows = session.scalars(select(JobRow).where(JobRow.state.not_in(finals)))
            jobs = [_record(r) for r in rows]
            heads = sorted({j.array_job_id for j in jobs if j.array_job_id})
            envs: dict[int, dict[str, str]] = {}
            for start in range(0, len(heads), 500):
                query = select(JobRow.id, JobRow.env).where(
                    JobRow.id.in_(heads[start : start + 500])
                )
                envs.update({job_id: env for job_id, env in session.execute(query)})
        for job in jobs:
            if job.array_job_id and job.array_job_id != job.job_id:
                job.env = envs.get(job.array_job_id, job.env)
        return jobs

    def finished_jobs(self, limit: int = 1000, users: Sequence[str] = ()) -> list[JobRecord]:
        finals = [s.value for s in JobState if s.final]
        query = select(JobRow).where(JobRow.state.in_(finals))
        if users:
            query = query.where(JobRow.user.in_(list(users)))
        query = query.order_by(JobRow.id.desc()).limit(limit)
        with self._session() as session:
            return [_record(r) for r in session.scalars(query)]

    def events(self, job_id: int) -> list[EventRecord]:
        query = select(EventRow).where(EventRow.job_id == job_id).order_by(EventRow.id)
        with self._session() as session:
            return [
                EventRecord(
                    e.id, e.job_id, e.time, e.kind, e.from_state, e.to_state, e.actor, e.reason
                )
                for e in session.scalars(query)
            ]

    # ------------------------------------------------------------ usage

    def usage(self) -> tuple[dict[str, float], dict[str, float], float]:
        """The ledger: decayed GPU-seconds and idle GPU-seconds per user, and when it was
        last written (0 if never)."""
        with self._session() as session:
            rows = list(session.scalars(select(UsageRow)))
        return (
            {r.user: r.gpu_seconds for r in rows},
            {r.user: r.idle_gpu_seconds for r in rows},
            max((r.updated for r in rows), default=0.0),
        )

    def save_usage(
        self, usage: dict[str, float], at: float, idle: dict[str, float] | None = None
    ) -> None:
        idle = idle or {}
        with self._writing() as session:
            for user in set(usage) | set(idle):
                session.merge(
                    UsageRow(
                        user=user,
                        gpu_seconds=usage.get(user, 0.0),
                        updated=at,
                        idle_gpu_seconds=idle.get(user, 0.0),
                    )
                )

    def save_gpu_stats(
        self, job_id: int, util_avg: float, mem_peak_mb: int, sampled_s: float, idle_gpu_s: float
    ) -> None:
        with self._writing() as session:
            session.merge(
                JobGpuStatsRow(
                    job_id=job_id,
                    util_avg=util_avg,
                    mem_peak_mb=mem_peak_mb,
                    sampled_s=sampled_s,
                    idle_gpu_s=idle_gpu_s,
                )
            )

    def gpu_stats(self, job_id: int) -> tuple[float, int, float, float] | None:
        """(average utilization %, peak memory MB, seconds sampled, idle GPU-seconds)."""
        with self._session() as session:
            row = session.get(JobGpuStatsRow, job_id)
            if row is None:
                return None
            return row.util_avg, row.mem_peak_mb, row.sampled_s, row.idle_gpu_s

    # ------------------------------------------------------------ nodes

    def save_node(self, node: NodeRecord) -> None:
        gpus = [
            {
                "index": g.index,
                "uuid": g.uuid,
                "model": g.model,
                "memory_mb": g.memory_mb,
                "nvlink_peers": g.nvlink_peers,
            }
            for g in node.gpus
        ]
        with self._writing() as session:
            row = session.get(NodeRow, node.name)
            if row is None:
                row = NodeRow(name=node.name)
                session.add(row)
            row.gpus = gpus
            row.cpus = node.cpus
            row.mem_mb = node.mem_mb
            row.drained = node.drained
            row.reason = node.reason
            row.last_seen = node.last_seen
            row.gpu_health = {str(i): why for i, why in node.gpu_health.items()}

    def nodes(self) -> list[NodeRecord]:
        with self._session() as session:
            return [
                NodeRecord(
                    name=r.name,
                    gpus=[GpuInfo(**g) for g in r.gpus],
                    cpus=r.cpus,
                    mem_mb=r.mem_mb,
                    drained=r.drained,
                    reason=r.reason,
                    last_seen=r.last_seen,
                    gpu_health={int(i): why for i, why in (r.gpu_health or {}).items()},
                )
                for r in session.scalars(select(NodeRow))
            ]
