"""Where gshare keeps things by default, apart from the config module so that a client
that only needs to find the scheduler (gsub) does not load the config's dataclasses."""

from __future__ import annotations

import os
from pathlib import Path

SYSTEM_CONFIG = Path("/etc/gshare/gshare.toml")
SYSTEM_SOCKET = Path("/run/gshare/gshare.sock")


def default_state_dir() -> Path:
    """Where a user's own `gshare up` keeps its state (XDG), or /var/lib/gshare for root."""
    if os.geteuid() == 0 and not os.environ.get("XDG_STATE_HOME"):
        return Path("/var/lib/gshare")
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "gshare"
