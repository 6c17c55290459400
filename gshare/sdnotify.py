"""systemd's notify protocol (sd_notify) for Type=notify units, and the watchdog keepalive.

A datagram to $NOTIFY_SOCKET; nothing happens when the daemon is not run by systemd.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Callable

log = logging.getLogger(__name__)


def notify(message: str) -> bool:
    """Send e.g. "READY=1" to systemd; False when not under systemd or it failed."""
    address = os.environ.get("NOTIFY_SOCKET", "")
    if not address:
        return False
    if address.startswith("@"):  # an abstract socket
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(message.encode())
        return True
    except OSError as exc:
        log.warning("sd_notify %r failed: %s", message, exc)
        return False


def watchdog_interval() -> float:
    """Half of WatchdogSec (systemd's advice), or 0 when there is no watchdog for us."""
    usec = os.environ.get("WATCHDOG_USEC", "")
    pid = os.environ.get("WATCHDOG_PID", "")
    if not usec.isdigit() or (pid and pid != str(os.getpid())):
        return 0.0
    return int(usec) / 2e6


async def watchdog(healthy: Callable[[], bool] = lambda: True) -> None:
    """Keep the watchdog fed from the event loop, while `healthy()` says so.

    Running on the loop itself is the point: a blocked loop stops the keepalives and
    systemd restarts the daemon.
    """
    interval = watchdog_interval()
    if not interval:
        return
    while True:
        if healthy():
            notify("WATCHDOG=1")
        else:
            log.error("unhealthy: not feeding the systemd watchdog")
        await asyncio.sleep(interval)


def start_watchdog(healthy: Callable[[], bool] = lambda: True) -> asyncio.Task[None] | None:
    if not watchdog_interval():
        return None
    return asyncio.create_task(watchdog(healthy), name="watchdog")


async def stop_task(task: asyncio.Task[None] | None) -> None:
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
