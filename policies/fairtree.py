"""Fair Tree (after Slurm's): rank users by walking the account tree, siblings first by
their level fair share, and turn the rank into a fair-share factor in (0, 1].

At each level, for each child (an account or a user) of an account:
  S  = its shares / the sum of its siblings' shares
  U  = its decayed usage / the sum of its siblings' usage (0 if they have none)
  LF = S / U   (infinite when U is 0: an unused share ranks first)
Children are visited in order of LF, highest first (ties by name), depth first; users get
ranks in that visiting order, and a user's factor is (n - rank_index) / n, so the best
placed of n users has 1.0 and the worst 1/n. Users whose LF ties get the same factor.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from policies.accounts import Account, AccountTree

INF = float("inf")


@dataclass(frozen=True, slots=True)
class Standing:
    """An account's or user's place among its siblings."""

    path: tuple[str, ...]  # account names, then the user name for a user
    raw_shares: float  # as configured
    share: float  # S: normalised among siblings
    usage: float  # decayed GPU-seconds
    usage_share: float  # U: normalised among siblings
    level_fairshare: float  # S / U
    is_user: bool = False


@dataclass(frozen=True, slots=True)
class FairTree:
    factors: Mapping[str, float]  # user -> fair-share factor
    standings: Mapping[tuple[str, ...], Standing]  # every account and user by path

    def ratio(self, path: tuple[str, ...]) -> float:
        """Usage share over entitled share: 1.8 means at 1.8x its share."""
        s = self.standings.get(path)
        if s is None or s.share == 0:
            return 0.0
        return s.usage_share / s.share


def account_usage(acct: Account, usage: Mapping[str, float]) -> float:
    return sum(usage.get(u, 0.0) for u, _ in acct.users) + sum(
        account_usage(c, usage) for c in acct.children
    )


def fair_tree(tree: AccountTree, usage: Mapping[str, float]) -> FairTree:
    standings: dict[tuple[str, ...], Standing] = {}
    ranked: list[tuple[str, tuple[float, ...]]] = []  # users in visiting order, with LF path

    def visit(acct: Account, path: tuple[str, ...], lf_path: tuple[float, ...]) -> None:
        kids: list[tuple[str, float, float, Account | None]] = [
            (c.name, c.shares, account_usage(c, usage), c) for c in acct.children
        ] + [(u, shares, usage.get(u, 0.0), None) for u, shares in acct.users]
        total_shares = sum(k[1] for k in kids) or 1.0
        total_usage = sum(k[2] for k in kids)
        entries = []
        for name, shares, used, child in kids:
            s = shares / total_shares
            u = used / total_usage if total_usage > 0 else 0.0
            lf = s / u if u > 0 else (INF if s > 0 else 0.0)
            standings[(*path, name)] = Standing(
                (*path, name), shares, s, used, u, lf, child is None
            )
            entries.append((-lf, name, child))
        for neg_lf, name, child in sorted(entries, key=lambda e: (e[0], e[1])):
            if child is None:
                ranked.append((name, (*lf_path, -neg_lf)))
            else:
                visit(child, (*path, name), (*lf_path, -neg_lf))

    visit(tree.root, (), ())
    n = len(ranked)
    factors: dict[str, float] = {}
    rank = 0
    previous: tuple[float, ...] | None = None
    for index, (user, lf_path) in enumerate(ranked):
        if lf_path != previous:
            rank = index
            previous = lf_path
        factors[user] = (n - rank) / n
    return FairTree(factors, standings)
