"""slurm_bridge against a real Slurm 22.05 (Debian 12): munged, slurmctld, slurmd with four
fake GPUs and slurmrestd on loopback, one cluster for the session (tests/slurm.py)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from slurm_bridge import (
    JobState,
    RetryPolicy,
    SlurmAuthError,
    SlurmClient,
    SlurmJob,
    SlurmJobNotFound,
    SlurmJobSpec,
    SlurmRejected,
    SlurmUnavailable,
    api_contract,
)
from tests.contracts.openapi import HERE, contract_problems, stored_spec, trim_spec
from tests.slurm import SlurmCluster

FAST_RETRY = RetryPolicy(attempts=3, first_delay_s=0.05, max_delay_s=0.2)


@pytest.fixture(scope="module")
def root_token(slurm_cluster: SlurmCluster) -> str:
    return slurm_cluster.token("root")


@pytest.fixture
def client_for(slurm_cluster: SlurmCluster, root_token: str) -> Callable[..., SlurmClient]:
    def make(**kw: object) -> SlurmClient:
        kw.setdefault("token", root_token)
        kw.setdefault("retry", FAST_RETRY)
        user = str(kw.pop("user", "root"))
        return SlurmClient(slurm_cluster.url, user, **kw)  # type: ignore[arg-type]

    return make


@pytest.fixture
def workdir(slurm_cluster: SlurmCluster, request: pytest.FixtureRequest) -> Path:
    return slurm_cluster.workdir(request.node.name.replace("[", "-").rstrip("]"))


def spec(workdir: Path, body: str, **kw: object) -> SlurmJobSpec:
    kw.setdefault("name", "t")
    return SlurmJobSpec(script=f"#!/bin/bash\n{body}\n", working_dir=str(workdir), **kw)  # type: ignore[arg-type]


async def wait_job(
    client: SlurmClient,
    job_id: int,
    done: Callable[[SlurmJob], bool] | None = None,
    timeout: float = 20,
) -> SlurmJob:
    done = done or (lambda j: j.state.is_final)
    deadline = time.monotonic() + timeout
    job = await client.job(job_id)
    while not done(job):
        assert time.monotonic() < deadline, f"job {job_id} still {job.slurm_state} after {timeout}s"
        await asyncio.sleep(0.2)
        job = await client.job(job_id)
    return job


# ------------------------------------------------------------ talking to slurmrestd


async def test_ping_and_version_detection_pick_v0038(
    client_for: Callable[..., SlurmClient],
) -> None:
    async with client_for() as client:
        assert await client.detect_version() == "v0.0.38"
        pings = await client.ping()
    assert pings and set(pings.values()) == {"UP"}


async def test_nodes_report_four_gpus_and_the_partition(
    client_for: Callable[..., SlurmClient],
) -> None:
    async with client_for() as client:
        nodes = await client.nodes()
        partitions = await client.partitions()
    assert [(n.name, n.gpus_total, n.partitions) for n in nodes] == [("localhost", 4, ("debug",))]
    assert nodes[0].state in {"IDLE", "MIXED", "ALLOCATED"}
    assert [(p.name, p.state, p.nodes) for p in partitions] == [("debug", "UP", ("localhost",))]


# ------------------------------------------------------------ jobs


async def test_two_gpu_job_sees_two_devices_and_completes(
    client_for: Callable[..., SlurmClient], workdir: Path
) -> None:
    job_spec = spec(
        workdir,
        'echo "CUDA_VISIBLE_DEVICES=$CUDA_VISIBLE_DEVICES" > seen.txt\necho out-line',
        name="two-gpus",
        gpus=2,
        stdout="%x-%j.out",
        time_limit_minutes=2,
    )
    async with client_for() as client:
        job_id = await client.submit(job_spec)
        job = await wait_job(client, job_id)
    assert (job.state, job.exit_code, job.signal) == (JobState.COMPLETED, 0, None)
    devices = (workdir / "seen.txt").read_text().strip().split("=", 1)[1].split(",")
    assert len(devices) == 2 and len(set(devices)) == 2, devices
    assert job.gpus == 2
    assert job.name == "two-gpus" and job.user == "root" and job.nodes == ("localhost",)
    assert job.stdout_path == str(workdir / f"two-gpus-{job_id}.out")
    assert Path(job.stdout_path).read_text() == "out-line\n"
    assert job.submit_time and job.start_time and job.end_time
    assert job.submit_time <= job.start_time <= job.end_time <= time.time() + 1


async def test_job_exiting_3_fails_with_exit_code_3(
    client_for: Callable[..., SlurmClient], workdir: Path
) -> None:
    async with client_for() as client:
        job = await wait_job(client, await client.submit(spec(workdir, "exit 3")))
    assert (job.state, job.exit_code, job.signal) == (JobState.FAILED, 3, None)
    assert job.reason == "NonZeroExitCode"
    assert job.stdout_path == str(workdir / f"slurm-{job.job_id}.out")  # Slurm's default


async def test_cancel_reaches_slurm(client_for: Callable[..., SlurmClient], workdir: Path) -> None:
    async with client_for() as client:
        job_id = await client.submit(spec(workdir, "touch started\nsleep 60"))
        await wait_job(client, job_id, lambda j: j.state is JobState.RUNNING)
        # RUNNING in Slurm comes before the batch script's first line: wait for the job
        for _ in range(300):
            if (workdir / "started").exists():
                break
            await asyncio.sleep(0.1)
        await client.cancel(job_id)
        job = await wait_job(client, job_id)
        assert job.state is JobState.CANCELLED and job.slurm_state == "CANCELLED"
        await client.cancel(job_id)  # an ended job: nothing to do, no error
    assert (workdir / "started").exists()


async def test_find_by_comment_and_name_is_the_idempotency_key(
    client_for: Callable[..., SlurmClient], workdir: Path
) -> None:
    key = f"gshare-handoff-{os.getpid()}-{time.monotonic_ns()}"
    async with client_for() as client:
        assert await client.find_job_by_comment(key) is None
        job_id = await client.submit(spec(workdir, "true", name=f"n-{key}", comment=key))
        by_comment = await client.find_job_by_comment(key)
        by_name = await client.find_job_by_name(f"n-{key}")
    assert by_comment is not None and by_comment.job_id == job_id and by_comment.comment == key
    assert by_name is not None and by_name.job_id == job_id


async def test_jobs_of_another_user_with_a_root_token(
    client_for: Callable[..., SlurmClient], workdir: Path
) -> None:
    """A token of root (SlurmUser) may name any user in X-SLURM-USER-NAME; the job then
    runs as that user."""
    async with client_for(user="nobody") as client:
        job = await wait_job(client, await client.submit(spec(workdir, "id -u > uid.txt")))
    assert job.state is JobState.COMPLETED and job.user == "nobody"
    assert (workdir / "uid.txt").read_text().strip() == "65534"


async def test_unknown_job_and_bad_partition(
    client_for: Callable[..., SlurmClient], workdir: Path
) -> None:
    async with client_for() as client:
        with pytest.raises(SlurmJobNotFound) as missing:
            await client.job(999_999)
        with pytest.raises(SlurmRejected, match="Invalid partition name"):
            await client.submit(spec(workdir, "true", partition="no-such-partition"))
    assert missing.value.job_id == 999_999


async def test_ended_jobs_are_forgotten_after_min_job_age() -> None:
    """What a hand-off must live with: slurmctld keeps an ended job for MinJobAge (plus up
    to its next purge), then GET /jobs omits it and GET /job/ID answers error 2017."""
    root = Path(tempfile.mkdtemp(prefix="gshare-slurm-age-"))  # munged needs o+x on parents
    short = SlurmCluster(root, min_job_age=2).start()
    try:
        async with SlurmClient(short.url, "root", token=short.token(), retry=FAST_RETRY) as client:
            work = short.workdir("age")
            job_id = await client.submit(spec(work, "true", comment="aged"))
            ended = await wait_job(client, job_id)
            assert ended.state is JobState.COMPLETED
            assert [j.job_id for j in await client.jobs()] == [job_id]  # still listed
            deadline = time.monotonic() + 30
            while await client.find_job_by_comment("aged") is not None:
                assert time.monotonic() < deadline, "slurmctld kept the job past MinJobAge"
                await asyncio.sleep(0.5)
            assert await client.jobs() == []
            with pytest.raises(SlurmJobNotFound):
                await client.job(job_id)
    finally:
        short.stop()
        shutil.rmtree(root, ignore_errors=True)


# ------------------------------------------------------------ tokens


async def test_bad_tokens_raise_auth_errors_that_say_what_to_do(
    slurm_cluster: SlurmCluster, client_for: Callable[..., SlurmClient]
) -> None:
    expired = slurm_cluster.signed_token("root", time.time() - 60)
    wrong_key = slurm_cluster.signed_token("root", time.time() + 600, key=b"k" * 32)
    nobody = slurm_cluster.token("nobody")
    cases = {
        "garbage": ("not-a-token", "not a JWT"),
        "expired": (expired, "expired at"),
        "wrong key": (wrong_key, "slurmctld refused it"),
        "other user": (nobody, "issued for user 'nobody'"),
    }
    for what, (token, why) in cases.items():
        async with client_for(token=token, version="v0.0.38") as client:
            started = time.monotonic()
            with pytest.raises(SlurmAuthError) as caught:
                await client.nodes()
        message = str(caught.value)
        assert why in message and "scontrol token username=root" in message, (what, message)
        assert "rejected the token" in message, (what, message)
        assert time.monotonic() - started < 3, f"{what}: an auth error must not be retried"


async def test_a_rotated_token_file_is_read_again(
    slurm_cluster: SlurmCluster,
    client_for: Callable[..., SlurmClient],
    root_token: str,
    tmp_path: Path,
) -> None:
    token_file = tmp_path / "slurm.jwt"
    token_file.write_text(slurm_cluster.signed_token("root", time.time() - 60))
    async with client_for(token=None, token_file=token_file, version="v0.0.38") as client:
        token_file.write_text(f"SLURM_JWT={root_token}\n")  # rotated after the client read it
        assert [n.name for n in await client.nodes()] == ["localhost"]
        token_file.write_text("stale")
        assert await client.ping()  # the token in hand still works: no re-read needed


# ------------------------------------------------------------ slurmrestd down


async def test_slurmrestd_down_then_back_mid_job(
    slurm_cluster: SlurmCluster, client_for: Callable[..., SlurmClient], workdir: Path
) -> None:
    async with client_for(version="v0.0.38") as client:
        job_id = await client.submit(spec(workdir, "touch started\nsleep 2\ntouch finished"))
        await wait_job(client, job_id, lambda j: j.state is JobState.RUNNING)
        slurm_cluster.stop_rest()
        try:
            started = time.monotonic()
            with pytest.raises(SlurmUnavailable) as down:
                await client.job(job_id)
            assert time.monotonic() - started < 3, "retries must be bounded"
            assert slurm_cluster.url in str(down.value) and "3 attempts" in str(down.value)

            # a patient client rides out the outage: it retries until slurmrestd is back
            patient = client_for(
                version="v0.0.38",
                retry=RetryPolicy(attempts=40, first_delay_s=0.1, max_delay_s=0.3),
            )
            waiting = asyncio.create_task(wait_job(patient, job_id, timeout=30))
            await asyncio.sleep(1.0)
            assert not waiting.done()
        finally:
            slurm_cluster.start_rest()
        job = await waiting
        await patient.aclose()
    assert (job.state, job.exit_code) == (JobState.COMPLETED, 0)
    assert (workdir / "finished").exists()


# ------------------------------------------------------------ the served API


def test_served_spec_has_everything_the_v0038_adapter_uses(
    slurm_cluster: SlurmCluster, root_token: str
) -> None:
    served = httpx.get(
        f"{slurm_cluster.url}/openapi/v3",
        headers={"X-SLURM-USER-NAME": "root", "X-SLURM-USER-TOKEN": root_token},
        timeout=15,
    ).json()
    uses = api_contract("v0.0.38")
    assert contract_problems(served, uses) == []
    trimmed = trim_spec(served, uses)
    if os.environ.get("SLURM_CONTRACT_UPDATE"):
        (HERE / "slurmrestd-v0.0.38.json").write_text(json.dumps(trimmed, indent=1) + "\n")
    assert trimmed == stored_spec("v0.0.38"), (
        "tests/contracts/slurmrestd-v0.0.38.json differs from what slurmrestd serves; "
        "rerun this test with SLURM_CONTRACT_UPDATE=1 to store the served one"
    )
