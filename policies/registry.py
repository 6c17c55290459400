"""Policies by name: built-ins here, third-party ones through the `gshare.policies` entry points."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from importlib.metadata import entry_points
from typing import Any, Protocol, runtime_checkable

from policies.fairshare import FairShare
from policies.fifo import Fifo
from policies.priority import Multifactor, ParameterError
from policies.snapshot import ClusterSnapshot, Plan


@runtime_checkable
class Policy(Protocol):
    name: str

    def decide(self, snapshot: ClusterSnapshot) -> Plan: ...


class PolicyError(ValueError):
    """An unknown policy name or a parameter the policy does not accept."""


PolicyFactory = Callable[..., Any]  # checked against Policy when called

BUILTIN: Mapping[str, PolicyFactory] = {
    "fairshare": FairShare,
    "priority": Multifactor,
    "fifo": Fifo,
}


def _plugins() -> dict[str, PolicyFactory]:
    return {ep.name: ep.load() for ep in entry_points(group="gshare.policies")}


def available_policies() -> list[str]:
    return sorted({*BUILTIN, *(ep.name for ep in entry_points(group="gshare.policies"))})


def make_policy(name: str, params: Mapping[str, Any] | None = None) -> Policy:
    factory = BUILTIN.get(name) or _plugins().get(name)
    if factory is None:
        known = ", ".join(available_policies())
        raise PolicyError(f"unknown scheduling policy {name!r} (known: {known})")
    try:
        policy = factory(**dict(params or {}))
    except (TypeError, ParameterError) as exc:
        raise PolicyError(f"policy {name!r}: bad parameters: {exc}") from exc
    if not isinstance(policy, Policy):
        raise PolicyError(f"policy {name!r} does not provide name and decide(snapshot)")
    return policy
