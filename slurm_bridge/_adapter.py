"""What an API-version adapter does, what it promises to use of the API (its contract,
checked against the spec slurmrestd serves), and the parsing every version shares.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from slurm_bridge._models import SlurmJob, SlurmJobSpec, SlurmNode, SlurmPartition

Endpoint = Literal["ping", "nodes", "partitions", "jobs", "job", "submit", "cancel"]


@dataclass(frozen=True)
class ApiUse:
    """One endpoint as an adapter uses it: the fields it writes in the request body and
    reads from the 200 answer, as dotted paths where `[]` steps into an array's items
    (`jobs[].exit_code`). A contract test checks each against the served OpenAPI spec."""

    endpoint: Endpoint
    method: Literal["GET", "POST", "DELETE"]
    path: str
    request_fields: tuple[str, ...] = ()
    response_fields: tuple[str, ...] = ()


class Adapter(Protocol):
    """Translates between the bridge's types and one REST API version's JSON."""

    version: str
    contract: tuple[ApiUse, ...]

    def submit_body(self, spec: SlurmJobSpec) -> dict[str, Any]: ...

    def submit_answer(self, doc: Any) -> int: ...

    def pings(self, doc: Any) -> dict[str, str]: ...

    def jobs(self, doc: Any) -> list[SlurmJob]: ...

    def nodes(self, doc: Any) -> list[SlurmNode]: ...

    def partitions(self, doc: Any) -> list[SlurmPartition]: ...


def path_of(adapter: Adapter, endpoint: Endpoint, **params: object) -> str:
    use = next(u for u in adapter.contract if u.endpoint == endpoint)
    return use.path.format(**params)


def method_of(adapter: Adapter, endpoint: Endpoint) -> str:
    return next(u.method for u in adapter.contract if u.endpoint == endpoint)


# ------------------------------------------------------------ shared parsing


def items(doc: Any, key: str) -> list[Mapping[str, Any]]:
    """The list of records under `key` in an answer; records that are not objects are
    dropped rather than failing the whole answer."""
    found = doc.get(key) if isinstance(doc, Mapping) else None
    return [x for x in found or () if isinstance(x, Mapping)]


def text(record: Mapping[str, Any], key: str) -> str:
    value = record.get(key)
    return value if isinstance(value, str) else ""


def split_outside_parens(value: str) -> Iterator[str]:
    """Split at commas that are not inside (...) or [...]: `gpu:2(IDX:0-1,3),nic:1`."""
    depth = 0
    start = 0
    for i, ch in enumerate(value):
        if ch in "([":
            depth += 1
        elif ch in ")]":
            depth = max(0, depth - 1)
        elif ch == "," and depth == 0:
            yield value[start:i]
            start = i + 1
    yield value[start:]


_GRES_GPU = re.compile(r"^(?:gres[:/])?gpu(?::[^:()]+)?:(\d+)(?:\(.*\))?$")
_TRES_GPU = re.compile(r"^gres/gpu=(\d+)$")  # the untyped total, not a per-type count


def gres_gpus(value: str | None) -> int:
    """GPUs in a GRES string: `gpu:4`, `gpu:a100:2(S:0-1)`, `gres:gpu:2`, `gres/gpu:2`,
    `gpu:2(IDX:0-1)`; typed and untyped entries of one node are summed."""
    total = 0
    for entry in split_outside_parens(value or ""):
        match = _GRES_GPU.match(entry.strip())
        if match:
            total += int(match.group(1))
    return total


def tres_gpus(value: str | None) -> int | None:
    """GPUs in a TRES string (`cpu=1,node=1,gres/gpu=2`); None when it names none."""
    for entry in (value or "").split(","):
        match = _TRES_GPU.match(entry.strip())
        if match:
            return int(match.group(1))
    return None


_HOSTLIST = re.compile(r"^(?P<prefix>[^\[]*)\[(?P<ranges>[^\]]+)\](?P<suffix>.*)$")


def expand_hostlist(value: str | None) -> tuple[str, ...]:
    """`node[01-03,7],gpu5` → node01 node02 node03 node7 gpu5 (one bracket per name)."""
    names: list[str] = []
    for part in split_outside_parens(value or ""):
        part = part.strip()
        if not part or part == "(null)":
            continue
        match = _HOSTLIST.match(part)
        if match is None:
            names.append(part)
            continue
        for span in match["ranges"].split(","):
            first, _, last = span.partition("-")
            width = len(first)
            for n in range(int(first), int(last or first) + 1):
                names.append(f"{match['prefix']}{n:0{width}d}{match['suffix']}")
    return tuple(names)


def output_path(pattern: str, *, cwd: str, job_id: int, name: str, user: str) -> str:
    """Where Slurm writes a job's output: `pattern` (default `slurm-%j.out`) relative to the
    job's working directory, with %j, %x, %u and %% expanded. Other patterns (%N, %A, ...)
    stay as they are: they depend on where the job ran."""
    pattern = pattern or "slurm-%j.out"
    values = {"j": str(job_id), "x": name, "u": user, "%": "%"}
    expanded = re.sub(r"%(\d*)([jxu%])", lambda m: _pad(values[m[2]], m[1], m[2]), pattern)
    if expanded.startswith("/") or not cwd:
        return expanded
    return f"{cwd.rstrip('/')}/{expanded}"


def _pad(value: str, width: str, kind: str) -> str:
    return value.zfill(int(width)) if width and kind == "j" else value


def epoch_or_none(value: Any) -> float | None:
    """Slurm's 0 means "not yet"; v0.0.40+ wraps numbers in {set, infinite, number}."""
    number = no_val(value)
    return float(number) if number else None


def no_val(value: Any) -> int | None:
    """A plain number, or v0.0.40+'s {set, infinite, number}; None when unset/infinite."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return int(value)
    if isinstance(value, Mapping):
        if value.get("infinite") or not value.get("set", True):
            return None
        return no_val(value.get("number"))
    return None
