"""Daemon logging: one line per record, journald-friendly (no timestamps under systemd)."""

from __future__ import annotations

import logging
import os
import sys


def setup_logging(level: str) -> None:
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        raise ValueError(f"unknown log level {level!r}")
    under_journal = bool(os.environ.get("JOURNAL_STREAM"))
    fmt = (
        "%(name)s: %(message)s"
        if under_journal
        else "%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.basicConfig(level=numeric, format=fmt, stream=sys.stderr)
    logging.getLogger("alembic").setLevel(max(numeric, logging.WARNING))
