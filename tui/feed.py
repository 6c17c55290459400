"""The live feed: the WatchCluster stream, re-opened with backoff when it breaks."""

from __future__ import annotations

import random
import threading
from collections.abc import Callable

from textual.message import Message

from gshare.api import gshare_pb2 as pb
from gshare.client import Client, ClientError


class Feed:
    """Runs in a worker thread and posts what the stream brings as messages (posting is
    thread-safe in Textual): `Feed.Changed` for each change, `Feed.Status` for each turn
    of the connection."""

    class Changed(Message):
        """One change from the stream; an empty one marks a fresh stream (start over)."""

        def __init__(self, change: pb.ClusterChange) -> None:
            super().__init__()
            self.change = change

    class Status(Message):
        def __init__(self, text: str, ok: bool) -> None:
            super().__init__()
            self.text = text
            self.ok = ok

    def __init__(self, address: str | None, post: Callable[[Message], object]) -> None:
        self.address = address
        self.post = post
        self.stopping = threading.Event()
        self.client: Client | None = None

    def on_change(self, change: pb.ClusterChange) -> None:
        self.post(Feed.Changed(change))

    def on_status(self, text: str, ok: bool) -> None:
        if ok:
            self.post(Feed.Changed(pb.ClusterChange()))  # a fresh stream: start over
        self.post(Feed.Status(text, ok))

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
