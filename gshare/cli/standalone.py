"""The commands main.py runs without a client of its own: `gshare sim` (the trace
replay), `gshare top` (the terminal UI) and `gshare ca`. Each imports what it needs
when it runs (`gshare up` is gshare/up.py)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from gshare.cli.common import UsageError, fail


def _param(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise UsageError(f"--policy-param needs KEY=VALUE, not {text!r}")
    lowered = value.lower()
    if lowered in ("true", "false"):
        return key, lowered == "true"
    for kind in (int, float):
        try:
            return key, kind(value)
        except ValueError:
            pass
    return key, value


def cmd_sim(args: argparse.Namespace) -> int:
    # the simulator drives the scheduler's own decision code, so it lives beside it
    from policies import PolicyError, make_policy
    from schedulerd.sim import (
        TraceError,
        check_dependencies,
        plot,
        read_trace,
        report,
        simulate,
    )

    if args.nodes < 1 or args.gpus_per_node < 1:
        raise UsageError("--nodes and --gpus-per-node must be at least 1")
    if args.checkpoint_every < 0 or args.restart_cost < 0:
        raise UsageError("--checkpoint-every and --restart-cost must not be negative")
    if args.half_life <= 0:
        raise UsageError("--half-life must be positive")
    params: dict[str, Any] = {"explain": False}
    params.update(_param(p) for p in args.policy_param)
    try:
        policy = make_policy(args.policy, params)
        jobs = read_trace(args.trace)
        if args.running_at_start:
            jobs += read_trace(args.running_at_start, measured=False)
        check_dependencies(jobs, str(args.trace))
    except (PolicyError, TraceError) as exc:
        return fail("gshare sim", str(exc), 2)
    result = simulate(
        jobs,
        policy,
        args.nodes,
        args.gpus_per_node,
        half_life_s=args.half_life,
        checkpoint_every_s=args.checkpoint_every * 60,
        restart_cost_s=args.restart_cost,
        record_series=args.plot is not None,
        group_by=args.group_by,
    )
    if args.plot is not None:
        try:
            plot(result, args.plot)
        except ImportError:
            return fail("gshare sim", "--plot needs matplotlib: pip install 'gshare[sim]'")
        except OSError as exc:
            return fail("gshare sim", f"cannot write {args.plot}: {exc.strerror}")
    print(json.dumps(result.as_json(), indent=2) if args.json else report(result, args.trace.name))
    return 0


def cmd_top(args: argparse.Namespace) -> int:
    from tui.app import run  # Textual is imported only by the terminal UI

    return run(args.address)


def cmd_ca(args: argparse.Namespace) -> int:
    from gshare.ca import CaError, init, issue

    days = args.days if args.days is not None else (3650 if args.what == "init" else 825)
    if not 0 < days <= 36500:
        return fail("gshare ca", f"--days must be between 1 and 36500, not {days}", 2)
    try:
        if args.what == "init":
            if args.names:
                return fail("gshare ca", "init takes no names (use --dir)", 2)
            made = init(args.dir, days)
        else:
            made = issue(args.dir, args.what, list(args.names), days)
    except CaError as exc:
        return fail("gshare ca", str(exc), 2 if "name" in str(exc) else 1)
    print(made)
    return 0
