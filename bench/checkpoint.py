"""Checkpoint save and load throughput for a ~1 GB torch state dict.

Saves and loads a state dict of 16 float32 tensors of 64 MiB each through
gshare.checkpoint (torch.save into a temp file, fsync, rename, fsync of the directory),
against a baseline measured in the same run: writing the same bytes to a file with one
fsync, and reading them back. Page cache is dropped where this runs as root, so loads
read from disk.

Usage: .venv/bin/python bench/checkpoint.py [--dir DIR] [--runs 3] [--mib 1024]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from gshare.checkpoint import Checkpointer


class Weights:
    def __init__(self, mib: int) -> None:
        per = 64
        self.tensors = {f"layer{i}": torch.rand(per * 1024 * 1024 // 4) for i in range(mib // per)}

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.tensors

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.tensors = state


def drop_caches() -> None:
    if os.geteuid() == 0:
        with contextlib.suppress(OSError):
            Path("/proc/sys/vm/drop_caches").write_text("1\n")


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--dir", type=Path, help="where to write (default: a temp dir under /tmp)")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--mib", type=int, default=1024)
    args = p.parse_args()
    root = Path(tempfile.mkdtemp(prefix="gshare-ckpt-", dir=args.dir))
    weights = Weights(args.mib)
    raw = b"".join(t.numpy().tobytes() for t in weights.tensors.values())
    size_mib = len(raw) / (1 << 20)
    print(f"state dict: {len(weights.tensors)} tensors, {size_mib:.0f} MiB; writing under {root}")
    ckpt = Checkpointer(root / "ckpt", keep=1, signals=())
    results: dict[str, list[float]] = {"raw write": [], "raw read": [], "save": [], "load": []}
    for run in range(args.runs):
        path = root / "raw.bin"
        t0 = time.perf_counter()
        with open(path, "wb") as f:
            f.write(raw)
            f.flush()
            os.fsync(f.fileno())
        results["raw write"].append(time.perf_counter() - t0)
        drop_caches()
        t0 = time.perf_counter()
        path.read_bytes()
        results["raw read"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        ckpt.save_torch(run, weights)
        results["save"].append(time.perf_counter() - t0)
        drop_caches()
        target = Weights(64)
        t0 = time.perf_counter()
        ckpt.load_torch(target)
        results["load"].append(time.perf_counter() - t0)
        assert torch.equal(target.tensors["layer0"], weights.tensors["layer0"])
    for name, samples in results.items():
        med = statistics.median(samples)
        print(f"{name:<10} median {med:6.2f} s   {size_mib / med:8.0f} MiB/s")
    med = {name: statistics.median(samples) for name, samples in results.items()}
    print(f"ratio save / raw write: {med['save'] / med['raw write']:.2f}")
    print(f"ratio load / raw read:  {med['load'] / med['raw read']:.2f}")
    for f in root.rglob("*"):
        if f.is_file():
            f.unlink()
    return 0


if __name__ == "__main__":
    sys.exit(main())
