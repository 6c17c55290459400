"""Fair share in the running scheduler: why a job waits, the usage ledger, `gshare usage`."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable
from pathlib import Path

from tests.cluster import Cluster, wait_until
from tests.conftest import needs_root

CONFIG = """
[scheduler]
kill_grace_s = 3

[fairshare]
half_life = "1d"
default_shares = 0

[fairshare.accounts.vision]
shares = 3
users = ["root"]

[fairshare.accounts.nlp]
shares = 1
users = ["nobody"]
"""


def test_why_usage_and_a_ledger_that_survives_a_restart(
    cluster_factory: Callable[..., Cluster], workdir: Path
) -> None:
    cluster = cluster_factory(config=CONFIG)
    hogs = [cluster.submit("--wrap", "sleep 60", "--gpus", "4", cwd=workdir) for _ in range(2)]
    for job_id in hogs:
        cluster.wait_state(job_id, "RUNNING")
    waiting = cluster.submit("--wrap", "true", "--gpus", "2", cwd=workdir)

    def why() -> str:
        res = cluster.gshare("why", str(waiting))
        return res.out if "in line" in res.out else ""

    text = wait_until("a reason with a place in line", why)
    assert text.startswith(f"job {waiting} is PENDING, 1 in line:")
    assert "needs 2 GPUs on one node, largest free block is 0" in text
    assert "team vision at 1.3x its share\n  1st in team vision" in text
    queue = cluster.gshare("queue").out
    assert "largest free block is 0" in queue and "team vision" not in queue  # the short form

    time.sleep(2)
    report = json.loads(cluster.gshare("usage", "--json").out)
    rows = {tuple(a["path"]): a for a in report["accounts"]}
    assert report["half_life_s"] == 86400 and report["cluster_gpus"] == 8
    assert rows[("vision",)]["share"] == 0.75 and rows[("nlp",)]["share"] == 0.25
    assert (
        rows[("vision", "root")]["running_gpus"] == 8
        and rows[("vision", "root")]["pending_gpus"] == 2
    )
    used = rows[("vision", "root")]["usage_gpu_s"]
    assert used >= 8 * 2  # 8 GPUs for at least two seconds
    assert rows[("vision", "root")]["fairshare_factor"] is not None
    assert rows[("nlp", "nobody")]["usage_gpu_s"] == 0
    text = cluster.gshare("usage").out
    assert "vision" in text and "  root" in text and "FS-FACTOR" in text

    cluster.kill_scheduler(signal.SIGTERM)  # a clean stop writes the ledger
    cluster.start_scheduler()
    after = json.loads(cluster.gshare("usage", "--json").out)
    again = {tuple(a["path"]): a for a in after["accounts"]}[("vision", "root")]["usage_gpu_s"]
    assert again >= used
    for job_id in (*hogs, waiting):
        cluster.gshare("cancel", str(job_id))


@needs_root
def test_the_team_under_its_share_goes_first(
    cluster_factory: Callable[..., Cluster], workdir: Path
) -> None:
    cluster = cluster_factory(config=CONFIG, agents=1)
    hog = cluster.submit("--wrap", "sleep 120", "--gpus", "4", cwd=workdir)
    cluster.wait_state(hog, "RUNNING")
    time.sleep(1.5)  # root (vision) builds up usage; nobody (nlp) has none
    first = cluster.submit("--wrap", "true", "--gpus", "4", cwd=workdir)
    second = cluster.submit("--wrap", "true", "--gpus", "4", cwd=workdir, user="nobody")
    # both wait for the hog's GPUs, however long the submits took on a busy machine
    assert {cluster.state(first), cluster.state(second)} == {"PENDING"}
    assert cluster.gshare("cancel", str(hog)).code == 0
    a = cluster.wait_state(first, "COMPLETED", timeout=60)
    b = cluster.wait_state(second, "COMPLETED", timeout=60)
    assert b.start_time < a.start_time  # submitted later, ran first: nlp was under its share
