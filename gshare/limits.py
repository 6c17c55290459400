"""The limits of a job's request, stated once: the scheduler enforces them at its edge
(schedulerd/requests.py, which explains how they keep every message under the wire's
limit) and gsub checks its options against them before sending anything."""

from __future__ import annotations

import re
from collections.abc import Mapping

KIB = 1024
MIB = 1024 * KIB

MAX_GPUS_PER_JOB = 4096  # on one node
MAX_NODES_PER_JOB = 1024  # a multi-node job's parts
MAX_PRIORITY = 1_000_000
SCRIPT_CEILING = 16 * MIB  # whatever max_script_bytes says, a Launch must fit the wire
MAX_SPEC_BYTES = 1 * MIB  # the serialized JobSpec without its script
MAX_LISTED_BYTES = 64 * KIB  # the same without its environment: what listings carry
MAX_TASK_PARAMS_BYTES = 2 * MIB  # a sweep's parameters, all its trials together

# characters, per string field (paths: Linux's PATH_MAX)
MAX_CHARS: Mapping[str, int] = {
    "name": 256,
    "queue": 128,
    "workdir": 4096,
    "output": 4096,
    "script_name": 256,
    "checkpoint_dir": 4096,
    "slurm": 16,
}
MAX_ENV_ENTRIES = 4096
MAX_ENV_KEY_CHARS = 256
MAX_ENV_VALUE_CHARS = 128 * KIB  # Linux's MAX_ARG_STRLEN
MAX_ARGS = 1024
MAX_ARG_CHARS = 32 * KIB

MAX_TIME_LIMIT_S = 10 * 366 * 86400  # ten years
MAX_CPUS = 1 << 20
MAX_MEM_MB = 1 << 40  # a thousand exabytes: more than any node, far inside int64
MAX_GRACE_S = 86400.0
MAX_RESTARTS = 1_000_000

# A POSIX name, or bash's name for an exported function (BASH_FUNC_module%%, as Lmod
# exports `module`): nothing that could split an entry (=) or hide in it (spaces, controls).
_ENV_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*|BASH_FUNC_[A-Za-z0-9_.:+-]+%%")


def env_name_ok(name: str) -> bool:
    return _ENV_KEY.fullmatch(name) is not None


def parse_mem_mb(text: str) -> int:
    """A memory size as --mem takes it (16G, 512M, 32000: MB without a unit) in MB;
    ValueError with the reason when it is not one, or more than MAX_MEM_MB."""
    match = re.fullmatch(r"(\d+)\s*([kKmMgGtT]?)[bB]?", text.strip())
    if not match:
        raise ValueError(f"bad memory size {text!r} (use e.g. 16G, 512M, 32000)")
    value, unit = int(match.group(1)), match.group(2).upper()
    kib = value * {"": 1024, "K": 1, "M": 1024, "G": 1024**2, "T": 1024**3}[unit]
    mb = max(1, kib // 1024) if value else 0  # whole numbers: no float to overflow
    if mb > MAX_MEM_MB:
        raise ValueError(f"{text.strip()} is more than the limit of {MAX_MEM_MB // 1024**2}T")
    return mb


def format_mem_mb(mem_mb: int) -> str:
    """A memory size in MB as a user writes it for --mem: 32G, 512M, 2T."""
    for unit, size in (("T", 1 << 20), ("G", 1 << 10)):
        if mem_mb >= size and mem_mb % size == 0:
            return f"{mem_mb // size}{unit}"
    return f"{mem_mb}M"
