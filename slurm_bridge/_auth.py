"""The token the bridge sends to slurmrestd, where it comes from, and what to say when it is
refused.

slurmrestd (rest_auth/jwt) passes the token through to slurmctld, which checks it against
the cluster's JWT key. A token is read from a string or a file; a file is read again when
Slurm refuses the token, so an operator (or a cron job running `scontrol token`) can
rotate it without restarting anything.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
from dataclasses import dataclass
from pathlib import Path

TOKEN_HELP = "scontrol token username={user} lifespan=86400"


class TokenSource:
    """Holds the current token; `refresh()` re-reads the file, if there is one."""

    def __init__(self, token: str | None = None, token_file: str | Path | None = None) -> None:
        if (token is None) == (token_file is None):
            raise ValueError("give exactly one of token and token_file")
        self.file = Path(token_file) if token_file is not None else None
        self._token = token.strip() if token is not None else self._read()

    @property
    def token(self) -> str:
        return self._token

    def refresh(self) -> bool:
        """Read the token file again; true if it now holds a different token."""
        if self.file is None:
            return False
        try:
            fresh = self._read()
        except OSError:
            return False
        changed = fresh != self._token
        self._token = fresh
        return changed

    def _read(self) -> str:
        assert self.file is not None
        text = self.file.read_text().strip()
        # accept the file `scontrol token` prints: SLURM_JWT=eyJ...
        return text.removeprefix("SLURM_JWT=")


@dataclass(frozen=True)
class TokenInfo:
    """What a JWT says about itself (its signature is not checked: only slurmctld can)."""

    well_formed: bool
    user: str | None = None
    expires_at: float | None = None


def inspect_token(token: str) -> TokenInfo:
    parts = token.split(".")
    if len(parts) != 3:
        return TokenInfo(well_formed=False)
    payload = parts[1] + "=" * (-len(parts[1]) % 4)
    try:
        claims = json.loads(base64.urlsafe_b64decode(payload))
    except (binascii.Error, ValueError):
        return TokenInfo(well_formed=False)
    if not isinstance(claims, dict):
        return TokenInfo(well_formed=False)
    user = claims.get("sun")
    exp = claims.get("exp")
    return TokenInfo(
        well_formed=True,
        user=user if isinstance(user, str) else None,
        expires_at=float(exp) if isinstance(exp, int | float) else None,
    )


def refused_message(url: str, user: str, source: TokenSource, now: float, detail: str = "") -> str:
    """Say that the token was refused, the likely reason, and how to get a good one."""
    info = inspect_token(source.token)
    if not info.well_formed:
        why = "it is not a JWT (three base64 parts)"
    elif info.expires_at is not None and info.expires_at <= now:
        when = dt.datetime.fromtimestamp(info.expires_at, dt.UTC).isoformat(timespec="seconds")
        why = f"it expired at {when}"
    elif info.user is not None and info.user != user:
        why = (
            f"it was issued for user {info.user!r} but the requests name {user!r} "
            "(only a token of root or SlurmUser may name another user)"
        )
    else:
        why = "slurmctld refused it: signed with another key, or the user is unknown there"
    where = (
        f"write it to {source.file} (read again after every refusal)"
        if source.file is not None
        else "pass it to SlurmClient(token=...)"
    )
    extra = f" Slurm said: {detail}." if detail else ""
    return (
        f"slurmrestd at {url} rejected the token for user {user!r}: {why}.{extra} "
        f"Get a new token on a Slurm host with `{TOKEN_HELP.format(user=user)}` "
        f"(as root or SlurmUser for another user) and {where}."
    )
