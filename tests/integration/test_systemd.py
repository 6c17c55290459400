"""The systemd units: they pass `systemd-analyze verify` (strictly: no warnings either), and
each daemon speaks the notify protocol: READY=1 when it can serve, WATCHDOG=1 after."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.cluster import Cluster

REPO = Path(__file__).resolve().parents[2]
UNITS = sorted((REPO / "systemd").glob("*.service"))


def verify(units: list[Path], root: Path) -> subprocess.CompletedProcess[str]:
    """systemd-analyze verify against a root of our own, with stub binaries for ExecStart,
    so the result does not depend on what this machine has installed."""
    unit_dir = root / "etc" / "systemd" / "system"
    unit_dir.mkdir(parents=True, exist_ok=True)
    for unit in units:
        shutil.copy(unit, unit_dir / unit.name)
        for line in unit.read_text().splitlines():
            if line.startswith("ExecStart="):
                binary = root / line.removeprefix("ExecStart=").split()[0].lstrip("/")
                binary.parent.mkdir(parents=True, exist_ok=True)
                binary.write_text("#!/bin/sh\n")
                binary.chmod(0o755)
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        raise RuntimeError("systemd-analyze is missing: run scripts/setup (package systemd)")
    return subprocess.run(
        [
            analyze,
            "verify",
            f"--root={root}",
            "--recursive-errors=no",
            *[str(unit_dir / u.name) for u in units],
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    assert {u.name for u in UNITS} == {"gshare-schedulerd.service", "gshare-nodeagent.service"}
    result = verify(UNITS, tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""  # unknown keys only warn: the check must see no warning at all
    for unit in UNITS:
        text = unit.read_text()
        for key in ("Type=notify", "WatchdogSec=", "Restart=on-failure", "ConfigurationDirectory="):
            assert key in text, f"{unit.name} lacks {key}"


def test_the_verify_check_catches_a_bad_unit(tmp_path: Path) -> None:
    bad = tmp_path / "src" / "gshare-schedulerd.service"
    bad.parent.mkdir()
    bad.write_text(UNITS[1].read_text().replace("Type=notify", "Typ=notify"))
    result = verify([bad], tmp_path / "root")
    assert "Unknown key" in result.stderr or result.returncode != 0


class NotifyListener:
    """What systemd does for a Type=notify unit: a datagram socket in $NOTIFY_SOCKET."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.5)
        self.messages: list[str] = []

    def env(self, watchdog_s: float) -> dict[str, str]:
        env = dict(os.environ)
        env["NOTIFY_SOCKET"] = str(self.path)
        env["WATCHDOG_USEC"] = str(int(watchdog_s * 1e6))
        env.pop("WATCHDOG_PID", None)
        return env

    def wait_for(self, line: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(line in m.splitlines() for m in self.messages):
                return
            try:
                self.messages.append(self.sock.recv(4096).decode())
            except TimeoutError:
                continue
        raise AssertionError(f"no {line} within {timeout}s; got {self.messages}")

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def listener(open_tmp: Path) -> NotifyListener:
    return NotifyListener(open_tmp / "notify.sock")


def test_schedulerd_notifies_ready_and_feeds_the_watchdog(
    open_tmp: Path, listener: NotifyListener
) -> None:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "schedulerd.main",
            "--state-dir",
            str(open_tmp / "sched"),
            "--socket",
            str(open_tmp / "gshare.sock"),
        ],
        env=listener.env(watchdog_s=1.0),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        listener.wait_for("READY=1")
        assert (open_tmp / "gshare.sock").exists()  # ready means clients can connect
        first = len(listener.messages)
        listener.wait_for("WATCHDOG=1", timeout=5)
        assert len(listener.messages) > first
        proc.terminate()
        listener.wait_for("STOPPING=1", timeout=10)
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        listener.close()


def test_nodeagent_notifies_ready_once_registered(
    cluster_factory: Callable[..., Cluster], open_tmp: Path, listener: NotifyListener
) -> None:
    cluster = cluster_factory(agents=0)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "nodeagent.main",
            "--address",
            cluster.address,
            "--node",
            "nodeX",
            "--state-dir",
            str(open_tmp / "agent"),
            "--fake-gpus",
            "2",
        ],
        env=listener.env(watchdog_s=1.0),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        listener.wait_for("READY=1")
        with cluster.client() as c:
            assert [n.name for n in c.nodes()] == ["nodeX"]  # registered before READY
        listener.wait_for("WATCHDOG=1", timeout=5)
        proc.terminate()
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        listener.close()
