"""Reading typed values out of a TOML table, each checked, with ConfigError naming where."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from gshare.config._model import ConfigError
from gshare.limits import parse_mem_mb
from gshare.timefmt import TimeFormatError, parse_duration


def _section(data: dict[str, Any], name: str, where: str) -> dict[str, Any]:
    value = data.get(name, {})
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: [{name}] must be a table")
    return value


def _typed(table: dict[str, Any], key: str, kind: type, where: str, default: Any) -> Any:
    if key not in table:
        return default
    value = table[key]
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ConfigError(f"{where}: {key} must be a {kind.__name__}, not {value!r}")
    return value


def _duration(table: dict[str, Any], key: str, where: str) -> int:
    if key not in table:
        return 0
    value = table[key]
    try:
        seconds = value if isinstance(value, int) else parse_duration(str(value))
    except TimeFormatError as exc:
        raise ConfigError(f"{where}: {key}: {exc}") from exc
    if seconds < 0:
        raise ConfigError(f"{where}: {key} must not be negative")
    return int(seconds)


def _files(table: dict[str, Any], keys: tuple[str, ...], where: str) -> dict[str, str]:
    """Paths of files that must exist (certificates, keys), named by their key if not."""
    values = {k: _typed(table, k, str, where, "") for k in keys}
    for key, value in values.items():
        if value and ("\0" in value or not Path(value).is_file()):
            raise ConfigError(f"{where}: {key} {value!r} is not a readable file")
    return values


MAX_PIDS = 1 << 22  # Linux's PID_MAX_LIMIT


def check_cgroup_root(root: str) -> None:
    """A cgroup path for the agent's jobs: names of letters, digits, ".", "_", "-" joined
    by "/" (a leading "/": from the hierarchy's top); ValueError with the reason."""
    parts = root.strip("/").split("/")
    if not root.strip("/") or len(root) > 256:
        raise ValueError(f"{root!r} must be a path of 1 to 256 characters")
    for part in parts:
        if part in (".", "..") or not re.fullmatch(r"[A-Za-z0-9._-]+", part):
            raise ValueError(f"{root!r}: {part!r} is not a plain name (letters, digits, . _ -)")


def _mem_mb(table: dict[str, Any], key: str, where: str) -> int:
    """A memory size: "16G", "512M" (as gsub --mem takes it); 0 or absent: none."""
    value = table.get(key, 0)
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise ConfigError(f'{where}: {key} must be a size such as "16G", not {value!r}')
    try:
        return parse_mem_mb(str(value)) if value != 0 else 0
    except ValueError as exc:
        raise ConfigError(f"{where}: {key}: {exc}") from exc


def _known_keys(table: dict[str, Any], known: set[str], where: str) -> None:
    for key in table:
        if key not in known:
            raise ConfigError(f"{where}: unknown key {key!r} (known: {', '.join(sorted(known))})")


def _port_range(value: str, where: str) -> tuple[int, int]:
    low, sep, high = value.partition("-")
    if not (sep and low.strip().isdigit() and high.strip().isdigit()):
        raise ConfigError(f"{where}: master_ports must be a range like 29500-29999, not {value!r}")
    first, last = int(low), int(high)
    if not 1024 <= first <= last <= 65535:
        raise ConfigError(
            f"{where}: master_ports {value!r} must lie within 1024-65535, low end first"
        )
    return first, last
