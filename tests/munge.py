"""A real `munged` (Debian's munge package) for tests: its own key, socket and files in a
directory of its own, started in the foreground and stopped by its PID.

Two daemons started with the same key stand for two hosts of one site: a credential
encoded by one decodes on the other, as between a login node and the scheduler's host.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path

from tests.cluster import wait_until

MUNGED = shutil.which("munged") or "/usr/sbin/munged"


class MungeMissing(Exception):
    pass


def make_key(path: Path) -> Path:
    """A 1 KiB random key, mode 0400 as munged wants it."""
    path.write_bytes(os.urandom(1024))
    path.chmod(0o400)
    return path


class Munged:
    def __init__(self, root: Path, key: Path) -> None:
        self.root = root
        self.key = key
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def socket(self) -> Path:
        return self.root / "munge.socket"

    def start(self) -> Munged:
        if not Path(MUNGED).exists():
            raise MungeMissing("munged is not installed (Debian package munge; scripts/setup)")
        # the socket's directory: others may reach the socket (a user acting as `nobody`
        # encodes through it), but only its owner may write there, as munged requires
        self.root.mkdir(parents=True, exist_ok=True)
        self.root.chmod(0o755)
        log = open(self.root / "munged.out", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [
                MUNGED,
                "--foreground",
                "--force",  # run as root in a directory munged did not make for itself
                f"--socket={self.socket}",
                f"--key-file={self.key}",
                f"--pid-file={self.root / 'munged.pid'}",
                f"--log-file={self.root / 'munged.log'}",
                f"--seed-file={self.root / 'munged.seed'}",
                "--num-threads=2",
            ],
            stdout=log,
            stderr=log,
        )

        def up() -> bool:
            assert self.proc is not None and self.proc.poll() is None, self.logs()
            return self.socket.exists()

        wait_until("munged to listen", up, timeout=20)
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)

    def logs(self) -> str:
        text = ""
        for name in ("munged.out", "munged.log"):
            path = self.root / name
            if path.exists():
                text += path.read_text(errors="replace")[-2000:]
        return text
