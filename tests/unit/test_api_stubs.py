"""The committed protobuf stubs must match what gshare/api/gshare.proto generates now."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
STUBS = ["gshare_pb2.py", "gshare_pb2.pyi", "gshare_pb2_grpc.py", "gshare_pb2_grpc.pyi"]


def test_generated_stubs_are_fresh(tmp_path: Path) -> None:
    pytest.importorskip("grpc_tools")
    env = dict(os.environ, PYTHON=sys.executable)
    subprocess.run(
        [str(REPO / "scripts" / "gen-proto"), str(tmp_path)],
        check=True,
        env=env,
        capture_output=True,
    )
    stale = [
        name
        for name in STUBS
        if (tmp_path / "gshare" / "api" / name).read_text()
        != (REPO / "gshare" / "api" / name).read_text()
    ]
    assert not stale, f"stale generated stubs {stale}: run scripts/gen-proto"
