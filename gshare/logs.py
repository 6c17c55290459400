"""Daemon logging: one line per record, journald-friendly under systemd.

Under journald (JOURNAL_STREAM set) a line starts with its syslog priority, "<3>" for an
error, which journald reads as the entry's priority (SyslogLevelPrefix), and carries no
timestamp of its own: the journal has one.
"""

from __future__ import annotations

import logging
import os
import sys

_PRIORITY = {
    logging.CRITICAL: 2,
    logging.ERROR: 3,
    logging.WARNING: 4,
    logging.INFO: 6,
    logging.DEBUG: 7,
}


class _JournalFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        priority = _PRIORITY.get(record.levelno, 6 if record.levelno < logging.WARNING else 3)
        # journald makes an entry of each line: a traceback's lines carry the priority too
        text = super().format(record).replace("\n", f"\n<{priority}>  ")
        return f"<{priority}>{text}"


def setup_logging(level: str) -> None:
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        raise ValueError(f"unknown log level {level!r}")
    handler = logging.StreamHandler(sys.stderr)
    if os.environ.get("JOURNAL_STREAM"):
        handler.setFormatter(_JournalFormatter("%(name)s: %(message)s"))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=numeric, handlers=[handler])
    logging.getLogger("alembic").setLevel(max(numeric, logging.WARNING))
