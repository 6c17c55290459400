"""Durations as people write them: 90, 90s, 15m, 2h, 1d, 1-12:00:00, 1:30:00, 45:00."""

from __future__ import annotations

import re

_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400}


class TimeFormatError(ValueError):
    pass


def parse_duration(text: str) -> int:
    """Seconds in `text`. A bare number is minutes, as in sbatch --time."""
    s = text.strip().lower()
    if not s:
        raise TimeFormatError("empty duration")
    match = re.fullmatch(r"(\d+)\s*([smhd])", s)
    if match:
        return int(match.group(1)) * _UNIT[match.group(2)]
    if re.fullmatch(r"\d+", s):
        return int(s) * 60
    match = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", s)
    if (match and ":" in s) or (match and "-" in s):
        days = int(match.group(1) or 0)
        parts = [int(p) for p in match.group(2, 3, 4) if p is not None]
        if "-" in s:  # days-hours[:minutes[:seconds]]
            parts += [0] * (3 - len(parts))
            h, m, sec = parts
        elif len(parts) == 3:
            h, m, sec = parts
        else:  # minutes:seconds
            h, (m, sec) = 0, parts
        if m >= 60 or sec >= 60:
            raise TimeFormatError(f"bad duration {text!r}: minutes and seconds must be < 60")
        return days * 86400 + h * 3600 + m * 60 + sec
    raise TimeFormatError(
        f"bad duration {text!r} (use e.g. 30m, 2h, 1d, 90 (minutes), 1:30:00 or 2-00:00:00)"
    )


def format_duration(seconds: float) -> str:
    total = max(0, int(seconds))
    days, rest = divmod(total, 86400)
    h, rest = divmod(rest, 3600)
    m, s = divmod(rest, 60)
    return f"{days}-{h:02d}:{m:02d}:{s:02d}" if days else f"{h}:{m:02d}:{s:02d}"
