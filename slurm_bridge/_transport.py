"""One HTTP exchange with slurmrestd, made robust: authentication headers, bounded retries
with exponential backoff and jitter for transient failures, a fresh token after a refusal,
and every failure translated into the bridge's own errors.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from slurm_bridge._auth import TokenSource, refused_message
from slurm_bridge._errors import (
    SlurmAuthError,
    SlurmError,
    SlurmJobNotFound,
    SlurmRejected,
    SlurmUnavailable,
    SlurmVersionError,
    Verdict,
    classify,
    describe,
    error_details,
)

Sleep = Callable[[float], Awaitable[None]]
Verify = Callable[[], Awaitable[Any]]

# Failures where the request surely never reached slurmrestd: safe to send again.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently a transient failure is retried.

    `attempts` counts every try, the first included. The wait before retry n (from 0) is
    `first_delay_s * multiplier**n`, capped at `max_delay_s`, of which the fraction
    `jitter` is drawn at random so that many clients do not retry in step.
    """

    attempts: int = 4
    first_delay_s: float = 0.25
    max_delay_s: float = 4.0
    multiplier: float = 2.0
    jitter: float = 0.5

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError(f"RetryPolicy.attempts must be 1 or more, not {self.attempts}")
        if not 0.0 <= self.jitter <= 1.0:
            raise ValueError(f"RetryPolicy.jitter must be within [0, 1], not {self.jitter}")

    def delay(self, retry: int, rng: random.Random) -> float:
        ceiling = min(self.max_delay_s, self.first_delay_s * self.multiplier**retry)
        return ceiling * (1.0 - self.jitter) + ceiling * self.jitter * rng.random()


class RestSession:
    """Sends requests to one slurmrestd as one user."""

    def __init__(
        self,
        url: str,
        user: str,
        tokens: TokenSource,
        *,
        timeout: float,
        retry: RetryPolicy,
        transport: httpx.AsyncBaseTransport | None = None,
        sleep: Sleep = asyncio.sleep,
        rng: random.Random | None = None,
        auth_reject_within_s: float = 3.0,
    ) -> None:
        self.url = url.rstrip("/")
        self.user = user
        self.tokens = tokens
        self.retry = retry
        self.sleep = sleep
        self.rng = rng or random.Random()
        self.auth_reject_within_s = auth_reject_within_s
        self.http = httpx.AsyncClient(
            base_url=self.url,
            transport=transport,
            timeout=timeout,
            headers={"Accept": "application/json"},
        )

    async def aclose(self) -> None:
        await self.http.aclose()

    async def call(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        params: Mapping[str, str] | None = None,
        idempotent: bool = True,
        verify: Verify | None = None,
        attempts: int | None = None,
    ) -> Any:
        """Send one request, retrying transient failures; the decoded JSON answer.

        A request that is not idempotent (a submit) is sent again only when it surely did
        not arrive, or when `verify()` (one lookup, run before the next try) finds no
        trace of it; `verify()` returns the answer to use instead when it finds one.
        `attempts` overrides the retry policy's count for this call.
        """
        limit = attempts if attempts is not None else self.retry.attempts
        started = time.monotonic()
        tries = 0
        refreshed = False
        maybe_sent = False
        problem = ""
        while True:
            if maybe_sent and verify is not None:
                try:
                    found = await verify()
                except SlurmUnavailable as exc:
                    problem = f"checking whether it arrived: {exc}"
                else:
                    if found is not None:
                        return found
                    maybe_sent = False
            if not maybe_sent:
                try:
                    doc, problem, maybe_sent = await self._attempt(
                        method, path, body, params, idempotent
                    )
                except SlurmAuthError:
                    if not refreshed and self.tokens.refresh():
                        refreshed = True  # a rotated token file: try the new token at once
                        continue
                    raise
                if not problem:
                    return doc
            if maybe_sent and verify is None:
                raise SlurmUnavailable(
                    f"{method} {path} to slurmrestd at {self.url} failed ({problem}) after "
                    "it may have reached Slurm; not sent again, since there is no way to "
                    "tell (give the job a comment to make a retried submit safe)",
                    maybe_sent=True,
                )
            tries += 1
            if tries >= limit:
                raise SlurmUnavailable(
                    f"slurmrestd at {self.url} did not serve {method} {path}: {tries} "
                    f"attempts in {time.monotonic() - started:.1f}s, the last: {problem}",
                    maybe_sent=maybe_sent,
                )
            await self.sleep(self.retry.delay(tries - 1, self.rng))

    async def _attempt(
        self,
        method: str,
        path: str,
        body: Any,
        params: Mapping[str, str] | None,
        idempotent: bool,
    ) -> tuple[Any, str, bool]:
        """One try. (answer, "", False) on success; (None, what went wrong, whether it may
        have reached Slurm) on a transient failure; raises the bridge's error otherwise."""
        try:
            status, doc, text, elapsed = await self._send(method, path, body, params)
        except httpx.TransportError as exc:
            problem = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            return None, problem, not idempotent and not isinstance(exc, _NOT_SENT)
        details = error_details(doc)
        verdict = classify(
            status, details, elapsed_s=elapsed, auth_reject_within_s=self.auth_reject_within_s
        )
        said = describe(details) if details else repr(text[:200])
        if verdict is Verdict.OK:
            if doc is None:
                raise SlurmError(
                    f"slurmrestd at {self.url} answered {method} {path} with HTTP {status} "
                    f"but no JSON: {text[:200]!r}",
                    status=status,
                )
            return doc, "", False
        if verdict is Verdict.TRANSIENT:
            problem = f"HTTP {status} after {elapsed:.1f}s: {said}"
            if status == 500 and details:
                problem += " (slurmrestd could not reach slurmctld)"
            return None, problem, not idempotent
        if verdict is Verdict.AUTH:
            detail = describe(details) if details else text[:200]
            message = refused_message(self.url, self.user, self.tokens, time.time(), detail)
            raise SlurmAuthError(message, status=status, details=details)
        if verdict is Verdict.NOT_FOUND:
            raise SlurmJobNotFound(f"{method} {path}: {said}", status=status, details=details)
        if verdict is Verdict.VERSION:
            raise SlurmVersionError(
                f"slurmrestd at {self.url} does not serve {method} {path} (HTTP {status}: {said})",
                status=status,
                details=details,
            )
        raise SlurmRejected(
            f"Slurm refused {method} {path} (HTTP {status}): {said}",
            status=status,
            details=details,
        )

    async def _send(
        self, method: str, path: str, body: Any, params: Mapping[str, str] | None
    ) -> tuple[int, Any, str, float]:
        headers = {"X-SLURM-USER-NAME": self.user, "X-SLURM-USER-TOKEN": self.tokens.token}
        sent = time.monotonic()
        response = await self.http.request(method, path, json=body, params=params, headers=headers)
        elapsed = time.monotonic() - sent
        try:
            doc = response.json()
        except ValueError:
            doc = None
        return response.status_code, doc, response.text, elapsed
