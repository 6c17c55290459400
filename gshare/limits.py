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
