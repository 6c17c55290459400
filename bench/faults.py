"""Faults: what a real scheduler and real agents keep, and what runs twice, when things break.

Five experiments against real gshare-schedulerd and gshare-nodeagent processes (fake GPUs):

- scheduler SIGKILL under a submit storm: client threads submit through the client library
  (each submit with its own idempotency key, resent with it when the answer is lost); the
  scheduler is SIGKILLed at a random moment and restarted. Counted: acknowledged submits,
  acknowledged but not stored (lost), stored more than once (duplicates).
- agent SIGKILL while jobs run: the agent is killed mid-run and restarted; every job must
  run once and complete.
- agent frozen past the lease (SIGSTOP), then thawed (SIGCONT): the scheduler requeues its
  job elsewhere; the node's supervisors stop the old copy.
- connection cut and healed: the agent reaches the scheduler over TCP through a relay
  that this benchmark blackholes (connections stay open, nothing flows) past the lease,
  then lets flow again.
- disk full: the scheduler's state dir on a small tmpfs (needs root) filled while clients
  submit; then space is freed and the scheduler restarted.

Jobs record their own start and end (and the benchmark polls their pids), so "run twice"
and "overlap" come from the processes themselves, not from the queue: overlap is the
longest time two copies of one job were alive at once; the grace is the job's
checkpoint grace. Prints a table (Markdown) and, with --json, the figures.

Usage: .venv/bin/python bench/faults.py [--storm-trials 20] [--trials 3] [--json F]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import psutil

from gshare.api import gshare_pb2 as pb
from gshare.client import Client, ClientError
from tests.cluster import BIN, PY, Cluster, wait_until

LEASE_S, HEARTBEAT_S, GRACE_S = 4.0, 0.5, 2.0
CONFIG = f"[scheduler]\nnode_lease_s = {LEASE_S}\nheartbeat_s = {HEARTBEAT_S}\nkill_grace_s = 2\n"


@dataclass
class Row:
    experiment: str
    trials: int = 0
    acknowledged: int = 0
    lost: int = 0
    run_twice: int = 0
    longest_overlap_s: float = 0.0
    notes: list[str] = field(default_factory=list)


class Runs:
    """What jobs recorded of themselves, plus when each of their pids was last seen alive."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.last_alive: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def script(self, body: str = "sleep 300 & wait") -> str:
        return (
            "#!/bin/bash\n"
            f'echo "start $GSHARE_JOB_ID $$ $(date +%s.%N)" >> {self.path}\n'
            f"trap 'echo \"end $GSHARE_JOB_ID $$ $(date +%s.%N)\" >> {self.path}; exit 0' "
            "USR1 TERM\n"
            f"{body}\n"
            f'echo "end $GSHARE_JOB_ID $$ $(date +%s.%N)" >> {self.path}\n'
        )

    def records(self) -> list[tuple[str, int, int, float]]:
        if not self.path.exists():
            return []
        out = []
        for line in self.path.read_text().splitlines():
            kind, job, pid, at = line.split()
            out.append((kind, int(job), int(pid), float(at)))
        return out

    def _watch(self) -> None:
        gone: set[int] = set()
        while not self._stop.wait(0.05):
            now = time.time()
            for kind, _, pid, _ in self.records():
                if kind != "start" or pid in gone:
                    continue
                try:
                    alive = psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
                except psutil.Error:
                    alive = False
                if alive:
                    self.last_alive[pid] = now
                else:
                    gone.add(pid)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()

    def copies(self) -> dict[int, list[tuple[float, float]]]:
        """Per job, the (start, end) of each copy; the end is the later of its own record
        and the last time it was seen alive."""
        starts: dict[int, tuple[int, float]] = {}
        ends: dict[int, float] = {}
        for kind, job, pid, at in self.records():
            if kind == "start":
                starts[pid] = (job, at)
            else:
                ends[pid] = max(ends.get(pid, 0.0), at)
        out: dict[int, list[tuple[float, float]]] = {}
        for pid, (job, at) in starts.items():
            end = max(ends.get(pid, 0.0), self.last_alive.get(pid, 0.0), at)
            out.setdefault(job, []).append((at, end))
        return out

    def overlap(self) -> tuple[int, float]:
        """Jobs that had two copies alive at once, and the longest such overlap."""
        twice, longest = 0, 0.0
        for spans in self.copies().values():
            worst = 0.0
            for i, (s1, e1) in enumerate(spans):
                for s2, e2 in spans[i + 1 :]:
                    worst = max(worst, min(e1, e2) - max(s1, s2))
            if worst > 0:
                twice += 1
                longest = max(longest, worst)
        return twice, longest


def new_cluster(root: Path, **kw: object) -> Cluster:
    root.mkdir(parents=True)
    root.chmod(0o755)
    kw.setdefault("config", CONFIG)
    return Cluster(root, **kw).start()  # type: ignore[arg-type]


def spec_of(script: str, work: Path, gpus: int = 1) -> pb.JobSpec:
    return pb.JobSpec(
        gpus=gpus,
        script=script.encode(),
        workdir=str(work),
        output="/dev/null",
        grace_s=GRACE_S,
        env={"PATH": "/usr/bin:/bin"},
    )


# ---------------------------------------------------------------- experiments


def storm(root: Path, trials: int, per_trial: int, rng: random.Random) -> Row:
    row = Row("scheduler SIGKILL under a submit storm")
    cluster = new_cluster(root / "storm", agents=0)
    work = root / "storm-work"
    work.mkdir()
    resent = [0]
    try:
        for trial in range(trials):
            spec = spec_of("#!/bin/bash\ntrue\n", work)
            spec.name = f"storm-{trial}"
            acked: list[int] = []
            errors: list[str] = []
            lock = threading.Lock()

            def submitter(
                acked: list[int] = acked,
                errors: list[str] = errors,
                lock: threading.Lock = lock,
                spec: pb.JobSpec = spec,
            ) -> None:
                with Client(cluster.address, timeout=10) as c:
                    for _ in range(per_trial // 4):
                        try:
                            job_id = c.submit(spec, retry_s=60)
                        except ClientError as exc:
                            with lock:
                                errors.append(str(exc))
                            continue
                        with lock:
                            acked.append(job_id)
                    with lock:
                        resent[0] += c.resent

            threads = [threading.Thread(target=submitter) for _ in range(4)]
            for t in threads:
                t.start()
            time.sleep(rng.uniform(0.05, 0.6))
            cluster.kill_scheduler()
            cluster.start_scheduler()
            for t in threads:
                t.join(300)
            with cluster.client() as c:
                mine = [j for j in c.jobs(include_finished=True) if j.spec.name == spec.name]
                stored = [j.job_id for j in mine]
                for job_id in stored:
                    with contextlib.suppress(ClientError):
                        c.cancel(job_id)
            row.trials += 1
            row.acknowledged += len(acked)
            row.lost += len(set(acked) - set(stored))
            row.run_twice += len(acked) - len(set(acked))  # one job acknowledged twice
            extra = len(set(stored)) - len(set(acked))
            if extra:
                row.notes.append(f"{extra} stored but never acknowledged")
            if errors:
                row.notes.append(f"{len(errors)} refused: {errors[0]}")
    finally:
        cluster.stop()
    row.notes.append(f"{resent[0]} submits were sent again with their key after a lost answer")
    return row


def agent_kill(root: Path, trials: int) -> Row:
    row = Row("agent SIGKILL while jobs run")
    cluster = new_cluster(root / "agent-kill", agents=2, gpus_per_node=4)
    work = root / "agent-kill-work"
    work.mkdir()
    runs = Runs(work / "runs")
    try:
        for _ in range(trials):
            with cluster.client() as c:
                ids = [
                    c.submit(spec_of(runs.script("sleep 4"), work))  # a few seconds of work
                    for _ in range(8)
                ]
            for job_id in ids:
                cluster.wait_state(job_id, "RUNNING")
            cluster.kill_agent("node0")
            time.sleep(1.0)
            cluster.start_agent("node0")
            done = [cluster.wait_state(j, {"COMPLETED", "FAILED", "CANCELLED"}, 120) for j in ids]
            row.trials += 1
            row.acknowledged += len(ids)
            row.lost += sum(j.state != pb.COMPLETED for j in done)
            starts = [r[1] for r in runs.records() if r[0] == "start" and r[1] in ids]
            row.run_twice += sum(starts.count(j) > 1 for j in ids)
        _, row.longest_overlap_s = runs.overlap()
    finally:
        runs.close()
        cluster.stop()
    return row


def _moved_once(
    cluster: Cluster, runs: Runs, row: Row, fault: str, break_it: object, heal: object
) -> None:
    """One job on the node that `break_it` cuts off; it must move, and its old copy stop."""
    with cluster.client() as c:
        job_id = c.submit(spec_of(runs.script(), runs.path.parent, gpus=2))
    first = cluster.wait_state(job_id, "RUNNING")
    wait_until("the job's start record", lambda: any(r[1] == job_id for r in runs.records()))
    break_it(first.node)  # type: ignore[operator]
    try:
        moved = wait_until(
            "the job to move",
            lambda: (j := cluster.job(job_id)).state == pb.RUNNING and j.node != first.node and j,
            timeout=60,
        )
        wait_until(
            "the moved copy's start record",
            lambda: sum(r[1] == job_id and r[0] == "start" for r in runs.records()) >= 2,
        )
        time.sleep(GRACE_S + 2)  # let the old copy's supervisor finish stopping it
    finally:
        heal(first.node)  # type: ignore[operator]
    cluster.wait_nodes_up(len(cluster.node_names))
    time.sleep(2)
    assert cluster.job(job_id).node == moved.node, fault
    cluster.gshare("cancel", str(job_id))
    cluster.wait_state(job_id, {"CANCELLED", "FAILED", "COMPLETED"}, 60)
    row.trials += 1
    row.acknowledged += 1
    row.lost += cluster.job(job_id).state != pb.CANCELLED


def frozen(root: Path, trials: int) -> Row:
    row = Row(f"agent frozen past the lease ({LEASE_S:g}s), then thawed")
    cluster = new_cluster(root / "frozen", agents=2, gpus_per_node=2)
    work = root / "frozen-work"
    work.mkdir()
    work.chmod(0o777)
    runs = Runs(work / "runs")
    try:
        for _ in range(trials):
            _moved_once(
                cluster,
                runs,
                row,
                "frozen",
                lambda node: cluster.agent_procs[node].send_signal(signal.SIGSTOP),
                lambda node: cluster.agent_procs[node].send_signal(signal.SIGCONT),
            )
        row.run_twice, row.longest_overlap_s = runs.overlap()
    finally:
        runs.close()
        cluster.stop()
    return row


class Relay:
    """A TCP relay on loopback whose traffic can be blackholed: connections stay open and
    nothing flows either way, as in a network partition, until it is healed."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.flowing = threading.Event()
        self.flowing.set()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                self.flowing.wait()
                dst.sendall(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self.listener.close()


def partition(root: Path, trials: int) -> Row:
    row = Row(f"connection cut past the lease ({LEASE_S:g}s), then healed")
    ca = root / "partition-ca"  # an agent token travels only inside TLS
    for args in (["init"], ["scheduler", "127.0.0.1"]):
        subprocess.run([str(BIN / "gshare"), "ca", *args, "--dir", str(ca)], check=True)
    config = CONFIG + (
        f'[server]\ntcp = "127.0.0.1:0"\n[server.tls]\ncert_file = "{ca}/scheduler.pem"\n'
        f'key_file = "{ca}/scheduler.key"\n'
    )
    agent_config = root / "partition-agent.toml"
    agent_config.write_text(f'[agent]\nca_file = "{ca}/ca.pem"\n')
    cluster = new_cluster(root / "partition", agents=1, gpus_per_node=2, config=config)
    state = cluster.root / "sched"
    host, _, port = (state / "tcp.address").read_text().strip().rpartition(":")
    relay = Relay((host, int(port)))
    token = cluster.root / "remote.token"
    token.write_text(
        subprocess.run(
            [PY, "-m", "schedulerd.main", "--state-dir", str(state), "--node-token", "remote"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    log = open(cluster.root / "agent-remote.log", "ab")  # noqa: SIM115
    remote = subprocess.Popen(
        [
            PY,
            "-m",
            "nodeagent.main",
            "--address",
            f"127.0.0.1:{relay.port}",
            "--node",
            "remote",
            "--state-dir",
            str(cluster.root / "agent-remote"),
            "--fake-gpus",
            "2",
            "--token-file",
            str(token),
            "--config",
            str(agent_config),
        ],
        stdout=log,
        stderr=log,
    )
    cluster.agent_procs["remote"] = remote
    cluster.wait_nodes_up(2)
    work = root / "partition-work"
    work.mkdir()
    work.chmod(0o777)
    runs = Runs(work / "runs")
    try:
        for _ in range(trials):
            # the job must start on the far side of the relay: keep node0 out meanwhile
            cluster.gshare("drain", "node0", "--reason", "bench")
            _moved_once(
                cluster,
                runs,
                row,
                "partition",
                lambda node: (cluster.gshare("resume", "node0"), relay.flowing.clear()),
                lambda node: relay.flowing.set(),
            )
            # back to a clean start: the job now on node0 has been cancelled
        row.run_twice, row.longest_overlap_s = runs.overlap()
    finally:
        runs.close()
        relay.close()
        cluster.stop()
    return row


def disk_full(root: Path, trials: int) -> Row:
    row = Row("disk full under the scheduler's database")
    if os.geteuid() != 0:
        row.notes.append("skipped: mounting a small tmpfs needs root")
        return row
    for trial in range(trials):
        croot = root / f"full{trial}"
        mount = croot / "sched"  # the state dir alone: the logs stay elsewhere
        mount.mkdir(parents=True)
        croot.chmod(0o755)
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(mount)], check=True)
        cluster = Cluster(croot, agents=0, config=CONFIG)
        try:
            cluster.start()
            work = root / f"full{trial}-work"
            work.mkdir()
            spec = spec_of("#!/bin/bash\ntrue\n" + "#" * 2000 + "\n", work)
            acked: list[int] = []
            refusals: set[str] = set()
            filler = mount / "filler"
            with contextlib.suppress(OSError), open(filler, "wb") as f:
                while shutil.disk_usage(mount).free > 600_000:  # the store fills up soon
                    f.write(b"\0" * 65536)
                    f.flush()
            with Client(cluster.address, timeout=10) as c:
                for _ in range(400):
                    try:
                        acked.append(c.submit(spec))
                    except ClientError as exc:
                        refusals.add(str(exc)[:120])
                filler.unlink()
                after = c.submit(spec)  # space again: submits work again
            cluster.kill_scheduler()
            cluster.start_scheduler()
            stored = set(cluster.queue_ids())
            row.trials += 1
            row.acknowledged += len(acked) + 1
            row.lost += len((set(acked) | {after}) - stored)
            row.notes.append(f"{400 - len(acked)} of 400 refused while full: {sorted(refusals)}")
        finally:
            cluster.stop()
            subprocess.run(["umount", "-l", str(mount)], check=False)
    return row


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--storm-trials", type=int, default=20)
    p.add_argument("--storm-submits", type=int, default=200, help="submits per storm trial")
    p.add_argument("--trials", type=int, default=3, help="trials of each other experiment")
    p.add_argument("--only", help="comma-separated: storm,agent-kill,frozen,partition,disk-full")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    rng = random.Random(args.seed)
    root = Path(tempfile.mkdtemp(prefix="gshare-faults-"))
    root.chmod(0o755)
    experiments = {
        "storm": lambda: storm(root, args.storm_trials, args.storm_submits, rng),
        "agent-kill": lambda: agent_kill(root, args.trials),
        "frozen": lambda: frozen(root, args.trials),
        "partition": lambda: partition(root, args.trials),
        "disk-full": lambda: disk_full(root, args.trials),
    }
    chosen = args.only.split(",") if args.only else list(experiments)
    rows = []
    try:
        for name in chosen:
            t0 = time.monotonic()
            row = experiments[name]()
            print(f"{name}: {time.monotonic() - t0:.0f}s", file=sys.stderr, flush=True)
            rows.append(row)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(f"grace {GRACE_S:g}s, lease {LEASE_S:g}s, heartbeat {HEARTBEAT_S:g}s\n")
    print("| experiment | trials | acknowledged | lost | run twice | longest overlap |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r.experiment} | {r.trials} | {r.acknowledged} | {r.lost} | {r.run_twice} | "
            f"{r.longest_overlap_s:.2f} s |"
        )
    for r in rows:
        for note in r.notes:
            print(f"- {r.experiment}: {note}")
    if args.json:
        args.json.write_text(json.dumps([r.__dict__ for r in rows], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
