"""tests/slurm.py without starting anything: what it says when Slurm is missing, and the
tokens it signs."""

from __future__ import annotations

import base64
import json
import shutil
from pathlib import Path

import pytest

from slurm_bridge._auth import inspect_token
from tests.slurm import SlurmCluster, SlurmMissing


def test_missing_slurm_binaries_point_to_scripts_setup(monkeypatch: pytest.MonkeyPatch) -> None:
    real_which = shutil.which

    def which(name: str, path: str | None = None) -> str | None:
        return None if name in ("slurmrestd", "sbatch") else real_which(name, path=path)

    monkeypatch.setattr(shutil, "which", which)  # the module tests.slurm looks it up in
    with pytest.raises(SlurmMissing, match=r"need slurmrestd, sbatch .*run scripts/setup"):
        SlurmCluster(Path("/nonexistent")).start()


def test_signed_tokens_carry_user_and_expiry(tmp_path: Path) -> None:
    cluster = SlurmCluster(tmp_path)
    token = cluster.signed_token("alice", 2_000_000_000, key=b"k" * 32)
    info = inspect_token(token)
    assert (info.well_formed, info.user, info.expires_at) == (True, "alice", 2_000_000_000.0)
    header = json.loads(base64.urlsafe_b64decode(token.split(".")[0] + "=="))
    assert header == {"alg": "HS256", "typ": "JWT"}
