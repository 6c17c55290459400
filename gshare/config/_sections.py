"""The [server.tls], [client], [slurm] and [mqtt] sections, and a daemon's --mqtt."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from gshare.clientconfig import ClientConfig, ClientConfigError, parse_client_table
from gshare.config._fields import _duration, _files, _known_keys, _typed
from gshare.config._model import Config, ConfigError, MqttConfig, SlurmConfig, TlsConfig


def _tls(table: dict[str, Any], where: str) -> TlsConfig:
    _known_keys(table, {"cert_file", "key_file", "ca_file"}, where)
    values = _files(table, ("cert_file", "key_file", "ca_file"), where)
    if bool(values["cert_file"]) != bool(values["key_file"]):
        raise ConfigError(f"{where}: cert_file and key_file go together")
    if values["ca_file"] and not values["cert_file"]:
        raise ConfigError(f"{where}: ca_file needs cert_file and key_file")
    return TlsConfig(**values)


def _client(table: dict[str, Any], where: str) -> ClientConfig:
    try:
        return parse_client_table(table, where)
    except ClientConfigError as exc:
        raise ConfigError(str(exc)) from None


SLURM_MODES = ("never", "when_idle_capacity_lacks", "always")


def _slurm(table: dict[str, Any], where: str) -> SlurmConfig:
    keys = {"url", "user", "token", "token_file", "partition", "cluster_name", "poll", "submit_as"}
    _known_keys(table, keys, where)
    values = {k: _typed(table, k, str, where, "") for k in keys - {"poll", "submit_as"}}
    submit_as = _typed(table, "submit_as", str, where, "owner")
    if submit_as not in ("owner", "user"):
        raise ConfigError(f"{where}: submit_as must be owner or user")
    poll = float(_duration(table, "poll", where)) if "poll" in table else 5.0
    if poll <= 0:
        raise ConfigError(f"{where}: poll must be at least 1s")
    if values["url"]:
        if not values["url"].startswith(("http://", "https://")):
            raise ConfigError(f"{where}: url must be http://HOST:PORT or https://HOST:PORT")
        if not values["user"]:
            raise ConfigError(f"{where}: user is needed (jobs run as this Slurm user)")
        if not values["token"] and not values["token_file"]:
            raise ConfigError(f"{where}: give token or token_file (see: scontrol token)")
    if values["token"] and values["token_file"]:
        raise ConfigError(f"{where}: give token or token_file, not both")
    if values["token_file"] and not Path(values["token_file"]).is_file():
        raise ConfigError(f"{where}: token_file {values['token_file']} does not exist")
    return SlurmConfig(poll_s=poll, submit_as=submit_as, **values)


def _mqtt(table: dict[str, Any], where: str) -> MqttConfig:
    keys = {"url", "username", "password", "password_file", "ca_file", "cert_file", "key_file"}
    _known_keys(table, keys, where)
    values = {k: _typed(table, k, str, where, "") for k in keys}
    url = values["url"]
    if url:
        try:
            parse_mqtt_url(url)
        except ValueError as exc:
            raise ConfigError(f"{where}: url: {exc}") from exc
    if values["password"] and values["password_file"]:
        raise ConfigError(f"{where}: give password or password_file, not both")
    if bool(values["cert_file"]) != bool(values["key_file"]):
        raise ConfigError(f"{where}: cert_file and key_file go together")
    for key in ("password_file", "ca_file", "cert_file", "key_file"):
        if values[key] and not Path(values[key]).is_file():
            raise ConfigError(f"{where}: {key} {values[key]} does not exist")
    return MqttConfig(**values)


def with_mqtt_url(config: Config, url: str | None) -> Config:
    """`config` with the broker a daemon's --mqtt names ('' turns telemetry off)."""
    if url is None:
        return config
    if url:
        try:
            parse_mqtt_url(url)
        except ValueError as exc:
            raise ConfigError(f"--mqtt: {exc}") from exc
    return replace(config, mqtt=replace(config.mqtt, url=url))


def parse_mqtt_url(url: str) -> tuple[str, int, bool]:
    """(host, port, tls) of mqtt://HOST[:PORT] or mqtts://HOST[:PORT]."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in ("mqtt", "mqtts"):
        raise ValueError(f"expected mqtt://HOST:PORT or mqtts://HOST:PORT, not {url!r}")
    tls = scheme == "mqtts"
    rest = rest.rstrip("/")
    if rest.startswith("["):  # [::1]:1883
        host, _, tail = rest[1:].partition("]")
        port_text = tail.removeprefix(":")
    elif rest.count(":") == 1:
        host, _, port_text = rest.partition(":")
    else:
        host, port_text = rest, ""
    if not host or "/" in host or "@" in host:
        raise ValueError(f"bad host in {url!r} (put credentials in username/password)")
    if port_text and not (port_text.isdigit() and 0 < int(port_text) < 65536):
        raise ValueError(f"bad port in {url!r}")
    return host, int(port_text) if port_text else (8883 if tls else 1883), tls
