"""The command lines: `gsub` submits a job, `gshare` does the rest.

- gsub.py:       gsub's entry point
- options.py:    gsub's options and #GSUB directives, the script, the JobSpec
- main.py:       gshare's parser and entry point
- commands.py:   one function per job command (queue, show, why, sweep, logs, and the
                 actions: cancel, hold, release, preempt, priority)
- usage.py:      gshare usage: the fair-share tree and the quotas
- nodes.py:      gshare nodes, drain and resume
- standalone.py: gshare sim, top and ca, which main.py runs without a client
- render.py:     tables for people, JSON for programs
- common.py:     what they share (usage errors, one-line failures)

Each entry point imports only what it runs: nothing here imports the scheduler, the
policies or the TUI at module level (`gshare up`, `gshare top` and `gshare sim` import
what they need when they run), and `gsub` loads none of gshare's commands.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

# gRPC's core logs a refused TLS handshake at INFO on stderr by default; a command line's
# error is its own one line (set before grpc is first imported)
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

from gshare.cli.common import UsageError
from gshare.cli.options import build_spec, gsub_parser

__all__ = ["UsageError", "build_spec", "gshare_main", "gsub_main", "gsub_parser"]


def gsub_main(argv: Sequence[str] | None = None) -> int:
    from gshare.cli.gsub import main

    return main(argv)


def gshare_main(argv: Sequence[str] | None = None) -> int:
    from gshare.cli.main import main

    return main(argv)
