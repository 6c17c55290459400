from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.cluster import Cluster


@pytest.fixture
def open_tmp() -> Iterator[Path]:
    """A temp dir other users can traverse (pytest's own tmp_path is private to root), so
    tests can act as another user against the cluster's socket and a shared work dir."""
    path = Path(tempfile.mkdtemp(prefix="gshare-test-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def cluster_factory(open_tmp: Path) -> Iterator[Callable[..., Cluster]]:
    made: list[Cluster] = []

    def make(**kw: object) -> Cluster:
        root = open_tmp / f"cluster{len(made)}"
        root.mkdir()
        root.chmod(0o755)
        cluster = Cluster(root, **kw)  # type: ignore[arg-type]
        made.append(cluster)
        return cluster.start()

    yield make
    for cluster in made:
        cluster.stop()


@pytest.fixture
def cluster(cluster_factory: Callable[..., Cluster]) -> Cluster:
    return cluster_factory()


@pytest.fixture
def workdir(open_tmp: Path) -> Path:
    """A directory any user may write (jobs of other users write their logs here)."""
    path = open_tmp / "work"
    path.mkdir()
    path.chmod(0o777)
    return path


needs_root = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("setpriv") is None,
    reason="needs root and setpriv to act as other users",
)
