"""Job arrays, dependencies and job references in Slurm's syntax, parsed in one place for
gsub (which checks before sending) and the scheduler (which checks again at its edge).

- an array: `0-99`, `0-99:4`, `1,3,7-9`, with `%K` for at most K tasks running (`0-999%16`);
- a dependency: `afterok:12:13,afterany:14` (all of them) or `afterok:12?afternotok:13` (any
  one), the kinds `after` (started), `afterany` (ended), `afterok` (completed),
  `afternotok` (ended otherwise) and `singleton`; an id is a job, a whole array (its id),
  or one task of an array (`12_7`);
- a job reference on the command line: `12` (a job, or a whole array), `12_7` (one task),
  `12_[3-5]` or `12_[1,3,7-9]` (some tasks).

Every refusal is a ValueError whose message is one line, starting with the option it is
about.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

DEFAULT_MAX_ARRAY_SIZE = 10_001
MAX_SPEC_CHARS = 4096  # an array or dependency as typed
MAX_DEPENDENCY_IDS = 1024
_MAX_ID = (1 << 63) - 1

DEPENDENCY_KINDS = ("after", "afterany", "afterok", "afternotok", "singleton")

_RANGE = re.compile(r"(\d+)(?:-(\d+)(?::(\d+))?)?")
_REF = re.compile(r"(\d+)(?:_(\d+|\[[0-9,:\-]+\]))?")


@dataclass(frozen=True, slots=True)
class ArraySpec:
    tasks: tuple[int, ...]  # sorted, distinct
    limit: int = 0  # at most this many running at once; 0: no limit

    @property
    def count(self) -> int:
        return len(self.tasks)

    def __str__(self) -> str:
        text = fold(self.tasks)
        return f"{text}%{self.limit}" if self.limit else text


def parse_array(text: str, max_size: int = DEFAULT_MAX_ARRAY_SIZE) -> ArraySpec:
    """`--array SPEC`: the task ids and the limit, or ValueError. Task ids run from 0 to
    max_size - 1, as Slurm's MaxArraySize says."""
    where = f"--array {text[:40]!r}"
    if not text or not text.strip():
        raise ValueError("--array: empty (e.g. --array 0-99 or --array 1,3,7-9%4)")
    if len(text) > MAX_SPEC_CHARS or not text.isprintable():
        raise ValueError(f"--array: at most {MAX_SPEC_CHARS} printable characters")
    body, percent, limit_text = text.strip().partition("%")
    limit = 0
    if percent:
        if not limit_text.isdigit():
            raise ValueError(f"{where}: %K needs a number of tasks, e.g. %16")
        limit = int(limit_text[:12])
        if limit < 1:
            raise ValueError(f"{where}: %{limit_text} would never run a task; use %1 or more")
    tasks: set[int] = set()
    for part in body.split(","):
        match = _RANGE.fullmatch(part.strip())
        if match is None:
            raise ValueError(f"{where}: {part.strip()!r} is not N, N-M or N-M:S")
        first, last, step = (int(g[:12]) if g else None for g in match.groups())
        assert first is not None
        last = first if last is None else last
        step = 1 if step is None else step
        if last < first:
            raise ValueError(f"{where}: {part.strip()!r} ends before it starts")
        if step < 1:
            raise ValueError(f"{where}: {part.strip()!r} has a step of 0")
        if last >= max_size:
            raise ValueError(
                f"{where}: task id {last} is over the largest allowed, {max_size - 1} "
                f"(max_array_size {max_size})"
            )
        tasks.update(range(first, last + 1, step))
        if len(tasks) > max_size:
            raise ValueError(f"{where}: more than max_array_size ({max_size}) tasks")
    if not tasks:
        raise ValueError(f"{where}: no tasks")
    return ArraySpec(tuple(sorted(tasks)), min(limit, len(tasks)) if limit else 0)


def fold(ids: tuple[int, ...] | list[int]) -> str:
    """Sorted distinct ids as Slurm writes them: `1,3,7-9`."""
    parts: list[str] = []
    start = prev = None
    for i in ids:
        if prev is not None and i == prev + 1:
            prev = i
            continue
        if start is not None:
            parts.append(str(start) if start == prev else f"{start}-{prev}")
        start = prev = i
    if start is not None:
        parts.append(str(start) if start == prev else f"{start}-{prev}")
    return ",".join(parts)


# ---------------------------------------------------------------- dependencies


@dataclass(frozen=True, slots=True)
class Target:
    job_id: int
    task: int | None = None  # one task of the array `job_id`

    def __str__(self) -> str:
        return str(self.job_id) if self.task is None else f"{self.job_id}_{self.task}"


@dataclass(frozen=True, slots=True)
class Term:
    kind: str
    targets: tuple[Target, ...] = ()

    def __str__(self) -> str:
        if self.kind == "singleton":
            return "singleton"
        return ":".join([self.kind, *(str(t) for t in self.targets)])


@dataclass(frozen=True, slots=True)
class Dependency:
    terms: tuple[Term, ...]
    any_of: bool = False  # `?`: any one term met is enough; else all must be

    def __str__(self) -> str:
        return ("?" if self.any_of else ",").join(str(t) for t in self.terms)

    @property
    def targets(self) -> tuple[Target, ...]:
        return tuple(t for term in self.terms for t in term.targets)


def parse_dependency(text: str) -> Dependency:
    """`--dependency SPEC`, or ValueError."""
    if not text or not text.strip():
        raise ValueError("--dependency: empty (e.g. --dependency afterok:12)")
    if len(text) > MAX_SPEC_CHARS or not text.isprintable():
        raise ValueError(f"--dependency: at most {MAX_SPEC_CHARS} printable characters")
    text = text.strip()
    if "," in text and "?" in text:
        raise ValueError("--dependency: use ',' (all) or '?' (any), not both")
    any_of = "?" in text
    terms = []
    count = 0
    for part in text.split("?" if any_of else ","):
        kind, *ids = part.strip().split(":")
        if kind not in DEPENDENCY_KINDS:
            raise ValueError(f"--dependency: {kind!r} is not one of {', '.join(DEPENDENCY_KINDS)}")
        if kind == "singleton":
            if ids:
                raise ValueError("--dependency: singleton takes no job ids")
            terms.append(Term(kind))
            continue
        if not ids:
            raise ValueError(f"--dependency: {kind} needs job ids, e.g. {kind}:12")
        targets = []
        for ref in ids:
            match = re.fullmatch(r"(\d{1,19})(?:_(\d{1,9}))?", ref)
            if match is None or int(match[1]) > _MAX_ID or int(match[1]) == 0:
                raise ValueError(f"--dependency: {ref!r} is not a job id (N or N_TASK)")
            targets.append(Target(int(match[1]), int(match[2]) if match[2] else None))
        count += len(targets)
        if count > MAX_DEPENDENCY_IDS:
            raise ValueError(f"--dependency: more than {MAX_DEPENDENCY_IDS} job ids")
        terms.append(Term(kind, tuple(targets)))
    return Dependency(tuple(terms), any_of)


# ---------------------------------------------------------------- job references


@dataclass(frozen=True, slots=True)
class JobRef:
    """What `gshare cancel 12_[3-5]` names: job (or array) `job_id`, and which of its tasks
    (None: the job itself, or the whole array)."""

    job_id: int
    tasks: tuple[int, ...] | None = None

    def __str__(self) -> str:
        if self.tasks is None:
            return str(self.job_id)
        if len(self.tasks) == 1:
            return f"{self.job_id}_{self.tasks[0]}"
        return f"{self.job_id}_[{fold(self.tasks)}]"


def parse_job_ref(text: str, max_size: int = 1 << 20) -> JobRef:
    match = _REF.fullmatch(text.strip()) if len(text) <= MAX_SPEC_CHARS else None
    if match is None or len(match[1]) > 19 or int(match[1]) > _MAX_ID:
        raise ValueError(f"{text[:40]!r} is not a job id (N, N_TASK or N_[TASKS])")
    job_id = int(match[1])
    if match[2] is None:
        return JobRef(job_id)
    if match[2].startswith("["):
        spec = parse_array(match[2][1:-1], max_size)
        return JobRef(job_id, spec.tasks)
    return JobRef(job_id, (int(match[2][:12]),))


def display_id(job_id: int, array_job_id: int, task: int) -> str:
    """`12_7` for task 7 of array 12, else the job's own id."""
    return f"{array_job_id}_{task}" if array_job_id else str(job_id)
