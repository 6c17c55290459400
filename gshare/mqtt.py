"""Connecting to the telemetry broker with aiomqtt, from an `[mqtt]` config."""

from __future__ import annotations

import random
import ssl
from pathlib import Path

import aiomqtt

from gshare.config import MqttConfig, parse_mqtt_url


def make_client(
    config: MqttConfig,
    identifier: str,
    will: aiomqtt.Will | None = None,
    keepalive: int = 30,
    max_queued_incoming: int | None = None,
) -> aiomqtt.Client:
    host, port, tls = parse_mqtt_url(config.url)
    password = config.password
    if config.password_file:
        password = Path(config.password_file).read_text().strip()
    context = None
    if tls:
        context = ssl.create_default_context(cafile=config.ca_file or None)
        if config.cert_file:
            context.load_cert_chain(config.cert_file, config.key_file)
    return aiomqtt.Client(
        host,
        port,
        username=config.username or None,
        password=password or None,
        identifier=identifier,
        will=will,
        keepalive=keepalive,
        timeout=10,
        tls_context=context,
        max_queued_incoming_messages=max_queued_incoming,
    )


class Backoff:
    """Reconnect delays: 0.2 s doubling to `cap`, with jitter; `reset()` after a good run."""

    def __init__(self, cap: float = 10.0) -> None:
        self.cap = cap
        self.delay = 0.2

    def next(self) -> float:
        delay = self.delay * random.uniform(0.8, 1.2)
        self.delay = min(self.delay * 2, self.cap)
        return delay

    def reset(self) -> None:
        self.delay = 0.2
