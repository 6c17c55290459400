"""The bridge's errors, and how an answer from slurmrestd maps onto them.

slurmrestd answers almost every failure with HTTP 500 and a list of Slurm errors; the
error number says what went wrong. The list's key names vary by endpoint in v0.0.38
(`error_number`, `error_code` on submit, `errno` on nodes and partitions).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any


class SlurmError(Exception):
    """Base of everything the bridge raises. `details` holds Slurm's own errors, if any."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        details: Sequence[SlurmErrorDetail] = (),
    ) -> None:
        super().__init__(message)
        self.status = status
        self.details = tuple(details)


class SlurmUnavailable(SlurmError):
    """slurmrestd or slurmctld could not be reached, still after the retries. Transient:
    the same call may work later. `maybe_sent` is true when a submit may have reached
    Slurm (look the job up by its comment before submitting again)."""

    def __init__(self, message: str, *, maybe_sent: bool = False, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.maybe_sent = maybe_sent


class SlurmAuthError(SlurmError):
    """slurmrestd or slurmctld refused the token (missing, malformed, expired, signed with
    another key, or for another user). Not retried: a new token is needed."""


class SlurmJobNotFound(SlurmError):
    """Slurm does not know the job (never existed, or ended more than MinJobAge ago)."""

    def __init__(self, message: str, *, job_id: int | None = None, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.job_id = job_id


class SlurmRejected(SlurmError):
    """Slurm refused the request itself (a submit it will not queue, a job that is not
    ours, a body it cannot parse). The message carries Slurm's error text."""


class SlurmVersionError(SlurmError):
    """slurmrestd serves no REST API version the bridge has an adapter for."""


@dataclass(frozen=True)
class SlurmErrorDetail:
    number: int | None
    error: str
    description: str = ""
    source: str = ""

    def __str__(self) -> str:
        text = "; ".join(t for t in (self.description, self.error) if t) or "no text"
        return f"{text} (error {self.number})" if self.number is not None else text


def error_details(body: Any) -> tuple[SlurmErrorDetail, ...]:
    """Slurm's errors from a response body; () when it has none or is not JSON."""
    if not isinstance(body, dict):
        return ()
    found = []
    for entry in body.get("errors") or ():
        if not isinstance(entry, dict):
            continue
        number = next(
            (entry[k] for k in ("error_number", "error_code", "errno") if k in entry), None
        )
        found.append(
            SlurmErrorDetail(
                number=number if isinstance(number, int) else None,
                error=str(entry.get("error") or ""),
                description=str(entry.get("description") or ""),
                source=str(entry.get("source") or ""),
            )
        )
    return tuple(found)


def describe(details: Iterable[SlurmErrorDetail]) -> str:
    return "; ".join(str(d) for d in details) or "no error text"


# slurm_errno.h: communication with slurmctld failed, or it is not the active controller.
TRANSIENT_NUMBERS = frozenset(
    {
        *range(1001, 1005),  # SLURM_COMMUNICATIONS_{CONNECTION,SEND,RECEIVE,SHUTDOWN}_ERROR
        *range(1019, 1026),  # ..._REJECTED, connect/read/write timeouts, SLURM_SHUTTING_DOWN
        *range(1800, 1806),  # SLURMCTLD_COMMUNICATIONS_*
        2027,  # ESLURM_IN_STANDBY_MODE
        2131,  # ESLURM_IN_STANDBY_USE_BACKUP
        5004,  # SLURM_PROTOCOL_SOCKET_IMPL_TIMEOUT
    }
)
AUTH_NUMBERS = frozenset({1007, 6000, 6001, 6004, 6007, 6010, 9008})
JOB_NOT_FOUND = 2017  # ESLURM_INVALID_JOB_ID
UNSPECIFIED = -1  # SLURM_ERROR: all v0.0.38 says when slurmctld refused the token, or is gone


class Verdict(enum.Enum):
    OK = "ok"
    TRANSIENT = "transient"
    AUTH = "auth"
    NOT_FOUND = "not found"
    REJECTED = "rejected"
    VERSION = "version"


def classify(
    status: int,
    details: Sequence[SlurmErrorDetail],
    *,
    elapsed_s: float,
    auth_reject_within_s: float,
) -> Verdict:
    """What an HTTP answer from slurmrestd means.

    The hard case is v0.0.38's 500 with only error -1 ("Unspecified error"): it is what
    slurmctld's refusal of a token looks like, and also what slurmrestd says when it cannot
    reach slurmctld. A refusal comes back at once; an unreachable slurmctld only after
    slurmrestd's own connect retries (about 9 s measured on 22.05). So a fast -1 is a
    refused token and a slow one is transient.
    """
    if status < 400:
        return Verdict.OK
    if status in (401, 403):
        return Verdict.AUTH
    if status == 404:
        return Verdict.VERSION  # the URL (and so the API version) is not served
    if status in (408, 429, 502, 503, 504):
        return Verdict.TRANSIENT
    if status < 500:
        return Verdict.REJECTED
    numbers = {d.number for d in details}
    if numbers & TRANSIENT_NUMBERS:
        return Verdict.TRANSIENT
    if numbers & AUTH_NUMBERS:
        return Verdict.AUTH
    if JOB_NOT_FOUND in numbers:
        return Verdict.NOT_FOUND
    if status == 500 and details and numbers <= {UNSPECIFIED, None}:
        return Verdict.AUTH if elapsed_s < auth_reject_within_s else Verdict.TRANSIENT
    if status == 500 and details:
        return Verdict.REJECTED
    return Verdict.TRANSIENT  # a 5xx with no Slurm errors: a proxy, or slurmrestd in trouble
