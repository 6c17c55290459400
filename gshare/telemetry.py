"""The telemetry wire format: MQTT topics and the JSON payloads on them (schema version 1).

Agents publish under ``gshare/v1/nodes/{node}/``:

- ``status`` (retained, QoS 1): online with its GPU count; the agent's last will says
  offline, so a crashed agent is seen as gone.
- ``gpus/{index}`` (QoS 0): one GPU's sample — utilization, memory, temperature, power,
  clocks, ECC counts, recent Xid events and the processes on it with their memory.
- ``host`` (QoS 0): the node's CPU, load and memory.
- ``events`` (QoS 1): health events (a double-bit ECC error, a fatal Xid), which the
  scheduler acts on by draining the GPU.

Every payload carries ``"schema": 1``; a reader drops what it cannot parse instead of
guessing. Parsing is strict on types and bounded on sizes, since anyone who can publish
to the broker can send anything.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

SCHEMA = 1
PREFIX = "gshare/v1/nodes"
MAX_PAYLOAD = 64 * 1024  # bytes; a sample is about 1 KiB
MAX_PROCESSES = 256
MAX_NAME = 253

# Xid codes after which a GPU needs a reset or a look by an admin: double-bit ECC (48),
# internal micro-controller halt (62), ECC page retirement failure (64), NVLink (74),
# fallen off the bus (79), uncontained ECC (95), GSP errors (119, 120).
FATAL_XIDS = frozenset({48, 62, 64, 74, 79, 95, 119, 120})


class TelemetryError(ValueError):
    """A topic or payload that does not follow the schema."""


def status_topic(node: str) -> str:
    return f"{PREFIX}/{node}/status"


def gpu_topic(node: str, index: int) -> str:
    return f"{PREFIX}/{node}/gpus/{index}"


def host_topic(node: str) -> str:
    return f"{PREFIX}/{node}/host"


def events_topic(node: str) -> str:
    return f"{PREFIX}/{node}/events"


@dataclass(frozen=True, slots=True)
class GpuProcess:
    pid: int
    used_mb: int
    job_id: int = 0  # 0: not a process of any gshare job on this node
    name: str = ""


@dataclass(frozen=True, slots=True)
class XidEvent:
    code: int
    time: float


@dataclass(frozen=True, slots=True)
class GpuSample:
    node: str
    index: int
    uuid: str
    time: float
    util_pct: float
    mem_used_mb: int
    mem_total_mb: int
    temp_c: float = 0.0
    power_w: float = 0.0
    sm_clock_mhz: int = 0
    mem_clock_mhz: int = 0
    ecc_sbe: int = 0  # volatile (since the driver loaded) corrected errors
    ecc_dbe: int = 0  # volatile uncorrected (double-bit) errors
    xids: tuple[XidEvent, ...] = ()
    processes: tuple[GpuProcess, ...] = ()


@dataclass(frozen=True, slots=True)
class HostSample:
    node: str
    time: float
    cpu_pct: float
    load1: float
    mem_used_mb: int
    mem_total_mb: int


@dataclass(frozen=True, slots=True)
class NodeStatus:
    node: str
    online: bool
    time: float
    gpus: int = 0
    agent_version: str = ""
    interval_s: float = 0.0


@dataclass(frozen=True, slots=True)
class HealthEvent:
    node: str
    index: int
    uuid: str
    time: float
    kind: str  # "ecc_dbe" or "xid"
    code: int = 0  # the Xid, or the new double-bit error count
    detail: str = field(default="")

    def describe(self) -> str:
        if self.kind == "ecc_dbe":
            return f"double-bit ECC errors on GPU {self.index} (count {self.code})"
        return f"Xid {self.code} on GPU {self.index}" + (f": {self.detail}" if self.detail else "")


# ------------------------------------------------------------------ encoding


def encode(obj: GpuSample | HostSample | NodeStatus | HealthEvent) -> bytes:
    data = asdict(obj)
    data["schema"] = SCHEMA
    return json.dumps(data, separators=(",", ":")).encode()


# ------------------------------------------------------------------ decoding


def _load(payload: bytes) -> dict[str, Any]:
    if len(payload) > MAX_PAYLOAD:
        raise TelemetryError(f"payload of {len(payload)} bytes is over {MAX_PAYLOAD}")
    try:
        data = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TelemetryError(f"not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise TelemetryError("not a JSON object")
    if data.get("schema") != SCHEMA:
        raise TelemetryError(f"schema {data.get('schema')!r}, expected {SCHEMA}")
    return data


def _num(data: dict[str, Any], key: str, default: float | None = None) -> float:
    value = data.get(key, default)
    if (
        value is None
        or isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
    ):
        raise TelemetryError(f"{key} must be a number")
    return float(value)


MAX_INT = 1 << 53  # more than any real count, and safe in every store and float


def _int(data: dict[str, Any], key: str, default: int | None = None) -> int:
    value = data.get(key, default)
    if value is None or isinstance(value, bool) or not isinstance(value, int):
        raise TelemetryError(f"{key} must be an integer")
    if not -MAX_INT < value < MAX_INT:
        raise TelemetryError(f"{key} is out of range")
    return value


def _str(data: dict[str, Any], key: str, default: str | None = None, limit: int = 256) -> str:
    value = data.get(key, default)
    if not isinstance(value, str) or len(value) > limit:
        raise TelemetryError(f"{key} must be a string of at most {limit} characters")
    return value


def _node(data: dict[str, Any], topic_node: str) -> str:
    node = _str(data, "node", limit=MAX_NAME)
    if node != topic_node:
        raise TelemetryError(f"node {node!r} published on the topic of node {topic_node!r}")
    return node


def parse_gpu(payload: bytes, topic_node: str, topic_index: int) -> GpuSample:
    d = _load(payload)
    index = _int(d, "index")
    if index != topic_index:
        raise TelemetryError(f"GPU {index} published on the topic of GPU {topic_index}")
    util = _num(d, "util_pct")
    if not 0 <= util <= 100:
        raise TelemetryError("util_pct must be within 0..100")
    procs = d.get("processes", [])
    xids = d.get("xids", [])
    if not isinstance(procs, list) or len(procs) > MAX_PROCESSES:
        raise TelemetryError(f"processes must be a list of at most {MAX_PROCESSES}")
    if not isinstance(xids, list) or len(xids) > MAX_PROCESSES:
        raise TelemetryError(f"xids must be a list of at most {MAX_PROCESSES}")
    try:
        processes = tuple(
            GpuProcess(
                _int(p, "pid"),
                _int(p, "used_mb", 0),
                _int(p, "job_id", 0),
                _str(p, "name", ""),
            )
            for p in procs
        )
        events = tuple(XidEvent(_int(x, "code"), _num(x, "time")) for x in xids)
    except (TypeError, AttributeError) as exc:
        raise TelemetryError("processes and xids must be lists of objects") from exc
    return GpuSample(
        node=_node(d, topic_node),
        index=index,
        uuid=_str(d, "uuid"),
        time=_num(d, "time"),
        util_pct=util,
        mem_used_mb=_int(d, "mem_used_mb"),
        mem_total_mb=_int(d, "mem_total_mb"),
        temp_c=_num(d, "temp_c", 0.0),
        power_w=_num(d, "power_w", 0.0),
        sm_clock_mhz=_int(d, "sm_clock_mhz", 0),
        mem_clock_mhz=_int(d, "mem_clock_mhz", 0),
        ecc_sbe=_int(d, "ecc_sbe", 0),
        ecc_dbe=_int(d, "ecc_dbe", 0),
        xids=events,
        processes=processes,
    )


def parse_host(payload: bytes, topic_node: str) -> HostSample:
    d = _load(payload)
    return HostSample(
        node=_node(d, topic_node),
        time=_num(d, "time"),
        cpu_pct=_num(d, "cpu_pct"),
        load1=_num(d, "load1"),
        mem_used_mb=_int(d, "mem_used_mb"),
        mem_total_mb=_int(d, "mem_total_mb"),
    )


def parse_status(payload: bytes, topic_node: str) -> NodeStatus:
    d = _load(payload)
    online = d.get("online")
    if not isinstance(online, bool):
        raise TelemetryError("online must be true or false")
    return NodeStatus(
        node=_node(d, topic_node),
        online=online,
        time=_num(d, "time"),
        gpus=_int(d, "gpus", 0),
        agent_version=_str(d, "agent_version", ""),
        interval_s=_num(d, "interval_s", 0.0),
    )


def parse_event(payload: bytes, topic_node: str) -> HealthEvent:
    d = _load(payload)
    kind = _str(d, "kind")
    if kind not in ("ecc_dbe", "xid"):
        raise TelemetryError(f"unknown event kind {kind!r}")
    index = _int(d, "index")
    uuid = _str(d, "uuid")
    if index < 0 or not uuid:
        raise TelemetryError("a health event names one GPU: an index >= 0 and its UUID")
    return HealthEvent(
        node=_node(d, topic_node),
        index=index,
        uuid=uuid,
        time=_num(d, "time"),
        kind=kind,
        code=_int(d, "code", 0),
        detail=_str(d, "detail", "", limit=1024),
    )


def split_topic(topic: str) -> tuple[str, str, int]:
    """('node', 'gpus'|'host'|'status'|'events', GPU index or -1) of a gshare topic."""
    parts = topic.split("/")
    if len(parts) < 5 or "/".join(parts[:3]) != PREFIX or not parts[3]:
        raise TelemetryError(f"not a gshare node topic: {topic[:200]!r}")
    node, rest = parts[3], parts[4:]
    if len(rest) == 2 and rest[0] == "gpus":
        index = rest[1]
        if not (index.isascii() and index.isdigit()) or len(index) > 4:
            raise TelemetryError(f"bad GPU index in {topic[:200]!r}")
        return node, "gpus", int(index)
    if len(rest) == 1 and rest[0] in ("host", "status", "events"):
        return node, rest[0], -1
    raise TelemetryError(f"unknown gshare topic {topic!r}")
