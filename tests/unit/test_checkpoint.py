"""gshare.checkpoint: atomic saves, torn files, keeping the last K, the yield signal."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gshare.checkpoint import YIELD_EXIT_CODE, Checkpointer


def test_save_load_and_keep_the_last_k(tmp_path: Path) -> None:
    c = Checkpointer(tmp_path, keep=2, signals=())
    assert c.load() is None
    for step in (10, 20, 30):
        c.save(step, {"w": step})
    assert [p.name for p in c.checkpoints()] == ["ckpt-000000000020.pt", "ckpt-000000000030.pt"]
    assert c.load() == (30, {"w": 30})


def test_a_torn_newest_checkpoint_is_skipped(tmp_path: Path) -> None:
    c = Checkpointer(tmp_path, signals=())
    c.save(1, {"w": 1})
    good = (tmp_path / "ckpt-000000000001.pt").read_bytes()
    (tmp_path / "ckpt-000000000002.pt").write_bytes(good[: len(good) // 2])  # cut short
    assert c.load() == (1, {"w": 1})


def test_sigkill_in_the_middle_of_a_save_leaves_the_previous_one(tmp_path: Path) -> None:
    code = (
        "import sys, os\n"
        "from gshare.checkpoint import Checkpointer\n"
        f"c = Checkpointer({str(tmp_path)!r}, signals=())\n"
        "c.save(1, {'w': 1})\n"
        "print('saved', flush=True)\n"
        "c.save(2, bytes(600 * 1024 * 1024))\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "saved"
    deadline = time.monotonic() + 30
    while not any(p.name.startswith(".ckpt-") and p.stat().st_size > 0 for p in tmp_path.iterdir()):
        assert time.monotonic() < deadline and proc.poll() is None, "the second save never started"
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    c = Checkpointer(tmp_path, signals=())
    assert [p.name for p in c.checkpoints()] == ["ckpt-000000000001.pt"]  # the temp file is not one
    assert c.load() == (1, {"w": 1})


def test_the_yield_signal_and_exit_code(tmp_path: Path) -> None:
    code = (
        "import time\n"
        "from gshare.checkpoint import Checkpointer\n"
        f"c = Checkpointer({str(tmp_path)!r})\n"
        "print('ready', flush=True)\n"
        "while not c.should_stop():\n"
        "    time.sleep(0.01)\n"
        "c.save(7, 'state')\n"
        "c.exit_yielded()\n"
    )
    log = tmp_path / "log.jsonl"
    env = dict(
        os.environ, GSHARE_PREEMPT_SIGNAL=str(int(signal.SIGUSR2)), GSHARE_CHECKPOINT_LOG=str(log)
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    proc.send_signal(signal.SIGUSR2)
    assert proc.wait(10) == YIELD_EXIT_CODE == 75
    assert '"step": 7' in log.read_text()
    assert Checkpointer(tmp_path, signals=()).load() == (7, "state")


def test_torch_state_round_trips_bitwise(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    opt = torch.optim.AdamW(model.parameters())
    model(torch.randn(3, 4)).sum().backward()
    opt.step()
    c = Checkpointer(tmp_path, signals=())
    c.save_torch(5, model, opt, marker="x")
    after_save = torch.rand(1)
    other = torch.nn.Linear(4, 2)
    other_opt = torch.optim.AdamW(other.parameters())
    got = c.load_torch(other, other_opt)
    assert got == {"step": 5, "extra": {"marker": "x"}}
    assert all(
        torch.equal(a, b)
        for a, b in zip(model.state_dict().values(), other.state_dict().values(), strict=True)
    )
    assert torch.equal(torch.rand(1), after_save)  # the RNG is back where it was at the save


def test_only_rank_0_writes_and_every_rank_loads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = tmp_path / "log"
    monkeypatch.setenv("GSHARE_CHECKPOINT_LOG", str(log))
    monkeypatch.setenv("RANK", "1")
    other = Checkpointer(tmp_path, signals=())
    assert other.rank == 1 and not other.writes
    assert other.save(5, {"w": 5}) == tmp_path / "ckpt-000000000005.pt"
    assert other.checkpoints() == [] and not log.exists()  # nothing written, nothing told
    monkeypatch.setenv("RANK", "0")
    first = Checkpointer(tmp_path, signals=())
    first.save(5, {"w": 5})
    assert [p.name for p in first.checkpoints()] == ["ckpt-000000000005.pt"]
    assert len(log.read_text().splitlines()) == 1
    assert other.load() == (5, {"w": 5})  # rank 1 resumes from rank 0's checkpoint
    for bad in ("x", "-1", "1.5"):
        monkeypatch.setenv("RANK", bad)
        with pytest.raises(ValueError, match="RANK must"):
            Checkpointer(tmp_path, signals=())
