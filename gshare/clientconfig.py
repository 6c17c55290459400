"""The [client] table of gshare.toml: how gsub, gshare and gshare top reach a scheduler
on another host. Apart from gshare.config so that gsub loads only this (gshare.config
validates the same table when a daemon loads the whole file)."""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gshare.paths import SYSTEM_CONFIG

__all__ = ["ClientConfig", "ClientConfigError", "client_config", "parse_client_table"]

KEYS = ("scheduler", "ca_file", "munge_socket", "cert_file", "key_file")


class ClientConfigError(ValueError):
    """The [client] table, or the file that holds it, is bad (str(): one line, the key)."""


@dataclass(frozen=True)
class ClientConfig:
    scheduler: str = ""  # HOST:PORT (or unix:PATH); GSHARE_ADDRESS and --address win
    ca_file: str = ""  # the CA of the scheduler's certificate: TLS to a TCP scheduler
    munge_socket: str = ""  # the local munged (default /run/munge/munge.socket.2)
    cert_file: str = ""  # a client certificate: reading from a scheduler without MUNGE
    key_file: str = ""


def host_port(value: str, listen: bool = False) -> bool:
    """HOST:PORT; to listen on, port 0 too (any free port: the daemon writes which)."""
    host, sep, port = value.rpartition(":")
    return bool(sep and host and port.isdigit() and (0 if listen else 1) <= int(port) < 65536)


def parse_client_table(table: Any, where: str) -> ClientConfig:
    if not isinstance(table, dict):
        raise ClientConfigError(f"{where}: must be a table")
    for key in table:
        if key not in KEYS:
            raise ClientConfigError(
                f"{where}: unknown key {key!r} (known: {', '.join(sorted(KEYS))})"
            )
    values: dict[str, str] = {}
    for key in KEYS:
        value = table.get(key, "")
        if not isinstance(value, str):
            raise ClientConfigError(f"{where}: {key} must be a str, not {value!r}")
        if "\0" in value:
            raise ClientConfigError(f"{where}: {key} holds a NUL byte")
        values[key] = value
    for key in ("ca_file", "cert_file", "key_file"):
        if values[key] and not Path(values[key]).is_file():
            raise ClientConfigError(f"{where}: {key} {values[key]!r} is not a readable file")
    if bool(values["cert_file"]) != bool(values["key_file"]):
        raise ClientConfigError(f"{where}: cert_file and key_file go together")
    scheduler = values["scheduler"]
    if scheduler and not scheduler.startswith(("unix:", "/")) and not host_port(scheduler):
        raise ClientConfigError(
            f"{where}: scheduler: expected HOST:PORT or unix:PATH, not {scheduler!r}"
        )
    return ClientConfig(**values)


def client_config(path: Path | None = None) -> ClientConfig:
    """The [client] table of `path`, else of $GSHARE_CONFIG, else of
    /etc/gshare/gshare.toml when it is there and readable; else the defaults."""
    if path is None:
        env = os.environ.get("GSHARE_CONFIG", "")
        if env:
            path = Path(env)
        elif SYSTEM_CONFIG.exists() and os.access(SYSTEM_CONFIG, os.R_OK):
            path = SYSTEM_CONFIG
        else:
            return ClientConfig()
    try:
        data = tomllib.loads(path.read_text())
    except OSError as exc:
        raise ClientConfigError(f"cannot read config {path}: {exc.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ClientConfigError(f"{path}: not valid TOML: {exc}") from None
    return parse_client_table(data.get("client", {}), f"{path} [client]")
