"""SlurmClient: the bridge's view of one Slurm cluster through its slurmrestd."""

from __future__ import annotations

import asyncio
import logging
import random
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

from slurm_bridge._adapter import Adapter, ApiUse, Endpoint, method_of, path_of
from slurm_bridge._auth import TokenSource
from slurm_bridge._errors import (
    SlurmJobNotFound,
    SlurmVersionError,
    describe,
    error_details,
)
from slurm_bridge._models import SlurmJob, SlurmJobSpec, SlurmNode, SlurmPartition
from slurm_bridge._transport import RestSession, RetryPolicy, Sleep
from slurm_bridge._v0038 import V0038
from slurm_bridge._v0040 import V0040

log = logging.getLogger("slurm_bridge")

ADAPTERS: dict[str, Callable[[], Adapter]] = {
    "v0.0.38": V0038,
    "v0.0.40": lambda: V0040("v0.0.40"),
    "v0.0.41": lambda: V0040("v0.0.41"),
}


def version_key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.removeprefix("v").split("."))


SUPPORTED_VERSIONS: tuple[str, ...] = tuple(sorted(ADAPTERS, key=version_key))
_VERSIONED_PATH = re.compile(r"^/slurm/(v\d+\.\d+\.\d+)/")


def served_versions(openapi: Any) -> set[str]:
    """The slurmctld API versions (`/slurm/vX.Y.Z/...`) an OpenAPI document describes."""
    paths = openapi.get("paths") if isinstance(openapi, dict) else None
    return {m[1] for p in paths or () if (m := _VERSIONED_PATH.match(p))}


def choose_version(served: set[str]) -> str | None:
    """The highest served version that has an adapter."""
    usable = sorted(served & set(ADAPTERS), key=version_key)
    return usable[-1] if usable else None


def api_contract(version: str) -> tuple[ApiUse, ...]:
    """What the adapter for `version` uses of the API (for contract tests)."""
    return ADAPTERS[version]().contract


class SlurmClient:
    """An async client for slurmrestd.

    `user` is sent as X-SLURM-USER-NAME; jobs run as that user. The token (`token`, or
    `token_file`, read again whenever Slurm refuses the token) must be for that user, or
    for root/SlurmUser, which may act as any user. `version` pins the REST API version;
    by default the highest one slurmrestd serves that the bridge has an adapter for is
    chosen on first use (see `detect_version`). `transport`, `sleep` and `rng` are seams
    for tests (httpx.MockTransport, a sleep that does not wait, a seeded random).

    Errors: SlurmUnavailable (transient, after `retry`), SlurmAuthError, SlurmJobNotFound,
    SlurmRejected, SlurmVersionError; all are SlurmError.
    """

    def __init__(
        self,
        url: str,
        user: str,
        *,
        token: str | None = None,
        token_file: str | Path | None = None,
        timeout: float = 15.0,
        retry: RetryPolicy | None = None,
        version: str | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        sleep: Sleep = asyncio.sleep,
        rng: random.Random | None = None,
        auth_reject_within_s: float = 3.0,
    ) -> None:
        if version is not None and version not in ADAPTERS:
            raise SlurmVersionError(
                f"no adapter for REST API {version}; supported: {', '.join(SUPPORTED_VERSIONS)}"
            )
        self._session = RestSession(
            url,
            user,
            TokenSource(token, token_file),
            timeout=timeout,
            retry=retry or RetryPolicy(),
            transport=transport,
            sleep=sleep,
            rng=rng,
            auth_reject_within_s=auth_reject_within_s,
        )
        self._adapter: Adapter | None = ADAPTERS[version]() if version else None
        self._detecting = asyncio.Lock()

    @property
    def url(self) -> str:
        return self._session.url

    @property
    def user(self) -> str:
        return self._session.user

    async def __aenter__(self) -> SlurmClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._session.aclose()

    # ------------------------------------------------------------ version

    async def detect_version(self) -> str:
        """The REST API version this client speaks, chosen once and cached: the highest
        version in slurmrestd's /openapi/v3 with an adapter here; where that document is
        not served, the highest version whose ping answers."""
        return (await self._ready()).version

    async def _ready(self) -> Adapter:
        if self._adapter is not None:
            return self._adapter
        async with self._detecting:
            if self._adapter is None:
                self._adapter = ADAPTERS[await self._find_version()]()
                log.info("slurmrestd at %s: using REST API %s", self.url, self._adapter.version)
        return self._adapter

    async def _find_version(self) -> str:
        try:
            served = served_versions(await self._session.call("GET", "/openapi/v3"))
        except SlurmVersionError:
            served = set()
            for version in reversed(SUPPORTED_VERSIONS):
                try:
                    await self._session.call("GET", path_of(ADAPTERS[version](), "ping"))
                except SlurmVersionError:
                    continue
                return version
        chosen = choose_version(served)
        if chosen is None:
            raise SlurmVersionError(
                f"slurmrestd at {self.url} serves REST API "
                f"{', '.join(sorted(served, key=version_key)) or 'no version the bridge found'}"
                f"; the bridge has adapters for {', '.join(SUPPORTED_VERSIONS)} (start "
                "slurmrestd with `-s openapi/v0.0.38` or newer, or add an adapter)"
            )
        return chosen

    # ------------------------------------------------------------ reading

    async def ping(self) -> dict[str, str]:
        """slurmctld hosts and how they answer slurmrestd's ping (`UP`, `DOWN`)."""
        adapter = await self._ready()
        return adapter.pings(await self._get(adapter, "ping"))

    async def nodes(self) -> list[SlurmNode]:
        adapter = await self._ready()
        return adapter.nodes(await self._get(adapter, "nodes"))

    async def partitions(self) -> list[SlurmPartition]:
        adapter = await self._ready()
        return adapter.partitions(await self._get(adapter, "partitions"))

    async def jobs(self) -> list[SlurmJob]:
        """Every job slurmctld still holds: queued and running ones, and those that ended
        less than MinJobAge ago (slurmctld forgets them after that)."""
        adapter = await self._ready()
        return adapter.jobs(await self._get(adapter, "jobs"))

    async def job(self, job_id: int) -> SlurmJob:
        adapter = await self._ready()
        try:
            found = adapter.jobs(await self._get(adapter, "job", job_id=job_id))
        except SlurmJobNotFound as exc:
            raise self._not_found(job_id, exc) from None
        for job in found:
            if job.job_id == job_id:
                return job
        raise self._not_found(job_id, None)

    async def find_job_by_comment(self, comment: str) -> SlurmJob | None:
        """The newest job with this comment (an idempotency key), or None."""
        return _newest(j for j in await self.jobs() if j.comment == comment)

    async def find_job_by_name(self, name: str) -> SlurmJob | None:
        """The newest job with this name, or None."""
        return _newest(j for j in await self.jobs() if j.name == name)

    # ------------------------------------------------------------ acting

    async def submit(self, spec: SlurmJobSpec) -> int:
        """Queue a batch job; its Slurm job id.

        Resent after a transient failure only when it surely did not reach Slurm, or when
        the spec has a comment and no job with that comment exists yet; a job found by its
        comment is returned instead of submitting twice.
        """
        adapter = await self._ready()
        verify = None
        if spec.comment:

            async def verify() -> Any:
                doc = await self._get(adapter, "jobs", attempts=1)
                matches = [j for j in adapter.jobs(doc) if j.comment == spec.comment]
                found = _newest(matches)
                return None if found is None else {"job_id": found.job_id, "errors": []}

        doc = await self._session.call(
            method_of(adapter, "submit"),
            path_of(adapter, "submit"),
            body=adapter.submit_body(spec),
            idempotent=False,
            verify=verify,
        )
        job_id = adapter.submit_answer(doc)
        if details := error_details(doc):
            # e.g. 2015 "Requested partition configuration not available now": queued,
            # but it may wait until the partition changes
            log.warning(
                "Slurm queued job %s (%s) with errors: %s", job_id, spec.name, describe(details)
            )
        return job_id

    async def cancel(self, job_id: int) -> None:
        """Cancel a job; a job that has already ended is left as it is."""
        adapter = await self._ready()
        try:
            await self._session.call(
                method_of(adapter, "cancel"), path_of(adapter, "cancel", job_id=job_id)
            )
        except SlurmJobNotFound as exc:
            raise self._not_found(job_id, exc) from None

    # ------------------------------------------------------------ helpers

    async def _get(
        self, adapter: Adapter, endpoint: Endpoint, attempts: int | None = None, **params: object
    ) -> Any:
        return await self._session.call(
            method_of(adapter, endpoint), path_of(adapter, endpoint, **params), attempts=attempts
        )

    def _not_found(self, job_id: int, cause: SlurmJobNotFound | None) -> SlurmJobNotFound:
        return SlurmJobNotFound(
            f"Slurm at {self.url} has no job {job_id} (never submitted there, or it ended "
            "more than MinJobAge ago and slurmctld has forgotten it)",
            job_id=job_id,
            status=cause.status if cause else None,
            details=cause.details if cause else (),
        )


def _newest(jobs: Iterable[SlurmJob]) -> SlurmJob | None:
    return max(jobs, key=lambda j: j.job_id, default=None)
