"""A job trace as `gshare sim` reads it: CSV rows checked one by one (each refusal names
its file and line), and the optional `after` column's dependencies between trace jobs."""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from gshare.arrays import DEPENDENCY_KINDS, MAX_SPEC_CHARS

COLUMNS = ("job_id", "submit_time_s", "duration_s", "gpus", "user", "group", "status")
# an optional eighth column: what the job waits for, as gsub --dependency says it but with
# the trace's job_id names: `afterok:prep`, `afterany:a:b`, `afterok:x?afternotok:y`
AFTER = "after"
STATUSES = {"completed", "failed", "killed"}


class TraceError(ValueError):
    """A trace file that cannot be read; the message names the file and line."""


@dataclass(frozen=True, slots=True)
class TraceJob:
    name: str
    submit: float
    duration: float
    gpus: int
    user: str
    group: str
    measured: bool = True  # False for jobs already running when the window opens
    after: str = ""  # its dependency, on other jobs of the trace by name ("": none)
    line: int = 0  # where it is in its file


def read_trace(path: Path, measured: bool = True) -> list[TraceJob]:
    try:
        handle = path.open(newline="", encoding="utf-8")
    except OSError as exc:
        raise TraceError(f"cannot read trace {path}: {exc.strerror}") from exc
    with handle:
        reader = csv.reader(handle)
        try:
            return _rows(path, reader, measured)
        except csv.Error as exc:  # e.g. a field over the csv module's size limit
            raise TraceError(f"{path}:{reader.line_num}: not CSV: {exc}") from None
        except UnicodeDecodeError:
            raise TraceError(f"{path}:{reader.line_num + 1}: not UTF-8 text") from None
        except OSError as exc:  # a directory, a device that fails to read
            raise TraceError(f"cannot read trace {path}: {exc.strerror}") from exc


def _rows(path: Path, reader: Iterator[list[str]], measured: bool) -> list[TraceJob]:
    jobs = []
    header = next(reader, None)
    names = tuple(h.strip() for h in header or ())
    if names not in (COLUMNS, (*COLUMNS, AFTER)):
        raise TraceError(
            f"{path}:1: the header must be {','.join(COLUMNS)} (and optionally ,{AFTER})"
        )
    width = len(names)
    for number, row in enumerate(reader, start=2):
        if not row or all(not c.strip() for c in row):
            continue
        if len(row) != width:
            raise TraceError(f"{path}:{number}: {len(row)} fields, expected {width}")
        name, submit, duration, gpus, user, group, status = (c.strip() for c in row[:7])
        after = row[7].strip() if width == 8 else ""
        if after:
            _after_terms(path, number, after)  # its syntax; its names once all are read
        jobs.append(
            TraceJob(
                _word(path, number, "job_id", name, empty_ok=True) or f"line{number}",
                _number(path, number, "submit_time_s", submit, minimum=0.0),
                _number(path, number, "duration_s", duration, minimum=0.0, strict=True),
                int(_number(path, number, "gpus", gpus, minimum=1.0, whole=True)),
                _word(path, number, "user", user),
                _word(path, number, "group", group, empty_ok=True),  # empty: see group_by
                measured,
                after,
                number,
            )
        )
        if status not in STATUSES:
            known = ", ".join(sorted(STATUSES))
            raise TraceError(f"{path}:{number}: status must be one of {known}, not {status!r}")
    return jobs


def _after_terms(path: Path | str, line: int, text: str) -> tuple[list[list[str]], bool]:
    """An `after` field: its terms (kind, then job names) and whether any one suffices."""
    if len(text) > MAX_SPEC_CHARS or ("," in text and "?" in text):
        raise TraceError(f"{path}:{line}: after: at most {MAX_SPEC_CHARS} characters, ',' or '?'")
    any_of = "?" in text
    terms = [t.strip().split(":") for t in text.split("?" if any_of else ",")]
    for term in terms:
        if term[0] not in DEPENDENCY_KINDS:
            raise TraceError(
                f"{path}:{line}: after: {term[0][:40]!r} is not one of "
                f"{', '.join(DEPENDENCY_KINDS)}"
            )
        if (term[0] == "singleton") != (len(term) == 1) or any(not n for n in term[1:]):
            raise TraceError(
                f"{path}:{line}: after: {':'.join(term)[:60]!r} needs job names "
                "(singleton takes none)"
            )
    return terms, any_of


def check_dependencies(jobs: Iterable[TraceJob], path: str = "trace") -> None:
    """Every name an `after` field gives is a job of the trace submitted before it (or at
    the same instant, above it), named once: a replay can only wait on the past."""
    ordered = sorted(jobs, key=lambda t: t.submit)
    seen: dict[str, int] = {}
    twice: set[str] = set()
    for job in ordered:
        if job.name in seen:
            twice.add(job.name)
        seen[job.name] = job.line
    done: set[str] = set()
    for job in ordered:
        if job.after:
            terms, _ = _after_terms(path, job.line, job.after)
            for name in (n for term in terms for n in term[1:]):
                if name in twice:
                    raise TraceError(f"{path}:{job.line}: after: job_id {name!r} is not unique")
                if name not in done:
                    where = "is not in the trace" if name not in seen else "is submitted later"
                    raise TraceError(f"{path}:{job.line}: after: job {name!r} {where}")
        done.add(job.name)


def _number(
    path: Path,
    line: int,
    column: str,
    text: str,
    minimum: float,
    strict: bool = False,
    whole: bool = False,
) -> float:
    try:
        value = float(text)
    except ValueError:
        raise TraceError(f"{path}:{line}: {column} must be a number, not {text!r}") from None
    if not math.isfinite(value) or value < minimum or (strict and value <= minimum):
        bound = f"more than {minimum:g}" if strict else f"at least {minimum:g}"
        raise TraceError(f"{path}:{line}: {column} must be {bound}, not {text!r}")
    if whole and value != int(value):
        raise TraceError(f"{path}:{line}: {column} must be a whole number, not {text!r}")
    return value


MAX_NAME = 256


def _word(path: Path, line: int, column: str, text: str, empty_ok: bool = False) -> str:
    if not text and not empty_ok:
        raise TraceError(f"{path}:{line}: empty {column}")
    if len(text) > MAX_NAME:
        raise TraceError(f"{path}:{line}: {column} longer than {MAX_NAME} characters")
    if not text.isprintable():
        raise TraceError(f"{path}:{line}: {column} has a control character: {text[:40]!r}")
    return text


# ------------------------------------------------------------------ fairness arithmetic


def _names(after: str) -> set[str]:
    terms, _ = _after_terms("trace", 0, after)
    return {n for term in terms for n in term[1:]}


def _dependency(after: str, name_job: Mapping[str, int]) -> str:
    """An `after` field in gsub's --dependency form, with the job ids of the names."""
    terms, any_of = _after_terms("trace", 0, after)
    parts = [":".join([term[0], *(str(name_job[n]) for n in term[1:])]) for term in terms]
    return ("?" if any_of else ",").join(parts)
