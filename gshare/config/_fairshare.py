"""The [fairshare] section: half-life, accounts with their shares, guarantees and limits
(quotas per GPU type), and the users' limits."""

from __future__ import annotations

from typing import Any

from gshare.config._fields import _duration, _known_keys, _section, _typed
from gshare.config._model import AccountConfig, ConfigError, UserLimitsConfig
from gshare.timefmt import TimeFormatError, parse_duration

MAX_QUOTA_GPUS = 10_000_000
MAX_TYPE_CHARS = 64


def _count(value: Any, key: str, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{where}: {key} must be a whole number of GPUs, not {value!r}")
    if not 0 <= value <= MAX_QUOTA_GPUS:
        raise ConfigError(f"{where}: {key} must be between 0 and {MAX_QUOTA_GPUS}, not {value}")
    return value


MAX_RECLAIM_AFTER_S = 30 * 86400


def _quota(table: dict[str, Any], key: str, where: str) -> tuple[tuple[str, int], ...]:
    """`key = 16` (GPUs of any type) or `key = { A100 = 8, "*" = 16 }` (per GPU type)."""
    if key not in table:
        return ()
    value = table[key]
    if not isinstance(value, dict):
        return (("", _count(value, key, where)),)
    out = []
    seen: dict[str, str] = {}  # the type as compared -> the key that named it
    for kind, count in value.items():
        if kind != "*" and (
            not kind.strip() or len(kind) > MAX_TYPE_CHARS or not all(c.isprintable() for c in kind)
        ):
            raise ConfigError(f"{where}: {key}: bad GPU type name {kind!r}")
        same = "" if kind == "*" else _type_as_compared(kind)
        if kind != "*" and not same:
            raise ConfigError(f"{where}: {key}: bad GPU type name {kind!r}")
        if same in seen:
            raise ConfigError(
                f"{where}: {key}: GPU types {seen[same]!r} and {kind!r} name the same GPUs"
            )
        seen[same] = kind
        out.append(("" if kind == "*" else kind, _count(count, f"{key}.{kind}", where)))
    return tuple(out)


def _type_as_compared(name: str) -> str:
    """A GPU type name as quotas compare it (policies.quota.normalise_type)."""
    return " ".join(name.split()).casefold().removeprefix("nvidia ").strip()


def _user_limits(table: dict[str, Any], where: str, default: UserLimitsConfig) -> UserLimitsConfig:
    return UserLimitsConfig(
        _count(table["max_running_gpus"], "max_running_gpus", where)
        if "max_running_gpus" in table
        else default.max_running_gpus,
        _count(table["max_pending_jobs"], "max_pending_jobs", where)
        if "max_pending_jobs" in table
        else default.max_pending_jobs,
    )


_ACCOUNT_KEYS = {"shares", "users", "guaranteed", "limit", "lend"}


def _fairshare(table: dict[str, Any], where: str) -> dict[str, Any]:
    known = {
        "half_life",
        "default_account",
        "default_shares",
        "accounts",
        "reclaim_after",
        "max_running_gpus",
        "max_pending_jobs",
        "users",
    }
    for key in table:
        if key not in known:
            raise ConfigError(f"{where}: unknown key {key!r} (known: {', '.join(sorted(known))})")
    half_life = 7 * 86400.0
    if "half_life" in table:
        value = table["half_life"]
        if isinstance(value, int | float) and not isinstance(value, bool):
            half_life = float(value)  # a bare number means seconds
        else:
            try:
                half_life = float(parse_duration(str(value)))
            except TimeFormatError as exc:
                raise ConfigError(f"{where}: half_life: {exc}") from exc
        if not 0 < half_life < float("inf"):
            raise ConfigError(f"{where}: half_life must be positive, not {value!r}")
    shares = _typed(table, "default_shares", float, where, 1.0)
    if not 0 <= shares < float("inf"):
        raise ConfigError(f"{where}: default_shares must be a finite number, not negative")
    accounts = []
    seen_users: dict[str, str] = {}
    for name, acct in _section(table, "accounts", where).items():
        awhere = f"{where[:-1]}.accounts.{name}]"
        if not isinstance(acct, dict):
            raise ConfigError(f"{awhere}: must be a table")
        _known_keys(acct, _ACCOUNT_KEYS, awhere)
        acct_shares = _typed(acct, "shares", float, awhere, 1.0)
        if not 0 <= acct_shares < float("inf"):
            raise ConfigError(f"{awhere}: shares must be a finite number, not negative")
        raw = acct.get("users", [])
        if isinstance(raw, list) and all(isinstance(u, str) for u in raw):
            users = [(u, 1.0) for u in raw]
        elif isinstance(raw, dict) and all(
            isinstance(v, int | float) and not isinstance(v, bool) and v >= 0 for v in raw.values()
        ):
            users = [(u, float(v)) for u, v in raw.items()]
        else:
            raise ConfigError(
                f"{awhere}: users must be a list of names or a table of name = shares"
            )
        for user, _ in users:
            if user in seen_users:
                raise ConfigError(
                    f"{awhere}: user {user!r} is already in account {seen_users[user]!r}"
                )
            seen_users[user] = name
        guaranteed = _quota(acct, "guaranteed", awhere)
        limit = _quota(acct, "limit", awhere)
        for kind, cap in limit:
            promised = dict(guaranteed).get(kind, 0)
            if not kind:  # all its guaranteed GPUs, of any type, count under its limit
                promised = max(promised, sum(n for k, n in guaranteed if k))
            if cap < promised:
                named = f"limit.{kind}" if kind else "limit"
                raise ConfigError(
                    f"{awhere}: {named} ({cap}) must not be under guaranteed ({promised})"
                )
        lend = _typed(acct, "lend", bool, awhere, True)
        accounts.append(AccountConfig(name, acct_shares, tuple(users), guaranteed, limit, lend))
    reclaim_after = 300
    if isinstance(table.get("reclaim_after"), bool):
        raise ConfigError(f"{where}: reclaim_after must be a duration, not a boolean")
    if "reclaim_after" in table:
        reclaim_after = _duration(table, "reclaim_after", where)
        if reclaim_after > MAX_RECLAIM_AFTER_S:
            raise ConfigError(
                f"{where}: reclaim_after must be at most {MAX_RECLAIM_AFTER_S // 86400} days"
            )
    everyone = _user_limits(table, where, UserLimitsConfig())
    per_user = []
    for user, limits in _section(table, "users", where).items():
        uwhere = f"{where[:-1]}.users.{user}]"
        if not isinstance(limits, dict):
            raise ConfigError(f"{uwhere}: must be a table")
        _known_keys(limits, {"max_running_gpus", "max_pending_jobs"}, uwhere)
        per_user.append((user, _user_limits(limits, uwhere, everyone)))
    return {
        "reclaim_after_s": float(reclaim_after),
        "user_limits": everyone,
        "users": tuple(per_user),
        "half_life_s": half_life,
        "accounts": tuple(accounts),
        "default_account": _typed(table, "default_account", str, where, "default"),
        "default_shares": shares,
    }
