"""What every command line shares: the usage error, parsers that raise or print one line, `fail`."""

from __future__ import annotations

import argparse
import sys
from typing import NoReturn

from gshare.render import printable

INT32_MAX = 2**31 - 1

INT64_MAX = 2**63 - 1


class UsageError(Exception):
    """Bad input on the command line or in a #GSUB line (exit 2)."""


class _Parser(argparse.ArgumentParser):
    """Raises instead of exiting, so #GSUB lines can report their line number."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


class _OneLineParser(argparse.ArgumentParser):
    """A usage error in one line (and exit 2), not the usage text before it."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {printable(message)} (see {self.prog} --help)\n")


def fail(prog: str, message: str, code: int = 1) -> int:
    print(f"{prog}: {printable(message)}", file=sys.stderr)
    return code
