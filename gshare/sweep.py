"""Parameter sweeps: a TOML file of axes expands into the tasks of one job array, and a
trial reports its result metrics.

    method = "grid"            # every combination (the default), or "random"
    count = 20                 # random: how many trials
    seed = 7                   # random: the same seed draws the same trials
    max_concurrent = 4         # at most this many trials running (the array's %K)

    [params]
    lr = [0.1, 0.01, 0.001]                  # a list of values
    layers = { from = 2, to = 8, step = 2 }  # 2, 4, 6, 8
    dropout = { uniform = [0.0, 0.5] }       # random only: drawn from the interval
    wd = { loguniform = [1e-5, 1e-2] }       # random only: drawn on a log scale

Task k gets its values as GSHARE_PARAM_<NAME> and all of them as GSHARE_PARAMS (JSON),
and writes its metrics to GSHARE_RESULT_FILE, with `report(loss=...)` from here.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import random
import re
import stat
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MAX_SWEEP_FILE = 1 << 20
MAX_PARAM_CHARS = 4096  # one value, as text
MAX_PARAMS = 64
MAX_RESULT_BYTES = 1 << 20
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")


@dataclass(frozen=True, slots=True)
class Sweep:
    trials: tuple[dict[str, str], ...]  # per task: name -> value as text
    max_concurrent: int = 0


def _text(value: Any, where: str) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{where}: {value} is not a finite number")
        return repr(value)
    if isinstance(value, int | str):
        text = str(value)
        if "\0" in text or len(text) > MAX_PARAM_CHARS:
            raise ValueError(
                f"{where}: a value must be at most {MAX_PARAM_CHARS} characters, no NUL"
            )
        return text
    raise ValueError(
        f"{where}: {type(value).__name__} values are not allowed (numbers, text, true/false)"
    )


def _axis(name: str, spec: Any, method: str) -> list[Any] | tuple[str, float, float]:
    where = f"sweep: params.{name}"
    if isinstance(spec, list):
        if not spec:
            raise ValueError(f"{where}: an empty list")
        return spec
    if not isinstance(spec, dict):
        return [spec]  # one fixed value
    if set(spec) <= {"from", "to", "step"} and {"from", "to"} <= set(spec):
        lo, hi, step = spec["from"], spec["to"], spec.get("step", 1)
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in (lo, hi, step)):
            raise ValueError(f"{where}: from, to and step must be whole numbers")
        if step < 1 or hi < lo:
            raise ValueError(f"{where}: an empty range (from {lo} to {hi} step {step})")
        if (hi - lo) // step >= 100_000:
            raise ValueError(f"{where}: more than 100000 values")
        return list(range(lo, hi + 1, step))
    for kind in ("uniform", "loguniform"):
        if set(spec) == {kind}:
            bounds = spec[kind]
            ok = (
                isinstance(bounds, list)
                and len(bounds) == 2
                and all(isinstance(b, int | float) and not isinstance(b, bool) for b in bounds)
                and all(math.isfinite(b) for b in bounds)
                and bounds[0] < bounds[1]
                and (kind == "uniform" or bounds[0] > 0)
            )
            if not ok:
                raise ValueError(
                    f"{where}: {kind} needs [low, high] with low < high"
                    + (" and low > 0" if kind == "loguniform" else "")
                )
            if method != "random":
                raise ValueError(f'{where}: {kind} can only be drawn from with method = "random"')
            return (kind, float(bounds[0]), float(bounds[1]))
    raise ValueError(
        f"{where}: not a list, a value, {{from, to, step}}, {{uniform}} or {{loguniform}}"
    )


def parse_sweep(text: str, max_trials: int) -> Sweep:
    """The trials of a sweep file, or ValueError with a one-line message."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"sweep: not valid TOML: {exc}") from None
    unknown = set(doc) - {"method", "count", "seed", "max_concurrent", "params"}
    if unknown:
        raise ValueError(f"sweep: unknown key {sorted(unknown)[0]!r}")
    method = doc.get("method", "grid")
    if method not in ("grid", "random"):
        raise ValueError(f'sweep: method must be "grid" or "random", not {method!r}')
    params = doc.get("params")
    if not isinstance(params, dict) or not params:
        raise ValueError("sweep: no [params] table with at least one axis")
    if len(params) > MAX_PARAMS:
        raise ValueError(f"sweep: more than {MAX_PARAMS} params")
    for name in params:
        if not _NAME.fullmatch(name):
            raise ValueError(f"sweep: {name!r} is not a valid variable name (letters, digits, _)")
    upper = [n.upper() for n in params]
    if len(set(upper)) != len(upper):
        raise ValueError("sweep: two params differ only in case (their variables would clash)")
    concurrent = doc.get("max_concurrent", 0)
    if not isinstance(concurrent, int) or isinstance(concurrent, bool) or concurrent < 0:
        raise ValueError("sweep: max_concurrent must be a whole number, 1 or more")
    axes = {n: _axis(n, s, method) for n, s in params.items()}
    trials: list[dict[str, Any]]
    if method == "grid":
        size = math.prod(len(a) for a in axes.values() if isinstance(a, list))
        if size > max_trials:
            raise ValueError(
                f"sweep: the grid has {size} trials, over max_array_size ({max_trials})"
            )
        lists = {n: a for n, a in axes.items() if isinstance(a, list)}
        trials = [
            dict(zip(lists, combo, strict=True)) for combo in itertools.product(*lists.values())
        ]
    else:
        count, seed = doc.get("count"), doc.get("seed", 0)
        if not isinstance(count, int) or isinstance(count, bool) or count < 1:
            raise ValueError('sweep: method = "random" needs count = N (1 or more)')
        if count > max_trials:
            raise ValueError(f"sweep: count {count} is over max_array_size ({max_trials})")
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise ValueError("sweep: seed must be a whole number")
        rng = random.Random(seed)
        trials = []
        for _ in range(count):
            trial: dict[str, Any] = {}
            for name, axis in axes.items():
                if isinstance(axis, list):
                    trial[name] = rng.choice(axis)
                elif axis[0] == "uniform":
                    trial[name] = rng.uniform(axis[1], axis[2])
                else:
                    trial[name] = math.exp(rng.uniform(math.log(axis[1]), math.log(axis[2])))
            trials.append(trial)
    out = tuple({n: _text(v, f"sweep: params.{n}") for n, v in t.items()} for t in trials)
    return Sweep(out, concurrent)


def load_sweep(path: Path, max_trials: int = 1_000_001) -> Sweep:
    """A sweep file read and parsed, or ValueError with a one-line message naming it."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as exc:
        raise ValueError(f"sweep {path}: {exc.strerror}") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise ValueError(f"sweep {path}: not a regular file")
    with os.fdopen(fd, "rb") as f:
        data = f.read(MAX_SWEEP_FILE + 1)
    if len(data) > MAX_SWEEP_FILE:
        raise ValueError(f"sweep {path}: over {MAX_SWEEP_FILE // 1024} KiB")
    try:
        text = data.decode()
    except UnicodeDecodeError:
        raise ValueError(f"sweep {path}: not UTF-8 text") from None
    try:
        return parse_sweep(text, max_trials)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None


def report(**metrics: float) -> None:
    """Write this trial's result metrics (numbers) to GSHARE_RESULT_FILE, replacing what was
    there; `gshare sweep` ranks the trials by them. Outside a gshare job it does nothing."""
    path = os.environ.get("GSHARE_RESULT_FILE")
    if not path:
        return
    for name, value in metrics.items():
        if not isinstance(value, int | float) or not math.isfinite(value):
            raise ValueError(f"result {name}: {value!r} is not a finite number")
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(metrics, sort_keys=True))
    os.replace(tmp, target)


def read_result(path: str) -> dict[str, float] | str:
    """A trial's metrics from its result file, or why there are none (a short text)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        return "no result"
    except OSError as exc:
        return f"unreadable ({exc.strerror})"
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        return "not a regular file"
    with os.fdopen(fd, "rb") as f:
        data = f.read(MAX_RESULT_BYTES + 1)
    if len(data) > MAX_RESULT_BYTES:
        return "over 1 MiB"
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return "not JSON"
    if not isinstance(doc, dict):
        return "not a JSON object"
    return {
        str(k): float(v)
        for k, v in doc.items()
        if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
    }
