"""SlurmClient over httpx.MockTransport: version detection, retries with backoff, tokens,
and how slurmrestd's answers map onto the bridge's errors. No waiting: sleeps are recorded."""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from slurm_bridge import (
    RetryPolicy,
    SlurmAuthError,
    SlurmClient,
    SlurmError,
    SlurmJobNotFound,
    SlurmJobSpec,
    SlurmRejected,
    SlurmUnavailable,
    SlurmVersionError,
)
from slurm_bridge._client import choose_version, served_versions

URL = "http://slurm.test:6820"
TOKEN = "aaa.eyJzdW4iOiJyb290IiwiZXhwIjo0MTAyNDQ0ODAwfQ.sig"  # sun=root, exp=2100
V38 = "/slurm/v0.0.38"
Answer = httpx.Response | Exception | Callable[[httpx.Request], httpx.Response]


def slurm_errors(*errors: tuple[int, str], key: str = "error_number") -> dict[str, Any]:
    return {"errors": [{key: n, "error": text, "description": text} for n, text in errors]}


def openapi(*versions: str) -> dict[str, Any]:
    return {"paths": {f"/slurm/{v}/{p}": {} for v in versions for p in ("ping", "jobs")}}


@dataclass
class FakeRestd:
    """Scripted answers per "METHOD path"; the last one repeats. Records every request."""

    answers: dict[str, list[Answer]] = field(default_factory=dict)
    requests: list[httpx.Request] = field(default_factory=list)

    def on(self, method: str, path: str, *answers: Answer) -> FakeRestd:
        self.answers[f"{method} {path}"] = list(answers)
        return self

    def handler(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        queue = self.answers.get(f"{request.method} {request.url.path}")
        if not queue:
            return httpx.Response(404, text="Unable find requested URL.")
        answer = queue.pop(0) if len(queue) > 1 else queue[0]
        if isinstance(answer, Exception):
            raise answer
        if callable(answer):
            return answer(request)
        return answer

    def sent(self, method: str, path: str) -> list[httpx.Request]:
        return [r for r in self.requests if (r.method, r.url.path) == (method, path)]


@dataclass
class Sleeps:
    waited: list[float] = field(default_factory=list)

    async def __call__(self, seconds: float) -> None:
        self.waited.append(seconds)


def ok(body: dict[str, Any] | None = None) -> httpx.Response:
    return httpx.Response(200, json={"errors": [], **(body or {})})


def client(restd: FakeRestd, sleeps: Sleeps | None = None, **kw: Any) -> SlurmClient:
    kw.setdefault("token", TOKEN)
    kw.setdefault("version", "v0.0.38")
    kw.setdefault("retry", RetryPolicy(attempts=4, first_delay_s=0.25, max_delay_s=1.0, jitter=0.5))
    return SlurmClient(
        URL,
        "root",
        transport=httpx.MockTransport(restd.handler),
        sleep=sleeps or Sleeps(),
        rng=random.Random(7),
        **kw,
    )


SPEC = SlurmJobSpec(name="t", script="#!/bin/bash\ntrue\n", working_dir="/w", comment="key-1")


def job_record(job_id: int, comment: str = "", state: str = "PENDING") -> dict[str, Any]:
    return {"job_id": job_id, "name": "t", "comment": comment, "job_state": state, "exit_code": 0}


# ------------------------------------------------------------ versions


@pytest.mark.parametrize(
    ("served", "chosen"),
    [
        (("v0.0.36", "v0.0.37", "v0.0.38"), "v0.0.38"),
        (("v0.0.38", "v0.0.39", "v0.0.40", "v0.0.41", "v0.0.42"), "v0.0.41"),
        (("v0.0.40",), "v0.0.40"),
        (("v0.0.39", "v0.0.42"), None),
        ((), None),
    ],
)
def test_choose_version_picks_the_highest_supported(
    served: tuple[str, ...], chosen: str | None
) -> None:
    assert served_versions(openapi(*served)) == set(served)
    assert choose_version(set(served)) == chosen


async def test_detect_version_reads_openapi_once_and_caches() -> None:
    restd = FakeRestd().on("GET", "/openapi/v3", ok(openapi("v0.0.37", "v0.0.38", "v0.0.40")))
    restd.on("GET", "/slurm/v0.0.40/nodes/", ok({"nodes": []}))
    async with client(restd, version=None) as c:
        assert await c.detect_version() == "v0.0.40"
        assert await c.nodes() == []
        assert await c.detect_version() == "v0.0.40"
    assert len(restd.sent("GET", "/openapi/v3")) == 1
    headers = restd.requests[0].headers
    assert (headers["X-SLURM-USER-NAME"], headers["X-SLURM-USER-TOKEN"]) == ("root", TOKEN)


async def test_detect_version_probes_pings_without_openapi() -> None:
    restd = FakeRestd().on("GET", f"{V38}/ping", ok({"pings": [{"hostname": "c", "ping": "UP"}]}))
    async with client(restd, version=None) as c:
        assert await c.detect_version() == "v0.0.38"
    probed = [r.url.path for r in restd.requests]
    assert probed == ["/openapi/v3", "/slurm/v0.0.41/ping/", "/slurm/v0.0.40/ping/", f"{V38}/ping"]


async def test_no_supported_version_says_what_is_served() -> None:
    restd = FakeRestd().on("GET", "/openapi/v3", ok(openapi("v0.0.36", "v0.0.37")))
    async with client(restd, version=None) as c:
        with pytest.raises(
            SlurmVersionError, match=r"serves REST API v0\.0\.36, v0\.0\.37.*v0\.0\.38"
        ):
            await c.nodes()
    with pytest.raises(SlurmVersionError, match=r"no adapter for REST API v0\.0\.99"):
        client(restd, version="v0.0.99")


# ------------------------------------------------------------ retries


async def test_503_is_retried_with_growing_jittered_backoff_then_succeeds() -> None:
    busy = httpx.Response(503, text="busy")
    restd = FakeRestd().on("GET", f"{V38}/nodes", busy, busy, busy, ok({"nodes": []}))
    sleeps = Sleeps()
    async with client(restd, sleeps) as c:
        assert await c.nodes() == []
    assert len(restd.requests) == 4
    ceilings = [0.25, 0.5, 1.0]
    assert len(sleeps.waited) == 3
    for waited, ceiling in zip(sleeps.waited, ceilings, strict=True):
        assert ceiling / 2 <= waited <= ceiling


async def test_connection_refused_is_retried_and_bounded() -> None:
    restd = FakeRestd().on("GET", f"{V38}/nodes", httpx.ConnectError("Connection refused"))
    sleeps = Sleeps()
    async with client(restd, sleeps) as c:
        with pytest.raises(SlurmUnavailable) as caught:
            await c.nodes()
    assert len(restd.requests) == 4 and len(sleeps.waited) == 3
    message = str(caught.value)
    assert URL in message and "4 attempts" in message and "Connection refused" in message


async def test_slurmctld_unreachable_behind_slurmrestd_is_transient() -> None:
    """v0.0.38 answers 500 / error -1 both for a refused token (at once) and for an
    unreachable slurmctld (after its own retries); slow means unreachable."""
    gone = httpx.Response(500, json=slurm_errors((-1, "Unspecified error")))
    restd = FakeRestd().on("GET", f"{V38}/jobs", gone, ok({"jobs": []}))
    async with client(restd, auth_reject_within_s=0.0) as c:
        assert await c.jobs() == []
    assert len(restd.requests) == 2


@pytest.mark.parametrize(
    ("answer", "error", "text"),
    [
        (
            httpx.Response(
                400, json=slurm_errors((9001, "Failure during parsing"), key="error_code")
            ),
            SlurmRejected,
            "Failure during parsing",
        ),
        (
            httpx.Response(404, text="Unable find requested URL."),
            SlurmVersionError,
            "does not serve GET",
        ),
        (
            httpx.Response(500, json=slurm_errors((2017, "Invalid job id specified"))),
            SlurmJobNotFound,
            "no job 5",
        ),
        (
            httpx.Response(500, json=slurm_errors((2002, "Access/permission denied"))),
            SlurmRejected,
            "Access/permission denied",
        ),
        (httpx.Response(401, text="Authentication failure"), SlurmAuthError, "rejected the token"),
        (
            httpx.Response(500, json=slurm_errors((-1, "Unspecified error"))),
            SlurmAuthError,
            "rejected the token",
        ),
        (
            httpx.Response(500, json=slurm_errors((6001, "Expired credential"))),
            SlurmAuthError,
            "rejected the token",
        ),
        (httpx.Response(200, text="not json"), SlurmError, "no JSON"),
    ],
)
async def test_errors_are_mapped_and_not_retried(
    answer: httpx.Response, error: type[SlurmError], text: str
) -> None:
    restd = FakeRestd().on("GET", f"{V38}/job/5", answer)
    sleeps = Sleeps()
    async with client(restd, sleeps) as c:
        with pytest.raises(error, match=text) as caught:
            await c.job(5)
    assert type(caught.value) is error
    assert len(restd.requests) == 1 and sleeps.waited == []


async def test_transient_slurm_error_numbers_are_retried() -> None:
    down = httpx.Response(500, json=slurm_errors((1800, "Unable to contact slurm controller")))
    restd = FakeRestd().on("GET", f"{V38}/job/5", down, ok({"jobs": [job_record(5)]}))
    async with client(restd) as c:
        assert (await c.job(5)).job_id == 5
    assert len(restd.requests) == 2


async def test_submit_refusal_carries_slurms_text() -> None:
    refused = httpx.Response(
        500, json=slurm_errors((2000, "Invalid partition name specified"), key="error_code")
    )
    restd = FakeRestd().on("POST", f"{V38}/job/submit", refused)
    async with client(restd) as c:
        with pytest.raises(
            SlurmRejected, match=r"Invalid partition name specified \(error 2000\)"
        ) as caught:
            await c.submit(SPEC)
    assert [d.number for d in caught.value.details] == [2000]


async def test_submit_accepted_with_errors_returns_the_job_and_warns(
    caplog: pytest.LogCaptureFixture,
) -> None:
    accepted = ok(
        {
            "job_id": 8,
            **slurm_errors(
                (2015, "Requested partition configuration not available now"), key="error_code"
            ),
        }
    )
    restd = FakeRestd().on("POST", f"{V38}/job/submit", accepted)
    with caplog.at_level(logging.WARNING, logger="slurm_bridge"):
        async with client(restd) as c:
            assert await c.submit(SPEC) == 8
    assert "not available now" in caplog.text


# ------------------------------------------------------------ submit is not blindly resent


async def test_submit_that_may_have_arrived_is_not_resent_without_a_comment() -> None:
    restd = FakeRestd().on(
        "POST", f"{V38}/job/submit", httpx.ReadTimeout("timed out"), ok({"job_id": 1})
    )
    spec = SlurmJobSpec(name="t", script="#!/bin/bash\ntrue\n", working_dir="/w")
    async with client(restd) as c:
        with pytest.raises(SlurmUnavailable, match="may have reached Slurm") as caught:
            await c.submit(spec)
    assert caught.value.maybe_sent and len(restd.requests) == 1


async def test_submit_that_arrived_is_found_by_its_comment() -> None:
    restd = FakeRestd().on("POST", f"{V38}/job/submit", httpx.ReadTimeout("timed out"))
    restd.on("GET", f"{V38}/jobs", ok({"jobs": [job_record(3, "other"), job_record(4, "key-1")]}))
    async with client(restd) as c:
        assert await c.submit(SPEC) == 4
    assert len(restd.sent("POST", f"{V38}/job/submit")) == 1


async def test_submit_that_did_not_arrive_is_sent_again() -> None:
    restd = FakeRestd().on(
        "POST", f"{V38}/job/submit", httpx.Response(502, text="bad gateway"), ok({"job_id": 5})
    )
    restd.on("GET", f"{V38}/jobs", ok({"jobs": [job_record(3, "other")]}))
    async with client(restd) as c:
        assert await c.submit(SPEC) == 5
    assert [r.method for r in restd.requests] == ["POST", "GET", "POST"]
    assert json.loads(restd.requests[0].content) == json.loads(restd.requests[2].content)


async def test_submit_refused_before_sending_is_simply_resent() -> None:
    restd = FakeRestd().on(
        "POST", f"{V38}/job/submit", httpx.ConnectError("Connection refused"), ok({"job_id": 6})
    )
    async with client(restd) as c:
        assert await c.submit(SlurmJobSpec(name="t", script="#!/bin/sh\n", working_dir="/w")) == 6
    assert [r.method for r in restd.requests] == ["POST", "POST"]


# ------------------------------------------------------------ tokens


def refuse_unless(token: str) -> Callable[[httpx.Request], httpx.Response]:
    def answer(request: httpx.Request) -> httpx.Response:
        if request.headers["X-SLURM-USER-TOKEN"] == token:
            return ok({"nodes": []})
        return httpx.Response(500, json=slurm_errors((-1, "Unspecified error")))

    return answer


async def test_token_file_is_read_again_after_a_refusal(tmp_path: Path) -> None:
    token_file = tmp_path / "jwt"
    token_file.write_text("old.token.x\n")
    restd = FakeRestd().on("GET", f"{V38}/nodes", refuse_unless("new.token.y"))
    async with client(restd, token=None, token_file=token_file) as c:
        token_file.write_text("SLURM_JWT=new.token.y\n")
        assert await c.nodes() == []
    assert [r.headers["X-SLURM-USER-TOKEN"] for r in restd.requests] == [
        "old.token.x",
        "new.token.y",
    ]


async def test_unchanged_token_file_gives_a_clear_auth_error(tmp_path: Path) -> None:
    token_file = tmp_path / "jwt"
    token_file.write_text("eyJhbGciOiJIUzI1NiJ9.eyJzdW4iOiJyb290IiwiZXhwIjoxMDAwfQ.sig")  # exp=1970
    restd = FakeRestd().on("GET", f"{V38}/nodes", refuse_unless("never"))
    async with client(restd, token=None, token_file=token_file) as c:
        with pytest.raises(SlurmAuthError) as caught:
            await c.nodes()
    message = str(caught.value)
    assert "expired at 1970-01-01T00:16:40+00:00" in message
    assert "scontrol token username=root" in message and str(token_file) in message
    assert len(restd.requests) == 1


def test_retry_policy_is_capped_and_checked() -> None:
    policy = RetryPolicy(first_delay_s=1.0, max_delay_s=5.0, multiplier=3.0, jitter=0.0)
    assert [policy.delay(n, random.Random()) for n in range(4)] == [1.0, 3.0, 5.0, 5.0]
    with pytest.raises(ValueError, match="attempts"):
        RetryPolicy(attempts=0)
    with pytest.raises(ValueError, match="jitter"):
        RetryPolicy(jitter=1.5)
