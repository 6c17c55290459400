"""`gshare usage`: the fair-share tree (shares, decayed usage, factors) and the teams'
quotas (guarantees, limits, borrowing and reclaims)."""

from __future__ import annotations

import argparse
import json

from gshare.api import gshare_pb2 as pb
from gshare.cli.render import table
from gshare.client import Client
from gshare.render import printable
from gshare.timefmt import format_duration


def cmd_usage(client: Client, args: argparse.Namespace) -> int:
    report = client.usage()
    if args.json:
        print(
            json.dumps(
                {
                    "half_life_s": report.half_life_s,
                    "cluster_gpus": report.cluster_gpus,
                    "accounts": [
                        {
                            "path": list(a.path),
                            "kind": "user" if a.is_user else "account",
                            "shares": a.shares,
                            "share": a.share,
                            "usage_gpu_s": a.usage,
                            "usage_share": a.usage_share,
                            "level_fairshare": None if a.level_fairshare < 0 else a.level_fairshare,
                            "fairshare_factor": a.fairshare_factor if a.is_user else None,
                            "running_gpus": a.running_gpus,
                            "pending_gpus": a.pending_gpus,
                            "idle_gpu_s": a.idle_gpu_s,
                            **_quota_json(a),
                        }
                        for a in report.accounts
                    ],
                    "reclaim_after_s": report.reclaim_after_s,
                    "warnings": list(report.warnings),
                },
                indent=2,
            )
        )
        return 0
    rows = []
    for a in report.accounts:
        name = "  " * (len(a.path) - 1) + a.path[-1]
        lf = "inf" if a.level_fairshare < 0 else f"{a.level_fairshare:.2f}"
        rows.append(
            [
                name,
                f"{a.shares:g}",
                f"{a.share:.3f}",
                f"{a.usage / 3600:.1f}",
                f"{a.usage_share:.3f}",
                lf,
                f"{a.fairshare_factor:.3f}" if a.is_user else "",
                str(a.running_gpus),
                str(a.pending_gpus),
                f"{a.idle_gpu_s / 3600:.1f}",
            ]
        )
    days = report.half_life_s / 86400
    gpus = report.cluster_gpus
    print(f"usage: decayed GPU-hours, half-life {days:g} days; {gpus} GPUs in the cluster")
    print(
        table(
            rows,
            [
                "ACCOUNT/USER",
                "SHARES",
                "SHARE",
                "USAGE(GPU-h)",
                "USAGE-SHARE",
                "LEVEL-FS",
                "FS-FACTOR",
                "RUNNING",
                "PENDING",
                "IDLE(GPU-h)",
            ],
        )
    )
    quota_rows = [a for a in report.accounts if _has_quota(a)]
    if quota_rows:
        print()
        after = _ago(report.reclaim_after_s)
        print(f"quotas (GPUs; a team under its guarantee reclaims after {after}):")
        print(
            table(
                [
                    [
                        printable(a.path[-1]),
                        printable(a.guaranteed) or "-",
                        printable(a.limit) or "-",
                        "yes" if a.lend else "no",
                        str(a.held_gpus),
                        str(a.borrowing) if a.borrowing else "",
                        _borrow_text(a),
                    ]
                    for a in quota_rows
                ],
                ["ACCOUNT", "GUARANTEED", "LIMIT", "LENDS", "HOLDS", "BORROWS", "RECLAIM"],
            )
        )
    for warning in report.warnings:
        print(f"warning: {printable(warning)}")
    return 0


def _has_quota(a: pb.AccountUsage) -> bool:
    return not a.is_user and bool(a.guaranteed or a.limit or a.held_gpus or a.borrowing)


def _ago(seconds: float) -> str:
    return format_duration(seconds) if seconds >= 60 else f"{seconds:.0f}s"


def _borrow_text(a: pb.AccountUsage) -> str:
    """Who it borrows from, and when its reclaim happens."""
    parts = []
    if a.borrowing:
        source = ", ".join(a.borrows_from) or "unguaranteed GPUs"
        parts.append(f"borrows from {printable(source)}")
    if a.reclaim_from:
        who = printable(", ".join(a.reclaim_from))
        when = "now" if a.reclaim_in_s <= 0 else f"in {_ago(a.reclaim_in_s)}"
        parts.append(f"reclaims from {who} {when}")
    return "; ".join(parts)


def _quota_json(a: pb.AccountUsage) -> dict[str, object]:
    if not _has_quota(a):
        return {}
    return {
        "guaranteed": a.guaranteed or None,
        "limit": a.limit or None,
        "lend": a.lend,
        "held_gpus": a.held_gpus,
        "borrowing": a.borrowing,
        "borrows_from": list(a.borrows_from),
        "reclaim_in_s": None if a.reclaim_in_s < 0 else a.reclaim_in_s,
        "reclaim_from": list(a.reclaim_from),
    }
