from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.slurm import SlurmCluster, SlurmMissing


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[SlurmCluster]:
    """One real Slurm (munged, slurmctld, slurmd with 4 fake GPUs, slurmrestd) on loopback
    for the whole session; started on first use. Fails, never skips, without Slurm."""
    root = Path(tempfile.mkdtemp(prefix="gshare-slurm-"))
    cluster = SlurmCluster(root)
    try:
        cluster.start()
    except SlurmMissing as exc:
        shutil.rmtree(root, ignore_errors=True)
        pytest.fail(str(exc), pytrace=False)
    try:
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)
