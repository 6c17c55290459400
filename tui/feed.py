"""The live feed: the WatchCluster stream, re-opened with backoff when it breaks."""

from __future__ import annotations

import random
import threading
from collections.abc import Callable

from gshare.api import gshare_pb2 as pb
from gshare.client import Client, ClientError


class Feed:
    """Runs in a worker thread; hands each change and each status line to callbacks."""

    def __init__(
        self,
        address: str | None,
        on_change: Callable[[pb.ClusterChange], None],
        on_status: Callable[[str, bool], None],
    ) -> None:
        self.address = address
        self.on_change = on_change
        self.on_status = on_status
        self.stopping = threading.Event()
        self.client: Client | None = None

    def run(self) -> None:
        delay = 0.5
        while not self.stopping.is_set():
            try:
                self.client = Client(self.address, timeout=10)
                self.on_status(f"connected to {self.client.target}", True)
                for change in self.client.watch(initial=True):
                    if self.stopping.is_set():
                        return
                    self.on_change(change)
                    delay = 0.5
                self.on_status("the scheduler closed the stream; reconnecting", False)
            except ClientError as exc:
                self.on_status(f"disconnected: {exc}", False)
            finally:
                if self.client is not None:
                    self.client.close()
            self.stopping.wait(delay * random.uniform(0.8, 1.2))
            delay = min(delay * 2, 10.0)

    def stop(self) -> None:
        self.stopping.set()
        if self.client is not None:
            self.client.close()  # ends the blocking stream read
