"""A real one-node Slurm for tests and benchmarks: munged, slurmctld, slurmd (fake GPUs) and
slurmrestd from the Debian packages, on loopback only, with every file in one directory.

Installs nothing. The facts it is built on (and why each setting is there) are in
docs/slurm.md; the short version: slurmctld and slurmd run as root with
`SlurmUser=root`, slurmrestd runs as nobody (it refuses root) and authenticates each
request by the JWT in its headers, so a job runs as the user named in the token.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tests.cluster import free_port, wait_until

SBIN = ("munged", "mungekey", "slurmctld", "slurmd", "slurmrestd")
BIN = ("sbatch", "scontrol", "scancel", "sinfo", "squeue")
OPENAPI_PLUGINS = "openapi/v0.0.36,openapi/v0.0.37,openapi/v0.0.38"
KILL_AFTER_S = 5.0


class SlurmMissing(RuntimeError):
    """The Debian Slurm packages are not installed."""


def port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def find_binaries() -> dict[str, str]:
    found: dict[str, str] = {}
    missing: list[str] = []
    for name in (*SBIN, *BIN):
        path = shutil.which(name, path=f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin")
        if path is None:
            missing.append(name)
        else:
            found[name] = path
    if missing:
        raise SlurmMissing(
            f"the Slurm tests need {', '.join(missing)} (Debian packages slurmctld slurmd "
            "slurmrestd slurm-client munge slurm-wlm-jwt-plugin); run scripts/setup as root "
            "to install them"
        )
    if os.geteuid() != 0:
        raise SlurmMissing("the Slurm tests run slurmctld and slurmd as root: run them as root")
    return found


@dataclass
class SlurmCluster:
    """One node `localhost` with `gpus` fake GPUs and `cpus` CPUs (no more than the
    machine has, or slurmd drains the node) in partition `debug`.

    `start()` brings it to idle, `stop()` cancels every job and ends every daemon by PID.
    Jobs submitted through the REST API run as the user named in X-SLURM-USER-NAME; the
    token (`token()`) must be for that user, or for root, which may name any user.
    """

    root: Path
    gpus: int = 4
    cpus: int = 2
    min_job_age: int = 300
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    bins: dict[str, str] = field(default_factory=dict)
    ctld_port: int = 0
    slurmd_port: int = 0
    rest_port: int = 0

    # ------------------------------------------------------------ where things are

    @property
    def conf(self) -> Path:
        return self.root / "etc" / "slurm.conf"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.rest_port}"

    @property
    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["SLURM_CONF"] = str(self.conf)
        return env

    @property
    def jwt_key(self) -> Path:
        return self.root / "etc" / "jwt_hs256.key"

    @property
    def munge_socket(self) -> Path:
        return self.root / "munge" / "munge.socket.2"

    def log(self, which: str) -> str:
        path = self.root / "log" / f"{which}.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    # ------------------------------------------------------------ set-up

    def write_config(self) -> None:
        r = self.root
        for name in ("etc", "log", "run", "munge", "state", "spool", "dev", "jobs"):
            (r / name).mkdir(parents=True, exist_ok=True)
        # slurmrestd runs as nobody and reads slurm.conf; munged's socket is for everyone
        for path in (r, r / "etc", r / "munge", r / "log", r / "run"):
            path.chmod(0o755)
        (r / "jobs").chmod(0o1777)
        key = r / "munge" / "munge.key"
        if not key.exists():
            subprocess.run([self.bins["mungekey"], "-c", "-k", str(key)], check=True)
        key.chmod(0o600)
        jwt = self.jwt_key
        if not jwt.exists():
            jwt.write_bytes(secrets.token_bytes(32))
        jwt.chmod(0o600)
        for i in range(self.gpus):
            dev = r / "dev" / f"nvidia{i}"
            if not dev.is_symlink():
                dev.symlink_to("/dev/null")  # a GPU needs a File= that is a character device
        self.ctld_port, self.slurmd_port, self.rest_port = free_port(), free_port(), free_port()
        self.conf.write_text(
            f"""\
ClusterName=gsharetest
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort={self.ctld_port}
SlurmdPort={self.slurmd_port}
SlurmUser=root
SlurmdUser=root
CommunicationParameters=NoCtldInAddrAny,NoInAddrAny
AuthType=auth/munge
AuthInfo=socket={self.munge_socket}
AuthAltTypes=auth/jwt
AuthAltParameters=jwt_key={jwt}
CredType=cred/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc={r / "log" / "jobcomp.txt"}
MailProg=/bin/true
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
GresTypes=gpu
ReturnToService=2
MinJobAge={self.min_job_age}
StateSaveLocation={r / "state"}
SlurmdSpoolDir={r / "spool"}
SlurmctldPidFile={r / "run" / "slurmctld.pid"}
SlurmdPidFile={r / "run" / "slurmd.pid"}
SlurmctldLogFile={r / "log" / "slurmctld.log"}
SlurmdLogFile={r / "log" / "slurmd.log"}
SlurmctldDebug=info
SlurmdDebug=info
NodeName=localhost NodeAddr=127.0.0.1 CPUs={self.cpus} RealMemory=2000 Gres=gpu:{self.gpus}
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
"""
        )
        self.conf.chmod(0o644)
        last = self.gpus - 1
        (r / "etc" / "gres.conf").write_text(
            f"AutoDetect=off\nNodeName=localhost Name=gpu File={r / 'dev'}/nvidia[0-{last}]\n"
        )
        (r / "etc" / "gres.conf").chmod(0o644)

    # ------------------------------------------------------------ processes

    def start(self) -> SlurmCluster:
        """Slurm's daemons listen on ports named in slurm.conf (no port 0), so ports are
        picked free; if one is taken before its daemon binds it, start again on others."""
        for attempt in range(3):
            try:
                return self._start()
            except AssertionError as exc:
                if attempt == 2 or "Address already in use" not in str(exc) + self._logs():
                    raise
        raise AssertionError("unreachable")

    def _logs(self) -> str:
        return "".join(p.read_text(errors="replace")[-4000:] for p in (self.root / "log").glob("*"))

    def _start(self) -> SlurmCluster:
        self.bins = find_binaries()
        self.write_config()
        for old in (self.root / "log").glob("*"):  # a retry reads only its own logs
            old.unlink()
        try:
            self._spawn(
                "munged",
                [
                    self.bins["munged"],
                    "-F",
                    f"--key-file={self.root / 'munge' / 'munge.key'}",
                    f"--socket={self.munge_socket}",
                    f"--pid-file={self.root / 'run' / 'munged.pid'}",
                    f"--log-file={self.root / 'log' / 'munged.log'}",
                    f"--seed-file={self.root / 'munge' / 'munged.seed'}",
                ],
            )
            wait_until(
                "munged's socket",
                lambda: self._running("munged") and self.munge_socket.exists(),
                10,
                every=0.05,
            )
            self._spawn("slurmctld", [self.bins["slurmctld"], "-D", "-i"])
            self.start_rest()
            wait_until(
                "slurmctld to listen", lambda: self._alive("slurmctld", self.ctld_port), 20, 0.05
            )
            self._spawn("slurmd", [self.bins["slurmd"], "-D", "-N", "localhost"])
            wait_until("node localhost to be idle", self._node_idle, 30, every=0.1)
            self.wait_rest()
        except BaseException:
            self.stop()
            raise
        return self

    def start_rest(self) -> None:
        """Start slurmrestd (again); it keeps the port chosen at set-up."""
        env = self.env
        env["SLURM_JWT"] = "daemon"  # without it every token is refused with 401
        self._spawn(
            "slurmrestd",
            [
                self.bins["slurmrestd"],
                "-u",
                "nobody",
                "-g",
                "nogroup",
                "-a",
                "rest_auth/jwt",
                "-s",
                OPENAPI_PLUGINS,
                f"127.0.0.1:{self.rest_port}",
            ],
            env=env,
        )

    def wait_rest(self, timeout: float = 20) -> None:
        wait_until(
            "slurmrestd to listen", lambda: self._alive("slurmrestd", self.rest_port), timeout
        )

    def stop_rest(self) -> None:
        """Stop only slurmrestd: jobs and the other daemons carry on."""
        proc = self.procs.pop("slurmrestd", None)
        if proc is not None:
            _end([proc])

    def stop(self) -> None:
        if "slurmctld" in self.procs and self.procs["slurmctld"].poll() is None:
            # job processes outlive slurmd; scancel first, while slurmctld can still act
            with contextlib.suppress(subprocess.SubprocessError, OSError, AssertionError):
                ids = self.run_cmd(["squeue", "-h", "-o", "%i"], timeout=5).stdout.split()
                if ids:
                    self.run_cmd(["scancel", "--full", *ids], timeout=5)
                    wait_until("jobs to end", self._no_jobs_left, 5, every=0.1)
        _end(list(self.procs.values()))
        self.procs.clear()

    def _spawn(self, name: str, argv: Sequence[str], env: dict[str, str] | None = None) -> None:
        log = open(self.root / "log" / f"{name}.out", "ab")  # noqa: SIM115
        self.procs[name] = subprocess.Popen(
            list(argv),
            stdout=log,
            stderr=log,
            stdin=subprocess.DEVNULL,
            env=env or self.env,
            cwd=self.root,
            start_new_session=True,
        )
        log.close()

    def _running(self, name: str) -> bool:
        proc = self.procs.get(name)
        if proc is None or proc.poll() is not None:
            out = self.root / "log" / f"{name}.out"
            raise AssertionError(
                f"{name} exited ({proc.returncode if proc else 'not started'}): "
                f"{out.read_text(errors='replace')[-2000:] if out.exists() else ''}"
                f"{self.log(name)}"
            )
        return True

    def _alive(self, name: str, port: int) -> bool:
        # (a probe of slurmctld's port shows in its log as "Zero Bytes were transmitted")
        return self._running(name) and port_open(port)

    def _node_idle(self) -> bool:
        self._running("slurmd")
        res = self.run_cmd(["sinfo", "-h", "-n", "localhost", "-o", "%T"], timeout=5)
        return res.stdout.strip() == "idle"

    def _no_jobs_left(self) -> bool:
        res = self.run_cmd(["squeue", "-h", "-o", "%i"], timeout=5)
        return res.returncode == 0 and not res.stdout.strip()

    # ------------------------------------------------------------ client side

    def run_cmd(
        self, argv: Sequence[str], timeout: float = 15, check: bool = False
    ) -> subprocess.CompletedProcess[str]:
        """Run a Slurm client command against this cluster; they hang while slurmctld is
        down, hence the timeout (subprocess.TimeoutExpired after it)."""
        cmd = list(argv)
        if cmd and cmd[0] in self.bins:
            cmd[0] = self.bins[cmd[0]]
        return subprocess.run(
            cmd, capture_output=True, text=True, env=self.env, timeout=timeout, check=check
        )

    def token(self, user: str = "root", lifespan: int = 86400) -> str:
        """A JWT for `user` from `scontrol token`: slurmctld signs it with the cluster's key."""
        res = self.run_cmd(
            ["scontrol", "token", f"username={user}", f"lifespan={lifespan}"], check=True
        )
        return res.stdout.strip().removeprefix("SLURM_JWT=")

    def signed_token(self, user: str, expires_at: float, key: bytes | None = None) -> str:
        """An HS256 JWT signed here with the cluster's key (or `key`): for tokens slurmctld
        will not hand out, such as one that has already expired."""

        def b64(data: bytes) -> bytes:
            return base64.urlsafe_b64encode(data).rstrip(b"=")

        now = int(time.time())
        head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
        claims = {"exp": int(expires_at), "iat": min(now, int(expires_at) - 1), "sun": user}
        body = b64(json.dumps(claims).encode())
        secret = key if key is not None else self.jwt_key.read_bytes()
        sig = b64(hmac.new(secret, head + b"." + body, hashlib.sha256).digest())
        return (head + b"." + body + b"." + sig).decode()

    def workdir(self, name: str) -> Path:
        """A directory every user may write (jobs run as the token's user)."""
        path = self.root / "jobs" / name
        path.mkdir(parents=True, exist_ok=True)
        path.chmod(0o1777)
        return path


def _end(procs: list[subprocess.Popen[bytes]]) -> None:
    """SIGTERM all at once, SIGKILL what is left after KILL_AFTER_S (slurmd ignores SIGTERM
    while it retries a slurmctld that is already gone)."""
    live = [p for p in procs if p.poll() is None]
    for proc in live:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + KILL_AFTER_S
    for proc in live:
        try:
            proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait(5)
    # each daemon leads a session of its own (start_new_session): whatever it left in its
    # process group (slurmctld's slurmscriptd, say) goes with it
    for proc in procs:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
