"""GPU inventory: NVML through nvidia-ml-py, or a fake backend where there is no GPU."""

from __future__ import annotations

import contextlib
import uuid
from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True, slots=True)
class GpuDevice:
    index: int
    uuid: str
    model: str
    memory_mb: int
    pci_bus_id: str = ""
    nvlink_peers: tuple[int, ...] = field(default=())


class GpuProbe(Protocol):
    backend: str

    def inventory(self) -> list[GpuDevice]: ...

    def close(self) -> None: ...


class NvmlUnavailable(RuntimeError):
    pass


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class NvmlProbe:
    """Real GPUs. NVLink peers are found by matching each active link's remote PCI bus id."""

    backend = "nvml"

    def __init__(self) -> None:
        try:
            import pynvml

            pynvml.nvmlInit()
        except Exception as exc:  # ImportError, NVMLError_LibraryNotFound, DriverNotLoaded...
            raise NvmlUnavailable(f"NVML is not available: {exc}") from exc
        self._nvml = pynvml

    def inventory(self) -> list[GpuDevice]:
        nv = self._nvml
        handles = [nv.nvmlDeviceGetHandleByIndex(i) for i in range(nv.nvmlDeviceGetCount())]
        bus_ids = [_text(nv.nvmlDeviceGetPciInfo(h).busId).lower() for h in handles]
        by_bus = {bus: i for i, bus in enumerate(bus_ids)}
        devices = []
        for i, h in enumerate(handles):
            peers: set[int] = set()
            for link in range(getattr(nv, "NVML_NVLINK_MAX_LINKS", 18)):
                try:
                    if nv.nvmlDeviceGetNvLinkState(h, link) != nv.NVML_FEATURE_ENABLED:
                        continue
                    remote = _text(nv.nvmlDeviceGetNvLinkRemotePciInfo(h, link).busId).lower()
                except nv.NVMLError:
                    continue
                if remote in by_bus and by_bus[remote] != i:
                    peers.add(by_bus[remote])
            devices.append(
                GpuDevice(
                    index=i,
                    uuid=_text(nv.nvmlDeviceGetUUID(h)),
                    model=_text(nv.nvmlDeviceGetName(h)),
                    memory_mb=int(nv.nvmlDeviceGetMemoryInfo(h).total) // (1 << 20),
                    pci_bus_id=bus_ids[i],
                    nvlink_peers=tuple(sorted(peers)),
                )
            )
        return devices

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._nvml.nvmlShutdown()


class FakeProbe:
    """N identical fake GPUs with stable UUIDs per node; all NVLink-connected when `nvlink`."""

    backend = "fake"

    def __init__(
        self,
        node: str,
        count: int,
        model: str = "Fake GPU",
        memory_mb: int = 81920,
        nvlink: bool = True,
    ) -> None:
        if count < 1:
            raise ValueError("--fake-gpus must be at least 1")
        self.node = node
        self.count = count
        self.model = model
        self.memory_mb = memory_mb
        self.nvlink = nvlink

    def inventory(self) -> list[GpuDevice]:
        return [
            GpuDevice(
                index=i,
                uuid=f"GPU-{uuid.uuid5(uuid.NAMESPACE_URL, f'gshare-fake/{self.node}/{i}')}",
                model=self.model,
                memory_mb=self.memory_mb,
                nvlink_peers=tuple(j for j in range(self.count) if j != i) if self.nvlink else (),
            )
            for i in range(self.count)
        ]

    def close(self) -> None:
        pass
