"""Reading a job script: size and content checks, and its #GSUB option lines."""

from __future__ import annotations

import os
import shlex
import stat
from dataclasses import dataclass
from pathlib import Path

MAX_SCRIPT_BYTES = 1 << 20


class ScriptError(ValueError):
    pass


@dataclass(frozen=True)
class JobScript:
    path: Path
    content: bytes
    directives: list[tuple[int, list[str]]]  # (line number, option words)


def read_script(path: Path, limit: int = MAX_SCRIPT_BYTES) -> JobScript:
    """The script at `path`, read only from a regular file and never more than `limit` + 1
    bytes: a FIFO, a device (/dev/zero) or a directory is refused, not read or waited on."""
    try:
        # O_NONBLOCK: opening a FIFO with no writer must not wait for one
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except IsADirectoryError:
        raise ScriptError(f"{path} is a directory, not a job script") from None
    except OSError as exc:
        raise ScriptError(f"cannot read script {path}: {exc.strerror}") from exc
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise ScriptError(f"{path} is a directory, not a job script")
        if not stat.S_ISREG(mode):
            raise ScriptError(
                f"{path} is not a regular file (a FIFO or a device?), not a job script"
            )
        chunks: list[bytes] = []
        left = limit + 1
        while left > 0 and (chunk := os.read(fd, min(left, 1 << 20))):
            chunks.append(chunk)
            left -= len(chunk)
    except OSError as exc:
        raise ScriptError(f"cannot read script {path}: {exc.strerror}") from exc
    finally:
        os.close(fd)
    content = b"".join(chunks)
    if len(content) > limit:
        raise ScriptError(f"{path} is over {limit} bytes; job scripts are limited to {limit} bytes")
    if not content.strip():
        raise ScriptError(f"{path} is empty")
    try:
        if b"\0" in content:
            raise UnicodeDecodeError("utf-8", content, 0, 1, "NUL byte")
        text = content.decode("utf-8")
    except UnicodeDecodeError:
        raise ScriptError(f"{path} is a binary file, not a job script") from None
    if not text.startswith("#!"):
        raise ScriptError(f"{path}: the first line must be an interpreter line such as #!/bin/bash")
    return JobScript(path, content, directives(text, str(path)))


def directives(text: str, where: str) -> list[tuple[int, list[str]]]:
    """The #GSUB lines at the top of the script, before its first command (as sbatch reads them)."""
    found = []
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if number == 1 and stripped.startswith("#!"):
            continue
        if not stripped:
            continue
        if not stripped.startswith("#"):
            break
        if stripped.startswith("#GSUB"):
            rest = stripped[len("#GSUB") :]
            if rest and not rest[0].isspace():
                raise ScriptError(f"{where}:{number}: malformed #GSUB line: {stripped!r}")
            try:
                words = shlex.split(rest, comments=True)
            except ValueError as exc:
                raise ScriptError(f"{where}:{number}: malformed #GSUB line: {exc}") from None
            if not words:
                raise ScriptError(f"{where}:{number}: #GSUB line with no option")
            found.append((number, words))
    return found


def wrap(command: str) -> bytes:
    return f"#!/bin/sh\n{command}\n".encode()
