"""The NVML probe against a stand-in for pynvml (the hardware edge), and the fake backend."""

from __future__ import annotations

import os
import stat
import sys
import types
from pathlib import Path
from typing import Any

import pytest

from nodeagent.gpus import FakeProbe, NvmlProbe, NvmlUnavailable


class _Error(Exception):
    pass


def fake_pynvml(links: dict[int, dict[int, int]], fail_init: bool = False) -> types.ModuleType:
    """Four GPUs; links[i] maps an NVLink index of GPU i to the GPU at its other end."""
    nv: Any = types.ModuleType("pynvml")
    buses = [f"00000000:{0x10 + i:02X}:00.0" for i in range(4)]
    nv.NVMLError = _Error
    nv.NVML_FEATURE_ENABLED = 1
    nv.NVML_NVLINK_MAX_LINKS = 6

    def init() -> None:
        if fail_init:
            raise _Error("NVML Shared Library Not Found")

    nv.nvmlInit = init
    nv.nvmlShutdown = lambda: None
    nv.nvmlDeviceGetCount = lambda: 4
    nv.nvmlDeviceGetHandleByIndex = lambda i: i
    nv.nvmlDeviceGetPciInfo = lambda h: types.SimpleNamespace(busId=buses[h].encode())
    nv.nvmlDeviceGetUUID = lambda h: f"GPU-{h:08d}-aaaa"
    nv.nvmlDeviceGetName = lambda h: b"NVIDIA H100 80GB HBM3"
    nv.nvmlDeviceGetMemoryInfo = lambda h: types.SimpleNamespace(total=80 * (1 << 30))
    nv.nvmlDeviceGetMinorNumber = lambda h: 7 - h  # /dev/nvidiaN need not follow the index

    def link_state(h: int, link: int) -> int:
        if link not in links.get(h, {}):
            raise _Error("Not Supported")
        return 1

    nv.nvmlDeviceGetNvLinkState = link_state
    nv.nvmlDeviceGetNvLinkRemotePciInfo = lambda h, link: types.SimpleNamespace(
        busId=buses[links[h][link]]
    )
    return nv


def test_nvml_inventory_and_nvlink_peers(monkeypatch: pytest.MonkeyPatch) -> None:
    # 0-1 and 2-3 are NVLink pairs (two links each), no link across the pairs
    links = {0: {0: 1, 1: 1}, 1: {0: 0, 1: 0}, 2: {0: 3}, 3: {0: 2}}
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml(links))
    gpus = NvmlProbe().inventory()
    assert [(g.index, g.nvlink_peers) for g in gpus] == [(0, (1,)), (1, (0,)), (2, (3,)), (3, (2,))]
    assert gpus[2].uuid == "GPU-00000002-aaaa" and gpus[2].model == "NVIDIA H100 80GB HBM3"
    assert gpus[0].memory_mb == 80 * 1024 and gpus[3].pci_bus_id == "00000000:13:00.0"
    assert [g.minor for g in gpus] == [7, 6, 5, 4]  # what each job's devices cgroup names


def test_no_driver_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml({}, fail_init=True))
    with pytest.raises(NvmlUnavailable, match="NVML is not available"):
        NvmlProbe()


def test_fake_gpus_are_stable_per_node() -> None:
    a, again, other = (
        FakeProbe("n1", 2).inventory(),
        FakeProbe("n1", 2).inventory(),
        FakeProbe("n2", 2).inventory(),
    )
    assert [g.uuid for g in a] == [g.uuid for g in again]
    assert not {g.uuid for g in a} & {g.uuid for g in other}
    assert (
        a[0].nvlink_peers == (1,)
        and FakeProbe("n", 2, nvlink=False).inventory()[0].nvlink_peers == ()
    )
    with pytest.raises(ValueError):
        FakeProbe("n", 0)


@pytest.mark.skipif(os.geteuid() != 0, reason="mknod needs root")
def test_fake_gpus_of_a_confining_agent_are_character_devices(tmp_path: Path) -> None:
    """195:N, as /dev/nvidiaN, so a job's devices cgroup rules them as on a real node; the
    regular files of an earlier unconfined run are replaced, and back again."""
    FakeProbe("n1", 2, dev_dir=tmp_path)
    assert stat.S_ISREG((tmp_path / "nvidia1").stat().st_mode)
    FakeProbe("n1", 2, dev_dir=tmp_path, char_devices=True)
    for i in range(2):
        st = (tmp_path / f"nvidia{i}").stat()
        assert stat.S_ISCHR(st.st_mode) and st.st_mode & 0o777 == 0o666
        assert (os.major(st.st_rdev), os.minor(st.st_rdev)) == (195, i)
    FakeProbe("n1", 2, dev_dir=tmp_path)
    assert stat.S_ISREG((tmp_path / "nvidia0").stat().st_mode)
