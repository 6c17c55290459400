"""Quotas and GPU types: what an account is guaranteed, what it may never exceed, what a
user may run or queue, and which GPU models a job accepts.

- `guaranteed`: GPUs an account gets back whenever it has work for them. While it does
  not use them, others may borrow them (unless it does not `lend`); an account holding
  more than its guarantee is *borrowing*. A job of an account under its guarantee that
  has waited `reclaim_after_s` may checkpoint-preempt jobs of borrowing accounts
  (victims chosen as any preemption's: least work lost first, past the minimum runtime).
- `limit`: GPUs an account never holds more of; checked at each start, all its users'
  jobs together.
- `lend = false`: the account's idle guaranteed GPUs stay free for it.
- per user: `max_running_gpus` (checked at each start); `max_pending_jobs` is checked at
  submit, by the scheduler's edge.

Each quota is over GPUs of every type (key ANY) or of one GPU type (key: a type name).
A type name matches a GPU model when, compared without case and without a leading
"NVIDIA ", it is the model or the model's first words up to a "-", "_" or " ":
"a100" matches "NVIDIA A100-SXM4-80GB", "a10" does not.

The decision's ledger of who holds what is `QuotaBook` (policies/quotabook.py); the claim
rule it adds to a policy's, `quota_claim` (policies/quotaclaim.py); each account's
standing, for `gshare usage`, `quota_report` (policies/quotareport.py).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

ANY = ""  # the key of a quota over GPUs of every type


@functools.cache
def normalise_type(name: str) -> str:
    """A GPU model or a type name as compared: lower case, single spaces, no "NVIDIA "."""
    text = " ".join(name.split()).casefold()
    return text.removeprefix("nvidia ").strip()


@functools.cache
def type_matches(wanted: str, model: str) -> bool:
    """Whether type name `wanted` names GPU model `model` (both normalised or not)."""
    want, have = normalise_type(wanted), normalise_type(model)
    if not want:
        return False
    return have == want or (have.startswith(want) and have[len(want)] in "-_ ")


def accepts(types: Iterable[str], model: str) -> bool:
    return any(type_matches(t, model) for t in types)


def _frozen() -> Mapping[str, int]:
    return MappingProxyType({})


@dataclass(frozen=True, slots=True)
class AccountQuota:
    guaranteed: Mapping[str, int] = field(default_factory=_frozen)  # type key -> GPUs
    limit: Mapping[str, int] = field(default_factory=_frozen)  # absent key: no limit
    lend: bool = True


NO_QUOTA = AccountQuota()


@dataclass(frozen=True, slots=True)
class UserLimits:
    max_running_gpus: int = 0  # 0: no limit
    max_pending_jobs: int = 0  # 0: no limit


@dataclass(frozen=True, slots=True)
class Quotas:
    accounts: Mapping[str, AccountQuota] = field(default_factory=lambda: MappingProxyType({}))
    users: Mapping[str, UserLimits] = field(default_factory=lambda: MappingProxyType({}))
    user_default: UserLimits = UserLimits()
    reclaim_after_s: float = 300.0

    def user_limits(self, user: str) -> UserLimits:
        return self.users.get(user, self.user_default)

    @property
    def active(self) -> bool:
        """Whether anything here can change a decision."""
        return bool(
            self.accounts
            or any(u.max_running_gpus for u in self.users.values())
            or self.user_default.max_running_gpus
        )
