"""A real gshare cluster for integration tests: a schedulerd process and nodeagent processes
with fake GPUs, driven through the real `gsub` / `gshare` command lines."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gshare.api import gshare_pb2 as pb
from gshare.client import Client, ClientError
from nodeagent import cgroups

PY = sys.executable
BIN = Path(PY).parent  # the console scripts installed beside this Python
FINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"}


def free_port() -> int:
    """A TCP port on loopback that nothing listens on (for a server the test starts)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(
    what: str, check: Callable[[], Any], timeout: float = 30.0, every: float = 0.1
) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


@dataclass
class Result:
    code: int
    out: str
    err: str


@dataclass
class Cluster:
    root: Path
    gpus_per_node: int = 4
    agents: int = 2
    config: str = ""
    # confine: agents put jobs in cgroups (below a subtree of this test's own, removed at
    # stop); else --confine off, as on a machine without cgroups
    confine: bool = False
    cgroup_root: str = field(default_factory=lambda: f"gshare-test-{uuid.uuid4().hex[:12]}")
    gpu_models: tuple[str, ...] = ()  # the fake GPUs' model, node by node in turn
    node_addresses: dict[str, str] = field(default_factory=dict)  # --node-address per node
    scheduler: subprocess.Popen[bytes] | None = None
    agent_procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def sock(self) -> Path:
        return self.root / "run" / "gshare.sock"

    @property
    def address(self) -> str:
        return f"unix:{self.sock}"

    @property
    def node_names(self) -> list[str]:
        return [f"node{i}" for i in range(self.agents)]

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["GSHARE_ADDRESS"] = self.address
        env["PYTHONUNBUFFERED"] = "1"
        return env

    # ------------------------------------------------------------ processes

    def start(self) -> Cluster:
        (self.root / "run").mkdir(parents=True, exist_ok=True)
        (self.root / "run").chmod(0o755)
        config = self.root / "gshare.toml"
        config.write_text(self.config or "[scheduler]\nkill_grace_s = 3\n")
        self.start_scheduler()
        for name in self.node_names:
            self.start_agent(name)
        self.wait_nodes_up(len(self.node_names))
        return self

    def start_scheduler(self) -> None:
        log = open(self.root / "schedulerd.log", "ab")  # noqa: SIM115
        self.scheduler = subprocess.Popen(
            [
                PY,
                "-m",
                "schedulerd.main",
                "--state-dir",
                str(self.root / "sched"),
                "--socket",
                str(self.sock),
                "--config",
                str(self.root / "gshare.toml"),
                "--log-level",
                "DEBUG",
            ],
            stdout=log,
            stderr=log,
            env=self.env(),
        )

        def serving() -> bool:
            assert self.scheduler is not None and self.scheduler.poll() is None, self.logs(
                "schedulerd"
            )
            try:
                with Client(self.address, timeout=2) as c:
                    c.nodes()
                return True
            except ClientError:
                return False

        wait_until("the scheduler to serve", serving)

    def start_agent(self, name: str) -> None:
        log = open(self.root / f"agent-{name}.log", "ab")  # noqa: SIM115
        self.agent_procs[name] = subprocess.Popen(
            [
                PY,
                "-m",
                "nodeagent.main",
                "--address",
                self.address,
                "--node",
                name,
                "--state-dir",
                str(self.root / f"agent-{name}"),
                "--fake-gpus",
                str(self.gpus_per_node),
                *self._model_args(name),
                "--config",
                str(self.root / "gshare.toml"),
                "--log-level",
                "DEBUG",
                *(
                    ["--cgroup-root", f"{self.cgroup_root}/{name}"]
                    if self.confine
                    else ["--confine", "off"]
                ),
                *(
                    ["--node-address", self.node_addresses[name]]
                    if name in self.node_addresses
                    else []
                ),
            ],
            stdout=log,
            stderr=log,
            env=self.env(),
        )

    def cgroup_dirs(self) -> list[Path]:
        """This cluster's cgroup subtree in each hierarchy (what the agents confine jobs in)."""
        found = cgroups.detect("auto", self.cgroup_root)
        roots = getattr(found, "roots", {})
        return sorted(set(roots.values()))

    def remove_cgroups(self) -> list[str]:
        """Kill what is left in this cluster's cgroups and remove them; the paths that
        were still there (an agent that did not clean up after its jobs)."""
        left: list[str] = []
        for top in self.cgroup_dirs():
            for d in sorted(top.rglob("*"), key=lambda p: -len(p.parts)):
                if d.is_dir():
                    if d.name.startswith("job-"):
                        left.append(str(d))
                    cgroups.kill_all({"dirs": [str(d)]})
                    cgroups.remove([str(d)])
            cgroups.remove([str(top)])
        return left

    def _model_args(self, name: str) -> list[str]:
        if not self.gpu_models:
            return []
        index = self.node_names.index(name) % len(self.gpu_models)
        return ["--fake-gpu-model", self.gpu_models[index]]

    def kill_scheduler(self, sig: int = signal.SIGKILL) -> None:
        assert self.scheduler is not None
        self.scheduler.send_signal(sig)
        self.scheduler.wait(10)

    def kill_agent(self, name: str, sig: int = signal.SIGKILL) -> None:
        proc = self.agent_procs[name]
        proc.send_signal(sig)
        proc.wait(10)

    def stop(self) -> None:
        procs = [*self.agent_procs.values(), self.scheduler]
        for proc in procs:
            if proc is not None and proc.poll() is None:
                proc.terminate()
        for proc in procs:
            if proc is not None:
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
        # jobs outlive their agent by design; a test's leftovers must not
        for agent_dir in self.root.glob("agent-*"):
            for pid_file in agent_dir.glob("jobs/*/pid.json"):
                with contextlib.suppress(OSError, ValueError, KeyError):
                    os.killpg(json.loads(pid_file.read_text())["pid"], signal.SIGKILL)
        if self.confine:
            self.remove_cgroups()

    def logs(self, which: str) -> str:
        path = self.root / f"{which}.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    # ------------------------------------------------------------ the command line

    def run(
        self,
        argv: Sequence[str],
        user: str | None = None,
        cwd: Path | None = None,
        timeout: float = 60,
    ) -> Result:
        cmd = list(argv)
        if user is not None:
            cmd = [
                "setpriv",
                f"--reuid={user}",
                f"--regid={user if user != 'nobody' else 'nogroup'}",
                "--clear-groups",
                *cmd,
            ]
        proc = subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            env=self.env(),
            cwd=cwd or self.root,
            timeout=timeout,
        )
        return Result(proc.returncode, proc.stdout, proc.stderr)

    def gsub(self, *args: str, **kw: Any) -> Result:
        return self.run([str(BIN / "gsub"), *args], **kw)

    def gshare(self, *args: str, **kw: Any) -> Result:
        return self.run([str(BIN / "gshare"), *args], **kw)

    def submit(self, *args: str, **kw: Any) -> int:
        res = self.gsub("--json", *args, **kw)
        assert res.code == 0, res.err
        return int(json.loads(res.out)["job_id"])

    # ------------------------------------------------------------ the API

    def client(self) -> Client:
        return Client(self.address, timeout=10)

    def job(self, job_id: int) -> pb.Job:
        with self.client() as c:
            return c.job(job_id)

    def state(self, job_id: int) -> str:
        return pb.JobState.Name(self.job(job_id).state)

    def wait_state(self, job_id: int, states: set[str] | str, timeout: float = 60) -> pb.Job:
        wanted = {states} if isinstance(states, str) else states

        def check() -> pb.Job | None:
            job = self.job(job_id)
            return job if pb.JobState.Name(job.state) in wanted else None

        return wait_until(f"job {job_id} to be {'/'.join(sorted(wanted))}", check, timeout)

    def wait_nodes_up(self, count: int, timeout: float = 30) -> None:
        def check() -> bool:
            try:
                with self.client() as c:
                    return sum(n.state == pb.NODE_UP for n in c.nodes()) >= count
            except ClientError:
                return False

        wait_until(f"{count} nodes up", check, timeout)

    def cluster_id(self) -> str:
        """The id of the scheduler's database (in default paths and Slurm comments)."""
        import sqlite3

        with contextlib.closing(sqlite3.connect(self.root / "sched" / "gshare.db")) as db:
            return str(db.execute("SELECT id FROM cluster").fetchone()[0])

    def queue_ids(self) -> list[int]:
        with self.client() as c:
            return [j.job_id for j in c.jobs(include_finished=True)]
