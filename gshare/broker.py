"""The embedded MQTT broker `gshare up` runs for telemetry (amqtt), on loopback.

A cluster of several machines should use Mosquitto instead (README: Telemetry); this
one is for a single machine and has no authentication.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys

from amqtt.broker import Broker


def broker_config(host: str, port: int) -> dict[str, object]:
    return {
        "listeners": {"default": {"type": "tcp", "bind": f"{host}:{port}"}},
        "plugins": {
            "amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True},
        },
    }


async def serve(host: str, port: int, ready_file: str = "") -> None:
    broker = Broker(broker_config(host, port))
    await broker.start()
    if ready_file:
        with open(ready_file, "w") as f:
            f.write(f"{host}:{port}\n")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if not ready_file:  # run by hand; under gshare up, the ready file says it
        print(f"gshare broker listening on mqtt://{host}:{port}", flush=True)
    await stop.wait()
    with contextlib.suppress(Exception):
        await broker.shutdown()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m gshare.broker", description="gshare's embedded MQTT broker (amqtt)"
    )
    p.add_argument("--listen", default="127.0.0.1:1883", metavar="HOST:PORT")
    p.add_argument("--ready-file", default="", help="written once the broker listens")
    args = p.parse_args(argv)
    host, _, port = args.listen.rpartition(":")
    if not host or not port.isdigit():
        print(f"gshare broker: --listen: expected HOST:PORT, not {args.listen!r}", file=sys.stderr)
        return 2
    # amqtt logs every connection at INFO; only its problems are worth a line here
    logging.basicConfig(level=logging.WARNING, format="broker: %(levelname)s %(message)s")
    try:
        asyncio.run(serve(host, int(port), args.ready_file))
    except OSError as exc:
        print(f"gshare broker: cannot listen on {args.listen}: {exc.strerror}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
