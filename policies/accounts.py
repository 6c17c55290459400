"""The account tree (root -> accounts -> users, with shares) and decayed usage."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

DEFAULT_ACCOUNT = "default"


@dataclass(frozen=True, slots=True)
class Account:
    name: str
    shares: float
    children: tuple[Account, ...] = ()
    users: tuple[tuple[str, float], ...] = ()  # (user, shares)


def _index(root: Account) -> dict[str, tuple[str, ...]]:
    """user -> the path of account names from the root's child down to the user's account."""
    out: dict[str, tuple[str, ...]] = {}

    def walk(acct: Account, path: tuple[str, ...]) -> None:
        for user, _ in acct.users:
            out.setdefault(user, path)
        for child in acct.children:
            walk(child, (*path, child.name))

    walk(root, ())
    return out


@dataclass(frozen=True, slots=True)
class AccountTree:
    root: Account
    default_account: str = DEFAULT_ACCOUNT
    _paths: Mapping[str, tuple[str, ...]] = field(
        default_factory=lambda: MappingProxyType({}), compare=False
    )

    @staticmethod
    def build(root: Account, default_account: str = DEFAULT_ACCOUNT) -> AccountTree:
        names = {c.name for c in root.children}
        if default_account not in names:
            root = Account(
                root.name, root.shares, (*root.children, Account(default_account, 1.0)), root.users
            )
        return AccountTree(root, default_account, MappingProxyType(_index(root)))

    @staticmethod
    def flat() -> AccountTree:
        """Everyone in one default account with equal shares."""
        return AccountTree.build(Account("root", 1.0))

    def path_of(self, user: str) -> tuple[str, ...]:
        return self._paths.get(user, (self.default_account,))

    def team_of(self, user: str) -> str:
        return self.path_of(user)[0]

    def with_users(self, users: Iterable[str]) -> AccountTree:
        """This tree plus, in the default account, the users it does not name."""
        extra = sorted({u for u in users if u not in self._paths})
        if not extra:
            return self
        children = tuple(
            Account(c.name, c.shares, c.children, (*c.users, *((u, 1.0) for u in extra)))
            if c.name == self.default_account
            else c
            for c in self.root.children
        )
        root = Account(self.root.name, self.root.shares, children, self.root.users)
        return AccountTree(root, self.default_account, MappingProxyType(_index(root)))

    def teams(self) -> tuple[Account, ...]:
        return self.root.children

    def team_share_fractions(self) -> dict[str, float]:
        total = sum(t.shares for t in self.root.children) or 1.0
        return {t.name: t.shares / total for t in self.root.children}


def decay_factor(dt: float, half_life_s: float) -> float:
    """How much of a usage is left after `dt` seconds."""
    return math.pow(0.5, dt / half_life_s) if dt > 0 else 1.0


def decayed_usage(
    usage: Mapping[str, float], gpus_by_user: Mapping[str, int], dt: float, half_life_s: float
) -> dict[str, float]:
    """Usage after `dt` more seconds: the old part decays, and each user's running GPUs add
    GPU-seconds decayed continuously over the interval (the exact integral)."""
    keep = decay_factor(dt, half_life_s)
    # integral over [0, dt] of 2^(-(dt - s)/h) ds = h / ln 2 * (1 - 2^(-dt/h))
    added = half_life_s / math.log(2) * (1 - keep) if dt > 0 else 0.0
    out = {u: v * keep for u, v in usage.items()}
    for user, gpus in gpus_by_user.items():
        if gpus:
            out[user] = out.get(user, 0.0) + gpus * added
    return out
